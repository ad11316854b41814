"""`dit-compress run` calibrating in the real diffusers pipelines (tests/pipelines.py): resident and
streamed alike, every shipped PixArt-Σ / Flux.1-dev recipe, eval / importance / load_pipeline after
it, and sampled inputs kept on disk across an interrupt and reruns."""

import pytest
import torch

from compress.io import load_teacher
from compress.io_output import load_transformer
from compress.recipe import parse_recipe
from compress.runner import Runner
from tests.pipelines import RECIPE, SIZE, pipeline_folders
from tests.runner_helpers import run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return pipeline_folders(tmp_path_factory.mktemp("pipelines"))


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_run_compresses_a_pipeline_folder_resident_and_streamed(tmp_path, folders, family):
    text = RECIPE.replace("{teacher}", str(folders[family])).replace("{family}", family) \
        .replace("{size}", SIZE[family])
    a = load_transformer(run_recipe(tmp_path, text.format(stream="false"), "resident"))
    b = load_transformer(run_recipe(tmp_path, text.format(stream="true"), "streamed"))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and any(k.endswith(".down.weight") for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    teacher = load_teacher(str(folders[family]))
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in teacher.parameters())


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
    out = run_recipe(tmp_path, text, "bf16")
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
    fresh = run_recipe(tmp_path, text, "fresh")  # its own run dir: sampled from scratch
    a, b, f = (load_transformer(o).state_dict() for o in (out, again, fresh))
    assert a.keys() == f.keys() and all(torch.equal(a[k], f[k]) and torch.equal(b[k], f[k]) for k in a)


def test_a_rerun_that_batches_the_same_records_otherwise_samples_nothing(tmp_path, folders, monkeypatch):
    """Each call's records are named by what they depend on (teacher, prompts, seeds, sampler): a
    rerun that changes only how they are used (batch_size, spilling) reads them back. A held-out
    count that moves the cut between calibration and held-out prompts is not such a change: a
    prompt moved across it is sampled again (calibration prompt i draws its noise from seed + i,
    held-out prompt i from 10000 + i, whatever the seed)."""
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



def _same(a, b) -> bool:
    sa, sb = load_transformer(a).state_dict(), load_transformer(b).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _prompt_file_recipe(tmp_path, folders):
    """(a factory of RECIPE read from tmp_path/r.yaml with prompt_file: p.txt, the file)."""
    text = RECIPE.replace("{teacher}", str(folders["pixart"])).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream="false") \
        .replace("prompts: [a photo of a cat, a red car, a horse, a fox, a dog]", "prompt_file: p.txt")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a cat\na red car\na horse\na fox\na dog\n")

    def recipe():  # each run reads p.txt anew
        return parse_recipe(text, str(tmp_path / "r.yaml"))
    return recipe, prompts


def test_a_rerun_after_the_prompt_file_changed_calibrates_on_its_new_lines(tmp_path, folders):
    """The calibration caches are keyed by the prompts read, not prompt_file's path: a rerun into
    the same run folder after the file changed gives what a fresh run folder gives."""
    recipe, prompts = _prompt_file_recipe(tmp_path, folders)
    old = Runner(recipe(), tmp_path / "old", tmp_path / "run").run()
    prompts.write_text("an astronaut riding a horse\nthe quick brown fox\na street\na lazy dog\na digit\n")
    again = Runner(recipe(), tmp_path / "again", tmp_path / "run").run()
    fresh = Runner(recipe(), tmp_path / "fresh", tmp_path / "run-fresh").run()
    assert _same(again, fresh) and not _same(old, fresh)


def test_resume_after_the_prompt_file_changed_says_so(tmp_path, folders):
    """--resume of stages calibrated on other lines of the prompt file refuses, as for an edited
    recipe, instead of keeping them (the output's recipe.yaml would inline the new lines beside
    weights calibrated on the old: it would not round-trip)."""
    from compress.errors import UserError

    recipe, prompts = _prompt_file_recipe(tmp_path, folders)
    Runner(recipe(), tmp_path / "old", tmp_path / "run").run()
    prompts.write_text("a photo of a cat\na red car\na horse\na fox\na cow\n")
    with pytest.raises(UserError, match="--resume: the calibration prompts changed .*prompt_file"):
        Runner(recipe(), tmp_path / "resumed", tmp_path / "run", resume=True).run()
    assert not (tmp_path / "resumed").exists()


def test_edited_pipeline_parts_are_sampled_again_and_refused_by_resume(tmp_path, folders):
    """The pipeline's parts but the transformer (here its scheduler config) key the sampled inputs
    and the statistics: a rerun into the same run folder after one changed gives what a fresh run
    folder gives, and --resume of stages sampled before a change names the file that changed."""
    import json
    import shutil

    from compress.errors import UserError

    pipe = shutil.copytree(folders["pixart"], tmp_path / "pipe")
    text = RECIPE.replace("{teacher}", str(pipe)).replace("{family}", "pixart") \
        .replace("{size}", "").format(stream="false")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    old = Runner(recipe, tmp_path / "old", tmp_path / "run").run()
    config = pipe / "scheduler" / "scheduler_config.json"
    plain = config.read_text()
    config.write_text(json.dumps(dict(json.loads(plain), use_karras_sigmas=True)))
    again = Runner(recipe, tmp_path / "again", tmp_path / "run").run()
    fresh = Runner(recipe, tmp_path / "fresh", tmp_path / "run-fresh").run()
    assert _same(again, fresh) and not _same(old, fresh)
    config.write_text(plain)  # the stages in run/ are of the edited scheduler now
    with pytest.raises(UserError, match="--resume: the calibration pipeline changed .*scheduler_config.json"):
        Runner(recipe, tmp_path / "resumed", tmp_path / "run", resume=True).run()
