"""compress.recipe_folder: a folder given where a recipe file goes says what it is and what to do."""

import json

import pytest

from compress import cli
from compress.errors import UserError
from compress.recipe import load_recipe

HEAD = "{path}: a folder, where a recipe YAML file was expected"


def _folder(tmp_path, files: dict):
    folder = tmp_path / "real_flux"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_text(data if isinstance(data, str) else json.dumps(data))
    return folder


@pytest.mark.parametrize("files, words", [
    ({}, " (see recipes/)"),
    ({"model_index.json": {"_class_name": "FluxPipeline"}},
     "; it is a diffusers pipeline: to compress it, make it a recipe's teacher: dit-compress plan "
     "flux-dev-lite --teacher {path} (or teacher: {path} in the recipe)"),
    ({"config.json": {"_class_name": "PixArtTransformer2DModel"}},
     "; it is a diffusers transformer: to compress it, make it a recipe's teacher: dit-compress plan "
     "pixart-sigma-50 --teacher {path} (or teacher: {path} in the recipe)"),
    ({"config.json": {"_class_name": "Other"}},
     "; it is a diffusers transformer: to compress it, make it a recipe's teacher: dit-compress plan "
     "RECIPE.yaml --teacher {path} (or teacher: {path} in the recipe)"),
    ({"config.json": {"compression": {"format": 1}}, "report.json": {}, "recipe.yaml": "model: flux\n"},
     "; it is a dit-compress output: look at it with dit-compress inspect {path} (or eval {path}), "
     "or pass the recipe that made it, {path}/recipe.yaml"),
    ({"report.json": {}}, "; it is a dit-compress output: look at it with dit-compress inspect {path} "
                          "(or eval {path})"),
])
def test_a_folder_for_a_recipe_says_what_it_is(tmp_path, files, words):
    """`dit-compress plan real_flux` said only 'real_flux: Is a directory'."""
    folder = _folder(tmp_path, files)
    with pytest.raises(UserError) as e:
        load_recipe(folder)
    assert str(e.value) == (HEAD + words).format(path=folder)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_plan_and_run_of_a_folder_print_one_line(tmp_path, capsys, command):
    """The hint repeats the command typed: `run FOLDER` said `dit-compress plan ...`."""
    folder = _folder(tmp_path, {"model_index.json": {"_class_name": "FluxPipeline"}})
    assert cli.main([command, str(folder)]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(f"it is a diffusers pipeline: to compress it, make it a recipe's "
                                            f"teacher: dit-compress {command} flux-dev-lite "
                                            f"--teacher {folder} (or teacher: {folder} in the recipe)")


def test_importance_of_a_folder_named_like_a_recipe_says_importance(tmp_path, capsys):
    """importance reads a .yaml source as a recipe: a folder so named gets importance's hint."""
    folder = tmp_path / "flux.yaml"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert cli.main(["importance", str(folder)]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(f"dit-compress importance flux-dev-lite --teacher {folder} "
                                            f"(or teacher: {folder} in the recipe)")


@pytest.mark.parametrize("given, meant", [
    ("recipes/toy-pixart.yml", "; did you mean 'recipes/toy-pixart.yaml'?"),  # a tester's c47
    ("recipes/toy-pixart", "; did you mean 'recipes/toy-pixart.yaml'?"),
    ("recipes/toy-flux.yaml", "; did you mean 'recipes/toy-flux.yml'?"),
    ("recipes/toy-pixar.yaml", "; did you mean 'recipes/toy-pixart.yaml'?"),
    ("recipes/zzzzzz.yaml", ""),  # by name: the folder they share would make every recipe close
    ("nothere/toy-pixart.yaml", "; the shipped recipe of that name: dit-compress {command} toy-pixart"),
    ("nothere/zzzzzz.yaml", ""),
    ("recipe/toy-pixart.yaml", "; did you mean 'recipes/toy-pixart.yaml'?"),  # its folder misspelt
    ("recipe/toy-pixart.yml", "; did you mean 'recipes/toy-pixart.yaml'?"),
    ("./recipe/toy-flux.yaml", "; did you mean 'recipes/toy-flux.yml'?"),
    ("recipe/zzzzzz.yaml", "; no folder recipe/ here: did you mean 'recipes/'?"),
    ("nothere/sub/toy-pixart.yaml", "; the shipped recipe of that name: dit-compress {command} toy-pixart"),
])
def test_a_recipe_not_there_names_the_recipe_of_its_folder_meant(tmp_path, monkeypatch, capsys, given, meant):
    """`plan recipes/toy-pixart.yml` said the OS's 'recipes/toy-pixart.yml: No such file or directory',
    though recipes/toy-pixart.yaml was there: the YAML file of that folder of the same name (another
    suffix), else of a close name, is named; for run, plan and importance, and load_recipe. Its folder
    misspelt (`plan recipe/toy-pixart.yaml` with recipes/ here) said no more than 'no such recipe': the
    recipe of the folder of the closest name is named, or that folder where none of its recipes is close;
    where none of a folder here is, the shipped recipe of its file's name (recipe_shipped.shipped_hint)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    for name in ("toy-pixart.yaml", "toy-flux.yml", "notes.txt"):
        (tmp_path / "recipes" / name).write_text("model: pixart\n")
    for command in ("run", "plan", "importance"):  # importance of no .yaml: a recipe or a teacher not there
        said = f"no such recipe {given}{meant.format(command=command)}"
        assert cli.main([command, given]) == 2
        words = f"{given}: no such recipe or teacher{meant}" if command == "importance" and "." not in given else said
        assert capsys.readouterr().err == f"dit-compress {command}: error: {words}\n"
    with pytest.raises(UserError) as e:
        load_recipe(given)
    assert str(e.value) == f"no such recipe {given}{meant.format(command='plan')}"


@pytest.mark.parametrize("command", ["run", "plan"])  # importance takes a name without .yaml for a teacher's
def test_a_recipe_of_no_regular_file_is_refused_before_it_is_read(command, capsys):
    """`plan /dev/zero` read it until memory ran out (a pipe: until it ended)."""
    assert cli.main([command, "/dev/zero"]) == 2
    assert capsys.readouterr().err == f"dit-compress {command}: error: /dev/zero: a character device, not a file: a recipe is a " \
                                      "YAML file\n"


def test_a_recipe_larger_than_a_recipe_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "model.yaml"
    with open(big, "wb") as f:
        f.truncate(11 * 2**20)  # sparse: nothing written
    with pytest.raises(UserError) as e:
        load_recipe(big)
    assert str(e.value) == f"{big}: 11 MB, larger than a recipe (10 MB at most; a recipe is a YAML file of a few " \
                           "KB): is it the recipe?"


def test_a_prompt_file_of_no_regular_file_says_what_it_is(tmp_path):
    """`prompt_file: /dev/zero` said 'not found: /dev/zero' (it is there: no regular file)."""
    from compress.io_source_calib import check_prompt_file
    from compress.recipe import parse_recipe

    text = "model: pixart\nteacher: x\ncalibration:\n  source: pipeline\n  prompt_file: /dev/zero\npasses: [svd]\n"
    with pytest.raises(UserError) as e:
        check_prompt_file(parse_recipe(text, str(tmp_path / "r.yaml")), "pipeline")
    assert str(e.value) == f"{tmp_path}/r.yaml:5: calibration.prompt_file /dev/zero is a character device, not a " \
                           "file of prompts: /dev/zero"


@pytest.mark.parametrize("given, meant", [
    ("anchor.yaml", ""),  # T1: 'did you mean 'base.yaml'?', by the '.yaml' they share
    ("bse.yaml", "; did you mean 'base.yaml'?"),
    ("base.yml", "; did you mean 'base.yaml'?"),
    ("flux.yaml", ""),
])
def test_a_recipe_not_there_is_matched_by_its_stem(tmp_path, monkeypatch, given, meant):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("model: pixart\n")
    with pytest.raises(UserError) as e:
        load_recipe(given)
    assert str(e.value) == f"no such recipe {given}{meant}"


def _fifo(tmp_path, data: bytes):
    """A named pipe in `tmp_path` that a thread writes `data` into once it is opened (a pipe: `<(cat r.yaml)`)."""
    import os
    import threading

    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)

    def write():
        try:
            with open(fifo, "wb") as f:
                f.write(data)
        except BrokenPipeError:  # the reader stopped: a recipe sent too long
            pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return fifo, thread


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_recipe_from_a_pipe_is_read(command, tmp_path, capsys):
    """`plan <(cat recipes/toy-flux.yaml)` said '/dev/fd/63: a pipe, not a file: a recipe is a YAML file'."""
    from pathlib import Path

    fifo, thread = _fifo(tmp_path, Path("recipes/toy-flux.yaml").read_bytes())
    if command == "plan":
        assert cli.main(["plan", str(fifo)]) == 0, capsys.readouterr().err
        assert "total parameters" in capsys.readouterr().out
    else:
        assert load_recipe(fifo, command="run").teacher == "toy:flux"
    thread.join(5)


def test_a_pipe_sending_more_than_a_recipe_is_refused_once_that_much_is_read(tmp_path):
    """A pipe that never ends (`plan <(yes)`) is read to RECIPE_MB + 1 bytes, not until memory runs out."""
    fifo, thread = _fifo(tmp_path, b"# x\n" * (3 * 2**20))  # 12 MB
    with pytest.raises(UserError) as e:
        load_recipe(fifo)
    assert str(e.value) == f"{fifo}: more than 10 MB, larger than a recipe (10 MB at most; a recipe is a YAML " \
                           "file of a few KB): is it the recipe?"
    thread.join(5)


def test_a_socket_given_for_a_recipe_is_refused(tmp_path):
    import socket

    path = tmp_path / "r.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(UserError) as e:
            load_recipe(path)
    assert str(e.value) == f"{path}: a socket, not a file: a recipe is a YAML file"
