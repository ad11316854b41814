"""A recipe of one pass in words, after its run stopped: a distill pass stopped before it saved a stage is
'the one pass not done' (was '0 passes done', the count learnt only from a saved stage), an export cut short
writes the output 'from it', and Ctrl-C's note counts what was measured as the plain rerun's refusal does."""

from compress.cli import main
from compress.runner_resume import FINISHED
from tests.test_runner_folders_note_teacher import _ctrl_c_note
from tests.test_runner_folders_teacher import _single_file_interrupted

DISTILL = ("model: pixart\nteacher: single/t.safetensors\n"
           "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}\n"
           "passes:\n  - distill: {steps: 2, batch_size: 2, max_steps_this_run: 1, checkpoint_every: 1, "
           "progress: false, plot: false, data: teacher_samples, num_samples: 4, sample_steps: 2}\n")


def test_a_distill_first_recipe_stopped_at_a_checkpoint_is_counted_by_its_passes(tmp_path, monkeypatch, capsys):
    _single_file_interrupted(tmp_path, monkeypatch, capsys)
    (tmp_path / "d.yaml").write_text(DISTILL)
    args = ["run", "d.yaml", "--out", "out-d", "--run-dir", "run-d", "--teacher-config", "cfgA/config.json"]
    assert main(args) == 75  # stopped on max_steps_this_run, a checkpoint at step 1
    capsys.readouterr()
    assert main(args) == 2
    refusal = capsys.readouterr().err.strip().splitlines()[-1].removeprefix("dit-compress run: error: ")
    assert refusal.startswith("run-d holds an interrupted run (the one pass not done, a distill checkpoint at "
                              "step 1, teacher samples ("), refusal
    said = _ctrl_c_note(monkeypatch, capsys, args)  # before the Runner: its fingerprint not known yet
    assert said.startswith("dit-compress: interrupted; run-d keeps its work (the one pass not done, a distill "
                           "checkpoint at step 1, teacher samples ("), said
    assert said.endswith("to read back): rerun with --resume to continue"), said


def test_a_one_pass_run_whose_export_was_cut_short_writes_the_output_from_it(tmp_path, monkeypatch, capsys):
    _single_file_interrupted(tmp_path, monkeypatch, capsys)
    (tmp_path / "o.yaml").write_text("model: pixart\nteacher: single/t.safetensors\n"
                                     "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, heldout: 4}\n"
                                     "passes:\n  - remove_blocks: {blocks: {blocks: [0]}}\n")
    args = ["run", "o.yaml", "--out", "out-o", "--run-dir", "run-o", "--teacher-config", "cfgA/config.json"]
    assert main(args) == 0
    (tmp_path / "run-o" / "stages" / FINISHED).unlink()  # as an export cut short leaves it
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.endswith("whose one pass is done but whose output was not marked written (its export was cut "
                         "short, or an older dit-compress wrote it): add --resume to write the output from it, "
                         "or --restart to start over"), said
