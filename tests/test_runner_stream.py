"""`stream: true` end to end: the streamed run writes what the resident run writes, refuses what
needs the whole model with file:line, and samples calibration inputs through a pipeline one block at a
time. Its resume, memory warnings and failures have their own files (test_runner_resume.py,
test_runner_stream_memory.py, test_runner_stream_failures.py)."""

import json
import re

import pytest
import torch
from diffusers import PixArtTransformer2DModel

from compress.errors import UserError
from compress.io import INDEX, WEIGHTS
from compress.io_output import load_transformer
from compress.runner_stream import StreamedModels
from tests.conftest import tiny_pixart
from tests.runner_helpers import STREAM_RECIPE, run_recipe, streamed_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family, dtype", [("pixart", "float32"), ("flux", "float32"), ("flux", "bfloat16"),
                                           ("pixart", "bfloat16")])  # PixArt: its float32 pos_embed
def test_streamed_run_writes_the_resident_result(tmp_path, family, dtype):
    text = streamed_teacher(tmp_path, family).replace("stream: {stream}", f"stream: {{stream}}\ncompute_dtype: {dtype}")
    resident = run_recipe(tmp_path, text.format(stream="false"), "resident")
    streamed = run_recipe(tmp_path, text.format(stream="true"), "streamed")
    assert (streamed / INDEX).is_file() and not (streamed / WEIGHTS).exists()
    a, b = load_transformer(resident).state_dict(), load_transformer(streamed).state_dict()
    assert a.keys() == b.keys() and any(k.endswith(".down.weight") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    computed = getattr(torch, dtype)  # exported as float32: the compute dtype's values exactly
    assert all(torch.equal(v, v.to(computed).float()) for v in b.values() if v.is_floating_point())
    ra, rb = (json.loads((o / "report.json").read_text()) for o in (resident, streamed))
    assert [s["relative_error"] for s in ra["stages"]] == [s["relative_error"] for s in rb["stages"]]
    assert ra["stages"][-1]["relative_error"] > 0
    # fisher: block fits block targets asymmetrically, so their stats are taken within-block sequentially
    assert rb["svd"]["passes"][0]["sequential"] is ra["svd"]["passes"][0]["sequential"] is True
    assert rb["student_params"] == ra["student_params"] < rb["teacher_params"]
    assert "stream" not in ra and rb["stream"]["compute_dtype"] == dtype
    assert rb["stream"]["resident_params"] < rb["teacher_params"]
    assert not (tmp_path / "run-streamed" / "stream").exists()  # stages hold the one copy: no empty folder left
    shards = json.loads((streamed / INDEX).read_text())["weight_map"]
    blocks = {m.group(1) for k in shards if (m := re.match(r"(\w+\.\d+)\.", k))}
    per_block = [{f for k, f in shards.items() if k.startswith(b + ".")} for b in blocks]
    assert all(len(s) == 1 for s in per_block)  # one shard per block, the top level apart
    assert len(set.union(*per_block)) == len(blocks) == len(set(shards.values())) - 1


def test_uncompressed_shards_load_in_plain_diffusers(tmp_path):
    text = streamed_teacher(tmp_path, "pixart").replace(
        "  - svd: {{targets: [modulation], fisher: none, ranks: {{modulation: 4}}}}\n", "")
    text = text.replace("ratio: 0.5", "ratio: 1.0").replace("[attention, mlp]", "[attention]")
    out = run_recipe(tmp_path, text.format(stream="true"), "dense")  # ratio 1: every layer stays dense
    plain = PixArtTransformer2DModel.from_pretrained(out)
    ours = load_transformer(out)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in plain.state_dict().items())


@pytest.mark.parametrize("edit, match", [
    ("fisher: block", "6: svd.fisher: all needs the whole model"),
    ("ratio: 0.5", "6: svd.sensitivity \\(default on with allocation: global\\) needs the whole model"),
])
def test_whole_model_work_is_refused_with_file_line(tmp_path, edit, match):
    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    text = text.replace(edit, {"fisher: block": "fisher: all",
                               "ratio: 0.5": "ratio: 0.5, allocation: global"}[edit])
    with pytest.raises(UserError, match=match):
        run_recipe(tmp_path, text, "bad")


def test_distill_is_refused_with_file_line(tmp_path):
    text = streamed_teacher(tmp_path, "pixart").format(stream="true") + "  - distill: {steps: 1}\n"
    with pytest.raises(UserError, match=r"bad\.yaml:8: the distill pass needs the whole model"):
        run_recipe(tmp_path, text, "bad")


