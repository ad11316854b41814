"""`dit-compress importance` (compress/commands_importance.py) through the CLI: the scan, its settings
and its checks before the teacher loads; given a dit-compress output (its folder or its weight file),
one line saying it scans a teacher and how to scan the output's (the recipe that made it, or its toy)."""

import json
from pathlib import Path

import pytest

from compress.cli import main
from compress.io_export import save_compressed
from tests.conftest import tiny_pixart
from tests.test_commands import RECIPE, _one_line_errors


@pytest.mark.parametrize("teacher, recipe, tail", [
    ("toy:pixart", "toy:pixart", " (compressed from toy:pixart): pass the recipe that made it, which names its "
                                 "teacher (its copy: dit-compress importance {out}/recipe.yaml), or the toy teacher "
                                 "itself (dit-compress importance toy:pixart)"),
    # run with --teacher: the copy names the recipe's own teacher, not the one it was compressed from
    ("toy:pixart", "org/other", " (compressed from toy:pixart): pass the recipe that made it, which names its "
                                "teacher (its copy, {out}/recipe.yaml, names org/other, not that teacher), or the toy "
                                "teacher itself (dit-compress importance toy:pixart)"),
    ("org/model", None, " (compressed from org/model): pass the recipe that made it, which names its teacher"),
    (None, None, ": pass the recipe that made it, which names its teacher"),
])
def test_importance_of_an_output_says_it_scans_a_teacher_and_how(tmp_path, capsys, monkeypatch, teacher, recipe,
                                                                  tail):
    import compress.passes.importance as importance

    monkeypatch.setattr(importance, "scan", lambda *a, **k: pytest.fail("scanned an output"))
    out = save_compressed(tiny_pixart(), tmp_path / "out", extra={"teacher": teacher} if teacher else None,
                          files={"recipe.yaml": f"model: pixart\nteacher: {recipe}\n"} if recipe else None)
    tail = tail.format(out=out)
    assert main(["importance", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == f"dit-compress importance: error: {out}: importance scans a teacher, and this is a dit-compress output{tail}"
    weights = Path(out) / "diffusion_pytorch_model.safetensors"
    assert main(["importance", str(weights)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == (f"dit-compress importance: error: {weights}: importance scans a teacher, and this is a weight file of the "
                   f"dit-compress output {out}{tail}")


def test_importance_of_an_output_of_a_toys_output_points_at_the_toy(tmp_path, capsys):
    """An output compressed from an output of toy:pixart: the line offers the toy at the start of its
    chain of teachers (it offered it only where the output's own teacher was a toy)."""
    first = save_compressed(tiny_pixart(), tmp_path / "a", extra={"teacher": "toy:pixart"})
    out = save_compressed(tiny_pixart(), tmp_path / "d", extra={"teacher": str(first)})
    assert main(["importance", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.endswith(f"(compressed from {first}): pass the recipe that made it, which names its teacher, or the "
                        "toy teacher itself (dit-compress importance toy:pixart)"), err


def test_the_commands_page_says_which_teachers_importance_takes_directly():
    """docs/COMMANDS.md holds the command table the README's "What it does" had."""
    page = (Path(__file__).parents[1] / "docs" / "COMMANDS.md").read_text()
    line = next(ln for ln in page.splitlines() if ln.startswith("| `dit-compress importance"))
    assert "TEACHER_OR_RECIPE" not in line
    assert "`toy:pixart`, `toy:flux`" in line and "a real teacher" in line and "through a recipe" in line


def test_importance_takes_teacher_and_set_as_plan_and_run(tmp_path):
    """--teacher replaces the recipe's teacher (here not there) and --set changes its keys (a cheaper
    scan: fewer prompts), as plan and run take them, with no copy of the recipe to edit."""
    import json

    from tests.conftest import tiny_flux

    tiny_flux().save_pretrained(tmp_path / "teacher")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(teacher=tmp_path / "not-here"))
    js = tmp_path / "i.json"
    assert main(["importance", str(recipe), "--teacher", str(tmp_path / "teacher"), "--set",
                 "calibration.num_prompts=3", "--png", str(tmp_path / "i.png"), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["family"] == "flux" and sum(data["samples_per_bucket"]) == 3 * 2  # prompts × timesteps


def test_importance_checks_teacher_and_set_as_plan_does(tmp_path, capsys):
    """A --teacher of another family, a --teacher-config that is not there and a bad --set: the
    one-line errors plan gives, before anything loads; a toy teacher scanned directly takes none."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(teacher="toy:flux"))
    for extra in (["--teacher", "toy:pixart"], ["--teacher-config", str(tmp_path / "none.json")],
                  ["--set", "passes.0.svd.ratio=2"]):
        assert main(["plan", str(recipe), *extra]) == 2
        planned = capsys.readouterr().err
        assert main(["importance", str(recipe), *extra, "--png", str(tmp_path / "i.png")]) == 2
        assert capsys.readouterr().err == planned.replace("dit-compress plan: ", "dit-compress importance: ", 1)
    assert main(["importance", "toy:pixart", "--set", "calibration.num_prompts=3"]) == 2
    assert capsys.readouterr().err == ("dit-compress importance: error: --set changes a recipe, and toy:pixart is a toy teacher "
                                       "scanned as it is: pass a recipe (dit-compress importance RECIPE --set ...), "
                                       "or leave --set out\n")


def test_importance_json_dash_prints_the_scan_on_stdout(tmp_path, capsys):
    """`--json -` wrote a file named '-'; it is the scan as JSON on standard output, in place of
    the table (the heatmap's line goes to stderr)."""
    import json
    from pathlib import Path

    from compress.cli import main

    assert main(["importance", "toy:pixart", "--buckets", "2", "--json", "-", "--png", str(tmp_path / "h.png")]) == 0
    scan = json.loads(capsys.readouterr().out)
    assert len(scan["blocks"]) == 6 and (tmp_path / "h.png").is_file() and not Path("-").exists()


def test_importance_json_dash_writes_no_heatmap_unless_png_asks(tmp_path, monkeypatch, capsys):
    """`--json -` without --png wrote importance-pixart.png into the working folder (a user piping the
    JSON got a stray file there, and 'wrote importance-pixart.png' on stderr); now nothing is written
    there: the scan is on stdout alone (with --png the heatmap is written where it says, as above)."""
    import json

    from compress.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["importance", "toy:pixart", "--buckets", "2", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)["blocks"]) == 6
    assert list(tmp_path.iterdir()) == [] and "wrote" not in err


TOY_IMPORTANCE = """\
model: pixart
teacher: toy:pixart
calibration: {num_prompts: 1, timesteps: 4, heldout: 4}
passes:
  - importance: {buckets: 2, proxy_only: true}
"""


def test_importance_scans_as_the_recipes_importance_pass_runs(tmp_path):
    """The recipe's first importance pass's settings (buckets, proxy_only) make the scan, so its JSON
    is the importance.json `run` writes; --buckets, and a --set of the pass's, change the buckets."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TOY_IMPORTANCE)
    js, png = tmp_path / "imp.json", str(tmp_path / "imp.png")
    assert main(["importance", str(recipe), "--png", png, "--json", str(js)]) == 0
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]) == 0
    scanned = json.loads(js.read_text())
    assert scanned == json.loads((tmp_path / "run" / "importance.json").read_text())
    assert scanned["buckets"] == ["early", "late"] and all(b["scan"] is None for b in scanned["blocks"])
    for option in (["--buckets", "1"], ["--set", "passes.0.importance.buckets=1"]):
        assert main(["importance", str(recipe), "--png", png, "--json", str(js), *option]) == 0
        assert json.loads(js.read_text())["buckets"] == ["all"], option


@pytest.fixture
def no_teacher_loads(monkeypatch):
    import compress.io as io  # commands_importance imports it as it loads a teacher (no torch before)
    import compress.runner_setup as runner_setup

    monkeypatch.setattr(io, "load_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    monkeypatch.setattr(runner_setup, "load_checked_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))


def test_importance_refuses_more_buckets_than_the_calibration_holds_noise_levels(tmp_path, capsys, no_teacher_loads):
    """No more buckets than the noise levels the calibration inputs hold (--buckets 1000 of 2 inputs
    drew ~1000 empty columns and a 3 MB PNG), said before the teacher loads: the toy and synthetic
    sources draw each input at its own level (num_prompts × timesteps of them), a pipeline source keeps
    min(timesteps, sample_steps) sampler steps."""
    recipe, pipeline = tmp_path / "r.yaml", tmp_path / "p.yaml"
    recipe.write_text(TOY_IMPORTANCE)
    pipeline.write_text(TOY_IMPORTANCE.replace("{num_prompts: 1, timesteps: 4, heldout: 4}",
                                               "{source: pipeline, prompts: [a cat], sample_steps: 2}"))
    png = str(tmp_path / "imp.png")
    _one_line_errors(capsys, [
        (["importance", "toy:pixart", "--buckets", "81", "--png", png],
         "--buckets 81: more buckets than the 80 noise levels the calibration inputs hold (calibration.num_prompts "
         "× timesteps: 10 × 8 inputs); pass --buckets 80 or fewer, or a recipe with more calibration inputs"),
        (["importance", str(recipe), "--buckets", "1000", "--png", png],
         "--buckets 1000: more buckets than the 4 noise levels the calibration inputs hold (calibration.num_prompts "
         "× timesteps: 1 × 4 inputs); pass --buckets 4 or fewer, or more calibration inputs (--set)"),
        (["importance", str(pipeline), "--buckets", "3", "--png", png],
         "--buckets 3: more buckets than the 2 noise levels the calibration inputs hold (calibration.timesteps 8 "
         "of a 2-step sampler); pass --buckets 2 or fewer, or more calibration inputs (--set)")])


def test_importance_default_heatmap_in_a_read_only_folder_is_named_before_the_teacher_loads(
        tmp_path, capsys, monkeypatch, no_teacher_loads):
    """No --png: the error names the default file (importance-<family>.png) and --png PATH, not
    '--png: the folder . ...' after the teacher and calibration loaded."""
    import os
    from pathlib import Path

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(teacher="toy:flux"))
    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.chdir(folder)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and not (
        mode == os.W_OK and Path(p).resolve() == folder.resolve()))  # root writes anywhere
    _one_line_errors(capsys, [
        (argv, f"the heatmap importance-{family}.png (the default; --png PATH writes it elsewhere): the folder "
                  f"{folder} is not writable") for argv, family in
        ((["importance", "toy:pixart"], "pixart"), (["importance", str(recipe)], "flux"))])


def test_importance_refuses_an_empty_json_or_png_before_the_teacher_loads(tmp_path, capsys, monkeypatch,
                                                                          no_teacher_loads):
    """`--json ''` wrote no JSON and said nothing (exit 0), `--png ''` wrote the default heatmap: both
    refused before the scan, as an empty --plot is."""
    monkeypatch.chdir(tmp_path)
    _one_line_errors(capsys, [
        (["importance", "toy:pixart", "--json", ""], "--json is empty: give a file name, or leave --json out"),
        (["importance", "toy:pixart", "--png", " "], "--png is empty: give a file name, or leave --png out")])
    assert not list(tmp_path.iterdir())


def test_importance_refuses_buckets_beyond_one_noise_level_in_the_singular(tmp_path, capsys, no_teacher_loads):
    """'more buckets than the 1 noise levels' of a calibration of one input: the noun agrees."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TOY_IMPORTANCE.replace("timesteps: 4, heldout: 4", "timesteps: 1, heldout: 1"))
    _one_line_errors(capsys, [
        (["importance", str(recipe), "--buckets", "2", "--png", str(tmp_path / "imp.png")],
         "--buckets 2: more buckets than the 1 noise level the calibration inputs hold (calibration.num_prompts "
         "× timesteps: 1 × 1 inputs); pass --buckets 1, or more calibration inputs (--set)")])


def test_importance_says_its_default_heatmap_relative_to_the_working_folder_as_it_says_a_png_given(
        tmp_path, capsys, monkeypatch):
    """Without --png it said 'wrote /home/.../importance-pixart.png', with --png sub/h 'wrote sub/h.png':
    the default is now said as run says its default out/NAME, relative to the working folder."""
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(TOY_IMPORTANCE)
    for png, said in (([], "importance-pixart.png"), (["--png", "sub/h"], "sub/h.png")):
        assert main(["importance", "r.yaml", *png]) == 0
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"wrote {said}"
        assert (tmp_path / said).is_file()


def test_importance_of_a_path_that_is_no_file_nor_folder_says_what_it_is(tmp_path, capsys, no_teacher_loads):
    """`importance /dev/zero` said 'teacher not found: /dev/zero (there is no /dev/zero)', though it is there:
    now what it is, neither a recipe nor a teacher. A pipe of any name (`<(cat r.yaml)`: /dev/fd/63) is read as
    the recipe, as plan and run read it (F9 stop 51: it was refused as 'a pipe')."""
    import os
    import threading

    words = "neither a recipe (a YAML file) nor a teacher (a folder or a checkpoint file, a Hub id or toy:NAME)"
    fifo = tmp_path / "scan"  # no .yaml: as /dev/fd/63
    os.mkfifo(fifo)
    thread = threading.Thread(target=lambda: fifo.write_bytes(b"model: pixart\nteacher: toy:pixart\npasses: {svd: 1}\n"),
                              daemon=True)
    thread.start()
    _one_line_errors(capsys, [(["importance", "/dev/zero"], f"/dev/zero: a character device, {words}"),
                              (["importance", str(fifo)], "'passes' must be a non-empty list")])
    thread.join(5)
