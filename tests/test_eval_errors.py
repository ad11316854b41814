"""eval's teacher-relative errors (compress/eval_errors.py): what it reads of the run's folder, and that it
writes nothing outside the output folder it is given."""

import json
import shutil

import pytest

from compress.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(root) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stream", ["false", "true"])
def test_eval_writes_nothing_in_the_run_folder_gone_or_holding_an_unreadable_call(stream, tmp_path, capsys):
    """eval OUT took the sampled-inputs folder report.json records (inputs_cache, in the run folder) as
    its own cache: with the run folder moved away it made it again and wrote the held-out calls there
    (read-only: an OSError traceback; a full disk: one, leaving empty folders). It reads what is there and
    valid, samples the rest in memory, writes nothing, and says so where the folder is gone."""
    from tests.pipelines import RECIPE as PIPELINE_RECIPE
    from tests.pipelines import pixart_pipeline
    from tests.runner_helpers import run_recipe

    pipe = pixart_pipeline(tmp_path / "pipe")
    text = PIPELINE_RECIPE.replace("{teacher}", str(pipe)).replace("{family}", "pixart").replace("{size}", "")
    out = run_recipe(tmp_path, text.format(stream=stream), "p")
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    cache = json.loads((out / "report.json").read_text())["inputs_cache"]
    calls = sorted((tmp_path / "run-p" / "inputs").rglob("*.pt"))
    assert calls and all(str(c).startswith(cache) for c in calls)
    for call in calls:
        call.write_bytes(b"not a torch file")  # unreadable: sampled again, in memory, and left as it is
    before = _files(tmp_path)
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pred_rel_error"] == pytest.approx(first["pred_rel_error"])
    assert _files(tmp_path) == before
    shutil.move(str(tmp_path / "run-p"), str(tmp_path / "moved"))
    before = _files(tmp_path)
    assert main(["eval", str(out), "--json"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["pred_rel_error"] == pytest.approx(first["pred_rel_error"])
    assert _files(tmp_path) == before and not (tmp_path / "run-p").exists()
    assert f"note: eval: the run's sampled inputs ({cache}, report.json's inputs_cache) are gone: the held-out " \
           "inputs are sampled again, in memory" in " ".join(said.err.split())


def test_eval_of_an_output_measured_on_the_older_held_out_draw_says_so(tmp_path, capsys):
    """R2 stop 52: eval of a pipeline-source output of calibration.seed 3 that an older dit-compress wrote (its
    held-out prompts drawn with seed 10003; report.json's heldout records no seed) re-samples the held-out prompts
    with today's 10000 (its inputs_cache keyed 10003 reads none back) and said nothing: its pred_rel_error was on
    other inputs than report.json's stages'. Now one note says so; nothing where report.json records the seed,
    or where the older draw was today's (seed 0 but a synthetic source's)."""
    from compress.runner_heldout import older_heldout_eval_note
    from tests.pipelines import RECIPE as PIPELINE_RECIPE
    from tests.pipelines import pixart_pipeline
    from tests.runner_helpers import run_recipe

    pipe = pixart_pipeline(tmp_path / "pipe")
    text = PIPELINE_RECIPE.replace("{teacher}", str(pipe)).replace("{family}", "pixart").replace("{size}", "seed: 3, ")
    out = run_recipe(tmp_path, text.format(stream="false"), "p")
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert "older dit-compress" not in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    del report["heldout"]["seed"]  # as an older dit-compress wrote it
    (out / "report.json").write_text(json.dumps(report))
    assert main(["eval", str(out), "--json"]) == 0
    assert ("note: eval: report.json's errors were measured by an older dit-compress, on held-out inputs drawn for "
            "calibration.seed 3 (with seed 10003); eval measures on the held-out inputs every seed shares now, so "
            "its pred_rel_error is not on report.json's stages' inputs") in " ".join(capsys.readouterr().err.split())
    older = {"stages": [{"pass": "svd"}], "heldout": {}}
    assert [older_heldout_eval_note(older, kind, 0) is not None for kind in ("pipeline", "toy", "synthetic")] == \
        [False, False, True]
    assert "(with seed 2)" in older_heldout_eval_note(older, "synthetic", 1)


def test_eval_of_a_resumed_output_of_both_draws_names_only_the_older_draws_stages():
    """R1 stop 53: a --resume that kept passes measured on the older draw writes report.json's heldout with no
    seed, and eval said 'report.json's errors were measured by an older dit-compress ...' though the passes run
    after the resume and export.relative_error were measured on today's inputs. heldout.older_draw_stages says
    how many were of the older draw: eval says nothing where the figure it is set beside (the export's, the
    last stage's where that is the export's or none) was measured on today's inputs; where it was not, it names
    those first stages. An older dit-compress's report (no count) is said of as before."""
    from compress.runner_heldout import older_heldout_eval_note

    stages = [{"relative_error": .2}, {"relative_error": .1}]
    heldout = {"inputs": 64, "guidance_scale": 3.0}
    older = older_heldout_eval_note({"stages": stages, "heldout": heldout}, "pipeline", 3)
    assert older.startswith("eval: report.json's errors were measured by an older dit-compress")
    mixed = {"stages": stages, "heldout": {**heldout, "older_draw_stages": 1}}
    for export in ({}, {"relative_error": .1, "exact": True}, {"relative_error": .11}, {"relative_error": None}):
        assert older_heldout_eval_note(dict(mixed, export=export), "pipeline", 3) is None
    kept = {"stages": stages, "heldout": {**heldout, "older_draw_stages": 2}}  # all kept, then exported
    assert older_heldout_eval_note(dict(kept, export={"relative_error": .11}), "pipeline", 3) is None
    for export in ({"relative_error": .1, "exact": True}, {"relative_error": None}):
        assert older_heldout_eval_note(dict(kept, export=export), "pipeline", 3) == (
            "eval: the errors of report.json's first 2 stages (a --resume kept them) were measured by an older "
            "dit-compress, on held-out inputs drawn for calibration.seed 3 (with seed 10003); eval measures on the "
            "held-out inputs every seed shares now, so its pred_rel_error is not on report.json's stages' inputs")
