"""What the calibration caches are keyed by and what --resume compares (compress/runner_resume.py)."""

import json
from pathlib import Path

import pytest
import torch

from compress.io_output import load_transformer
from compress.recipe import parse_recipe
from compress.runner import Runner, build_passes
from compress.runner_resume import fingerprint, inputs_change, recipe_changes
from compress.runner_stream import StreamedModels
from tests.runner_helpers import run_recipe, streamed_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def test_spilling_activations_keeps_the_calibration_caches():
    """Where activations are kept changes no statistic: the caches' fingerprint leaves it out."""
    base = "model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [mlp]}\n"
    spilled = parse_recipe(base, "r.yaml", ["calibration.spill_activations=true"])
    other = parse_recipe(base, "r.yaml", ["calibration.batch_size=7"])
    assert fingerprint("toy:pixart", "w", spilled) == fingerprint("toy:pixart", "w", parse_recipe(base, "r.yaml"))
    assert fingerprint("toy:pixart", "w", other) != fingerprint("toy:pixart", "w", spilled)


def test_resume_allows_changes_that_cannot_change_the_result(tmp_path):
    """How far this run goes, progress bars, checkpoint cadence, Fisher sweep sizes: --resume may
    change them; anything else it names."""
    base = ("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [mlp], ratio: 0.5}\n"
            "  - distill: {steps: 4, max_steps_this_run: 1}\n")
    before = parse_recipe(base, "r.yaml")
    passes = build_passes(before)
    for edit in ("passes.1.distill.max_steps_this_run=null", "passes.1.distill.checkpoint_every=1",
                 "passes.0.svd.progress=false", "passes.0.svd.fisher_memory_gb=auto",
                 "passes.0.svd.gradient_checkpointing=true", "passes.1.distill.gradient_checkpointing=true",
                 "calibration.spill_activations=true"):
        assert recipe_changes(before.raw, parse_recipe(base, "r.yaml", [edit]).raw, passes) == [], edit
    now = parse_recipe(base, "r.yaml", ["passes.1.distill.steps=5", "passes.0.svd.ratio=0.4"])
    assert recipe_changes(before.raw, now.raw, passes) == ["passes.0.svd.ratio", "passes.1.distill.steps"]


@pytest.mark.parametrize("now, saved", [
    ("allocation: energy, energy: 0.95", {"ratio": 0.4}),
    ("ratio: 0.5", {"trust_region": None, "sensitivity": False}),  # uniform reads neither
    ("allocation: per_role, ratios: {mlp: 0.3}", {"ratio": 0.2})])
def test_resume_keeps_stages_whose_only_change_is_a_key_their_allocation_never_read(now, saved):
    """An older run's recipe held a key its allocation ignores (ratio under energy), which the recipe
    now refuses; once the user removed it, --resume called the saved stage 'of another recipe: not
    kept' (passes.0.svd.ratio) though no result of it depended on that key."""
    current = parse_recipe(f"model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {{targets: [mlp], {now}}}\n",
                           "r.yaml")
    older = json.loads(json.dumps(current.raw))
    older["passes"][0]["svd"].update(saved)  # what the older run's stages saved
    passes = build_passes(current)
    assert recipe_changes(older, current.raw, passes) == []
    assert recipe_changes(older, current.raw, passes, done=1) == []
    older["passes"][0]["svd"]["multiple"] = 8  # a key it reads is still a change
    assert recipe_changes(older, current.raw, passes, done=1) == ["passes.0.svd.multiple"]


