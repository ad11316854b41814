"""`eval` and `bench` (compress/commands.py, compress/bench.py) name the teacher they measured against:
in a chain of outputs (each compressed from the one before) the link before, which the output records,
or the one --teacher gives; a line above the table and the --json keys teacher and teacher_from."""

import json

import pytest

from compress.cli import main
from tests.test_commands import write_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def chain(tmp_path, capsys):
    """(teacher, a, b): a tiny Flux teacher, a compressed from it (its mlp), b from a (its attention)."""
    recipe = write_recipe(tmp_path)
    teacher, a, b = tmp_path / "teacher", tmp_path / "a", tmp_path / "b"
    assert main(["run", str(recipe), "--out", str(a), "--run-dir", str(tmp_path / "run-a")]) == 0
    (tmp_path / "b.yaml").write_text(recipe.read_text().replace("[mlp]", "[attention]"))  # a's mlp is factorized
    assert main(["run", str(tmp_path / "b.yaml"), "--teacher", str(a), "--out", str(b),
                 "--run-dir", str(tmp_path / "run-b")]) == 0
    capsys.readouterr()
    return teacher, a, b


def _said(capsys, argv: list[str]) -> str:
    assert main(argv) == 0, argv
    return capsys.readouterr().out


def test_eval_names_the_teacher_it_measured_against(chain, capsys):
    """eval's table and --json named no teacher: in a chain it measured against the link before (the
    output's record), and --teacher measured against another, the user unable to tell which."""
    teacher, a, b = chain
    recorded = json.loads((b / "report.json").read_text())["teacher"]
    assert recorded == str(a.resolve())
    own = json.loads(_said(capsys, ["eval", str(b), "--json"]))
    assert own["teacher"] == recorded and own["teacher_from"] == "recorded" and own["pred_rel_error"] > 0
    assert _said(capsys, ["eval", str(b)]).splitlines()[0] == \
        f"measured against the teacher {recorded}, which {b} records"
    other = json.loads(_said(capsys, ["eval", str(b), "--teacher", str(teacher), "--json"]))
    assert other["teacher"] == str(teacher) and other["teacher_from"] == "--teacher"
    assert other["pred_rel_error"] != own["pred_rel_error"]  # another measurement, and it says so
    assert _said(capsys, ["eval", str(b), "--teacher", str(teacher)]).splitlines()[0] == \
        f"measured against the teacher {teacher}, given by --teacher"


def test_bench_names_the_teacher_it_timed_against(chain, capsys):
    """bench said 'against its teacher' alone, and nothing in --json."""
    teacher, a, b = chain
    recorded = str(a.resolve())
    timing = ["--repeats", "1", "--batch", "1", "--device", "cpu"]
    own = json.loads(_said(capsys, ["bench", str(b), "--json", *timing]))
    assert own["teacher"] == recorded and own["teacher_from"] == "recorded" and own["params_ratio"] > 0
    assert _said(capsys, ["bench", str(b), *timing]).splitlines()[0] == \
        f"{b}: timed against the teacher {recorded}, which {b} records"
    other = json.loads(_said(capsys, ["bench", str(b), "--teacher", str(teacher), "--json", *timing]))
    assert other["teacher"] == str(teacher) and other["teacher_from"] == "--teacher"
    assert other["params_ratio"] < own["params_ratio"]  # against the uncompressed teacher: fewer of its parameters
    assert _said(capsys, ["bench", str(b), "--teacher", str(teacher), *timing]).splitlines()[0] == \
        f"{b}: timed against the teacher {teacher}, given by --teacher"


def test_eval_of_a_toys_chain_names_the_link_before(tmp_path, capsys, monkeypatch):
    """The toy scores of an output compressed from an output of toy:flux are against that output (its
    record), or the toy itself where --teacher names it; a model that is no output names none."""
    import compress.toy.evaluate
    from compress.io_export import save_compressed
    from compress.toy import load_toy_teacher

    monkeypatch.setattr(compress.toy.evaluate, "evaluate", lambda *a, **k: {"adherence": 1.0})
    a = save_compressed(load_toy_teacher("flux"), tmp_path / "a", extra={"teacher": "toy:flux"})
    d = save_compressed(load_toy_teacher("flux"), tmp_path / "d", extra={"teacher": str(a.resolve())})
    assert json.loads(_said(capsys, ["eval", str(d), "--json"])) == \
        {"teacher": str(a.resolve()), "teacher_from": "recorded", "adherence": 1.0}
    assert json.loads(_said(capsys, ["eval", str(d), "--teacher", "toy:flux", "--json"])) == \
        {"teacher": "toy:flux", "teacher_from": "--teacher", "adherence": 1.0}
    assert _said(capsys, ["eval", str(d), "--teacher", "toy:flux"]).splitlines()[0] == \
        "measured against the teacher toy:flux, given by --teacher"
    assert json.loads(_said(capsys, ["eval", "toy:flux", "--json"])) == {"adherence": 1.0}  # no teacher: none named


