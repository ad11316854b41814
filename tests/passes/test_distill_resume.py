"""Whether a distill checkpoint may be resumed (compress.passes.distill_resume)."""

from pathlib import Path

import pytest
import torch

from compress.errors import UserError


def test_a_checkpoint_that_records_no_settings_says_what_may_differ():
    """An older dit-compress's meta.json has only the fingerprint and the process count."""
    from compress.passes.distill_resume import setting_changes

    assert setting_changes({"processes": 2}, {"lr": 1e-3}) == ("config, seed, block map, process count: 2, or "
                                                               "another incoming student; this checkpoint does not record which")
    then = {"lr": 1e-3, "seed": 0, "processes": 1, "block_map": {"blocks": [0, 1]}, "student": "a"}
    now = dict(then, seed=1, processes=2, block_map={"blocks": [0, 2]})
    assert setting_changes({"settings": then}, now) == ("block map; process count: 1 in the checkpoint, 2 now; "
                                                        "calibration.seed: 0 in the checkpoint, 1 now")



_RECIPE = """model: pixart
teacher: toy:pixart
calibration: {{source: pipeline, {prompts}, sample_steps: 2, timesteps: 1, batch_size: 4, heldout: 1}}
passes:
  - distill: {{steps: 4, warmup_steps: 0, batch_size: 2, data: teacher_samples, num_samples: 4, sample_steps: 2,
               checkpoint_every: 1, progress: false{more}}}
"""


def _run(tmp_path, prompts: str, stop: bool = False, resume: bool = False):
    """A teacher-samples distill run, the first pass (no stage saved): to step 2 of 4 (`stop`), or on."""
    from compress.passes.distill_trainer import StepLimitReached
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    text = _RECIPE.format(prompts=prompts, more=", max_steps_this_run: 2" if stop else "")
    runner = Runner(parse_recipe(text, str(tmp_path / "r.yaml")), tmp_path / "out", tmp_path / "run", resume=resume)
    if not stop:
        return runner.run()
    with pytest.raises(StepLimitReached):
        runner.run()


# the first pass, its teacher samples of other prompts: --resume keeps neither ('(--resume keeps the passes
# before it and the teacher samples)' before)
ONLY_FROM_ITS_START = r"; delete \S+ to train this pass from its start, or rerun with --restart to start over$"