def test_a_rerun_with_another_first_pass_reads_no_stale_stats(tmp_path):
    """Pass 2's Grams depend on the values pass 1 wrote to the streamed blocks (on meta): a rerun
    in the same run dir whose pass 1 factorizes differently (same ranks) must not read pass 2's
    cached stats of the first run."""
    text = streamed_teacher(tmp_path, "pixart").replace(
        "  - svd: {{targets: [modulation], fisher: none, ranks: {{modulation: 4}}}}\n",
        "  - svd: {{targets: [mlp], fisher: block, ratio: 0.5, multiple: 2}}\n")
    text = text.replace("[attention, mlp]", "[attention]").format(stream="true")
    first = run_recipe(tmp_path, text, "a")
    recipe = parse_recipe(text.replace("multiple: 2}", "multiple: 2, method: svd}", 1), str(tmp_path / "b.yaml"))
    second = Runner(recipe, tmp_path / "out-b", tmp_path / "run-a").run()  # first run's run dir
    fresh = run_recipe(tmp_path, text.replace("multiple: 2}", "multiple: 2, method: svd}", 1), "c")
    assert json.loads((second / "report.json").read_text())["svd"]["cache_hits"] == []
    b, c = load_transformer(second).state_dict(), load_transformer(fresh).state_dict()
    assert all(torch.equal(b[k], c[k]) for k in c) and first.exists()


def test_the_streamed_fingerprint_sees_a_tensor_in_the_middle_of_a_big_shard(tmp_path):
    """A fine-tune that changes only tensors between a shard's first and last MiB (a merged LoRA on
    some layers) is another teacher: resume and the caches must not take it for the first one."""
    import hashlib

    from safetensors.torch import save_file

    def fingerprint(middle):  # (3 x 1.2 MiB) in one file
        tensors = {"a": torch.zeros(300_000), "b": middle, "c": torch.zeros(300_000)}
        save_file(tensors, str(tmp_path / "w.safetensors"))
        models = StreamedModels(None)
        models.files = dict.fromkeys(tensors, tmp_path / "w.safetensors")
        h = hashlib.sha256()
        models.fingerprint(None, h)
        return h.hexdigest()

    assert fingerprint(torch.ones(300_000)) != fingerprint(torch.full((300_000,), 2.0))


def _middle_rows_scaled(state: dict) -> dict:
    """A fine-tune of a few heads: the middle rows of every big matrix scaled (not its first or last 300)."""
    out = {k: v.clone() for k, v in state.items()}
    for v in out.values():
        if v.ndim == 2 and v.shape[0] > 600:
            v[300:-300] *= 1.05
    return out


@pytest.mark.parametrize("streamed", [False, True])
def test_the_weights_checksum_sees_rows_in_the_middle_of_every_tensor(tmp_path, streamed):
    """Only middle rows changed (a tester's --resume then continued silently from the old teacher's
    work): resident and streamed checksums both differ (a 4 MiB tensor: more than the first values,
    the first and last MiB and rows the older checksums read); the same weights give the same one."""
    from safetensors.torch import save_file

    from compress.runner_teacher_id import weights_checksum
    from compress.runner_stream import ResidentModels

    torch.manual_seed(0)
    teacher = torch.nn.Linear(1024, 1024)  # (1024, 1024) float32: 4 MiB
    edited = _middle_rows_scaled(teacher.state_dict())

    def checksum(state, name):
        if not streamed:
            model = torch.nn.Linear(1024, 1024)
            model.load_state_dict(state)
            return weights_checksum(model, ResidentModels(tmp_path))
        (tmp_path / name).mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name / "w.safetensors"))
        models = StreamedModels(None)
        models.files = dict.fromkeys(state, tmp_path / name / "w.safetensors")
        return weights_checksum(None, models)

    first = checksum(teacher.state_dict(), "a")
    assert first == checksum(teacher.state_dict(), "b")
    assert first != checksum(edited, "c")


def test_the_fingerprint_keys_the_prompts_read_and_the_pipelines_parts():
    """A pipeline source's `inputs_identity` (the prompts a prompt_file held, the pipeline's parts but
    the transformer) enters the fingerprint: the recipe names them, it does not hold them. Without
    one (toy, synthetic) the fingerprint is the one older runs gave."""
    recipe = parse_recipe("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [mlp]}\n", "r.yaml")
    one = {"prompts": "a", "pipeline": {"scheduler/scheduler_config.json": {"bytes": 1, "sha256": "x"}}}
    lines = dict(one, prompts="b")
    scheduler = dict(one, pipeline={"scheduler/scheduler_config.json": {"bytes": 1, "sha256": "y"}})
    prints = {fingerprint("toy:pixart", "w", recipe, i) for i in (None, one, lines, scheduler)}
    assert len(prints) == 4 and fingerprint("toy:pixart", "w", recipe, dict(one)) in prints