def test_single_file_teacher_is_refused(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "t")
    text = STREAM_RECIPE.format(family="pixart", teacher=tmp_path / "t" / WEIGHTS, stream="true")
    with pytest.raises(UserError, match="stream: true reads a diffusers folder"):
        run_recipe(tmp_path, text, "bad")


def test_pipeline_sampling_streams_block_by_block(tmp_path):
    """The toy pipeline samples with a streamed teacher exactly as with the resident one, and
    every block is back on meta afterwards."""
    from compress.calib_pipeline import capture, load_pipeline_for
    from compress.io import load_teacher

    models = StreamedModels(tmp_path)
    teacher = models.teacher("toy:pixart", None)
    resident = load_teacher("toy:pixart")

    def sample(model):
        pipe = load_pipeline_for(model, "toy:pixart")
        return capture(pipe, model, ["a photo of the digit 3"], steps=4, keep=2, guidance=3.0, seed=0)

    with models.forwards(teacher):
        got = sample(teacher)
    want = sample(resident)
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g["hidden_states"], w["hidden_states"], rtol=0, atol=0)
    assert all(p.device.type == "meta" for p in teacher.transformer_blocks.parameters())


def test_prompts_per_call_divides_the_streamed_reads(tmp_path):
    """Three prompts in one sampling run read each block once per step (not once per step and
    prompt), with the latents of three separate runs (same per-prompt noise)."""
    from compress.calib_pipeline import capture, load_pipeline_for
    from compress.io import load_teacher

    models = StreamedModels(tmp_path)
    teacher = models.teacher("toy:pixart", None)
    loader = models.loaders[id(teacher)]
    reads = []
    loader.materialize = (lambda f: lambda *a: (reads.append(a[:2]), f(*a)))(loader.materialize)
    prompts = ["a 1", "a 2", "a 3"]
    with models.forwards(teacher):
        batched = capture(load_pipeline_for(teacher, "toy:pixart"), teacher, prompts, steps=4, keep=2,
                          guidance=3.0, seed=0, per_call=3)
    assert len(reads) == 4 * len(teacher.transformer_blocks)  # steps x blocks, one call
    resident = load_teacher("toy:pixart")
    single = capture(load_pipeline_for(resident, "toy:pixart"), resident, prompts, steps=4, keep=2,
                     guidance=3.0, seed=0)
    assert len(batched) == 2 and len(single) == 6
    for k in range(2):  # batched rows: the three prompts' latents, once per CFG branch
        want = torch.cat([single[2 * i + k]["hidden_states"][:1] for i in range(3)])
        torch.testing.assert_close(batched[k]["hidden_states"][:3], want, rtol=0, atol=1e-4)