def test_resume_after_the_prompt_file_changed_refuses_the_distill_checkpoint(tmp_path, capsys):
    """A checkpoint trained on teacher samples of other prompts is refused, in words, though no stage
    was saved for the runner to compare (the samples' cache is keyed by the prompts read: it would
    go on training on the new prompts' samples); an unchanged file resumes."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a 1\na 2\na 3\na 4\na cow\n")
    _run(tmp_path, "prompt_file: p.txt", stop=True)
    prompts.write_text("b 1\nb 2\nb 3\nb 4\nb cow\n")
    with pytest.raises(UserError, match=r"distill: checkpoint .*step-00000002 was trained with other settings "
                                         r"\(the calibration inputs \(prompts, pipeline or teacher\) changed.*\)"
                                         + ONLY_FROM_ITS_START):
        _run(tmp_path, "prompt_file: p.txt", resume=True)
    assert not (tmp_path / "out").exists()
    prompts.write_text("a 1\na 2\na 3\na 4\na cow\n")
    capsys.readouterr()
    _run(tmp_path, "prompt_file: p.txt", resume=True)
    assert "continuing from its checkpoint at step 2/4" in capsys.readouterr().err


def test_resume_after_the_inline_prompts_changed_refuses_the_distill_checkpoint(tmp_path, monkeypatch):
    """Edited calibration.prompts are the prompts read changed, compared as the run has them (the
    run fingerprint), not as keys before the teacher loads: an output's recipe.yaml gives the same
    prompts by other keys (test_a_checkpoint_resumes_with_the_saved_recipe_that_reads_the_same_prompts);
    a changed num_prompts is still named before the teacher loads."""
    import compress.runner_prepare

    _run(tmp_path, "prompts: [a 1, a 2, a 3, a 4, a cow]", stop=True)
    with pytest.raises(UserError, match=r"distill: checkpoint .*step-00000002 was trained with other settings "
                                         r"\(the calibration inputs \(prompts, pipeline or teacher\) changed"):
        _run(tmp_path, "prompts: [a 1, a 2, a 3, a 4, a dog]", resume=True)
    monkeypatch.setattr(compress.runner_prepare, "load_checked_teacher", lambda *a, **k: pytest.fail("teacher loaded"))
    with pytest.raises(UserError, match=r"distill: checkpoint .*step-00000002 was trained with other settings "
                                         r"\(calibration.num_prompts: 10 in the checkpoint, 4 now\)"
                                         + ONLY_FROM_ITS_START):
        _run(tmp_path, "prompts: [a 1, a 2, a 3, a 4, a cow], num_prompts: 4", resume=True)


def test_a_checkpoint_that_records_no_calibration_keeps_resuming(tmp_path, capsys):
    """One written before checkpoints recorded the calibration (its fingerprint without it)."""
    import hashlib
    import json

    _run(tmp_path, "prompts: [a 1, a 2, a 3, a 4, a cow]", stop=True)
    for meta_file in (tmp_path / "run" / "distill" / "checkpoints").glob("step-*/meta.json"):
        meta = json.loads(meta_file.read_text())
        meta["settings"].pop("calibration", None)
        meta["fingerprint"] = hashlib.sha256(json.dumps(meta["settings"], sort_keys=True).encode()).hexdigest()[:16]
        meta_file.write_text(json.dumps(meta))
    capsys.readouterr()
    _run(tmp_path, "prompts: [a 1, a 2, a 3, a 4, a cow]", resume=True)
    assert "continuing from its checkpoint at step 2/4" in capsys.readouterr().err


def test_changed_calibration_in_words():
    from compress.passes.distill_resume import setting_changes

    then = {"lr": 1e-3, "calibration": {"config": {"prompts": ["a"], "num_prompts": 8}, "fingerprint": "x"}}
    assert setting_changes({"settings": then}, dict(then, calibration={"config": {"num_prompts": 4},
                                                                         "fingerprint": "y"})) == \
        "calibration.num_prompts: 8 in the checkpoint, 4 now"  # prompts (an older checkpoint's): compared as read
    assert setting_changes({"settings": then}, dict(then, calibration=dict(then["calibration"], fingerprint="y"))) \
        .startswith("the calibration inputs (prompts, pipeline or teacher) changed")
    assert setting_changes({"settings": {"lr": 1e-3}}, then) == "its fingerprint differs"  # older: not recorded


def test_a_checkpoint_resumes_with_the_saved_recipe_that_reads_the_same_prompts(tmp_path, capsys):
    """An output's recipe.yaml writes the prompts a prompt_file gave inline (prompt_file null): run
    with --resume, it was refused as 'other prompts' though it reads the same ones. The prompts read
    are compared, as the rest of --resume does; other prompts read are still refused."""
    from compress.recipe import parse_recipe
    from compress.recipe_dump import dump_recipe
    from compress.runner import Runner

    lines = ["a 1", "a 2", "a 3", "a 4", "a cow"]
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    _run(tmp_path, "prompt_file: p.txt", stop=True)
    original = parse_recipe(_RECIPE.format(prompts="prompt_file: p.txt", more=""), str(tmp_path / "r.yaml"))
    saved = tmp_path / "saved"
    saved.mkdir()

    def resume(prompts):
        (saved / "recipe.yaml").write_text(dump_recipe(original, prompts))
        Runner(parse_recipe((saved / "recipe.yaml").read_text(), str(saved / "recipe.yaml")), tmp_path / "out",
               tmp_path / "run", resume=True).run()

    with pytest.raises(UserError, match=r"distill: checkpoint .*step-00000002 was trained with other settings "
                                         r"\(the calibration inputs \(prompts, pipeline or teacher\) changed"):
        resume(lines[:-1] + ["a dog"])
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    resume(lines)
    assert "continuing from its checkpoint at step 2/4" in capsys.readouterr().err


def test_resume_after_a_distill_key_changed_discards_its_checkpoint_as_the_rerun_says(pixart, capsys):
    """A run stopped during its distill pass (a checkpoint at step 2), rerun with --set
    passes.2.distill.lr: the plain rerun said --resume keeps the passes before it and runs the rest,
    then --resume refused ('distill: checkpoint ... was trained with other settings (distill.lr: ...);
    delete RUN/distill/checkpoints ...'), where a changed svd key has --resume discard the checkpoint.
    Now --resume discards it too, in one line, and writes what a fresh run of the changed recipe writes."""
    from compress.io_output import load_transformer
    from compress.passes.distill_trainer import StepLimitReached
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    tmp_path, _, _ = pixart
    text = (tmp_path / "r.yaml").read_text() + ("  - distill: {steps: 4, warmup_steps: 0, batch_size: 2, "
                                                "checkpoint_every: 1, progress: false}\n")

    def runner(run_dir, out, *edits, **kw):
        return Runner(parse_recipe(text, str(tmp_path / "r.yaml"), list(edits)), tmp_path / out, tmp_path / run_dir,
                      **kw)

    with pytest.raises(StepLimitReached):
        runner("run", "out", "passes.2.distill.max_steps_this_run=2").run()
    with pytest.raises(UserError, match=r"differs in passes\.2\.distill\.lr.*--resume keeps its first 2 passes"):
        runner("run", "out", "passes.2.distill.lr=0.002").run()
    capsys.readouterr()
    resumed = runner("run", "out", "passes.2.distill.lr=0.002", resume=True).run()
    checkpoints = tmp_path / "run" / "distill" / "checkpoints"
    err = capsys.readouterr().err
    assert (f"distill: checkpoint {checkpoints / 'step-00000002'} was trained with other settings (distill.lr: "
            f"0.0001 in the checkpoint, 0.002 now): --resume moves {checkpoints} to {checkpoints}.discarded/") in \
        err.replace("\n", " ")  # (/its fingerprint)
    assert "continuing from its checkpoint" not in err
    fresh = runner("run-fresh", "out-fresh", "passes.2.distill.lr=0.002").run()
    a, b = load_transformer(resumed).state_dict(), load_transformer(fresh).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _stopped_at_4_of_6(run_dir):
    """A tiny distill pass's student, teacher and a run of it stopped at step 4 of 6 (checkpointed)."""
    import copy

    from compress.passes.distill_trainer import StepLimitReached
    from tests.conftest import tiny_pixart
    from tests.passes.distill_helpers import distill, factorize

    torch.manual_seed(0)
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher), rank=2)
    with pytest.raises(StepLimitReached):
        distill(copy.deepcopy(student), teacher, run_dir, steps=6, checkpoint_every=1, max_steps_this_run=4)
    return student, teacher


