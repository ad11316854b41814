"""plan's parameter totals (compress/plan.py) where ranks or blocks are decided at run time: bounds, not counts."""

import pytest

from compress import load_teacher
from compress.plan import make_plan
from compress.recipe import parse_recipe
from tests.test_plan import GLOBAL


def test_a_global_pass_s_roles_are_bounds_and_the_total_its_budget(capsys):
    """plan counted a global pass's targets dense (ranks decided after calibration): its roles' rows and
    total looked like the compressed result. The rows are bounds (≤), the total is at most the
    teacher less the targets' dense parameters plus the pass's budget (alloc.budget_for_ratio;
    global_greedy never spends more): 973,072 here, and the run of it keeps 972,304."""
    from compress.plan_words import print_plan

    plan = make_plan(parse_recipe(GLOBAL.replace("{allocation}", "global"), "r.yaml"))
    step, (later,) = plan["passes"][-1], plan["decided_later"]
    dense = step["params_before"]  # every target decided later
    assert (later["pass"], later["line"], later["roles"]) == ("svd", 5, ["attention", "cross_attention", "mlp"])
    assert later["dense_params"] == dense and later["budget_params"] == int(0.6 * dense)
    assert plan["params_after_at_most"] == plan["params_after_planned"] - dense + int(0.6 * dense) == 973_072
    print_plan(plan)
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert all(f"≤ {plan['by_role_after'][r]:,}" in rows[r] for r in later["roles"])
    assert "≤" not in rows["modulation"]
    assert ("≤: svd (line 5, allocation global) decides the ranks of attention, cross_attention, mlp after "
            "calibration") in out  # which roles, as a removal's footnote may follow
    assert (f"total parameters: {plan['params_before']:,} -> at most 973,072 (55.1%; planned: svd (line 5, "
            f"allocation global) keeps at most its budget, {int(0.6 * dense):,} of its targets' {dense:,} dense"
            in " ".join(out.split()))


def test_an_energy_pass_s_total_is_a_bound_and_a_planned_one_exact(capsys):
    """allocation energy has no budget: the total is at most the count with its targets dense, and
    says so, with its share of the teacher as every other bound (it had none); with every rank
    planned it is exact."""
    from compress.plan_words import print_plan

    plan = make_plan(parse_recipe(GLOBAL.replace("{allocation}", "energy").replace("ratio: 0.6, ", ""), "r.yaml"))
    assert plan["params_after_at_most"] == plan["params_after_planned"]
    assert "budget_params" not in plan["decided_later"][0]
    print_plan(plan)
    share = plan["params_after_planned"] / plan["params_before"]
    assert (f"-> at most {plan['params_after_planned']:,} ({share:.1%}; planned: svd (line 5, allocation energy) "
            "decides ranks after calibration; their layers are counted dense)") in " ".join(capsys.readouterr().out.split())
    plan = make_plan(parse_recipe(GLOBAL.replace("{allocation}", "uniform"), "r.yaml"))
    assert plan["decided_later"] == [] and plan["params_after_at_most"] == plan["params_after_planned"]
    print_plan(plan)
    assert f"-> {plan['params_after_planned']:,} (planned)\n" in capsys.readouterr().out


GLOBAL_THEN_REMOVAL = ("model: pixart\nteacher: toy:pixart\npasses:\n"
                       "  - svd: {targets: [attention, mlp], allocation: global, ratio: 0.4, multiple: 8}\n"
                       "  - remove_blocks: {removal}\n")


@pytest.mark.parametrize("removal", ["{count: 1, criterion: proxy}", "{blocks: {blocks: [2]}}",
                                     "{count: 0, criterion: proxy}"])
def test_a_removal_after_a_global_pass_keeps_its_budget_in_the_bound(removal):
    """A removal after a global svd pass dropped its budget from the bound: 'at most 1,500,688' (the
    targets counted dense) for a recipe whose run wrote 911,888, 'at most 1,053,328' with count 0.
    The budget still bounds what the pass keeps of the targets left: 986,512 with a block gone."""
    plan = make_plan(parse_recipe(GLOBAL_THEN_REMOVAL.replace("{removal}", removal), "r.yaml"))
    (later,) = plan["decided_later"]
    left = later["dense_params"] * sum(plan["blocks_after"].values()) // 6  # the targets of the blocks left
    assert plan["params_after_at_most"] == plan["params_after_planned"] - left + later["budget_params"]
    assert plan["params_after_at_most"] == (1_053_328 if "count: 0" in removal else 986_512)


