"""An output's own recipe.yaml run again takes that output's name for its default folders (not
out/recipe and runs/recipe, where every output's recipe replaced another's), and --overwrite says when it
replaces an output of another teacher or model family (output_names; the CLI's folders; Ctrl-C's note
where the output is there: tests/test_cli_interrupts.py)."""

import json
from pathlib import Path

import pytest

from compress import cli

RECIPE = """\
model: pixart
teacher: toy:pixart
calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}
passes:
  - svd: {targets: [attention, mlp], ratio: 0.5, multiple: 2}
"""


def _output(folder: Path, class_name: str = "PixArtTransformer2DModel", teacher: str = "toy:pixart") -> Path:
    """A folder made as an output's files say one is: config.json with a compression section, report.json
    and its own recipe.yaml (RECIPE)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": class_name, "compression": {"teacher": teacher}}))
    (folder / "report.json").write_text("{}")
    (folder / "recipe.yaml").write_text(RECIPE)
    return folder / "recipe.yaml"


def test_an_outputs_own_recipe_takes_its_outputs_name(tmp_path):
    from compress.output_names import default_name

    assert default_name(_output(tmp_path / "out" / "imp_only")) == "imp_only"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "recipe.yaml").write_text(RECIPE)  # a user's own recipe.yaml, in no output
    assert default_name(tmp_path / "mine" / "recipe.yaml") == "recipe"
    assert default_name("recipes/toy-flux.yaml") == "toy-flux"


@pytest.fixture
def runs(monkeypatch, tmp_path):
    """The (out, run_dir, overwrite) each `run` hands its Runner, which runs nothing."""
    import compress.runner

    handed = []

    class Recorder:
        def __init__(self, recipe, out, run_dir, **kw):
            handed.append((str(out), str(run_dir), kw["overwrite"]))

        def run(self):
            return None

    monkeypatch.setattr(compress.runner, "Runner", Recorder)
    monkeypatch.chdir(tmp_path)
    return handed


def test_running_an_outputs_recipe_again_writes_that_output_not_out_recipe(runs, tmp_path, capsys):
    """'dit-compress run out/imp_only/recipe.yaml' wrote out/recipe and ran in runs/recipe, where the
    next output's recipe.yaml, of another model, replaced it (with --overwrite, saying nothing)."""
    imp_only, extremes = _output(tmp_path / "out" / "imp_only"), _output(tmp_path / "out" / "c_extremes")
    assert cli.main(["run", str(imp_only.relative_to(tmp_path))]) == 0
    assert cli.main(["run", str(extremes.relative_to(tmp_path)), "--overwrite"]) == 0
    assert runs == [("out/imp_only", "runs/imp_only", False), ("out/c_extremes", "runs/c_extremes", True)]
    err = capsys.readouterr().err
    assert "out/imp_only/recipe.yaml is the recipe saved in the output" in err and "out/imp_only and runs/imp_only" in err
    runs.clear()
    assert cli.main(["run", "out/imp_only/recipe.yaml", "--out", "o", "--run-dir", "r"]) == 0
    assert runs == [("o", "r", False)] and "saved in the output" not in capsys.readouterr().err


def test_a_piped_recipe_runs_into_out_pipe_not_its_fd_number(runs, tmp_path):
    """'dit-compress run <(cat r.yaml)' ran into out/63 and runs/63 (the stem of /dev/fd/63); now out/pipe and
    runs/pipe, and a recipe read from standard input (run /dev/stdin) out/stdin."""
    import os

    from compress.output_names import default_name

    read, write = os.pipe()
    os.write(write, RECIPE.encode())
    os.close(write)
    try:
        assert cli.main(["run", f"/dev/fd/{read}"]) == 0
    finally:
        os.close(read)
    assert runs == [("out/pipe", "runs/pipe", False)]
    assert [default_name(p) for p in ("/dev/stdin", "/dev/fd/0", "/proc/self/fd/0", "/proc/self/fd/5", "/dev/fd/63")] \
        == ["stdin", "stdin", "stdin", "pipe", "pipe"]
    assert default_name("/tmp/63") == "63" and default_name("fd/0.yaml") == "0"  # no pipe's name