@pytest.mark.parametrize("older", [False, True], ids=["now", "older-checkpoint"])
def test_gradient_checkpointing_turned_on_at_resume_keeps_the_checkpoint(tmp_path, older, capsys):
    """The out-of-memory line advises passes.N.distill.gradient_checkpointing: true and --resume, but
    --resume said 'distill: checkpoint .../step-00000004 was trained with other settings
    (distill.gradient_checkpointing: False in the checkpoint, True now): --resume discards ...' and
    trained the pass from its start: it saves memory, the result is the same. Now it resumes at step 4,
    and writes what an uninterrupted run writes; also from a checkpoint whose fingerprint an older
    dit-compress hashed with the key in (`older`)."""
    import copy
    import hashlib
    import json

    from tests.passes.distill_helpers import distill, state

    student, teacher = _stopped_at_4_of_6(tmp_path / "run")
    if older:  # as written before gradient_checkpointing was result-free: the key in its settings and fingerprint
        for meta_file in (tmp_path / "run" / "distill" / "checkpoints").glob("step-*/meta.json"):
            meta = json.loads(meta_file.read_text())
            meta["settings"]["gradient_checkpointing"] = False
            meta["fingerprint"] = hashlib.sha256(json.dumps(meta["settings"], sort_keys=True).encode()).hexdigest()[:16]
            meta_file.write_text(json.dumps(meta))
    capsys.readouterr()
    out, ctx = distill(copy.deepcopy(student), teacher, tmp_path / "run", steps=6, checkpoint_every=1, resume=True,
                       gradient_checkpointing=True)
    assert "discards" not in capsys.readouterr().out
    assert ctx.report["distill"]["resumed"] == 1
    whole, _ = distill(copy.deepcopy(student), teacher, tmp_path / "whole", steps=6, checkpoint_every=1)
    a, b = state(out), state(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_older_checkpoint_of_another_lr_is_discarded_in_words_of_the_lr_alone():
    """An older checkpoint records gradient_checkpointing (result-free now): a changed lr alone is the
    discard's words and no refusal ('distill.gradient_checkpointing: False in the checkpoint, None now')."""
    from compress.passes.distill_resume import of_other_keys, setting_changes

    then, now = {"lr": 1e-3, "gradient_checkpointing": False, "seed": 0}, {"lr": 2e-3, "seed": 0}
    assert setting_changes({"settings": then}, now) == "distill.lr: 0.001 in the checkpoint, 0.002 now"
    assert of_other_keys(then, now, {"lr"})


@pytest.mark.parametrize("key, now, resumes", [("kd_teacher", "teacher", True), ("min_lr_ratio", 0.1, True),
                                               ("min_lr_ratio", 0.2, False)])
def test_a_checkpoint_older_than_a_distill_key_compares_it_at_its_default(tmp_path, capsys, key, now, resumes):
    """A checkpoint whose meta.json predates a distill key (kd_teacher, stop 44) was 'trained with other
    settings (distill.kd_teacher: None in the checkpoint, 'teacher' now)' and set aside on --resume, its
    training lost. Now a key it does not record compares at its default: one the recipe leaves there
    resumes; one set otherwise is still set aside, said against the default."""
    import copy
    import hashlib
    import json

    from compress.passes.distill_config import DistillConfig
    from tests.passes.distill_helpers import distill

    student, teacher = _stopped_at_4_of_6(tmp_path / "run")
    checkpoints = tmp_path / "run" / "distill" / "checkpoints"
    for meta_file in checkpoints.glob("step-*/meta.json"):  # as written before `key` was added
        meta = json.loads(meta_file.read_text())
        del meta["settings"][key]
        meta["fingerprint"] = hashlib.sha256(json.dumps(meta["settings"], sort_keys=True).encode()).hexdigest()[:16]
        meta_file.write_text(json.dumps(meta))
    capsys.readouterr()
    _, ctx = distill(copy.deepcopy(student), teacher, tmp_path / "run", steps=6, checkpoint_every=1, resume=True,
                     **{key: now})
    said = "".join(capsys.readouterr()).replace("\n", " ")
    assert (ctx.report["distill"]["resumed"] == 1) == resumes, said
    if resumes:
        assert "other settings" not in said
    else:
        assert (f"distill: checkpoint {checkpoints / 'step-00000004'} was trained with other settings (distill.{key}: "
                f"{getattr(DistillConfig(), key)!r} in the checkpoint, {now!r} now): --resume moves ") in said, said


@pytest.mark.parametrize("index, data, samples, said", [
    (None, "toy", True, ""), (0, "teacher_samples", True, " (--resume keeps the teacher samples)"),
    (0, "teacher_samples", False, ""), (2, "toy", True, " (--resume keeps the passes before it)"),
    (2, "teacher_samples", True, " (--resume keeps the passes before it and the teacher samples)"),
    (2, "teacher_samples", False, " (--resume keeps the passes before it)")])
def test_a_refused_checkpoints_words_say_only_what_resume_keeps(index, data, samples, said):
    """A checkpoint refused (damaged, of other settings) said 'delete ... to train this pass from its start
    (--resume keeps the passes before it and the teacher samples), ...' of every distill pass: the first,
    one on toy data, one whose samples were of other prompts. Now what is kept, or nothing."""
    from compress.passes.distill_config import DistillConfig
    from compress.passes.distill_resume import from_its_start

    assert from_its_start(Path("c"), DistillConfig(data=data), index, samples) == (
        f"delete c to train this pass from its start{said}, or rerun with --restart to start over")


def test_a_later_distill_pass_refused_before_the_teacher_loads_says_the_passes_before_it_are_kept(tmp_path):
    """check_resumable_configs (a checkpoint of other calibration keys) said '(--resume keeps the passes before
    it and the teacher samples)' of any pass: its teacher samples are of the old keys; the passes before it
    are kept where there are some (`indices`, the passes' places in the recipe)."""
    import json

    from compress.passes.distill_config import DistillConfig
    from compress.passes.distill_resume import calibration_keys, check_resumable_configs
    from compress.recipe import CalibrationConfig

    checkpoint = tmp_path / "distill-2" / "checkpoints" / "step-00000001"
    checkpoint.mkdir(parents=True)
    then = json.loads(json.dumps(calibration_keys(CalibrationConfig(num_prompts=10)), default=str))
    settings = {"data": "teacher_samples", "processes": 1, "calibration": {"config": then}}
    (checkpoint / "meta.json").write_text(json.dumps({"fingerprint": "f", "settings": settings}))
    configs = [DistillConfig(), DistillConfig(data="teacher_samples")]
    with pytest.raises(UserError) as e:
        check_resumable_configs(tmp_path, configs, CalibrationConfig(num_prompts=4), [1, 3])
    assert str(e.value).endswith(f"(calibration.num_prompts: 10 in the checkpoint, 4 now); delete {checkpoint.parent} to "
                                 "train this pass from its start (--resume keeps the passes before it), or rerun with "
                                 "--restart to start over"), str(e.value)
