"""compress.calib_prompts: its notes' words (prompt files and num_prompts: test_calib_pipeline_prompts)."""

import pytest

from compress.calib_prompts import read_prompts
from compress.recipe import parse_recipe


@pytest.mark.parametrize("prompts, words", [
    ('["a 3"]', "there is only 1 prompt"),
    ('["a 3", "a 4"]', "there are only 2 prompts"),
])
def test_num_prompts_beyond_the_prompts_counts_them_in_words(prompts, words, capsys):
    """'there are only 1 prompts'."""
    recipe = parse_recipe(f"model: pixart\nteacher: x\ncalibration: {{prompts: {prompts}, num_prompts: 5}}\n"
                          "passes: [svd]\n", "r.yaml")
    read_prompts(recipe.calibration)
    assert f"note: r.yaml:3: calibration.num_prompts is 5 but {words}\n" in " ".join(capsys.readouterr().err.split(" "))


@pytest.mark.parametrize("calibration, sets, words", [
    ("{prompts: [a, b, c], num_prompts: 10}", [],
     "note: r.yaml:3: calibration.num_prompts is 10 but there are only 3 prompts"),
    ("{prompts: [a, b, c], num_prompts: 2}", [],
     "note: r.yaml:3: calibration.num_prompts is 2: the first 2 of the 3 prompts are used"),
    ("{prompts: [a, b, c]}", ["calibration.num_prompts=5"],
     "note: r.yaml (--set calibration.num_prompts): calibration.num_prompts is 5 but there are only 3 prompts"),
    ("{prompts: [a], num_prompts: 2}", ["calibration.prompts=[a, b, c]"],
     "note: r.yaml:3 (with --set calibration.prompts=[a, b, c]): calibration.num_prompts is 2: the first 2"),
])
def test_the_num_prompts_notes_name_the_recipe_line_or_set(calibration, sets, words, capsys):
    """'note: calibration.num_prompts is 10 but there are only 3 prompts' named no recipe line: now
    num_prompts' line (or its --set), with the --sets of the prompts it counted."""
    recipe = parse_recipe(f"model: pixart\nteacher: x\ncalibration: {calibration}\npasses: [svd]\n", "r.yaml", sets)
    read_prompts(recipe.calibration)
    assert words in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("prompts, noted", [('["a 3"]', True), ('["a 3", "a 4"]', False)])
def test_one_prompt_says_it_is_held_out_too(prompts, noted, capsys):
    """One prompt calibrates and gives the held-out inputs (calib_pipeline's split): the held-out error
    was reported as if on unseen prompts without a word."""
    recipe = parse_recipe(f"model: pixart\nteacher: x\ncalibration: {{prompts: {prompts}}}\npasses: [svd]\n", "r.yaml")
    read_prompts(recipe.calibration)
    err = " ".join(capsys.readouterr().err.split())
    assert ("calibration has one prompt: it also gives the held-out inputs (with other noise)" in err) == noted


@pytest.mark.parametrize("calibration, sets, words", [
    ('{prompts: ["a 3"]}', [], "note: r.yaml:3: calibration has one prompt"),
    ('{prompts: [a, b, c], num_prompts: 1}', [], "note: r.yaml:3: calibration has one prompt"),
    ('{prompts: [a, b]}', ["calibration.num_prompts=1"],
     "note: r.yaml (--set calibration.num_prompts): calibration has one prompt"),
    ('{prompts: [a, b], num_prompts: 1}', ["calibration.prompts=[a, b, c]"],
     "note: r.yaml:3 (with --set calibration.prompts=[a, b, c]): calibration has one prompt"),
    ("{num_prompts: 4}", ["calibration.prompts=[a]"],
     "note: r.yaml (--set calibration.prompts): calibration has one prompt"),
])
def test_the_one_prompt_note_names_the_recipe_line_or_set(calibration, sets, words, capsys):
    """'note: calibration has one prompt ...' named no recipe line, where the num_prompts notes name
    theirs (70819a6): now the line (or --set) of num_prompts where it cut the list to one, else of
    prompts, with the --sets of the other prompt keys."""
    recipe = parse_recipe(f"model: pixart\nteacher: x\ncalibration: {calibration}\npasses: [svd]\n", "r.yaml", sets)
    read_prompts(recipe.calibration)
    assert words in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("keys, words", [
    ('prompts: ["a 3"]', "calibration.prompts"),
    ("prompt_file: p.txt", "the lines calibration.prompt_file p.txt holds"),
    ('prompts: ["a 3"], prompt_file: p.txt, num_prompts: 2',
     "calibration.prompts and the lines calibration.prompt_file p.txt holds, the first 2 (calibration.num_prompts)"),
])
def test_the_prompts_are_named_by_the_keys_the_recipe_reads_them_from(keys, words):
    """'the calibration prompts changed (calibration.prompts, or the lines calibration.prompt_file holds)'
    named a prompt file the recipe has none of: the keys it has, and num_prompts where it sets it."""
    from compress.calib_prompts import prompts_in_words

    recipe = parse_recipe(f"model: pixart\nteacher: x\ncalibration: {{{keys}}}\npasses: [svd]\n", "r.yaml")
    assert prompts_in_words(recipe.calibration) == words


def test_a_prompt_file_under_home_is_read_and_one_not_read_names_the_path_read(tmp_path, monkeypatch):
    """prompt_file: ~/p.txt passed the check (which expands ~) and then failed, 'calibration.prompt_file
    ~/p.txt: No such file or directory', naming no path: the reader did not expand it."""
    from compress.errors import UserError

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "p.txt").write_text("a cat\na dog\n")
    recipe = parse_recipe("model: pixart\nteacher: x\ncalibration: {prompt_file: ~/p.txt}\npasses: [svd]\n",
                          str(tmp_path / "r.yaml"))
    assert read_prompts(recipe.calibration, tmp_path / "recipes") == ["a cat", "a dog"]
    recipe.calibration.prompt_file = "gone.txt"
    with pytest.raises(UserError, match=rf"calibration.prompt_file gone.txt: No such file or directory "
                                        rf"\({tmp_path}/recipes/gone.txt\)$"):
        read_prompts(recipe.calibration, tmp_path / "recipes")
