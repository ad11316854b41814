"""measured_against: the teacher eval and bench measured an output against, said as they measured it:
for an output that took LoRAs (dit-compress lora), the teacher with those LoRAs merged in, named on
the line above their tables and as --json's teacher_loras."""

import json

import pytest

from compress.cli import main
from compress.measured_against import against, teacher_fields
from tests.test_lora import _lora

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*invalid shape")]


@pytest.fixture
def took(tmp_path, capsys, monkeypatch):
    """(output, its LoRA): an output of toy:flux that took a LoRA at scale 0.8 (dit-compress lora); the
    toy evaluation faked (the teacher it is given, with the LoRA, is what this is about)."""
    import compress.toy.evaluate
    from compress.io_export import save_compressed
    from compress.toy import load_toy_teacher

    monkeypatch.setattr(compress.toy.evaluate, "evaluate", lambda *a, **k: {"adherence": 1.0})
    a = save_compressed(load_toy_teacher("flux"), tmp_path / "a", extra={"teacher": "toy:flux"})
    _lora(load_toy_teacher("flux"), tmp_path / "lora")
    assert main(["lora", str(a), str(tmp_path / "lora"), str(tmp_path / "new"), "--scale", "0.8"]) == 0
    capsys.readouterr()
    return tmp_path / "new", str((tmp_path / "lora").resolve())


def _said(capsys, argv: list[str]) -> str:
    assert main(argv) == 0, argv
    return capsys.readouterr().out


def test_eval_of_an_output_that_took_a_lora_names_the_lora_its_teacher_took(took, tmp_path, capsys):
    """eval measured against toy:flux with the LoRA merged (load_teacher_of) but said only 'the
    teacher toy:flux', in its line and its --json: now both name the LoRA and its scale, from its
    recorded place or the --lora giving its new one."""
    new, lora = took
    assert json.loads(_said(capsys, ["eval", str(new), "--json"])) == {
        "teacher": "toy:flux", "teacher_from": "recorded", "teacher_loras": [{"file": lora, "scale": 0.8}],
        "adherence": 1.0}
    assert _said(capsys, ["eval", str(new)]).splitlines()[0] == (
        f"measured against the teacher toy:flux, which {new} records, with the LoRA {new} took merged in "
        f"(dit-compress lora or compress.merge_lora): {lora} at scale 0.8")
    moved = str(tmp_path / "lora")
    given = json.loads(_said(capsys, ["eval", str(new), "--teacher", "toy:flux", "--lora", moved, "--json"]))
    assert given["teacher_from"] == "--teacher" and given["teacher_loras"] == [{"file": moved, "scale": 0.8}]


def test_bench_of_an_output_that_took_a_lora_names_the_lora_its_teacher_took(took, capsys):
    """bench timed the teacher with the LoRA merged but said only 'against the teacher toy:flux'."""
    new, lora = took
    timing = ["--repeats", "1", "--batch", "1", "--device", "cpu"]
    result = json.loads(_said(capsys, ["bench", str(new), "--json", *timing]))
    assert result["teacher"] == "toy:flux" and result["teacher_loras"] == [{"file": lora, "scale": 0.8}]
    assert _said(capsys, ["bench", str(new), *timing]).splitlines()[0] == (
        f"{new}: timed against the teacher toy:flux, which {new} records, with the LoRA {new} took merged in "
        f"(dit-compress lora or compress.merge_lora): {lora} at scale 0.8")


def test_a_teacher_without_loras_is_said_as_before_and_several_are_counted():
    """No teacher_loras key, and the line as it was, for an output that took none; two LoRAs counted."""
    plain = teacher_fields("toy:pixart", None, [])
    assert plain == {"teacher": "toy:pixart", "teacher_from": "recorded"}
    assert against(plain, "out") == "against the teacher toy:pixart, which out records"
    two = teacher_fields("toy:pixart", "toy:pixart", [{"file": "a", "scale": 0.5}, {"file": "b", "scale": 1}])
    assert against(two, "out") == ("against the teacher toy:pixart, given by --teacher, with the 2 LoRAs out took "
                                   "merged in (dit-compress lora or compress.merge_lora): a at scale 0.5, b at scale 1")


@pytest.mark.parametrize("command", [["eval"], ["bench", "--repeats", "1", "--batch", "1", "--device", "cpu"]])
def test_a_relative_lora_given_is_named_absolute_as_recorded(took, tmp_path, capsys, monkeypatch, command):
    """`bench OUT --lora moved.safetensors --json` named teacher_loras[0].file relative, as typed, where
    the place recorded (no --lora) is absolute: both are absolute now, in --json and in the line."""
    new, _ = took
    (tmp_path / "lora").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    moved = str((tmp_path / "moved").resolve())
    argv = [command[0], str(new), *command[1:], "--lora", "moved"]
    assert json.loads(_said(capsys, [*argv, "--json"]))["teacher_loras"] == [{"file": moved, "scale": 0.8}]
    assert f"(dit-compress lora or compress.merge_lora): {moved} at scale 0.8" in _said(capsys, argv).splitlines()[0]
