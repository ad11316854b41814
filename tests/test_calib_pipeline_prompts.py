"""Calibration prompts (compress/calib_pipeline.py read_prompts): prompt files, num_prompts, their recipe line."""

from pathlib import Path

import pytest

from compress.calib_pipeline import read_prompts
from compress.errors import UserError
from compress.recipe import parse_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b"  \n\t\n\n", "is empty"),
    (b"a red fox\n\xc8\xab\xe6\xbb\x00\xff\n", "p.txt:2: not UTF-8 text (byte 0xe6)"),
    (b"a red fox\x00\x01\x02\n", "a binary file"),
])
def test_prompt_file_that_is_not_prompts(tmp_path, content, words):
    """An empty, blank, non-UTF-8 or binary prompt_file is a one-line UserError saying which (a
    UnicodeDecodeError traceback or 'needs calibration.prompts' before)."""
    from compress.recipe import CalibrationConfig

    (tmp_path / "p.txt").write_bytes(content)
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt")
    with pytest.raises(UserError, match=r"^calibration\.prompt_file p\.txt") as e:
        read_prompts(calib, tmp_path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_prompt_file_is_split_at_newlines_only(tmp_path):
    """One prompt per line: str.splitlines also broke a line at U+2028, U+2029, U+0085, \\x0b, \\x0c,
    \\x1c-\\x1e, so one line became two prompts. CRLF and CR line ends end a line."""
    from compress.recipe import CalibrationConfig

    odd = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
    lines = [f"a red{c}fox" for c in odd]
    (tmp_path / "p.txt").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert read_prompts(CalibrationConfig(source="pipeline", prompt_file="p.txt"), tmp_path) == lines
    (tmp_path / "p.txt").write_bytes("a cat\ra dog\r\na fox\n".encode())  # \r alone ends a line too (old Mac)
    assert read_prompts(CalibrationConfig(source="pipeline", prompt_file="p.txt"), tmp_path) == \
        ["a cat", "a dog", "a fox"]


@pytest.mark.parametrize("num_prompts, said", [(10, "the first 10 of the 30 prompts"), (64, "only 30 prompts"),
                                               (30, None), (None, None)])
def test_num_prompts_that_cuts_a_prompt_file_says_so(tmp_path, capsys, num_prompts, said):
    from compress.recipe import CalibrationConfig

    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(30)))
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt", num_prompts=num_prompts)
    assert len(read_prompts(calib, tmp_path)) == min(num_prompts or 30, 30)
    err = " ".join(capsys.readouterr().err.split())
    assert (said in err) if said else not err


@pytest.mark.parametrize("calibration, sets, teacher, said", [
    ("", ["calibration.source=pipeline"], "toy:pixart",
     r"r\.yaml \(--set calibration\.source\): calibration\.source 'pipeline' needs calibration\.prompts"),
    ("calibration:\n  source: pipeline\n", [], "toy:pixart",
     r"r\.yaml:4: calibration\.source 'pipeline' needs calibration\.prompts"),
    ("calibration:\n  seed: 1\n", [], "some/hub-model",
     r"r\.yaml:3: calibration\.source 'pipeline' \(source auto is pipeline .*\) needs calibration\.prompts"),
    ("calibration:\n  source: pipeline\n  prompt_file: p.txt\n", [], "toy:pixart",
     r"r\.yaml:5: calibration\.prompt_file p\.txt is empty"),
    ("calibration:\n  source: pipeline\n", ["calibration.prompt_file=p.txt"], "toy:pixart",
     r"r\.yaml \(--set calibration\.prompt_file\): calibration\.prompt_file p\.txt is empty"),
])
def test_a_pipeline_calibration_without_prompts_names_the_recipe_line(tmp_path, calibration, sets, teacher, said):
    """'calibration.source 'pipeline' needs calibration.prompts or prompt_file' and '... is empty'
    named no recipe file:line (nor the --set that gave the key)."""
    (tmp_path / "p.txt").write_text("\n  \n")
    recipe = parse_recipe(f"model: pixart\nteacher: {teacher}\n{calibration}passes:\n  - svd: {{ratio: 0.5}}\n",
                          "r.yaml", sets)
    with pytest.raises(UserError, match="^" + said):
        read_prompts(recipe.calibration, tmp_path)


def test_a_prompt_file_saved_with_a_byte_order_mark_reads_its_first_prompt_whole(tmp_path):
    """'UTF-8 with BOM' put U+FEFF in front of the first prompt, silently."""
    from compress.recipe import CalibrationConfig

    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfa cat\n\nsnow\n")
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt")
    assert read_prompts(calib, tmp_path) == ["a cat", "snow"]


