"""A plain rerun (no --resume, no --restart) in a run folder an interrupted run of the same recipe
left, given another teacher (--teacher): refused saying so, as --resume would, not offering --resume."""

import json
from pathlib import Path

from compress.cli import main
from tests.conftest import tiny_pixart
from tests.runner_helpers import RECIPE


def _ctrl_c_at_first_stats_save(monkeypatch):
    """A Ctrl-C when the svd pass (pass 2) first saves block statistics: pass 1 is saved by then."""
    from compress.calib_stats import StatsCache

    def save(self, name, stats):
        raise KeyboardInterrupt

    monkeypatch.setattr(StatsCache, "save", save)


def _interrupted(pixart, monkeypatch, capsys) -> tuple:
    """(tmp_path, run folder, the run's arguments) of r.yaml (remove_blocks, then svd; its teacher
    tmp_path/teacher) stopped by a Ctrl-C once pass 1 is saved."""
    tmp_path = pixart[0]
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run)]
    with monkeypatch.context() as m:
        _ctrl_c_at_first_stats_save(m)
        assert main(args) == 130
    capsys.readouterr()
    return tmp_path, run, args


def test_a_rerun_with_another_teacher_after_an_interrupt_says_the_teacher_changed(pixart, monkeypatch, capsys):
    """The tester's run: interrupted after 1 of 2 passes, rerun with --teacher naming another folder
    said 'holds an interrupted run of this recipe ...: add --resume to continue', which --resume then
    refused ('the teacher changed since'). The same teacher named by a relative path is this teacher."""
    tmp_path, run, args = _interrupted(pixart, monkeypatch, capsys)
    tiny_pixart(seed=1).save_pretrained(tmp_path / "teacher2")  # other weights: a byte-identical copy is this teacher
    assert main([*args, "--teacher", str(tmp_path / "teacher2")]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"dit-compress run: error: {run} holds an interrupted run of this recipe for another "
                           f"teacher (was {tmp_path / 'teacher'}, now {tmp_path / 'teacher2'} (the same config, other "
                           "weights); 1 of 2 passes done")
    assert said.endswith("): add --restart to start over, or rerun with that teacher and --resume to continue")
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--teacher", "teacher"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{run} holds an interrupted run of this recipe (1 of 2 passes done" in said
    assert said.endswith("add --resume to continue, or --restart to start over")


def test_a_teacher_config_a_folder_teacher_does_not_read_is_no_other_teacher(pixart, monkeypatch, capsys):
    """A --teacher-config that a folder teacher does not read (warned 'is not read') was compared as
    another teacher's: the rerun was refused 'for another teacher (--teacher-config was None, now …)'
    and --resume refused 'the teacher changed'. It is as if not given: the ordinary refusal, and
    --resume continues."""
    tmp_path, run, args = _interrupted(pixart, monkeypatch, capsys)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text((tmp_path / "teacher" / "config.json").read_text())
    with_config = [*args, "--teacher-config", str(tmp_path / "cfg" / "config.json")]
    assert main(with_config) == 2
    err = capsys.readouterr().err
    assert "is not read: teacher" in err and "another teacher" not in err
    assert err.strip().splitlines()[-1].endswith("add --resume to continue, or --restart to start over")
    assert main([*with_config, "--resume"]) == 0
    assert "teacher changed" not in capsys.readouterr().err