def test_a_removal_of_groups_picked_at_run_time_after_a_global_pass_is_bounded_above_its_run():
    """Flux, a global svd pass then a bare count: plan took the budget off and the smallest block dense,
    'at most 833,257', but the block removed is a factorized one: the run wrote 978,256. A block
    counts only what the budget does not bound (its other parameters)."""
    text = ("model: flux\nteacher: toy:flux\npasses:\n"
            "  - svd: {targets: [attention, mlp], allocation: global, ratio: 0.2, multiple: 8}\n"
            "  - remove_blocks: {count: 1, criterion: proxy}\n")
    plan = make_plan(parse_recipe(text, "r.yaml"))
    assert plan["params_after_at_most"] >= 978_256
    assert plan["params_after_at_most"] < plan["params_after_planned"] - plan["decided_later"][0]["dense_params"] \
        + plan["decided_later"][0]["budget_params"]


def test_a_removal_whose_groups_are_picked_at_run_time_makes_the_total_a_bound():
    """A bare count over Flux's two groups: plan cannot place the blocks, so before it counted every
    block and said the total was planned (2,345,744 -> 1,771,280 on the toy; the run wrote 1,366,928).
    Now the total is at most what is left with the smallest blocks gone, and every role a bound."""
    from compress.plan import param_count
    from compress.plan_words import total_words

    text = ("model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 2}\n"
            "  - svd: {targets: [modulation], ranks: {modulation: 8}}\n")
    plan = make_plan(parse_recipe(text, "r.yaml"))
    teacher = load_teacher("toy:flux")
    single = param_count(teacher.single_transformer_blocks[0])  # the toy's smallest blocks, 128 wide
    saved = 384 * 128 - 8 * (128 + 384)  # by its norm.linear (384 x 128) at rank 8
    assert plan["unplaced_removals"] == [{"pass": "remove_blocks", "line": 4, "blocks": 2}]
    assert plan["params_after_at_most"] == plan["params_after_planned"] - 2 * (single - saved)
    assert "at most" in total_words(plan) and "takes 2 blocks" in total_words(plan)


def test_a_global_pass_after_a_removal_of_groups_picked_at_run_time_is_bounded_by_the_blocks_left():
    """A bare count, then a global svd pass: its run's budget is its ratio of the targets the removal
    leaves, but plan took it of all the teacher's targets: 'at most 1,020,265' on the toy Flux, whose
    run kept 919,888. The bound is now the largest student the removal can leave: ratio x the targets
    of the other blocks, plus what is not a target, over the block whose removal costs least."""
    from compress.arch import get_adapter
    from compress.plan import param_count

    text = ("model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 1}\n"
            "  - svd: {targets: [attention, mlp, modulation], allocation: global, ratio: 0.4}\n")
    plan = make_plan(parse_recipe(text, "r.yaml"))
    teacher = load_teacher("toy:flux")
    adapter = get_adapter(teacher)
    roles = {"attention", "mlp", "modulation"}
    targets = {teacher.get_submodule(i.name) for i in adapter.linears(teacher) if i.role in roles}
    dense = sum(param_count(m) for m in targets)  # (weights and biases of every target)
    others = param_count(teacher) - dense  # what no svd pass factorizes
    largest = 0
    for group in adapter.block_counts(teacher):
        for block in adapter.blocks(teacher, group):
            in_block = sum(param_count(m) for m in block.modules() if m in targets)
            kept = others - (param_count(block) - in_block) + int(0.4 * (dense - in_block))
            largest = max(largest, kept)
    assert largest <= plan["params_after_at_most"] <= largest + 1  # (the budget's floor)
    assert plan["params_after_at_most"] < 1_020_265 and largest >= 919_888


def test_an_svd_pass_after_a_removal_picked_at_run_time_says_its_counts_are_bounds(capsys):
    """After remove_blocks {count: 2} (blocks picked at run time) an svd pass's line printed
    'targets: 44 …; params_before: 1,581,568; params_after: 754,176' as if exact, though its run
    factorizes only the blocks left; the role table and the total said ≤ already. Its counts are
    bounds now, and the line says why; without the removal they stay exact."""
    from compress.plan_words import print_plan, step_words

    svd = "  - svd: {targets: [attention, mlp], ratio: 0.5}\n"
    text = "model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 2}\n" + svd
    plan = make_plan(parse_recipe(text, "r.yaml"))
    step = plan["passes"][-1]
    words = step_words(step)
    assert f"targets: ≤ {len(step['targets'])} (" in words
    assert f"params_before: ≤ {step['params_before']:,}; params_after: ≤ {step['params_after']:,};" in words
    assert words.endswith("≤: counted over every block, but remove_blocks (line 4) takes 2 blocks before it at run time")
    print_plan(plan)
    assert f"params_after: ≤ {step['params_after']:,}" in " ".join(capsys.readouterr().out.split())
    plain = make_plan(parse_recipe("model: flux\nteacher: toy:flux\npasses:\n" + svd, "r.yaml"))["passes"][-1]
    assert "≤" not in step_words(plain) and "at_most" not in plain