def test_streamed_global_energy_and_teacher_activations_match_resident(tmp_path, monkeypatch):
    """global (without sensitivities: it calibrates every block first), energy and teacher-mode
    activations stream too, with the resident result; global's first walk writes nothing back."""
    from compress.stream import CheckpointBlocks

    released, real = [], CheckpointBlocks.release
    monkeypatch.setattr(CheckpointBlocks, "release", lambda self, *a: (released.append(a[:2]), real(self, *a)))
    text = streamed_teacher(tmp_path, "flux").replace(
        "fisher: block, ratio: 0.5", "fisher: block, allocation: global, sensitivity: false, ratio: 0.5").replace(
        "fisher: none, ranks: {{modulation: 4}}", "fisher: none, allocation: energy, energy: 0.9, activations: teacher")
    a = load_transformer(run_recipe(tmp_path, text.format(stream="false"), "resident")).state_dict()
    b = load_transformer(run_recipe(tmp_path, text.format(stream="true"), "streamed")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(k.endswith(".down.weight") for k in a) > 20
    assert len(released) == 2 * 5  # two passes over 2 + 3 blocks: the curve walk only unloads


@pytest.mark.parametrize("family, blocks", [("pixart", "{blocks: [1]}"), ("flux", "{double: [0], single: [0, 2]}")])
def test_streamed_explicit_block_removal_matches_resident(tmp_path, family, blocks):
    """Blocks removed by teacher index before the svd passes: the streamed student reads block i
    from where teacher block block_map[i] was."""
    text = streamed_teacher(tmp_path, family)
    text = {s: text.format(stream=s).replace("passes:\n", f"passes:\n  - remove_blocks: {{blocks: {blocks}}}\n")
            for s in ("false", "true")}
    resident = run_recipe(tmp_path, text["false"], "resident")
    streamed = run_recipe(tmp_path, text["true"], "streamed")
    a, b = load_transformer(resident).state_dict(), load_transformer(streamed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (streamed / "block_map.json").read_text() == (resident / "block_map.json").read_text()
    ra, rb = (json.loads((o / "report.json").read_text()) for o in (resident, streamed))
    assert [s["relative_error"] for s in ra["stages"]] == [s["relative_error"] for s in rb["stages"]]
    assert ra["stages"][0]["relative_error"] > 0.01  # the removal itself changed the prediction


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_the_streamed_skip_scan_matches_the_resident_one(tmp_path, family):
    """importance and remove_blocks by the skip scan stream, each block read once per batch: the
    same scores, blocks removed and weights after, bit for bit."""
    passes = ["importance: {{buckets: 2, progress: false}}", "remove_blocks: {{count: 1}}",
              "remove_blocks: {{count: 1, iterative: true}}"]
    lines = "".join(f"  - {p}\n" for p in passes)
    text = streamed_teacher(tmp_path, family).replace("passes:\n", "passes:\n" + lines)
    resident = run_recipe(tmp_path, text.format(stream="false"), "resident")
    streamed = run_recipe(tmp_path, text.format(stream="true"), "streamed")
    ra, rb = (json.loads((o / "report.json").read_text()) for o in (resident, streamed))
    assert len(ra["importance"]["blocks"]) == len(rb["importance"]["blocks"]) > 2
    for x, y in zip(ra["importance"]["blocks"], rb["importance"]["blocks"]):
        assert (x["group"], x["index"]) == (y["group"], y["index"]) and x["scan"] > 0
        assert (y["scan"], y["scan_by_bucket"], y["proxy"]) == (x["scan"], x["scan_by_bucket"], x["proxy"])
    kept = [json.loads((o / "block_map.json").read_text()) for o in (resident, streamed)]
    assert kept[0] == kept[1] and sum(map(len, kept[1].values())) == len(rb["importance"]["blocks"]) - 2
    a, b = load_transformer(resident).state_dict(), load_transformer(streamed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("passes", [
    ["importance: {{proxy_only: true, progress: false}}", "remove_blocks: {{count: {{single: 1}}, criterion: proxy}}"],
    ["remove_blocks: {{count: 2, criterion: proxy, iterative: true}}"],
])
def test_removal_by_the_proxy_streams(tmp_path, passes):
    """The cosine proxy needs one forward per batch: streamed block by block, it picks the blocks
    the resident run picks, and the svd passes after it write the same weights."""
    lines = "".join(f"  - {p}\n" for p in passes)
    text = streamed_teacher(tmp_path, "flux").replace("passes:\n", "passes:\n" + lines)
    resident = run_recipe(tmp_path, text.format(stream="false"), "resident")
    streamed = run_recipe(tmp_path, text.format(stream="true"), "streamed")
    a, b = load_transformer(resident).state_dict(), load_transformer(streamed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (streamed / "block_map.json").read_text() == (resident / "block_map.json").read_text()
    ra, rb = (json.loads((o / "report.json").read_text()) for o in (resident, streamed))
    assert ra["remove_blocks"]["removed"] == rb["remove_blocks"]["removed"]
    assert sum(map(len, rb["remove_blocks"]["removed"].values())) == (1 if len(passes) == 2 else 2)


def test_streamed_run_with_pipeline_calibration(tmp_path, monkeypatch):
    """calibration.source: pipeline samples the streamed teacher inside its pipeline, block by
    block; the weights equal the resident run's, and the pipeline is dropped once both the
    calibration and the held-out inputs are sampled."""
    from compress.calib_pipeline import PipelineSource

    sources, real = [], PipelineSource.__init__
    monkeypatch.setattr(PipelineSource, "__init__",
                        lambda self, *a, **k: (sources.append(self), real(self, *a, **k))[1])
    text = """\
model: pixart
teacher: toy:pixart
stream: {stream}
calibration: {{source: pipeline, prompts: ["a 1", "a 2", "a 3", "a 4", "a 5"], sample_steps: 4,
              timesteps: 2, prompts_per_call: 2, batch_size: 8, heldout: 4}}
passes:
  - svd: {{targets: [mlp], fisher: block, ratio: 0.5, multiple: 8, progress: false}}
"""
    a = load_transformer(run_recipe(tmp_path, text.format(stream="false"), "resident")).state_dict()
    b = load_transformer(run_recipe(tmp_path, text.format(stream="true"), "streamed")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(sources) == 2 and all(s._pipe is None for s in sources)


@pytest.mark.parametrize("stream", ["false", "true"])
def test_spilled_activations_change_nothing(tmp_path, stream):
    """calibration.spill_activations keeps block inputs on disk, batch by batch: same weights, and
    the files (and their folder) are gone after the run. Asymmetric fit (two streams) and global's walk included."""
    text = streamed_teacher(tmp_path, "flux").format(stream=stream).replace(
        "ratio: 0.5", "ratio: 0.5, allocation: global, sensitivity: false")
    a = load_transformer(run_recipe(tmp_path, text, "memory")).state_dict()
    spilled = text.replace("heldout: 4}", "heldout: 4, spill_activations: true}")
    b = load_transformer(run_recipe(tmp_path, spilled, "disk")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "run-disk" / "activations").exists()  # the files gone, and their folder


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_streamed_forwards_put_every_tensor_on_the_compute_device(tmp_path, family):
    """With the meta device standing in for a GPU (a CPU tensor meeting a meta one is an error,
    as with a CUDA one): the top level, buffers the checkpoint does not hold included (PixArt's
    positional embedding, built on the CPU), and each block land on the loader's device, and a
    streamed forward runs there."""
    from compress.arch import get_adapter
    from compress.inputs import moved
    from tests.conftest import model_inputs

    meta = torch.device("meta")
    models = StreamedModels(tmp_path, device=meta)
    teacher = models.teacher(f"toy:{family}", None)
    assert all(t.is_meta for t in (*teacher.parameters(), *teacher.buffers()))
    assert any(True for _ in teacher.buffers()) == (family == "pixart")
    batch = moved(model_inputs(teacher, batch=2), meta, torch.float32)
    with models.forwards(teacher):
        out = get_adapter(teacher).predict(teacher, batch)
    assert out.is_meta and out.shape[0] == 2
    from compress.passes.importance_stream import wave_pass  # the streamed skip scan's forwards

    loader = models.loaders[id(teacher)]
    pred, _, skipped = wave_pass(teacher, loader.adapter, batch, loader, lambda a, i, o: None)
    assert pred.is_meta and pred.shape == out.shape and len(skipped) == 6
    assert all(s.is_meta and s.shape == out.shape for s in skipped)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family, spill", [("pixart", "false"), ("flux", "false"), ("flux", "true")])
def test_a_streamed_run_on_the_gpu_matches_the_cpu(tmp_path, family, spill, exact_gpu_float32):
    """stream: true with device: cuda reads each block to the CPU and computes on the GPU (proxy
    removal, block Fishers, the asymmetric fit, modulation, spilled activations): the blocks
    removed and the ranks equal the streamed CPU run's and the resident GPU run's, and the
    weights and held-out errors agree within float tolerance; nothing is left spilled."""
    text = streamed_teacher(tmp_path, family).replace("stream: {stream}", "stream: {stream}\ndevice: {device}")
    text = text.replace("passes:\n", "passes:\n  - remove_blocks: {{count: 1, criterion: proxy}}\n")
    text = text.replace("heldout: 4}", f"heldout: 4, spill_activations: {spill}}}")
    runs = {(s, d): run_recipe(tmp_path, text.format(stream=s, device=d), f"{s}-{d}")
            for s, d in (("true", "cpu"), ("true", "cuda"), ("false", "cuda"))}
    states = {k: load_transformer(o).state_dict() for k, o in runs.items()}
    reports = {k: json.loads((o / "report.json").read_text()) for k, o in runs.items()}
    want, want_report = states["true", "cpu"], reports["true", "cpu"]
    for key in (("true", "cuda"), ("false", "cuda")):
        assert states[key].keys() == want.keys() and any(k.endswith(".down.weight") for k in want)
        for k in want:
            torch.testing.assert_close(states[key][k], want[k], rtol=1e-3, atol=1e-4)
        assert reports[key]["remove_blocks"]["removed"] == want_report["remove_blocks"]["removed"]
        errors = [[s["relative_error"] for s in r["stages"]] for r in (reports[key], want_report)]
        assert errors[0] == pytest.approx(errors[1], rel=1e-3)
    assert not (tmp_path / "run-true-cuda" / "stream").exists()  # nothing spilled left, nor an empty folder


def test_a_streamed_svd_of_the_output_head_matches_resident(tmp_path):
    """proj_out's Gram is taken after the blocks, in whole-model forwards: streamed, each block is
    read just in time for them (it ran on meta blocks: a device error)."""
    text = streamed_teacher(tmp_path, "pixart").replace(
        "  - svd: {{targets: [modulation], fisher: none, ranks: {{modulation: 4}}}}\n", "")
    text = text.replace("[attention, mlp]", "[output, mlp]")
    a = load_transformer(run_recipe(tmp_path, text.format(stream="false"), "resident")).state_dict()
    b = load_transformer(run_recipe(tmp_path, text.format(stream="true"), "streamed")).state_dict()
    assert "proj_out.down.weight" in a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