def test_a_prompt_line_starting_with_hash_is_a_prompt_and_warned_about_once(tmp_path, capsys, monkeypatch):
    """A '#' line became a prompt silently (meant as a comment, it calibrated on its words). It stays
    a prompt, with one warning naming the file and the first such line."""
    from compress.recipe import CalibrationConfig

    monkeypatch.chdir(tmp_path)

    (tmp_path / "p.txt").write_text("a cat\n  # a [red] fox\n#snow\n")
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt", num_prompts=None)
    assert read_prompts(calib, tmp_path) == ["a cat", "# a [red] fox", "#snow"]
    err = " ".join(capsys.readouterr().err.split())
    assert err == ("warning: p.txt:2 starts with '#': every non-empty line is a prompt (this file format has "
                   "no comments)")


def test_the_hash_line_warning_names_the_file_read_not_as_the_recipe_wrote_it(tmp_path, capsys, monkeypatch):
    """Run from the recipe's parent folder, the warning named 'p.txt:2' for the file pdir/p.txt (the
    recipe's prompt_file: p.txt, read relative to the recipe's folder pdir). Now the file read, relative
    to the working folder where it is below it, else as it is."""
    from compress.recipe import CalibrationConfig

    (tmp_path / "pdir").mkdir()
    (tmp_path / "pdir" / "p.txt").write_text("a cat\n#snow\n")
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt", num_prompts=None)
    monkeypatch.chdir(tmp_path)
    for recipe_dir, named in ((Path("pdir"), "pdir/p.txt"), (tmp_path / "pdir", "pdir/p.txt"),
                              (Path("pdir/../pdir"), "pdir/../pdir/p.txt")):
        read_prompts(calib, recipe_dir)
        assert f"warning: {named}:2 starts with '#'" in " ".join(capsys.readouterr().err.split())
    monkeypatch.chdir(tmp_path / "pdir")
    read_prompts(calib, Path("."))
    assert "warning: p.txt:2 starts with '#'" in capsys.readouterr().err
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    read_prompts(calib, tmp_path / "pdir")
    assert f"warning: {tmp_path / 'pdir' / 'p.txt'}:2 starts with '#'" in " ".join(capsys.readouterr().err.split())


def test_the_hash_line_warning_counts_lines_as_the_prompts_are_split(tmp_path, capsys):
    """The '#' warning's line number counted U+2028 / \x0c inside a line as line breaks (splitlines),
    where the prompts are split at \n only: it named line 4 of a file whose '#' line is line 2."""
    from compress.recipe import CalibrationConfig

    (tmp_path / "p.txt").write_bytes("a cat\u2028on a mat\x0cby the door\r\n#snow\n".encode())
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt", num_prompts=None)
    assert read_prompts(calib, tmp_path) == ["a cat\u2028on a mat\x0cby the door", "#snow"]
    assert "p.txt:2 starts with '#'" in capsys.readouterr().err


def test_a_prompt_file_without_hash_lines_warns_nothing(tmp_path, capsys):
    from compress.recipe import CalibrationConfig

    (tmp_path / "p.txt").write_text("a cat # and a dog\nsnow\n")
    calib = CalibrationConfig(source="pipeline", prompt_file="p.txt", num_prompts=None)
    assert read_prompts(calib, tmp_path) == ["a cat # and a dog", "snow"]
    assert not capsys.readouterr().err


def test_a_recipes_prompts_are_all_used_unless_it_sets_num_prompts(tmp_path, capsys):
    """num_prompts' default (10, the toy's digit classes) cut a pipeline recipe's 14 prompts to 10,
    with a note about a key the recipe never set."""
    from compress.recipe import parse_recipe
    from compress.recipe_dump import dump_recipe

    text = ("model: pixart\nteacher: toy:pixart\ncalibration:\n  source: pipeline\n  prompts: [{}]\n"
            "passes:\n  - svd: {{targets: [mlp]}}\n")
    prompts = ", ".join(f"p{i}" for i in range(14))
    recipe = parse_recipe(text.format(prompts), str(tmp_path / "r.yaml"))
    assert read_prompts(recipe.calibration) == [f"p{i}" for i in range(14)]
    assert "num_prompts" not in capsys.readouterr().err
    dumped = parse_recipe(dump_recipe(recipe, read_prompts(recipe.calibration)), str(tmp_path / "d.yaml"))
    assert read_prompts(dumped.calibration) == [f"p{i}" for i in range(14)]  # the output's recipe.yaml too
    cut = parse_recipe(text.format(prompts).replace("source: pipeline", "source: pipeline\n  num_prompts: 4"),
                       str(tmp_path / "c.yaml"))
    assert read_prompts(cut.calibration) == ["p0", "p1", "p2", "p3"]
    assert "the first 4 of the 14 prompts" in capsys.readouterr().err