FRACTION = "model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {fraction: 0.3}\n"


def test_a_removal_of_groups_picked_at_run_time_marks_the_counts_after_that_are_bounds():
    """remove_blocks {fraction: 0.3} over toy Flux's groups (double 2, single 4): plan --json said
    blocks_after {double: 2, single: 4} and params_after_planned the teacher's count with nothing to
    say they were not the run's (it kept {2, 3}). Now blocks_after_is and params_after_is say 'at
    most', blocks_after_total is the count left (known though its groups are not), and by_role_after_is
    marks the roles with linears in blocks; each placement the run may pick is within every bound."""
    plan = make_plan(parse_recipe(FRACTION, "r.yaml"))
    assert plan["blocks_after"] == {"double": 2, "single": 4} and plan["blocks_after_is"] == "at most"
    assert plan["blocks_after_total"] == 5
    assert plan["params_after_planned"] == plan["params_before"] and plan["params_after_is"] == "at most"
    assert plan["by_role_after_is"] == {"embedding": "exact", "modulation": "at most", "attention": "at most",
                                        "mlp": "at most", "output": "exact"}
    for group in ("double", "single"):
        placed = make_plan(parse_recipe(FRACTION.replace("{fraction: 0.3}", f"{{blocks: {{{group}: [0]}}}}"),
                                        "r.yaml"))
        assert {placed[k] for k in ("blocks_after_is", "params_after_is", "by_block_after_is")} == {"exact"}
        assert set(placed["by_role_after_is"].values()) == {"exact"}
        assert placed["blocks_after_total"] == sum(placed["blocks_after"].values()) == 5
        assert all(placed["blocks_after"][g] <= n for g, n in plan["blocks_after"].items())
        assert placed["params_after_planned"] == placed["params_after_at_most"] <= plan["params_after_at_most"]
        assert all(n <= plan["by_role_after_at_most"][r] for r, n in placed["by_role_after"].items())
        assert all(n == plan["by_role_after_at_most"][r] for r, n in placed["by_role_after"].items()
                   if plan["by_role_after_is"][r] == "exact")


def test_a_global_pass_marks_its_roles_and_the_total_as_bounds_and_the_blocks_exact():
    """Ranks decided after calibration: the total and those roles are bounds, the blocks exact; the
    planned count (targets dense) is above params_after_at_most, as PLAN_JSON.md says."""
    plan = make_plan(parse_recipe(GLOBAL.replace("{allocation}", "global"), "r.yaml"))
    assert (plan["params_after_is"], plan["blocks_after_is"], plan["blocks_after_total"]) == ("at most", "exact", 5)
    assert plan["params_after_planned"] > plan["params_after_at_most"]
    marks = plan["by_role_after_is"]
    assert {r for r, m in marks.items() if m == "at most"} == set(plan["decided_later"][0]["roles"])
    plain = make_plan(parse_recipe(GLOBAL.replace("{allocation}", "uniform"), "r.yaml"))
    assert plain["params_after_is"] == plain["blocks_after_is"] == "exact"
    assert set(plain["by_role_after_is"].values()) == {"exact"}


@pytest.mark.parametrize("removal, smallest", [("{fraction: 0.3}", "the smallest block goes"),
                                               ("{count: 2}", "the 2 smallest blocks go")])
def test_plan_text_says_plainly_why_roles_and_the_total_are_bounds_after_a_run_time_removal(removal, smallest,
                                                                                           capsys):
    """After a removal whose groups are picked at run time every role said '≤', the top level's
    (embedding, output) too, which no removal changes, with no footnote saying why; the total said
    'every block is counted here, less the smallest as many'. Now the roles outside the blocks are
    exact, a footnote names the removal, and the total says which blocks it counts as gone."""
    from compress.plan_words import print_plan

    plan = make_plan(parse_recipe(FRACTION.replace("{fraction: 0.3}", removal), "r.yaml"))
    print_plan(plan)
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "≤" not in rows["embedding"] + rows["output"] and "≤" in rows["attention"]
    n = plan["unplaced_removals"][0]["blocks"]
    assert (f"≤: remove_blocks (line 4) takes {n} block{'s' if n > 1 else ''}, picked by importance at run "
            "time from any group: the roles with layers in blocks are counted here with every block") in out
    words = " ".join(out.split())
    assert f"picked by importance at run time from any group: counted as if {smallest})" in words
    assert "as many" not in words