def test_overwrite_says_it_replaces_an_output_of_another_teacher_or_family(tmp_path):
    from compress.output_names import replaced_note

    _output(tmp_path / "flux", "FluxTransformer2DModel", "toy:flux")
    assert replaced_note(tmp_path / "flux", "toy:pixart", "pixart") == (
        f"--overwrite replaces {tmp_path / 'flux'}, an output of another teacher and model family (toy:flux, flux; "
        "this run: toy:pixart, pixart)")
    _output(tmp_path / "pixart")
    assert replaced_note(tmp_path / "pixart", "toy:pixart", "pixart") is None  # a rerun of its own kind
    assert replaced_note(tmp_path / "none", "toy:pixart", "pixart") is None  # nothing there


def test_a_run_with_overwrite_says_it_replaces_an_output_of_another_family(pixart, capsys):
    """A PixArt run's --overwrite replaced a Flux output (the recipe.yaml of one output run with
    --overwrite into another's folder) without a word; now a note before anything loads."""
    tmp_path, make, _ = pixart
    out = _output(tmp_path / "flux-out", "FluxTransformer2DModel", "toy:flux").parent
    make(out, overwrite=True).run()
    assert (f"note: --overwrite replaces {out}, an output of another teacher and model family (toy:flux, flux; "
            f"this run: {tmp_path / 'teacher'}, pixart)") in capsys.readouterr().err.replace("\n", " ")
    assert json.loads((out / "config.json").read_text())["_class_name"] == "PixArtTransformer2DModel"


def test_the_help_of_out_and_run_dir_names_an_outputs_own_recipe(capsys):
    """--out and --run-dir's help said only 'default: out/<recipe name>' ('runs/<recipe name>')."""
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    for parent in ("out", "runs"):
        assert f"(default: {parent}/<recipe name>; for an output's own recipe.yaml, {parent}/<that output's name>)" \
            in said


def test_an_output_teacher_is_the_folder_load_teacher_reads(tmp_path):
    """One rule for a teacher as given (runner_memory's advice, lora_teacher's moved-teacher note): an
    output folder, or a pipeline's whose transformer/ is one; not a toy, a Hub id, a file, a plain folder."""
    from compress.output_names import is_output_teacher

    _output(tmp_path / "out")
    _output(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    (tmp_path / "file.safetensors").write_text("")
    assert is_output_teacher(str(tmp_path / "out")) and is_output_teacher(tmp_path / "pipe")
    assert not any(is_output_teacher(s) for s in ("toy:pixart", "org/name", str(tmp_path / "plain"),
                                                  str(tmp_path / "file.safetensors"), str(tmp_path / "none")))


def _lora_d(recipe: Path, *loras: dict) -> Path:
    """The output of `recipe` (_output) as `dit-compress lora` leaves it: its config records `loras`."""
    config = json.loads((recipe.parent / "config.json").read_text())
    config["compression"]["loras"] = list(loras)
    (recipe.parent / "config.json").write_text(json.dumps(config))
    return recipe


def test_the_recipe_of_an_output_that_took_a_lora_says_the_rerun_leaves_it_out(tmp_path):
    """`run out/L/recipe.yaml --out out/L2` of an output that took a LoRA (dit-compress lora) wrote the
    model before the LoRA (T5: sha256-equal to out/A) without a word: a note says so and how to merge it."""
    from compress.output_names import lora_rerun_note

    one = _lora_d(_output(tmp_path / "L"), {"source": "/l/a.safetensors", "scale": 0.8, "modules": 6})
    assert lora_rerun_note(one, Path("out/L2")) == (
        f"{tmp_path / 'L'} took a LoRA after its run (dit-compress lora or compress.merge_lora), which recipe.yaml "
        "does not hold: this run compresses the model before it; `dit-compress lora out/L2 /l/a.safetensors NEW "
        "--scale 0.8` merges it again")
    two = _lora_d(_output(tmp_path / "L3"), {"source": "/l/a.safetensors", "scale": 0.8}, {"source": "org/b", "scale": 1})
    assert lora_rerun_note(two, Path("o")).endswith(
        "took 2 LoRAs after its run (dit-compress lora or compress.merge_lora), which recipe.yaml does not hold: this "
        "run compresses the model before them; merging them again takes, in order, "
        "`dit-compress lora o /l/a.safetensors NEW-1 --scale 0.8`, then `dit-compress lora NEW-1 org/b NEW --scale 1`")
    # R3: the folders named, each a runnable command
    three = _lora_d(_output(tmp_path / "L4"), *({"source": f"/{c}", "scale": 1} for c in "xyz"))
    assert lora_rerun_note(three, Path("o")).endswith(
        "`dit-compress lora o /x NEW-1 --scale 1`, then `dit-compress lora NEW-1 /y NEW-2 --scale 1`, then "
        "`dit-compress lora NEW-2 /z NEW --scale 1`")
    assert lora_rerun_note(_output(tmp_path / "A"), Path("o")) is None  # no LoRA: the rerun is the same model
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "recipe.yaml").write_text(RECIPE)
    assert lora_rerun_note(tmp_path / "mine" / "recipe.yaml", Path("o")) is None  # no output's recipe