def test_inputs_change_names_the_prompts_or_the_pipeline_file_that_changed():
    part = {"bytes": 1, "sha256": "x"}
    was = {"prompts": "a", "pipeline": {"model_index.json": part, "vae/config.json": part}}
    assert inputs_change(was, dict(was), "/p") is None
    assert "calibration prompts changed" in inputs_change(was, dict(was, prompts="b"), "/p")
    # named by the keys the recipe reads them from (calib_prompts.prompts_in_words); not given, none are
    # named: a recipe of inline prompts read 'or the lines calibration.prompt_file holds'
    assert inputs_change(was, dict(was, prompts="b"), "/p") == "the calibration prompts changed"
    assert inputs_change(was, dict(was, prompts="b"), "/p", "calibration.prompts") == (
        "the calibration prompts changed (calibration.prompts)")
    edited = dict(was, pipeline={"model_index.json": part, "vae/config.json": dict(part, sha256="y")})
    assert inputs_change(was, edited, "/p") == "the calibration pipeline changed (/p/vae/config.json differs)"
    gone = dict(was, pipeline={"vae/config.json": part})
    assert inputs_change(was, gone, "/p") == "the calibration pipeline changed (/p/model_index.json is gone)"
    assert inputs_change(gone, was, "/p") == "the calibration pipeline changed (/p/model_index.json is new)"


def test_one_teacher_spelt_two_ways_keys_the_same_caches(tmp_path):
    """The fingerprint hashed the teacher string as typed: `teacher` and `teacher/` (tab completion)
    named one folder, which --resume's teacher check took as the same, but the calibration caches
    and a teacher-samples distill checkpoint were keyed apart (the checkpoint then refused)."""
    text = streamed_teacher(tmp_path, "pixart").format(stream="false")
    run_recipe(tmp_path, text, "a")
    slashed = text.replace(str(tmp_path / "teacher"), str(tmp_path / "teacher") + "/")
    assert slashed != text
    again = Runner(parse_recipe(slashed, str(tmp_path / "b.yaml")), tmp_path / "out-b", tmp_path / "run-a").run()
    assert json.loads((again / "report.json").read_text())["svd"]["cache_hits"]


@pytest.fixture
def finished(tmp_path, capsys):
    """A function: (run arguments) of a finished run of `passes` (SIMPLE's, of a tiny PixArt teacher)."""
    from compress.cli import main
    from tests.conftest import tiny_pixart
    from tests.runner_helpers import SIMPLE

    tiny_pixart().save_pretrained(tmp_path / "teacher")

    def run(passes: str) -> list[str]:
        (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=passes))
        args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
        assert main(args) == 0
        capsys.readouterr()
        return args
    return run


def _said(capsys) -> str:
    got = capsys.readouterr()
    return " ".join((got.out + got.err).split())


SVD_PASS = "  - svd: {targets: [attention, mlp], ratio: 0.5, multiple: 2}\n"