def test_a_fraction_over_all_blocks_after_a_spread_count_is_of_the_blocks_left():
    """toy:flux (6 blocks) `count: 2` then `fraction: 0.5`: the run takes 2 of the 4 left; plan took
    0.5 of all 6 (3), said 3 blocks after, and counted the total as if 5 blocks went (more than the
    4 the groups can give: a bound below what the run keeps)."""
    text = ("model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 2}\n"
            "  - remove_blocks: {fraction: 0.5}\n")
    plan = make_plan(parse_recipe(text, "r.yaml"))
    second = plan["passes"][1]
    assert (second["budget"], second["blocks_after"]) == (2, "2 blocks in all")
    assert [u["blocks"] for u in plan["unplaced_removals"]] == [2, 2]
    assert plan["blocks_after_total"] == 2
    teacher = load_teacher("toy:flux")
    blocks = [teacher.transformer_blocks[0], teacher.single_transformer_blocks[0]]
    kept_at_least = sum(p.numel() for p in teacher.parameters()) - sum(
        sum(p.numel() for p in b.parameters()) * n for b, n in zip(blocks, (1, 3)))
    assert plan["params_after_at_most"] >= kept_at_least  # the run keeps a double and a single block


@pytest.mark.parametrize("second", ["{count: {single: 1}}", "{fraction: {double: 0.5}}", "{blocks: {single: [3]}}",
                                    "{count: 1}"])
def test_a_removal_after_one_picked_at_run_time_states_its_counts_per_group_as_ranges(capsys, second):
    """After remove_blocks {count: 2} (groups picked at run time: 'double' loses 0 or 1, 'single' 2 or
    1) a second removal's line said 'blocks_before: ≤ {"double": 2, "single": 4}', loose bounds ('single'
    has 2 or 3 by then). Its counts per group are now the ranges the run may find over the ways the
    first may pick ('{"double": 1–2, "single": 2–3}'; --json: blocks_before the most, blocks_before_min
    the fewest), each end met by one of those ways; the line says why; without the first removal
    they stay single numbers."""
    from compress.plan_words import print_plan, step_words

    head = "model: flux\nteacher: toy:flux\npasses:\n"
    plan = make_plan(parse_recipe(f"{head}  - remove_blocks: {{count: 2}}\n  - remove_blocks: {second}\n", "r.yaml"))
    step = plan["passes"][-1]
    assert step["at_most"] == [{"pass": "remove_blocks", "line": 4, "blocks": 2}]
    per_group = [k for k in ("blocks_before", "blocks_after") if isinstance(step[k], dict)]
    assert step["blocks_before"] == {"double": 2, "single": 3} and step["blocks_before_min"] == {"double": 1, "single": 2}
    words = step_words(step)
    assert 'blocks_before: {"double": 1–2, "single": 2–3}' in words and "≤" not in words
    assert [k for k in ("blocks_before", "blocks_after") if f"{k}: {{" in words] == per_group  # not '3 blocks in all'
    assert words.endswith("ranges: remove_blocks (line 4) takes 2 blocks before it, from groups picked at run time")
    print_plan(plan)
    assert 'blocks_before: {"double": 1–2, "single": 2–3}' in capsys.readouterr().out
    runs = [make_plan(parse_recipe(f"{head}  - remove_blocks: {{blocks: {placed}}}\n  - remove_blocks: {second}\n",
                                   "r.yaml"))["passes"][-1]
            for placed in ("{double: [0], single: [0]}", "{single: [0, 1]}")]  # every way the run may pick them
    for run in runs:
        assert "at_most" not in run and "blocks_before_min" not in run and "–" not in step_words(run)
    for k in per_group:
        for g in step[k]:
            assert {run[k][g] for run in runs} == {step.get(f"{k}_min", step[k])[g], step[k][g]}, (k, g)
    if not per_group[1:]:  # a count over all blocks: its total
        assert {run["blocks_after"] for run in runs} == {step["blocks_after"]}


