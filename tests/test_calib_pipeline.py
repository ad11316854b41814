"""Calibration through the real diffusers pipelines (tiny PixArtSigmaPipeline and FluxPipeline
folders, tests/pipelines.py): what is captured is exactly what the transformer saw at inference,
`dit-compress run` compresses from them resident and streamed, and hub ids resolve from a
downloaded cache without network."""

import os
import subprocess
import sys

import pytest
import torch

from compress.arch import get_adapter
from compress.calib_pipeline import capture, load_pipeline_for, read_prompts
from compress.errors import UserError
from compress.io import load_teacher
from compress.io_output import load_transformer
from compress.recipe import parse_recipe
from compress.runner import Runner
from tests.pipelines import flux_pipeline, hub_cache, pixart_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = {"pixart": "", "flux": "height: 32, width: 32, "}  # Flux's default is 1024²
RECIPE = """\
model: {family}
teacher: {teacher}
stream: {stream}
calibration: {{source: pipeline, prompts: [a photo of a cat, a red car, a horse, a fox, a dog],
              sample_steps: 3, timesteps: 2, {size}batch_size: 4, heldout: 4}}
passes:
  - svd: {{targets: [attention, mlp], fisher: block, ratio: 0.5, multiple: 2, progress: false}}
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    (root / "pixart").mkdir(), (root / "flux").mkdir()
    return {"pixart": pixart_pipeline(root / "pixart" / "pipe"),
            "flux": flux_pipeline(root / "flux" / "pipe")}


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_capture_records_what_the_transformer_saw(folders, family):
    """Every captured record, fed back to the transformer, gives the very prediction the sampler
    got at that step (PixArt-Σ's pipeline passes the latents positionally): both CFG branches for
    PixArt-Σ, one guidance-embedded branch for Flux (guidance distilled, as Flux.1-dev)."""
    teacher = load_teacher(str(folders[family]))
    pipe = load_pipeline_for(teacher, str(folders[family]))
    seen = []
    handle = teacher.register_forward_hook(lambda m, a, out: seen.append(out[0].detach().clone()))
    size = {"height": 32, "width": 32} if family == "flux" else {}
    try:
        records = capture(pipe, teacher, ["a photo of a cat"], steps=3, keep=3, guidance=4.0, seed=0,
                          size=size)
    finally:
        handle.remove()
    assert len(records) == len(seen) == 3
    for record, out in zip(records, seen):
        assert record["hidden_states"].shape[0] == (2 if family == "pixart" else 1)
        assert family == "pixart" or float(record["guidance"][0]) == 4.0
        with torch.no_grad():
            again = teacher(**record, return_dict=False)[0]
        torch.testing.assert_close(again, out, rtol=0, atol=0)
    assert not torch.equal(records[0]["hidden_states"], records[-1]["hidden_states"])  # it sampled


@pytest.mark.parametrize("cfg_branches", [True, False])
def test_flux_calibrates_at_the_recipes_embedded_guidance(folders, cfg_branches):
    """A guidance-distilled Flux samples one branch with the guidance as an input: the recipe's
    scale reaches the transformer whether or not cfg_branches is set (the Flux recipes set it
    false); PixArt-Σ without CFG branches samples the conditional branch alone."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    for family, want in (("flux", (3.5, 1)), ("pixart", (None, 2 if cfg_branches else 1))):
        calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], sample_steps=2,
                                  timesteps=1, guidance_scale=3.5, cfg_branches=cfg_branches,
                                  **({"height": 32, "width": 32} if family == "flux" else {}))
        teacher = load_teacher(str(folders[family]))
        [record] = PipelineSource(family, calib, teacher, str(folders[family])).calibration()
        assert record["hidden_states"].shape[0] == want[1]
        assert family == "pixart" or record["guidance"].tolist() == [want[0]]