@pytest.mark.parametrize("older", [False, True])
def test_resume_keeps_no_svd_stage_measured_under_other_statistics(finished, monkeypatch, capsys, older):
    """A finished run's svd stage was kept by --resume --overwrite after STATS_VERSION changed, though its
    factors were made of statistics the new version measures otherwise (the caches are keyed by it, the
    stages were not): refused as a stage of another calibration is, with no change to undo; the same for a
    stage of an older dit-compress, which records no version (`older`: its run's record says which)."""
    from compress.cli import main
    import compress.calib_stats as calib_stats

    args = finished(SVD_PASS)
    run_dir = args[-1]
    if older:  # as a dit-compress before stages recorded it wrote it
        state = f"{run_dir}/stages/0-svd/state.json"
        with open(state) as f:
            saved = json.load(f)
        assert saved.pop("statistics") == calib_stats.STATS_VERSION
        with open(state, "w") as f:
            json.dump(saved, f)
    was = calib_stats.STATS_VERSION
    monkeypatch.setattr(calib_stats, "STATS_VERSION", was + 1)
    assert main([*args, "--resume", "--overwrite"]) == 2
    said = _said(capsys)
    assert said.endswith(f"--resume: {run_dir} holds passes measured with other statistics (dit-compress's statistics "
                         f"{was}, now {was + 1}), which this run does not read back: rerun with --restart to discard "
                         "them, or choose another --run-dir"), said
    assert main([*args, "--overwrite"]) == 0  # a plain rerun starts over, with no note that --resume keeps it
    assert "pass 1/1: svd" in _said(capsys)  # (no note that --resume would keep it)
    assert main([*args, "--resume", "--overwrite"]) == 0  # its stage, of this version: resumed
    assert "its only pass (svd) was done: writing the output again" in _said(capsys)


def test_resume_keeps_the_passes_before_an_svd_stage_of_other_statistics(finished, monkeypatch, capsys):
    """The stage of a pass that measures no block statistics, before an svd pass, is kept across another
    STATS_VERSION; the svd pass runs again."""
    from compress.cli import main
    import compress.calib_stats as calib_stats

    args = finished("  - remove_blocks: {blocks: {blocks: [0]}}\n" + SVD_PASS)
    was = calib_stats.STATS_VERSION
    monkeypatch.setattr(calib_stats, "STATS_VERSION", was + 1)
    assert main([*args, "--resume", "--overwrite"]) == 0
    said = _said(capsys)
    assert "resuming after pass 1/2 (remove_blocks)" in said, said
    assert (f"the saved pass 2 was measured with other statistics (dit-compress's statistics {was}, now {was + 1}): "
            "not kept") in said, said
    assert "pass 2/2: svd" in said, said


def test_a_rerun_of_a_run_stopped_after_an_svd_stage_of_other_statistics_says_so(tmp_path, monkeypatch, capsys):
    """A plain rerun of a run stopped after its svd pass was saved, STATS_VERSION changed since, said it
    'holds an interrupted run of this recipe (1 of 2 passes done): add --resume to continue', which --resume
    then refuses; now it names the statistics, as --resume does."""
    from compress.cli import main
    from compress.passes.remove_blocks import RemoveBlocksPass
    from compress.runner_resume import stage_dirs
    from tests.conftest import tiny_pixart
    from tests.runner_helpers import SIMPLE
    import compress.calib_stats as calib_stats

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    passes = SVD_PASS + "  - remove_blocks: {blocks: {blocks: [0]}}\n"
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=passes))
    run_dir = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run_dir)]

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(RemoveBlocksPass, "run", interrupt)
        assert main(args) == 130
    assert [i for i, _ in stage_dirs(run_dir)] == [0]
    was = calib_stats.STATS_VERSION
    monkeypatch.setattr(calib_stats, "STATS_VERSION", was + 1)
    capsys.readouterr()
    assert main(args) == 2
    said = _said(capsys)
    assert (f"{run_dir} holds an interrupted run measured with other statistics (dit-compress's statistics {was}, "
            f"now {was + 1}; 1 of 2 passes done") in said, said
    assert said.endswith("add --restart to discard it and start over, or choose another --run-dir"), said
    assert "add --resume to continue" not in said


def _unrecorded_statistics(run_dir) -> None:
    """The run folder as a dit-compress before stages recorded their statistics version, and before its
    run record's calibration did ('0.1.0 (statistics 3)'), wrote it."""
    from compress.runner_measured import CALIBRATED

    for state in Path(run_dir).glob("stages/*/state.json"):
        saved = json.loads(state.read_text())
        saved.pop("statistics")
        state.write_text(json.dumps(saved))
    record_file = Path(run_dir) / "stages" / "run.json"
    record = json.loads(record_file.read_text())
    record[CALIBRATED]["version"] = record[CALIBRATED]["version"].split(" (statistics")[0]
    record_file.write_text(json.dumps(record))