@pytest.mark.parametrize("fraction, taken, total_is", [(0.5, {1}, "exact"), (0.7, {1, 2}, "at most")])
def test_a_fraction_per_group_after_a_removal_picked_at_run_time_is_of_the_blocks_it_may_leave(fraction, taken,
                                                                                                total_is):
    """toy Flux (double 2, single 4): remove_blocks {count: 2}, then {fraction: {single: F}}. 'single'
    has 2 or 3 blocks by then (it loses 1 or 2: 'double' keeps one), and the run takes F of those;
    plan took F of all 4: with 0.5, 2 (the run takes 1 either way), so blocks_after_total 2 'exact'
    (the run keeps 3) and at most 1,356,816 parameters (the run keeps 1,604,048). Now the fraction is
    of the fewest blocks the group may have, so every count after is a bound, the total the run's
    where the fraction takes as many blocks whichever way (0.5: 1), else marked 'at most' (0.7: 1 or 2)."""
    text = ("model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 2}\n"
            f"  - remove_blocks: {{fraction: {{single: {fraction}}}}}\n")
    plan = make_plan(parse_recipe(text, "r.yaml"))
    assert plan["passes"][-1]["budget"] == {"single": min(taken)}
    assert (plan["blocks_after_total"], plan["blocks_after_total_is"]) == (6 - 2 - min(taken), total_is)
    runs = [make_plan(parse_recipe(text.replace("{count: 2}", f"{{blocks: {placed}}}"), "r.yaml"))
            for placed in ("{double: [1], single: [3]}", "{single: [2, 3]}")]  # the ways the run may pick them
    assert {run["passes"][-1]["budget"]["single"] for run in runs} == taken
    for run in runs:
        assert run["params_after_is"] == run["blocks_after_total_is"] == "exact"
        assert run["blocks_after_total"] <= plan["blocks_after_total"]
        assert run["params_after_planned"] <= plan["params_after_at_most"]


def test_a_count_over_all_blocks_after_counts_that_differ_in_total_says_the_range():
    """A bare count of 1 where the run may find 3 or 4 blocks in all (a fraction per group before it
    took more for some ways an earlier removal went) leaves 2 or 3: '2–3 blocks in all'; each group's
    counts after it are the ways it may spread its block (each group keeps one)."""
    from compress.arch import get_adapter
    from compress.passes.remove_blocks_budget import counts_after
    from compress.passes.remove_blocks_config import RemoveBlocksConfig
    from compress.plan_budget import count_ranges
    from tests.conftest import tiny_flux

    before = [{"double": 2, "single": 1}, {"double": 2, "single": 2}]
    after = counts_after(RemoveBlocksConfig(count=1), get_adapter(tiny_flux()), before)
    assert after == [{"double": 1, "single": 1}, {"double": 2, "single": 1}, {"double": 1, "single": 2}]
    step = count_ranges({"blocks_before": {}, "blocks_after": "3 blocks in all"}, before, after)
    assert step == {"blocks_before": {"double": 2, "single": 2}, "blocks_before_min": {"double": 2, "single": 1},
                    "blocks_after": "2–3 blocks in all"}


@pytest.mark.parametrize("second", ["", "  - remove_blocks: {fraction: {single: 0.7}}\n"])
def test_the_blocks_after_every_pass_are_the_counts_the_run_may_have(second):
    """toy Flux (double 2, single 4): remove_blocks {count: 2} leaves {double: 2, single: 2} or
    {double: 1, single: 3}; {fraction: {single: 0.7}} after it takes 1 or 2 of 'single', leaving
    {double: 2, single: 1} or {double: 1, single: 1}. plan --json said blocks_after {double: 2,
    single: 4} (then {double: 2, single: 3}, which no run has) and blocks_after_total 4 (then 3 'at
    most'). Now blocks_after is the most each group may have and blocks_after_min the fewest, each end
    met by a way the run may pick; blocks_after_total and blocks_after_total_min likewise."""
    text = f"model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {{count: 2}}\n{second}"
    plan = make_plan(parse_recipe(text, "r.yaml"))
    runs = [make_plan(parse_recipe(text.replace("{count: 2}", f"{{blocks: {placed}}}"), "r.yaml"))
            for placed in ("{double: [1], single: [3]}", "{single: [2, 3]}")]  # the ways the run may pick them
    for g in ("double", "single"):
        assert {run["blocks_after"][g] for run in runs} == {plan["blocks_after_min"][g], plan["blocks_after"][g]}
    totals = {run["blocks_after_total"] for run in runs}
    assert totals == {plan["blocks_after_total_min"], plan["blocks_after_total"]}
    assert plan["blocks_after_is"] == "at most"
    assert plan["blocks_after_total_is"] == ("at most" if len(totals) > 1 else "exact")
    for run in runs:
        assert run["blocks_after_min"] == run["blocks_after"] and run["blocks_after_is"] == "exact"
        assert run["blocks_after_total_min"] == run["blocks_after_total"] and run["blocks_after_total_is"] == "exact"
    if second:
        assert (plan["blocks_after"], plan["blocks_after_total"]) == ({"double": 2, "single": 1}, 3)
