"""`dit-compress importance` given a dit-compress output (its folder or its weight file): one line
saying it scans a teacher and how to scan the output's (the recipe that made it, or its toy)."""

from pathlib import Path

import pytest

from compress.cli import main
from compress.io_export import save_compressed
from tests.conftest import tiny_pixart


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
