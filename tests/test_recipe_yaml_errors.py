"""compress/recipe_yaml_errors.py: a recipe's YAML syntax error in plain words, at the line the user
wrote wrong (a tester's k07, k19, y03, y04: PyYAML's words, one line late)."""

from pathlib import Path

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe

TOY_TEXT = (Path(__file__).parents[1] / "recipes" / "toy-pixart.yaml").read_text()
TOY = TOY_TEXT.split("\n")


def _with(line: int, text: str) -> str:
    """recipes/toy-pixart.yaml with its 1-based `line` replaced by `text`."""
    lines = list(TOY)
    lines[line - 1] = text
    return "\n".join(lines)


def _said(text: str) -> str:
    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml")
    return str(e.value)


@pytest.mark.parametrize("line, text, said", [
    (14, "  seed 0", "r.yaml:14: malformed YAML: a key without ':' (KEY: VALUE): 'seed 0'"),  # k07 (was :15)
    (7, "model pixart", "r.yaml:7: malformed YAML: a key without ':' (KEY: VALUE): 'model pixart'"),
    (21, "    ratio: 0.6", "r.yaml:21: malformed YAML: this line's indentation does not match the lines above: "
                           "'ratio: 0.6' is indented 4 spaces, its neighbour 6"),  # k19 (was :22)
    (22, "        multiple: 8", "r.yaml:22: malformed YAML: this line's indentation does not match the lines "
                                "above: 'multiple: 8' is indented 8 spaces, its neighbour 6"),
    (19, "     targets: [attention]", "r.yaml:19: malformed YAML: this line's indentation does not match the "
                                      "lines above: 'targets: [attention]' is indented 5 spaces, its neighbour 6"),
    (17, " - remove_blocks: {count: {blocks: 1}}", "r.yaml:17: malformed YAML: this line's indentation does not "
     "match the lines above: '- remove_blocks: {count: {blocks: 1}}' is indented 1 space, its neighbour 2"),
    (19, "      targets: [attention, cross_attention, mlp",
     "r.yaml:19: malformed YAML: unclosed '[' (no ']' closes it on this line)"),  # y04 (was :20)
    (25, "      ranks: {modulation: 8", "r.yaml:25: malformed YAML: unclosed '{' (no '}' closes it on this line)"),
    (7, 'model: "pixart', "r.yaml:7: malformed YAML: unclosed '\"' (no '\"' closes it on this line)"),
    (19, "      targets: [attention, mlp]]", "r.yaml:19: malformed YAML: a ']' at column 32 that closes no '['"),
    (13, "\tbatch_size: 64", "r.yaml:13: malformed YAML: a tab; indent with spaces, not tabs"),  # y03
    (14, "  seed:\t0", "r.yaml:14: malformed YAML: a tab at column 8; YAML separates with spaces, not tabs"),
])
def test_a_yaml_mistake_is_said_in_words_at_the_line_written_wrong(line, text, said):
    assert _said(_with(line, text)) == said


@pytest.mark.parametrize("line, text, said", [
    (19, "      targets: [a, b: c: d]", "r.yaml:19: malformed YAML (expected ',' or ']', but got ':')"),
])
def test_a_mistake_without_plain_words_keeps_pyyamls_at_its_line(line, text, said):
    assert _said(_with(line, text)) == said


AFTER_A_BLOCK = "version: 1\nmodel: pixart\nteacher: toy:pixart\ncalibration:\n  num_prompts: 20\n  timesteps: 8\n"


@pytest.mark.parametrize("text, said", [
    (AFTER_A_BLOCK + "description: a note: with colon\npasses:\n  - svd: {targets: [mlp]}\n",
     "r.yaml:7: malformed YAML: a value with ': ' in it: quote it (description: 'a note: with colon')"),
    (AFTER_A_BLOCK + "export: {dtype: float32}: x\npasses:\n  - svd: {targets: [mlp]}\n",
     "r.yaml:7: malformed YAML: ': x' after the closing '}' of export's value; remove it"),
    ("version: 1\nmodel: pixart\ncalibration:\n  prompts:\n    - a cat\n  num_prompts: 2: 3\n",
     "r.yaml:6: malformed YAML: a value with ': ' in it: quote it (num_prompts: '2: 3')"),
    (_with(7, "model: pixart: x"), "r.yaml:7: malformed YAML: a value with ': ' in it: quote it (model: 'pixart: x')"),
    (_with(10, "  num_prompts: 20: x"),  # a block's first key (was PyYAML's '(mapping values are not allowed here)')
     "r.yaml:10: malformed YAML: a value with ': ' in it: quote it (num_prompts: '20: x')"),
    (AFTER_A_BLOCK + "passes:\n  - svd: targets: [mlp]\n",
     "r.yaml:8: malformed YAML: a mapping as a key's value on its line goes in braces: - svd: {targets: [mlp]}"),
    # R3: a prompt holding two ': ' was told 'a mapping as a key's value on its line goes in braces: - a cat: {cute: photo}'
    ("version: 1\nmodel: pixart\ncalibration:\n  prompts:\n    - a cat: cute: photo\n",
     "r.yaml:5: malformed YAML: an item with ': ' in it: quote it (- 'a cat: cute: photo')"),
    ("version: 1\nmodel: pixart\ncalibration:\n  prompts:\n    - a cat's: cute: photo\n",
     "r.yaml:5: malformed YAML: an item with ': ' in it: quote it (- \"a cat's: cute: photo\")"),
])
def test_a_value_with_a_colon_is_said_at_its_own_line_not_the_one_before_mis_indented(text, said):
    """R2's y/b, y/a, y/i: right after a nested block, a value holding ': ' was 'r.yaml:6: ... this line's
    indentation does not match the lines above: 'timesteps: 8' is indented 2 spaces, its neighbour 0'
    (PyYAML's line 7 was right)."""
    assert _said(text) == said


