"""compress.runner_prompts: the prompts a recipe reads, digested before the teacher loads, by the rule
the run reads them by (calib_prompts.read_prompts)."""

from pathlib import Path

import pytest

from compress.calib_prompts import chosen_prompts, prompts_digest as digest_of, read_prompts
from compress.recipe import parse_recipe
from compress.runner_prompts import prompts_digest

FILE = "a cat\n\n  a dog  \r\n# not a comment\r\n\n\u2028a fox\u2028by the door\n\n"  # 4 prompts
READ = ["a cat", "a dog", "# not a comment", "a fox\u2028by the door"]  # its prompts


@pytest.mark.parametrize("teacher, keys", [
    ("x", "prompt_file: p.txt"),  # blank lines, CRLF, a '#' line (a prompt), U+2028 inside one
    ("x", "prompt_file: p.txt, num_prompts: 2"),  # a cut
    ("x", "prompt_file: p.txt, num_prompts: 9"),  # more asked than there are
    ("x", "prompts: [a red car], prompt_file: p.txt, num_prompts: 3"),  # inline first, then the file's
    ("x", "prompts: [a red car, a tree], num_prompts: 1"),
    ("toy:pixart", "source: pipeline, prompts: [a 1, a 2, a 3]"),  # a toy teacher's pipeline on inline prompts
    ("toy:pixart", "source: pipeline, prompt_file: sub/../p.txt, num_prompts: 10"),
])
def test_the_digest_is_of_the_prompts_the_run_reads(tmp_path, monkeypatch, teacher, keys):
    """prompts_digest resolved the prompt file and the num_prompts cut itself, beside read_prompts: both
    now use calib_prompts.chosen_prompts; they agree (from another working folder too: the file is the
    recipe's folder's)."""
    (tmp_path / "p.txt").write_bytes(FILE.encode())
    (tmp_path / "sub").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    recipe = parse_recipe(f"model: pixart\nteacher: {teacher}\ncalibration: {{{keys}}}\npasses: [svd]\n",
                          str(tmp_path / "r.yaml"))
    read = read_prompts(recipe.calibration, Path(recipe.path).parent)
    assert prompts_digest(recipe) == digest_of(read)
    if keys == "prompt_file: p.txt":
        assert read == READ
    assert len(read) == min(len(recipe.calibration.prompts) + (4 if "p.txt" in keys else 0),
                            recipe.calibration.num_prompts if "num_prompts" in keys else 99)


def test_chosen_prompts_is_the_one_rule(tmp_path):
    """calibration.prompts then the file's prompts, cut to num_prompts only where the recipe sets it (its
    default, 10, is the toy source's count, not a cut)."""
    lines = [f"p{i}" for i in range(12)]
    given = parse_recipe("model: pixart\nteacher: x\ncalibration: {prompts: [a], num_prompts: 3}\npasses: [svd]\n",
                         "r.yaml").calibration
    default = parse_recipe("model: pixart\nteacher: x\ncalibration: {prompts: [a]}\npasses: [svd]\n",
                           "r.yaml").calibration
    assert chosen_prompts(given, lines) == ["a", "p0", "p1"]
    assert chosen_prompts(default, lines) == ["a", *lines]  # 13 prompts: not cut at 10