def _single_file_interrupted(tmp_path, monkeypatch, capsys) -> list[str]:
    """The run's arguments (from tmp_path, relative) of a recipe of the single file single/t.safetensors
    (no config.json beside it) with --teacher-config cfgA/config.json, stopped by a Ctrl-C once pass 1
    of 2 is saved; cfgB holds a config of another sample_size."""
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    (tmp_path / "single").mkdir()
    (tmp_path / "teacher" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "single" / "t.safetensors")
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    for name, size in (("cfgA", config["sample_size"]), ("cfgB", 2 * config["sample_size"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(dict(config, sample_size=size)))
    (tmp_path / "r.yaml").write_text(RECIPE.format(family="pixart", teacher="single/t.safetensors", group="blocks"))
    monkeypatch.chdir(tmp_path)
    args = ["run", "r.yaml", "--out", "out", "--run-dir", "run"]
    with monkeypatch.context() as m:
        _ctrl_c_at_first_stats_save(m)
        assert main([*args, "--teacher-config", "cfgA/config.json"]) == 130
    capsys.readouterr()
    return args


def test_a_single_file_teachers_other_teacher_config_is_said_as_given(tmp_path, monkeypatch, capsys):
    """A single file's --teacher-config changed between an interrupted run and its rerun: the plain
    rerun and --resume name both configs (a config.json, a folder, as given) and 'not given' for none,
    never a raw None."""
    args = _single_file_interrupted(tmp_path, monkeypatch, capsys)
    was, now = tmp_path / "cfgA" / "config.json", tmp_path / "cfgB"
    assert main([*args, "--teacher-config", "cfgB"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("dit-compress run: error: run holds an interrupted run of this recipe for another teacher "
                           f"(--teacher-config was {was}, now {now}; 1 of 2 passes done")
    assert said.endswith("): add --restart to start over, or rerun with that teacher and --resume to continue")
    assert main([*args, "--teacher-config", "cfgB", "--resume"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == (f"dit-compress run: error: --resume: the teacher changed since run was written (--teacher-config "
                    f"was {was}, now {now}); rerun with --restart to start over")
    (tmp_path / "single" / "config.json").write_text((tmp_path / "cfgB" / "config.json").read_text())
    assert main(args) == 2  # another config now beside it, no --teacher-config
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"for another teacher (--teacher-config was {was}, now not given; 1 of 2 passes done" in said
    assert main([*args, "--resume"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--resume: the teacher changed since run was written (--teacher-config was {was}, now not given)" in said
    assert main([*args, "--teacher-config", "cfgA/config.json", "--resume"]) == 0


def test_an_older_runs_unread_teacher_config_is_no_other_teacher(pixart, monkeypatch, capsys):
    """A run before 652e195 recorded a --teacher-config its folder teacher does not read: a plain rerun
    said the run was 'for another teacher (--teacher-config was …, now None)'; now the ordinary refusal."""
    tmp_path, run, args = _interrupted(pixart, monkeypatch, capsys)
    state = run / "stages" / "0-remove_blocks" / "state.json"
    old = json.loads(state.read_text())
    old["teacher"]["config"] = str((tmp_path / "teacher" / "config.json").resolve())  # as the old code wrote it
    state.write_text(json.dumps(old))
    assert main(args) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{run} holds an interrupted run of this recipe (1 of 2 passes done" in said
    assert said.endswith("add --resume to continue, or --restart to start over")


def test_a_single_files_teacher_config_given_another_way_is_the_same_teacher(tmp_path, monkeypatch, capsys):
    """A run with --teacher-config cfgA/config.json, rerun with cfgA (the folder holding it), a symlink to
    it, or a relative path from another folder: the plain rerun and --resume compared the paths as
    strings ('for another teacher (--teacher-config was …/cfgA/config.json, now …/cfgA'; 'the teacher
    changed'). They name one file: the ordinary refusal, and --resume continues."""
    args = _single_file_interrupted(tmp_path, monkeypatch, capsys)
    (tmp_path / "link").symlink_to(tmp_path / "cfgA", target_is_directory=True)
    for config in ("cfgA", "link", "link/config.json"):
        assert main([*args, "--teacher-config", config]) == 2
        said = capsys.readouterr().err.strip().splitlines()[-1]
        assert said.startswith("dit-compress run: error: run holds an interrupted run of this recipe (1 of 2 passes done")
        assert said.endswith("add --resume to continue, or --restart to start over")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = ["run", "../r.yaml", "--out", "../out", "--run-dir", "../run", "--teacher", "../single/t.safetensors"]
    assert main([*moved, "--teacher-config", "../link"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds an interrupted run of this recipe (1 of 2 passes done" in said and "another teacher" not in said
    assert main([*moved, "--teacher-config", "../cfgA", "--resume"]) == 0
    assert "resuming after pass 1/2 (remove_blocks)" in capsys.readouterr().err.replace("\n", " ")
    assert (tmp_path / "out" / "config.json").is_file()


def _changed_in_place(config: Path) -> None:
    """The tester's edit: norm_eps 1e-6 -> 1e-5 in `config`, the file as it was otherwise."""
    data = json.loads(config.read_text())
    config.write_text(json.dumps(dict(data, norm_eps=1e-5 if data.get("norm_eps") != 1e-5 else 1e-6)))


def test_a_single_files_teacher_config_is_compared_by_what_it_holds(tmp_path, monkeypatch, capsys):
    """The config's contents changed in place (norm_eps in cfgA/config.json): a plain rerun offered
    --resume (the same file named). A byte-identical copy elsewhere (cfgCopy) was refused 'for another
    teacher (--teacher-config was …/cfgA/config.json, now …/cfgCopy'. The teacher identity holds a
    checksum of what the config holds (runner_resume.CONFIG_SUM), compared in the place of its path."""
    args = _single_file_interrupted(tmp_path, monkeypatch, capsys)
    config = tmp_path / "cfgA" / "config.json"
    (tmp_path / "cfgCopy").mkdir()
    (tmp_path / "cfgCopy" / "config.json").write_bytes(config.read_bytes())
    original = config.read_bytes()
    _changed_in_place(config)
    changed = f"--teacher-config {config} changed since the run (its contents differ)"
    assert main([*args, "--teacher-config", "cfgA/config.json"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"dit-compress run: error: run holds an interrupted run of this recipe for another teacher "
                           f"({changed}; 1 of 2 passes done"), said
    # the config edited in place: undo that edit (the file named) and --resume, not 'rerun with that teacher'
    assert said.endswith(f"): undo the change to {config} and add --resume to continue, or add --restart to "
                         "start over"), said
    assert main([*args, "--teacher-config", "cfgA", "--resume"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == (f"dit-compress run: error: --resume: the teacher changed since run was written "
                    f"(--teacher-config {tmp_path / 'cfgA'} changed since the run (its contents differ)); "
                    f"undo the change to {config} and rerun with --resume, or rerun with --restart to start over")
    config.write_bytes(original)
    (tmp_path / "single" / "config.json").write_bytes(original)  # beside the file, the same config: this teacher
    for given in (["--teacher-config", "cfgCopy"], []):
        assert main([*args, *given]) == 2
        said = capsys.readouterr().err.strip().splitlines()[-1]
        assert "holds an interrupted run of this recipe (1 of 2 passes done" in said and "another" not in said
        assert said.endswith("add --resume to continue, or --restart to start over")
    assert main([*args, "--teacher-config", "cfgCopy/config.json", "--resume"]) == 0
    assert "resuming after pass 1/2 (remove_blocks)" in capsys.readouterr().err.replace("\n", " ")
    assert (tmp_path / "out" / "config.json").is_file()


def test_an_older_record_without_the_configs_checksum_resumes(tmp_path, monkeypatch, capsys):
    """A stage of a run before the config's checksum was recorded (no CONFIG_SUM) is not refused for
    lacking it: its --teacher-config is compared by the file it names, as before."""
    from compress.runner_config_sum import CONFIG_SUM

    args = _single_file_interrupted(tmp_path, monkeypatch, capsys)
    state = tmp_path / "run" / "stages" / "0-remove_blocks" / "state.json"
    old = json.loads(state.read_text())
    assert old["teacher"].pop(CONFIG_SUM)  # recorded now: the older record lacks it
    state.write_text(json.dumps(old))
    assert main([*args, "--teacher-config", "cfgA"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds an interrupted run of this recipe (1 of 2 passes done" in said and "another" not in said
    assert main([*args, "--teacher-config", "cfgA/config.json", "--resume"]) == 0
    assert "resuming after pass 1/2 (remove_blocks)" in capsys.readouterr().err.replace("\n", " ")


def test_a_distill_checkpoint_of_a_config_changed_in_place_is_not_resumed(tmp_path, monkeypatch, capsys):
    """A distill pass stopped at a checkpoint before any stage was saved: --resume continued it with the
    config changed in place (the calibration fingerprint holds the weights, not the config), without a
    word. The run's record (stages/run.json) holds its teacher identity; --resume compares it, and a
    plain rerun says it, as a stage's."""
    _single_file_interrupted(tmp_path, monkeypatch, capsys)
    (tmp_path / "d.yaml").write_text(
        "model: pixart\nteacher: single/t.safetensors\n"
        "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}\n"
        "passes:\n  - distill: {steps: 2, batch_size: 2, max_steps_this_run: 1, checkpoint_every: 1, "
        "progress: false, plot: false}\n")
    args = ["run", "d.yaml", "--out", "out-d", "--run-dir", "run-d", "--teacher-config", "cfgA/config.json"]
    assert main(args) == 75  # stopped on max_steps_this_run, a checkpoint at step 1
    capsys.readouterr()
    _changed_in_place(tmp_path / "cfgA" / "config.json")
    changed = f"--teacher-config {tmp_path / 'cfgA' / 'config.json'} changed since the run (its contents differ)"
    assert main(args) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"run-d holds an interrupted run for another teacher ({changed}; " in said, said
    undo = f"undo the change to {tmp_path / 'cfgA' / 'config.json'}"
    assert said.endswith(f"): {undo} and add --resume to continue, or add --restart to start over"), said
    assert main([*args, "--resume"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == f"dit-compress run: error: --resume: the teacher changed since run-d was written ({changed}); " \
                   f"{undo} and rerun with --resume, or rerun with --restart to start over"


def test_a_folder_teachers_config_changed_in_place_is_another_teacher(pixart, monkeypatch, capsys):
    """A folder teacher's own config.json edited in place: a plain rerun offered --resume (the teacher
    named the same), which then refused ('holds other weights or config'). Both say what changed."""
    tmp_path, run, args = _interrupted(pixart, monkeypatch, capsys)
    config = tmp_path / "teacher" / "config.json"
    _changed_in_place(config)
    changed = f"{config} changed since the run (its contents differ)"
    assert main(args) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{run} holds an interrupted run of this recipe for another teacher ({changed}; 1 of 2 passes" in said
    assert said.endswith(f"): undo the change to {config} and add --resume to continue, or add --restart to "
                         "start over"), said
    assert main([*args, "--resume"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == (f"dit-compress run: error: --resume: the teacher changed since {run} was written ({changed}); "
                    f"undo the change to {config} and rerun with --resume, or rerun with --restart to start over")
    edited = json.loads(config.read_text())
    _changed_in_place(config)  # undone (norm_eps back), as the refusals advise: --resume continues
    assert json.loads(config.read_text())["norm_eps"] != edited["norm_eps"]
    assert main([*args, "--resume"]) == 0


def test_a_rerun_whose_recipes_teacher_config_gave_another_config_names_the_key(tmp_path, monkeypatch, capsys):
    """Run with --teacher-config cfgA, rerun with the recipe's teacher_config cfgB (no flag): the refusal said
    '--teacher-config was …, now …', a flag not given; it names the key at its line. A Ctrl-C before the
    teacher loads says it so too."""
    args = _single_file_interrupted(tmp_path, monkeypatch, capsys)
    text = (tmp_path / "r.yaml").read_text().replace("teacher: single/t.safetensors\n",
                                                     "teacher: single/t.safetensors\nteacher_config: cfgB\n")
    (tmp_path / "r.yaml").write_text(text)
    was, now = tmp_path / "cfgA" / "config.json", tmp_path / "cfgB"
    changed = f"for another teacher (teacher_config (r.yaml:3) was {was}, now {now}; 1 of 2 passes done"
    assert main(args) == 2
    assert changed in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*args, "--resume"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the teacher changed since run was written (teacher_config (r.yaml:3) was {was}, now {now})" in said
    assert main([*args, "--teacher-config", "cfgB"]) == 2  # the flag gave it: named so
    assert f"for another teacher (--teacher-config was {was}, now {now};" in capsys.readouterr().err
    from compress.cli import _interrupt_note, build_parser

    note = _interrupt_note(build_parser().parse_args(args), KeyboardInterrupt())  # a Ctrl-C before it loads
    assert changed in note, note