def test_a_streamed_output_against_a_single_file_teacher_is_compared_resident(tmp_path, capsys, monkeypatch):
    """eval of a stream: true run's output streams both models as the run did; a --teacher that is a single file
    (with --teacher-config) cannot be streamed, and eval refused it in run's words ('stream: true reads a diffusers
    folder ...'): it is compared resident, with a note saying so, to the score the streamed eval of the folder
    teacher gives; bench, which does not stream, measured it before too."""
    from safetensors.torch import save_file

    from tests.conftest import tiny_pixart
    from tests.runner_helpers import run_recipe, streamed_teacher

    out = run_recipe(tmp_path, streamed_teacher(tmp_path, "pixart").format(stream="true"), "s")
    (tmp_path / "single").mkdir()
    save_file({k: v.contiguous() for k, v in tiny_pixart().state_dict().items()},
              str(tmp_path / "single" / "t.safetensors"))  # the teacher's weights, its config in teacher/
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    streamed = json.loads(_said(capsys, ["eval", str(out), "--json"]))
    assert streamed["streamed"] is True
    argv = ["--teacher", "single/t.safetensors", "--teacher-config", "teacher"]
    assert main(["eval", str(out), "--json", *argv]) == 0
    said = capsys.readouterr()
    resident = json.loads(said.out)
    assert "streamed" not in resident and resident["pred_rel_error"] == pytest.approx(streamed["pred_rel_error"])
    assert " ".join(said.err.split()).startswith(f"note: eval compares {out} with teacher single/t.safetensors resident, not "
                                          "streamed as its run was: a single file cannot be streamed (dit-compress "
                                          "convert single/t.safetensors FOLDER, then --teacher FOLDER streams it) ")
    assert main(["bench", str(out), *argv]) == 0


def test_eval_and_bench_say_their_teacher_errors_where_the_teacher_was_given(tmp_path, capsys):
    """eval of a streamed output checked the teacher its output recorded as if --teacher had named it: a
    cut shard read 'error: --teacher: …' though no --teacher was given; and eval's and bench's refusal of a
    --teacher of another family ('teacher X is a …') lacked the '--teacher: ' their other --teacher errors
    start with."""
    from tests.conftest import tiny_flux
    from tests.runner_helpers import run_recipe, streamed_teacher

    recipe = streamed_teacher(tmp_path, "pixart")
    resident, streamed = (run_recipe(tmp_path, recipe.format(stream=s), s) for s in ("false", "true"))
    tiny_flux().save_pretrained(tmp_path / "flux")
    for command in ("eval", "bench"):
        capsys.readouterr()
        assert main([command, str(resident), "--teacher", str(tmp_path / "flux")]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"dit-compress {command}: error: --teacher: teacher {tmp_path / 'flux'} is a FluxTransformer2DModel; the model to "
            "compare with it is a PixArtTransformer2DModel")
    shard = sorted((tmp_path / "teacher").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    cut = f"{shard} is not a readable safetensors file (Error while deserializing header: invalid header length)"
    for argv, said in (([], cut), (["--teacher", str(tmp_path / "teacher")], f"--teacher: {cut}")):
        capsys.readouterr()
        assert main(["eval", str(streamed), *argv]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"dit-compress eval: error: {said}"), argv


def test_a_streamed_outputs_single_file_teacher_without_a_config_is_refused_at_its_place_without_a_note(
        tmp_path, capsys, monkeypatch):
    """T7 F3: eval of a streamed output given a single-file --teacher with no config at hand noted that it
    compared it resident, then refused it without '--teacher: '. Now the refusal alone, at its place."""
    from safetensors.torch import save_file

    from tests.conftest import tiny_pixart
    from tests.runner_helpers import run_recipe, streamed_teacher

    out = run_recipe(tmp_path, streamed_teacher(tmp_path, "pixart").format(stream="true"), "s")
    (tmp_path / "single").mkdir()
    save_file({k: v.contiguous() for k, v in tiny_pixart().state_dict().items()}, str(tmp_path / "single" / "t.safetensors"))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(out), "--teacher", "single/t.safetensors"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "note:" not in err and err.startswith("dit-compress eval: error: --teacher: single file single/t.safetensors has "
                                                 "no config.json beside it; ")