def _run(tmp_path, text, name):
    recipe = parse_recipe(text, str(tmp_path / f"{name}.yaml"))
    return Runner(recipe, tmp_path / f"out-{name}", tmp_path / f"run-{name}").run()


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_run_compresses_a_pipeline_folder_resident_and_streamed(tmp_path, folders, family):
    text = RECIPE.replace("{teacher}", str(folders[family])).replace("{family}", family) \
        .replace("{size}", SIZE[family])
    a = load_transformer(_run(tmp_path, text.format(stream="false"), "resident"))
    b = load_transformer(_run(tmp_path, text.format(stream="true"), "streamed"))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and any(k.endswith(".down.weight") for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    teacher = load_teacher(str(folders[family]))
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_hub_ids_resolve_from_a_downloaded_cache(tmp_path, folders):
    """`dit-compress run` with a hub id as the teacher, offline, from the Hugging Face cache: the
    resident loader (hf_hub_download + from_pretrained), the pipeline (DiffusionPipeline) and the
    streamed loader (snapshot_download of transformer/) all find it."""
    cache = hub_cache(tmp_path / "hub", "tiny-org/tiny-flux", folders["flux"])
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    outs = {}
    for stream in ("false", "true"):
        text = RECIPE.format(family="flux", teacher="tiny-org/tiny-flux", stream=stream, size=SIZE["flux"])
        (tmp_path / f"{stream}.yaml").write_text(text)
        outs[stream] = tmp_path / f"out-{stream}"
        done = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(tmp_path / f"{stream}.yaml"),
                               "--out", str(outs[stream]), "--run-dir", str(tmp_path / f"run-{stream}")],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (load_transformer(outs[s]).state_dict() for s in ("false", "true"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_missing_hub_id_is_one_line_offline(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    text = RECIPE.format(family="flux", teacher="tiny-org/not-there", stream="false", size=SIZE["flux"])
    (tmp_path / "r.yaml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(tmp_path / "r.yaml"),
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "cannot fetch 'tiny-org/not-there'" in done.stderr


def test_without_transformers_pipeline_calibration_says_what_to_install(tmp_path, folders, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    text = RECIPE.replace("{teacher}", str(folders["pixart"])).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream="false")
    with pytest.raises(UserError, match=r"needs transformers: pip install 'dit-compress\[pipelines\]'"):
        _run(tmp_path, text, "no-transformers")
    assert not (tmp_path / "out-no-transformers").exists()


def test_without_caption_cleaning_pixart_calibration_says_what_to_install(tmp_path, folders, monkeypatch):
    """Without beautifulsoup4 / ftfy PixArt-Σ's pipeline only logs a warning and samples from
    uncleaned captions, which inference would not see: an error naming them, not a silent change."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ftfy" else real(name, *a))
    text = RECIPE.replace("{teacher}", str(folders["pixart"])).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream="false")
    with pytest.raises(UserError, match=r"needs ftfy: pip install 'dit-compress\[pipelines\]'"):
        _run(tmp_path, text, "no-ftfy")
    flux = RECIPE.format(family="flux", teacher=str(folders["flux"]), stream="false", size=SIZE["flux"])
    from compress.inputs import check_pipeline_packages

    check_pipeline_packages(parse_recipe(flux, str(tmp_path / "f.yaml")))  # Flux's pipeline cleans nothing


@pytest.mark.parametrize("command", ["run", "importance"])
def test_without_transformers_a_hub_teacher_is_not_fetched_first(tmp_path, monkeypatch, capsys, command):
    """`run` / `importance` of a real recipe say what to install before they load (download) the
    teacher: a Hub teacher is GBs."""
    import importlib.util

    import compress.io
    from compress.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    fetched = []
    monkeypatch.setattr(compress.io, "_load_hub", lambda *a: fetched.append(a) or 1 / 0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(family="flux", teacher="tiny-org/tiny-flux", stream="false", size=""))
    extra = ["--out", str(tmp_path / "out")] if command == "run" else []
    assert main([command, str(recipe), *extra]) == 2
    assert fetched == [] and "pip install 'dit-compress[pipelines]'" in capsys.readouterr().err
    if command == "run":  # a teacher that is not there is named first
        assert main([command, str(recipe), "--teacher", str(tmp_path / "nothere"), *extra]) == 2
        assert "teacher not found" in capsys.readouterr().err


def test_image_size_keys_are_checked(tmp_path):
    text = RECIPE.format(family="pixart", teacher="toy:pixart", stream="false", size="height: 8, ")
    with pytest.raises(UserError, match=r"r\.yaml:5: calibration\.height must be at least 16"):  # the key's line
        parse_recipe(text, str(tmp_path / "r.yaml"))
    text = RECIPE.format(family="pixart", teacher="toy:pixart", stream="false", size="height: 64, ")
    with pytest.raises(UserError, match="toy pipelines sample at their one resolution"):
        _run(tmp_path, text, "toy-size")


CALIB = ["calibration.num_prompts=5", "calibration.sample_steps=3", "calibration.timesteps=2",
         "calibration.batch_size=4", "calibration.heldout=4"]
DISTILL = ["num_samples=4", "sample_steps=2", "steps=2", "batch_size=2", "warmup_steps=1"]
SHIPPED = {  # recipe -> (family, overrides shrinking it to the tiny teachers: 3 PixArt blocks; 2 + 3 Flux)
    "pixart-sigma-50": ("pixart", ["passes.1.remove_blocks.count.blocks=1", "passes.2.svd.multiple=2",
                                   "passes.2.svd.compensate_batches=1", "passes.3.svd.multiple=1"]
                        + [f"passes.4.distill.{d}" for d in DISTILL]),
    "flux-dev-lite": ("flux", ["passes.1.remove_blocks.count.double=1"]
                      + [f"passes.2.distill.{d}" for d in DISTILL]),
    "flux-dev-deep": ("flux", ["passes.1.remove_blocks.count.double=1", "passes.1.remove_blocks.count.single=1",
                               "passes.2.svd.multiple=2", "passes.2.svd.compensate_batches=1",
                               "passes.3.svd.multiple=1", "passes.3.svd.compensate_batches=1"]
                      + [f"passes.4.distill.{d}" for d in DISTILL]),
    "flux-dev-modulation": ("flux", ["passes.0.svd.multiple=1", "passes.0.svd.compensate_batches=1"]),
    "flux-dev-stream": ("flux", ["passes.0.svd.multiple=1", "passes.1.svd.multiple=2"]),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_real_recipes_run_on_the_real_pipeline_classes(tmp_path, folders, name):
    """Each shipped PixArt-Σ / Flux.1-dev recipe, as written but for sizes, runs end to end with
    `dit-compress run` on a tiny teacher of the same diffusers classes, calibrating in its real
    pipeline, and writes a smaller model that loads back."""
    from pathlib import Path

    from compress.cli import main

    family, overrides = SHIPPED[name]
    size = ["calibration.height=32", "calibration.width=32"] if family == "flux" else []
    recipe = Path(__file__).parent.parent / "recipes" / f"{name}.yaml"
    args = ["run", str(recipe), "--teacher", str(folders[family]), "--out", str(tmp_path / "out"),
            "--run-dir", str(tmp_path / "run")]
    for item in CALIB + size + overrides:
        args += ["--set", item]
    assert main(args) == 0
    student = load_transformer(tmp_path / "out")
    teacher = load_teacher(str(folders[family]))
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())


@pytest.mark.parametrize("stream", ["false", "true"])
def test_eval_importance_and_load_pipeline_on_a_real_teacher(tmp_path, folders, capsys, stream):
    """After a bf16 export: `eval` measures the held-out error the run reported (computed in the
    teacher's dtype, on the held-out inputs the run sampled: nothing is sampled again), `load_pipeline` samples images with every part in the export's dtype,
    `importance RECIPE` scans the pipeline's samples, and `importance FOLDER` says to pass one.
    Streamed, eval and importance read the blocks as the run did (sampling included)."""
    import json

    from compress import load_pipeline
    from compress.cli import main

    text = RECIPE.replace("{teacher}", str(folders["pixart"])).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream=stream) + "export: {dtype: bfloat16}\n"
    (tmp_path / "r.yaml").write_text(text)
    out = _run(tmp_path, text, "bf16")
    reported = json.loads((out / "report.json").read_text())["stages"][-1]["relative_error"]
    capsys.readouterr()
    import compress.calib_pipeline as cp

    real = cp.capture
    cp.capture = lambda *a, **k: pytest.fail("eval sampled again instead of reading the run's inputs")
    try:
        assert main(["eval", str(out), "--json"]) == 0
    finally:
        cp.capture = real
    result = json.loads(capsys.readouterr().out)
    measured = result["pred_rel_error"]
    assert measured == pytest.approx(reported, rel=0.05) and measured > 0  # bf16 rounding apart
    assert result.get("streamed", False) == (stream == "true")
    pipe = load_pipeline(out, base=str(folders["pixart"]))
    assert {pipe.transformer.dtype, pipe.text_encoder.dtype, pipe.vae.dtype} == {torch.bfloat16}
    image = pipe("a photo of a cat", num_inference_steps=2).images[0]
    assert image.size == (256, 256)
    assert main(["importance", str(tmp_path / "r.yaml"), "--png", str(tmp_path / "i.png"),
                 "--json", str(tmp_path / "i.json")]) == 0
    assert len(json.loads((tmp_path / "i.json").read_text())["blocks"]) == 3
    assert main(["importance", str(folders["pixart"])]) == 2
    assert "pass a recipe whose teacher it is" in capsys.readouterr().err


def test_sampled_inputs_survive_an_interrupt_and_a_rerun(tmp_path, folders, monkeypatch):
    """Each sampling call's records are on disk as soon as it finishes: an interrupt during the
    sampling keeps the calls done, the resumed run samples only the rest, and a rerun of the
    recipe samples nothing; the weights are those of an uncached run."""
    import compress.calib_pipeline as cp

    text = RECIPE.replace("{teacher}", str(folders["pixart"])).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream="false")
    calls, real = [], cp.capture

    def counted(*a, **k):
        calls.append(a[2])  # the prompts of this call
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt("signal 15")
        return real(*a, **k)

    monkeypatch.setattr(cp, "capture", counted)
    interrupt = True
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    with pytest.raises(KeyboardInterrupt):
        Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    assert len(calls) == 3 and len(list((tmp_path / "run" / "inputs").rglob("*.pt"))) == 2
    interrupt = False
    out = Runner(recipe, tmp_path / "out", tmp_path / "run", resume=True).run()
    assert len(calls) == 3 + 3  # 5 prompts, one per call: the 3 not on disk
    again = Runner(recipe, tmp_path / "out2", tmp_path / "run").run()
    assert len(calls) == 6  # nothing sampled
    monkeypatch.setattr(cp, "capture", real)
    fresh = _run(tmp_path, text, "fresh")  # its own run dir: sampled from scratch
    a, b, f = (load_transformer(o).state_dict() for o in (out, again, fresh))
    assert a.keys() == f.keys() and all(torch.equal(a[k], f[k]) and torch.equal(b[k], f[k]) for k in a)


def test_a_rerun_that_batches_the_same_records_otherwise_samples_nothing(tmp_path, folders, monkeypatch):
    """Each call's records are named by what they depend on (teacher, prompts, seeds, sampler): a
    rerun that changes only how they are used (batch_size, spilling, held-out count) reads them back."""
    import compress.calib_pipeline as cp

    text = RECIPE.replace("{teacher}", str(folders["pixart"])).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream="false")
    calls, real = [], cp.capture
    monkeypatch.setattr(cp, "capture", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    Runner(parse_recipe(text, str(tmp_path / "r.yaml")), tmp_path / "out", tmp_path / "run").run()
    assert len(calls) == 5
    other = text.replace("batch_size: 4", "batch_size: 2, spill_activations: true")
    Runner(parse_recipe(other, str(tmp_path / "r.yaml")), tmp_path / "out2", tmp_path / "run").run()
    assert len(calls) == 5  # nothing sampled again


def test_a_teacher_without_its_pipeline_names_calibration_pipeline(tmp_path, folders):
    """A transformer folder (or single file) as the teacher has no pipeline to sample in: one line
    before any compute naming calibration.pipeline; set, the transformer samples in that pipeline."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    transformer = str(folders["pixart"] / "transformer")
    teacher = load_teacher(transformer)
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], sample_steps=2, timesteps=1)
    with pytest.raises(UserError, match="is a folder without model_index.json; set calibration.pipeline"):
        PipelineSource("pixart", calib, teacher, transformer)
    calib.pipeline = str(folders["pixart"])
    [record] = PipelineSource("pixart", calib, teacher, calib.pipeline).calibration()
    assert record["hidden_states"].shape[0] == 2


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_pipeline_records_are_shuffled_into_batches_of_batch_size_rows(folders, family):
    """One record per transformer call (2 rows for PixArt-Σ's CFG, 1 for Flux) joined into
    batches of calibration.batch_size rows, shuffled so the first batches mix prompts and steps;
    every row is kept once, and Flux's shared img_ids / txt_ids stay as they are."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog", "a fox", "a car", "a red horse"],
                              sample_steps=3, timesteps=3, batch_size=4, guidance_scale=3.5,
                              **({"height": 32, "width": 32} if family == "flux" else {}))
    source = PipelineSource(family, calib, load_teacher(str(folders[family])), str(folders[family]))
    raw = source._run(source.prompts[:4], calib.seed)  # what calibration() samples, before batching
    batches = source.calibration()
    assert len(raw) == 12 and [b["hidden_states"].shape[0] for b in batches] == [4] * (len(raw) * len(
        raw[0]["hidden_states"]) // 4)
    flat = lambda recs: sorted(tuple(x.flatten()[:6].tolist()) for r in recs for x in r["hidden_states"])  # noqa: E731
    assert flat(batches) == flat(raw)
    rows = [x for r in raw for x in r["hidden_states"]]
    origin = [next(i for i, y in enumerate(rows) if torch.equal(x, y)) for b in batches for x in b["hidden_states"]]
    per = len(raw[0]["hidden_states"])
    prompts_first = {origin[j] // per // 3 for j in range(4)}  # 3 records (steps) per prompt
    assert origin != sorted(origin) and len(prompts_first) > 1  # shuffled: prompts mixed from the start
    if family == "flux":
        assert torch.equal(batches[0]["img_ids"], raw[0]["img_ids"]) and batches[0]["guidance"].shape == (4,)
    else:
        assert batches[0]["encoder_attention_mask"].shape[0] == 4


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_teacher_samples_are_the_pipelines_own(folders, family):
    """distill's teacher samples, drawn with the pipeline's scheduler config, equal what the real
    pipeline samples from the same noise and text embeddings (no CFG; Flux at its guidance input),
    including FluxPipeline's resolution-dependent σ shift (FLUX.1-dev's scheduler config)."""
    from compress.calib_pipeline import PipelineSource
    from compress.distill_data import cond_of, sample_latents
    from compress.recipe import CalibrationConfig

    size = {"height": 32, "width": 32} if family == "flux" else {}
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], sample_steps=2, timesteps=1,
                              cfg_branches=False, guidance_scale=3.5, **size)
    teacher = load_teacher(str(folders[family]))
    source = PipelineSource(family, calib, teacher, str(folders[family]))
    record = source._run(["a photo of a cat"], 0)[0]  # the pipeline's own transformer inputs
    cond, shape = cond_of(record), tuple(record["hidden_states"].shape)
    config = source.scheduler_config()
    assert config["_class_name"] == ("FlowMatchEulerDiscreteScheduler" if family == "flux"
                                     else "DPMSolverMultistepScheduler")
    ours = sample_latents(get_adapter(teacher), teacher, cond, shape, 4, torch.Generator().manual_seed(3),
                          "cpu", config)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    pipe = load_pipeline_for(teacher, str(folders[family]))
    if family == "flux":
        theirs = pipe(prompt_embeds=cond["encoder_hidden_states"], pooled_prompt_embeds=cond["pooled_projections"],
                      latents=noise, num_inference_steps=4, guidance_scale=3.5, output_type="latent", **size).images
        linear = sample_latents(get_adapter(teacher), teacher, cond, shape, 4, torch.Generator().manual_seed(3), "cpu")
        assert not torch.allclose(linear, theirs, atol=1e-3)  # unshifted σ would not be the pipeline's
    else:
        theirs = pipe(prompt_embeds=cond["encoder_hidden_states"], prompt_attention_mask=cond["encoder_attention_mask"],
                      negative_prompt=None, latents=noise, num_inference_steps=4, guidance_scale=1.0,
                      output_type="latent").images
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)


def test_guided_teacher_samples_are_the_pipelines_own_at_its_guidance(folders):
    """distill.guidance_scale: PixArt-Σ teacher samples guided against the negative prompt's row
    of the calibration records equal PixArtSigmaPipeline's own samples at that guidance (it encodes
    the empty negative prompt itself); unguided ones differ. Without CFG branches in the calibration
    there is no negative row, and asking for it says what to set."""
    from compress.calib_pipeline import PipelineSource
    from compress.distill_data import cond_of, sample_latents
    from compress.recipe import CalibrationConfig

    teacher = load_teacher(str(folders["pixart"]))
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], sample_steps=2, timesteps=1,
                              guidance_scale=4.5)
    source = PipelineSource("pixart", calib, teacher, str(folders["pixart"]))
    source.calibration()
    uncond = source.unconditional()
    assert uncond["encoder_hidden_states"].shape[0] == 1
    record = source._run(["a photo of a cat"], 0)[0]  # rows [negative; prompt]
    cond = {k: (v[1:] if torch.is_tensor(v) and v.ndim else v) for k, v in cond_of(record).items()}
    shape = (1,) + tuple(record["hidden_states"].shape[1:])
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    ours = sample_latents(get_adapter(teacher), teacher, cond, shape, 4, gen(), "cpu", source.scheduler_config(),
                          4.5, uncond)
    plain = sample_latents(get_adapter(teacher), teacher, cond, shape, 4, gen(), "cpu", source.scheduler_config())
    pipe = load_pipeline_for(teacher, str(folders["pixart"]))
    theirs = pipe("a photo of a cat", latents=torch.randn(shape, generator=gen()), num_inference_steps=4,
                  guidance_scale=4.5, output_type="latent").images
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, ours, atol=1e-3)
    unguided = PipelineSource("pixart", CalibrationConfig(source="pipeline", prompts=["a cat"], sample_steps=2,
                                                          timesteps=1, cfg_branches=False), teacher,
                              str(folders["pixart"]))
    unguided.calibration()
    with pytest.raises(UserError, match="cfg_branches: true"):
        unguided.unconditional()


def test_calibration_heldout_sets_how_many_prompts_a_pipeline_source_holds_out(folders, monkeypatch):
    """calibration.heldout counts held-out inputs for every source: a pipeline source holds out its
    last prompts, enough of them for that many (one input per kept step and CFG branch); null keeps
    20% of the prompts. The plan's row count follows the same split."""
    from compress.calib_footprint import calibration_rows
    from compress.calib_pipeline import PipelineSource, calibration_prompts
    from compress.recipe import CalibrationConfig

    prompts = [f"prompt {i}" for i in range(10)]
    calib = lambda **kw: CalibrationConfig(source="pipeline", prompts=prompts, sample_steps=6, timesteps=4, **kw)  # noqa: E731
    assert calibration_prompts(10, calib(), False) == 8 and calibration_prompts(1, calib(heldout=5), False) == 1
    assert calibration_prompts(10, calib(heldout=8), False) == 9  # 8 inputs: one prompt of 4 steps x 2 branches
    assert calibration_prompts(10, calib(heldout=9), False) == 8
    assert calibration_prompts(10, calib(heldout=9), True) == 7  # guidance input: one branch, 4 per prompt
    assert calibration_prompts(10, calib(heldout=1000), False) == 1  # at least one calibrates
    teacher = load_teacher(str(folders["pixart"]))
    for kw, held in (({}, 2), ({"heldout": 20}, 3)):
        source = PipelineSource("pixart", calib(**kw), teacher, str(folders["pixart"]))
        seen = []
        monkeypatch.setattr(source, "_run", lambda ps, seed, what="calibration": seen.append(ps) or [])
        monkeypatch.setattr("compress.calib_pipeline.rebatch", lambda records, size, seed: records)
        source.calibration(), source.heldout()
        assert seen == [prompts[:10 - held], prompts[10 - held:]]
        rows = calibration_rows(type("R", (), {"calibration": calib(**kw), "model": "pixart"}), "pipeline", teacher.config, 10)
        assert rows == (10 - held) * 4 * 2


def test_guidance_scale_1_runs_one_branch_and_counts_one(folders):
    """At guidance_scale 1 the pipeline turns classifier-free guidance off (one branch whatever
    cfg_branches says): rows per prompt, the held-out split and the plan's rows count one."""
    from compress.calib_footprint import calibration_rows
    from compress.calib_pipeline import PipelineSource, calibration_prompts, rows_per_prompt
    from compress.recipe import CalibrationConfig

    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog", "a fox"], sample_steps=3,
                              timesteps=2, guidance_scale=1.0, heldout=2, batch_size=64)
    assert rows_per_prompt(calib, False) == 2 and calibration_prompts(3, calib, False) == 2
    teacher = load_teacher(str(folders["pixart"]))
    batches = PipelineSource("pixart", calib, teacher, str(folders["pixart"])).calibration()
    held = sum(b["hidden_states"].shape[0] for b in batches)  # (B, C, H, W)
    assert held == calibration_rows(type("R", (), {"calibration": calib, "model": "pixart"}), "pipeline", teacher.config, 3) == 4


