"""eval and bench of a `dit-compress lora` output give its teacher the LoRA it took (lora.replay): a
LoRA moved or deleted since is one line saying where it was and --lora PATH, which gives its new place."""

import copy
import json
import shutil

import pytest

from compress.cli import main
from tests.test_lora import _lora, _student

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")


def _err(argv, capsys) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _eval(argv, capsys) -> float:
    assert main(argv + ["--json"]) == 0, argv
    return json.loads(capsys.readouterr().out)["pred_rel_error"]


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_a_lora_moved_since_it_was_merged_is_one_line_and_lora_gives_its_new_place(tmp_path, capsys):
    """Before: eval and bench failed with '<path>: no LoRA there', even with --teacher, and said neither
    that the output recorded it nor what to do. Now the error says both, before the teacher loads, and
    --lora PATH measures the output as before the move."""
    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora")
    new = tmp_path / "new"
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(new), "--scale", "0.5"]) == 0
    capsys.readouterr()
    before = _eval(["eval", str(new)], capsys)
    shutil.move(tmp_path / "lora", tmp_path / "moved")
    gone = (f"dit-compress: error: the LoRA this model took (dit-compress lora) is no longer at {tmp_path / 'lora'}, "
            "where it recorded it (moved or deleted), and its teacher takes it to stand for the model: pass its new "
            "place to eval or bench with --lora PATH, or put it back there")
    assert _err(["eval", str(new)], capsys) == gone
    assert _err(["eval", str(new), "--teacher", str(tmp_path / "teacher")], capsys) == gone
    assert _err(["bench", str(new), "--repeats", "1", "--device", "cpu"], capsys) == gone
    assert _eval(["eval", str(new), "--lora", str(tmp_path / "moved")], capsys) == before
    assert main(["bench", str(new), "--json", "--repeats", "1", "--device", "cpu", "--lora",
                 str(tmp_path / "moved")]) == 0
    assert json.loads(capsys.readouterr().out)["params_ratio"] > 0
    moved = ["--lora", str(tmp_path / "moved")]
    assert _err(["eval", str(new)] + moved * 2, capsys).endswith(
        "--lora given 2 times, but the model took 1 LoRAs (dit-compress lora): give --lora once for each, "
        "in the order it took them")
    assert _err(["eval", str(new), "--lora", str(tmp_path / "nowhere")], capsys).endswith(
        f"--lora {tmp_path / 'nowhere'}: no such file or folder")
    assert _err(["eval", str(tmp_path / "out-s")] + moved, capsys).endswith(
        "--lora: the model took no LoRA (dit-compress lora); its teacher is compared as it is")


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_a_lora_output_of_a_streamed_run_is_measured_against_its_teacher_with_the_lora(tmp_path, capsys):
    """A streamed run's output that took a LoRA was measured block by block against the teacher
    without it; it is measured as a resident output is (the teacher with the LoRA merged)."""
    from tests.conftest import tiny_flux
    from tests.runner_helpers import run_recipe, streamed_teacher

    run_recipe(tmp_path, streamed_teacher(tmp_path, "flux").format(stream="true"), "s")
    _lora(tiny_flux(), tmp_path / "lora")
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new")]) == 0
    resident = tmp_path / "resident"  # the same output, measured as a resident run's
    shutil.copytree(tmp_path / "new", resident)
    recipe = (resident / "recipe.yaml").read_text()
    assert "stream: true" in recipe
    (resident / "recipe.yaml").write_text(recipe.replace("stream: true", "stream: false"))
    capsys.readouterr()
    assert _eval(["eval", str(tmp_path / "new")], capsys) == pytest.approx(_eval(["eval", str(resident)], capsys),
                                                                           rel=1e-5)