def test_a_run_of_a_lora_d_outputs_recipe_notes_it_before_anything_loads(tmp_path, capsys):
    """The run says it (stderr, one line), also where it then refuses the output that is there."""
    from compress.errors import UserError
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    recipe = _lora_d(_output(tmp_path / "out" / "L"), {"source": "/l/a.safetensors", "scale": 0.8})
    runner = Runner(parse_recipe(recipe.read_text(), str(recipe)), recipe.parent, tmp_path / "runs" / "L")
    with pytest.raises(UserError, match="exists"):
        runner.run()
    err = capsys.readouterr().err
    assert " ".join(err.split()).count("note: ") == 1 and "does not hold: this run compresses the model before it" in \
        " ".join(err.split()), err


@pytest.mark.parametrize("section", [None, [1], "x"])
def test_an_outputs_config_whose_compression_is_no_mapping_gives_no_traceback(tmp_path, section):
    """R1: a config.json whose `compression` is null, a list or text (damaged) made `run O/recipe.yaml --out
    X` a traceback (AttributeError in lora_rerun_note, replaced_note), where it said 'output folder X exists'."""
    from compress.output_names import lora_rerun_note, replaced_note

    recipe = _output(tmp_path / "odd")
    (recipe.parent / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel",
                                                           "compression": section}))
    assert lora_rerun_note(recipe, Path("o")) is None
    assert replaced_note(recipe.parent, "toy:pixart", "pixart") == (
        f"--overwrite replaces {recipe.parent}, an output of another model family (None, flux; this run: "
        "toy:pixart, pixart)")


def test_the_rerun_notes_lora_commands_run_in_a_shell_and_a_state_dict_is_no_command(tmp_path):
    """R1: with --out 'my out' the note gave `dit-compress lora my out /l/a b.safetensors NEW ...`, and a LoRA
    merged from a state dict (Python API) `dit-compress lora o the LoRA state dict NEW --scale 1.0`."""
    from compress.output_names import lora_rerun_note

    spaced = _lora_d(_output(tmp_path / "L"), {"source": "/l/a b.safetensors", "scale": 0.8})
    assert lora_rerun_note(spaced, Path("my out")).endswith(
        "`dit-compress lora 'my out' '/l/a b.safetensors' NEW --scale 0.8` merges it again")
    state = _lora_d(_output(tmp_path / "S"), {"source": "the LoRA state dict", "scale": 1.0})
    assert lora_rerun_note(state, Path("o")).endswith(
        "merging it again takes compress.merge_lora of o with the same LoRA state dict at scale 1.0, saved as NEW "
        "(it was merged from a state dict through the Python API: no command names it)")
    mixed = _lora_d(_output(tmp_path / "M"), {"source": "/x", "scale": 1}, {"source": "the LoRA state dict",
                                                                            "scale": 0.5}, {"scale": 2})
    assert lora_rerun_note(mixed, Path("o")).endswith(
        "merging them again takes, in order, `dit-compress lora o /x NEW-1 --scale 1`, then compress.merge_lora of "
        "NEW-1 with the same LoRA state dict at scale 0.5, saved as NEW-2 (it was merged from a state dict through "
        "the Python API: no command names it), then compress.merge_lora of NEW-2 with that LoRA at scale 2, saved "
        "as NEW (config.json records no file of it: no command names it)")