def test_flux_without_guidance_embeds_has_no_unconditional_row(tmp_path):
    """FLUX.1-schnell's records (no guidance input, no CFG branch in FluxPipeline) hold only prompt
    rows: teacher samples guided against an empty-prompt row are refused, not guided against the
    first prompt's row."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    folder = flux_pipeline(tmp_path / "pipe", guidance_embeds=False)
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog", "a fox"], sample_steps=2,
                              timesteps=1, guidance_scale=3.5, prompts_per_call=2, height=32, width=32)
    source = PipelineSource("flux", calib, load_teacher(str(folder)), str(folder))
    [batch] = source.calibration()
    assert batch["hidden_states"].shape[0] == 2 and batch.get("guidance") is None  # 2 calibrating prompts, a row each
    with pytest.raises(UserError, match="FluxPipeline runs no CFG branch"):
        source.unconditional()


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b"  \n\t\n\n", "is empty"),
    (b"a red fox\n\xc8\xab\xe6\xbb\x00\xff\n", "p.txt:2: not UTF-8 text (byte 0xe6)"),
    (b"a red fox\x00\x01\x02\n", "a binary file"),
])
def test_prompt_file_that_is_not_prompts(tmp_path, content, words):
    """An empty, blank, non-UTF-8 or binary prompt_file is a one-line UserError saying which (a
    UnicodeDecodeError traceback or 'needs calibration.prompts' before)."""
    from compress.recipe import CalibrationConfig

    (tmp_path / "p.txt").write_bytes(content)
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt")
    with pytest.raises(UserError, match=r"^calibration\.prompt_file p\.txt") as e:
        read_prompts(calib, tmp_path)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("num_prompts, said", [(10, "the first 10 of the 30 prompts"), (64, "only 30 prompts"),
                                               (30, None), (None, None)])
def test_num_prompts_that_cuts_a_prompt_file_says_so(tmp_path, capsys, num_prompts, said):
    from compress.recipe import CalibrationConfig

    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(30)))
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt", num_prompts=num_prompts)
    assert len(read_prompts(calib, tmp_path)) == min(num_prompts or 30, 30)
    err = " ".join(capsys.readouterr().err.split())
    assert (said in err) if said else not err
