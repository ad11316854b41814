"""A recipe's keys written where they do not belong, said with where they go (a tester's recipes of
common mistakes, stop 51): a pass's option indented as deep as the pass's name, two passes in one item,
a ':' without its space, a section's key at the top level, a list item's dash without its space."""

import pytest

from tests.recipe_helpers import refusal

HEAD = "version: 1\nmodel: pixart\nteacher: toy:pixart\ncalibration:\n  num_prompts: 2\n  timesteps: 2\n" \
       "  batch_size: 8\npasses:\n"  # 8 lines: the pass item is line 9


@pytest.mark.parametrize("passes, said", [
    ("  - svd:\n    ratio: 0.5\n",  # T1's v5/opts_dedent.yaml
     "r.yaml:10: passes[0] has two keys, svd and ratio: 'ratio' (line 10) is an svd option; indent it under 'svd:'"),
    ("  - svd:\n      ratio: 0.5\n    multiple: 8\n",  # T1's v/badindent.yaml
     "r.yaml:11: passes[0] has two keys, svd and multiple: 'multiple' (line 11) is an svd option; "
     "indent it under 'svd:'"),
    ("  - distill:\n    steps: 2\n    lr: 0.001\n",
     "r.yaml:10: passes[0] has three keys, distill, steps and lr: 'steps' (line 10) is a distill option; "
     "indent it under 'distill:'"),
    ("  - svd:\n    rato: 0.5\n",
     "r.yaml:10: passes[0] has two keys, svd and rato: 'rato' (line 10) is neither a pass nor an svd option; "
     "a pass's options go indented under its name; did you mean 'ratio'?"),
    ("  - {svd: {ratio: 0.5}, distill: {}}\n",
     "r.yaml:9: passes[0] has two keys, svd and distill: give each pass its own '- ' item"),
    ("  - svd: {}\n    distill: {}\n",  # T1's v/two_keys_item.yaml
     "r.yaml:10: passes[0] has two keys, svd and distill: give each pass its own '- ' item"),
])
def test_a_pass_item_of_two_keys_names_the_one_that_does_not_belong(passes, said):
    """Each said 'r.yaml:9: passes[0] must be a pass name or a one-key mapping like '- svd: {ratio: 0.5}''
    at the pass's line, naming neither the stray key nor its line."""
    assert refusal(HEAD + passes) == said


@pytest.mark.parametrize("passes, said", [
    ("  - svd:{ratio: 0.5}\n",  # T1's v5/nospace_pass.yaml
     "r.yaml:9: unknown pass 'svd:{ratio' (write 'svd: {ratio: 0.5}', a space after ':') "
     "(passes: importance, remove_blocks, svd, distill)"),
    ("  - svd:fast\n", "r.yaml:9: unknown pass 'svd:fast' (write 'svd: fast', a space after ':') "
                       "(passes: importance, remove_blocks, svd, distill)"),
])
def test_a_pass_without_the_space_after_its_colon_is_said_with_how_to_write_it(passes, said):
    """`- svd:{ratio: 0.5}` said 'unknown pass 'svd:{ratio'' alone."""
    assert refusal(HEAD + passes) == said


def test_a_section_key_at_the_top_level_is_told_to_go_under_its_section():
    """`timesteps: 2` at column 0 under calibration: said 'unknown key 'timesteps'' alone."""
    text = "version: 1\nmodel: pixart\nteacher: toy:pixart\ncalibration:\n  num_prompts: 2\ntimesteps: 2\n" \
           "passes:\n  - svd\n"  # T1's v5/cal_dedent.yaml
    assert refusal(text) == ("r.yaml:6: unknown key 'timesteps'; 'timesteps' is a calibration key: "
                             "indent it under calibration:")
    assert refusal(text.replace("timesteps", "dtype")) == ("r.yaml:6: unknown key 'dtype'; 'dtype' is an export "
                                                           "key: indent it under export:")
    assert refusal(HEAD + "  - svd\n", ["timesteps=2"]) == ("r.yaml (--set timesteps=2): unknown key 'timesteps'; "
                                                            "'timesteps' is a calibration key: --set "
                                                            "calibration.timesteps=...")


@pytest.mark.parametrize("passes, said", [
    ("  -svd\n", "r.yaml:9: 'passes' must be a non-empty list, not '-svd': write '- svd' (a space after '-')"),
    ("  -svd\n  -distill\n",
     "r.yaml:9: 'passes' must be a non-empty list, not '-svd': write '- svd' (a space after '-')"),
    ("  -svd: {ratio: 0.5}\n",
     "r.yaml:9: 'passes' must be a non-empty list, not '-svd': write '- svd' (a space after '-')"),
    ("  []\n", "r.yaml:9: 'passes' must be a non-empty list"),
])
def test_a_pass_without_the_space_after_its_dash_is_told_to_add_it(passes, said):
    """`  -svd` (T1's v5/dash_nospace.yaml) said ''passes' must be a non-empty list' alone."""
    assert refusal(HEAD + passes) == said