def test_the_rerun_note_of_a_lora_merged_from_a_state_dict_does_not_say_dit_compress_lora_merged_it(tmp_path):
    """S47 review: an output that took a LoRA from a state dict (compress.merge_lora, then a save) was said to
    have taken it '(dit-compress lora)', the same note then saying it was merged through the Python API."""
    from compress.output_names import lora_rerun_note

    state = _lora_d(_output(tmp_path / "S"), {"source": "the LoRA state dict", "scale": 1.0})
    assert lora_rerun_note(state, Path("o")) == (
        f"{tmp_path / 'S'} took a LoRA after its run (dit-compress lora or compress.merge_lora), which recipe.yaml "
        "does not hold: this run compresses the model before it; merging it again takes compress.merge_lora of o "
        "with the same LoRA state dict at scale 1.0, saved as NEW (it was merged from a state dict through the "
        "Python API: no command names it)")


@pytest.mark.parametrize("scale", [{}, {"scale": None}, {"scale": "x"}, {"scale": True}, {"scale": float("nan")}])
def test_the_rerun_note_of_a_lora_recorded_without_its_scale_gives_no_scale_flag(tmp_path, scale):
    """S47 review: a LoRA record with a file and no scale (a damaged config.json) gave `dit-compress lora 'my out'
    x.safetensors NEW --scale None`, which argparse refuses; a state dict's 'at scale None'."""
    from compress.output_names import lora_rerun_note

    one = _lora_d(_output(tmp_path / "L"), {"source": "x.safetensors", **scale})
    assert lora_rerun_note(one, Path("my out")).endswith(
        "this run compresses the model before it; `dit-compress lora 'my out' x.safetensors NEW` with the --scale it "
        "was merged at (config.json records none) merges it again")
    state = _lora_d(_output(tmp_path / "S"), {"source": "the LoRA state dict", **scale})
    assert lora_rerun_note(state, Path("o")).endswith(
        "compress.merge_lora of o with the same LoRA state dict at the scale it was merged at (config.json records "
        "none), saved as NEW (it was merged from a state dict through the Python API: no command names it)")


@pytest.mark.parametrize("command", ["inspect", "eval"])
def test_a_config_nested_past_pythons_recursion_limit_is_no_output_in_one_line(tmp_path, capsys, command):
    """DIR/config.json nested 100,000 brackets deep: `inspect DIR` / `eval DIR` ended in a RecursionError
    traceback (R3 stop 50: output_config caught OSError and ValueError only)."""
    from compress.cli import main
    from compress.output_names import output_config

    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert output_config(tmp_path) is None
    assert main([command, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", ["inspect", "eval"])
def test_a_finished_record_nested_past_pythons_recursion_limit_is_read_as_none_in_one_line(tmp_path, capsys, command):
    """runs/NAME/stages/finished.json nested 100,000 brackets deep (F1 stop 51: _recorded_output caught OSError
    and ValueError only): `inspect runs/NAME` says the run's output is gone in one line, not a RecursionError."""
    from compress.cli import main
    from compress.output_names import run_output
    from compress.runner_resume import FINISHED

    folder = tmp_path / "runs" / "toy"
    (folder / "stages").mkdir(parents=True)
    (folder / "stages" / FINISHED).write_text("[" * 100_000 + "]" * 100_000)
    assert run_output(folder) is None
    assert main([command, str(folder)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "gone" in err, err
