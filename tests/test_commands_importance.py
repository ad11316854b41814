"""`dit-compress importance` given a dit-compress output (its folder or its weight file): one line
saying it scans a teacher and how to scan the output's (the recipe that made it, or its toy)."""

from pathlib import Path

import pytest

from compress.cli import main
from compress.io_export import save_compressed
from tests.conftest import tiny_pixart
from tests.test_commands import RECIPE


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
    assert err == f"dit-compress: error: {out}: importance scans a teacher, and this is a dit-compress output{tail}"
    weights = Path(out) / "diffusion_pytorch_model.safetensors"
    assert main(["importance", str(weights)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == (f"dit-compress: error: {weights}: importance scans a teacher, and this is a weight file of the "
                   f"dit-compress output {out}{tail}")


def test_the_readme_says_which_teachers_importance_takes_directly():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("| `dit-compress importance"))
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
        assert capsys.readouterr().err == planned
    assert main(["importance", "toy:pixart", "--set", "calibration.num_prompts=3"]) == 2
    assert capsys.readouterr().err == ("dit-compress: error: --set changes a recipe, and toy:pixart is a toy teacher "
                                       "scanned as it is: pass a recipe (dit-compress importance RECIPE --set ...), "
                                       "or leave --set out\n")
