"""compress.plan_budget: plan's bounds where blocks (by importance) are decided at run time, in words."""

from compress.plan import make_plan
from compress.plan_budget import count_ranges
from compress.recipe import parse_recipe


def test_one_block_left_in_all_is_said_in_the_singular(capsys):
    """toy:pixart (6 blocks) `count: 5` then `fraction: 0.9`: plan said 'blocks_after: 1 blocks in
    all' for both (remove_blocks' plan, then count_ranges); words.counted agrees the noun now."""
    from compress.plan_words import print_plan

    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - remove_blocks: {count: 5}\n"
            "  - remove_blocks: {fraction: 0.9}\n")
    plan = make_plan(parse_recipe(text, "r.yaml"))
    assert [step["blocks_after"] for step in plan["passes"]] == ["1 block in all", "1 block in all"]
    print_plan(plan)
    out = capsys.readouterr().out
    assert "1 blocks" not in out and "blocks_after: 1 block in all" in out
    two = count_ranges({"blocks_before": {}, "blocks_after": "x"}, [{"a": 2}], [{"a": 1, "b": 1}])
    assert two["blocks_after"] == "2 blocks in all"