@pytest.mark.parametrize("text, said", [
    (_with(19, "      targets: [attention, \x07mlp]"),  # T1's v3/ctrl_char.yaml
     "r.yaml:19: malformed YAML: a control character (U+0007) at column 28; remove it"),
    (TOY_TEXT + "\x00\n", f"r.yaml:{TOY_TEXT.count(chr(10)) + 1}: malformed YAML: a control character (U+0000) "
                          "at column 1; remove it"),  # T1's v/nul.yaml
    (_with(8, "teacher: toy:pixart\x7f"), "r.yaml:8: malformed YAML: a control character (U+007F) at column 20; "
                                          "remove it"),
    (_with(8, "teacher: toy:pixart\ufffe"), "r.yaml:8: malformed YAML: a character YAML does not allow (U+FFFE) at "
                                            "column 20; remove it"),
])
def test_a_character_yaml_does_not_read_is_said_in_one_line_at_its_line_and_column(text, said):
    """Said 'r.yaml: malformed YAML (unacceptable character #x0007: special characters are not allowed' and
    '  in "<unicode string>", position 137)': two lines, PyYAML's insides, no line."""
    assert _said(text) == said


def test_a_second_document_is_said_as_one():
    """Said '(but found another document)'."""
    lines = TOY_TEXT.count("\n") + 1
    assert _said(TOY_TEXT + "---\nmodel: flux\n") == \
        f"r.yaml:{lines}: malformed YAML: a second YAML document ('---'): a recipe is one document"


@pytest.mark.parametrize("after", ["export: {dtype: float32}\n", "- svd\n", "seed\n"])
@pytest.mark.parametrize("end", ["...", "... # end"])
def test_text_after_a_document_end_line_is_said_as_one_document(after, end):
    """Text after a '...' line said PyYAML's "(expected '<document start>', but found '<block mapping
    start>')": now in words, as a second '---' document is."""
    lines = TOY_TEXT.count("\n")
    assert _said(f"{TOY_TEXT}{end}\n{after}") == (
        f"r.yaml:{lines + 2}: malformed YAML: text after the end of the YAML document ('...', line {lines + 1}): "
        "a recipe is one document; remove the '...' line, or what follows it")


def test_a_directive_without_its_document_start_is_said_at_its_line():
    assert _said(f"%YAML 1.2\n{TOY_TEXT}") == ("r.yaml:1: malformed YAML: a YAML directive ('%YAML 1.2') needs a "
                                               "'---' line after it; a recipe needs neither: remove it")
    assert parse_recipe(f"%YAML 1.2\n---\n{TOY_TEXT}...\n# end\n", "r.yaml").raw == parse_recipe(TOY_TEXT, "r.yaml").raw


@pytest.mark.parametrize("line, text, said", [
    (19, "      targets:[attention]", "r.yaml:19: malformed YAML: 'targets:[attention]' (write 'targets: "
                                         "[attention]', a space after ':')"),  # above allocation: (T1's v5)
    (19, "      targets [attention]", "r.yaml:19: malformed YAML: 'targets [attention]' (write 'targets: "
                                         "[attention]', a ':' after the key)"),
    (21, "      ratio:0.6", "r.yaml:21: malformed YAML: 'ratio:0.6' (write 'ratio: 0.6', a space after ':')"),
    (14, "  seed:0", "r.yaml:14: malformed YAML: 'seed:0' (write 'seed: 0', a space after ':')"),
])
def test_a_key_without_the_space_after_its_colon_is_said_at_its_line_not_the_next(line, text, said):
    """`ratio:0.6` above `multiple: 8` said PyYAML's '(mapping values are not allowed here)' at the next line:
    the two lines are one plain text to YAML, whose ': ' it refuses there."""
    assert _said(_with(line, text)) == said


def test_a_line_under_a_two_word_prompt_indented_unlike_it_is_said_as_mis_indented():
    """Not as the prompt a ':' is missing from: 'red car' is no key and value."""
    text = "version: 1\nmodel: pixart\ncalibration:\n  prompts:\n    - red car\n     timesteps: 2\npasses: [svd]\n"
    assert _said(text) == ("r.yaml:6: malformed YAML: this line's indentation does not match the lines above: "
                           "'timesteps: 2' is indented 5 spaces, its neighbour 4")


def test_a_control_character_in_a_set_value_is_said_in_one_line():
    """Said PyYAML's two lines ('unacceptable character #x0007: ...' + '  in "<unicode string>", position 1')."""
    with pytest.raises(UserError) as e:
        parse_recipe("\n".join(TOY), "r.yaml", ["teacher=a\x07b"])
    assert str(e.value) == ("r.yaml (--set teacher=a\x07b): the value is not valid YAML (a control character (U+0007) "
                            "at column 2; remove it); quote it if it is text")