def test_resume_keeps_no_svd_stage_whose_statistics_nothing_records(finished, capsys):
    """A stage of an older dit-compress whose run record does not say its statistics version either was
    kept unchecked ('its only pass (svd) was done: writing the output again'), though it may have been made
    of statistics this version measures otherwise: said and not kept, the passes before it kept."""
    from compress.cli import main
    import compress.calib_stats as calib_stats

    args = finished("  - remove_blocks: {blocks: {blocks: [0]}}\n" + SVD_PASS)
    _unrecorded_statistics(args[-1])
    assert main([*args, "--resume", "--overwrite"]) == 0
    said = _said(capsys)
    assert "resuming after pass 1/2 (remove_blocks)" in said, said
    assert ("the saved pass 2 was measured with other statistics (dit-compress's statistics not recorded by the older "
            f"dit-compress that wrote it, now {calib_stats.STATS_VERSION}): not kept") in said, said
    assert "pass 2/2: svd" in said, said


def test_resume_keeps_the_stages_of_another_dit_compress_version_of_the_same_statistics(finished, monkeypatch,
                                                                                       capsys):
    """A new release alone (compress.__version__, the statistics version as it was) keeps the stages, as
    RUNS.md says: they hold what the recipe and the statistics determine (not a behaviour change: this
    pins the decision)."""
    import compress
    from compress.cli import main

    args = finished(SVD_PASS)
    monkeypatch.setattr(compress, "__version__", compress.__version__ + ".post1")
    assert main([*args, "--resume", "--overwrite"]) == 0
    assert "its only pass (svd) was done: writing the output again" in _said(capsys)


def test_resume_compares_the_recipes_teacher_as_the_teacher_not_as_written(tmp_path, monkeypatch, capsys):
    """The recipe's `teacher:` named relatively, by its absolute path (as an output's recipe.yaml names the one
    the run read) or with a trailing slash is one teacher, which runner_teacher_id compares (its config by what it
    holds, its weights by their checksum), as TEACHER_APART's teacher_config is: 'run OUT/recipe.yaml --resume'
    of the run folder that made OUT was refused '--resume: the recipe changed since RUN was written (teacher)'.
    A teacher of other weights named there is still refused, as the teacher that changed."""
    from compress.cli import main
    from tests.conftest import tiny_pixart
    from tests.runner_helpers import SIMPLE

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    tiny_pixart(seed=1).save_pretrained(tmp_path / "other")
    monkeypatch.chdir(tmp_path)
    modulation = "  - svd: {targets: [modulation], fisher: none, ranks: {modulation: 4}}\n"
    recipe = parse_recipe(SIMPLE.format(teacher="teacher", passes=SVD_PASS + modulation), "r.yaml")
    for spelt in (str(tmp_path / "teacher"), "teacher/"):
        now = parse_recipe(SIMPLE.format(teacher=spelt, passes=SVD_PASS + modulation), "r.yaml")
        assert recipe_changes(recipe.raw, now.raw, build_passes(now), 1) == [], spelt
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher="teacher", passes=SVD_PASS + modulation))
    assert main(["run", "r.yaml", "--out", "out", "--run-dir", "run"]) == 0
    assert f"\nteacher: {tmp_path / 'teacher'}\n" in (tmp_path / "out" / "recipe.yaml").read_text()
    capsys.readouterr()
    again = ["--run-dir", "run", "--resume", "--set", "passes.1.svd.ranks.modulation=2"]
    assert main(["run", "out/recipe.yaml", "--out", "again", *again]) == 0
    assert "resuming after pass 1/2 (svd)" in _said(capsys)
    (tmp_path / "o.yaml").write_text(SIMPLE.format(teacher="other", passes=SVD_PASS + modulation))
    assert main(["run", "o.yaml", "--out", "third", *again]) == 2
    assert "--resume: the teacher changed since run was written" in _said(capsys)
