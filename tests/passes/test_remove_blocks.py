import copy

import pytest
import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

from compress.arch import get_adapter
from compress.errors import UserError
from compress.io_export import save_compressed
from compress.io_output import load_transformer
from compress.lowrank import LowRankLinear
from compress.passes.base import RunContext
from compress.passes.importance import ImportanceConfig, ImportancePass, scan
from compress.passes.remove_blocks import RemoveBlocksConfig, RemoveBlocksPass
from tests.conftest import model_inputs, tiny_flux, tiny_pixart


def context(model, tmp_path, batches=None, **kw):
    batches = batches if batches is not None else [model_inputs(model, batch=3, seed=s) for s in range(2)]
    return RunContext(adapter=get_adapter(model), family=get_adapter(model).family,
                      teacher=copy.deepcopy(model), run_dir=tmp_path, calibration_inputs=lambda: batches, **kw)


def run(model, ctx, **config):
    step = RemoveBlocksPass(RemoveBlocksConfig(**config))
    step.check(ctx.teacher, ctx.adapter)
    return step.run(model, ctx)


def no_calibration():
    raise AssertionError("calibration inputs must not be needed here")


@pytest.mark.parametrize("family,drop", [("pixart", {"blocks": [0, 2]}),
                                         ("flux", {"double": [1], "single": [0, 2]})])
def test_explicit_removal_matches_adapter(family, drop, tmp_path):
    model = tiny_pixart() if family == "pixart" else tiny_flux()
    ref = copy.deepcopy(model)
    expected_map = get_adapter(ref).remove_blocks(ref, drop)
    ctx = context(model, tmp_path)
    ctx.calibration_inputs = no_calibration
    step = RemoveBlocksPass(RemoveBlocksConfig(blocks=drop))
    assert step.needs_calibration is False
    assert step.plan(model, ctx.adapter)["remove"] == drop
    out = step.run(model, ctx)
    assert ctx.block_map == expected_map
    assert ctx.report["remove_blocks"]["removed"] == {g: drop.get(g, []) for g in expected_map}
    inputs = model_inputs(ref)
    with torch.no_grad():
        torch.testing.assert_close(out(**inputs).sample, ref(**inputs).sample, rtol=0, atol=0)


@pytest.mark.parametrize("criterion", ["scan", "proxy"])
def test_count_per_group_removes_least_important(tiny_model, criterion, tmp_path):
    adapter = get_adapter(tiny_model)
    ctx = context(tiny_model, tmp_path)
    result = scan(tiny_model, adapter, ctx.calibration_inputs(), progress=False)
    budget = {g: 1 for g in adapter.block_counts(tiny_model)}
    expected = {g: [result.ranked(criterion, g)[0].index] for g in budget}
    step = RemoveBlocksPass(RemoveBlocksConfig(count=budget, criterion=criterion))
    assert step.needs_calibration and step.plan(tiny_model, adapter)["remove"].startswith("chosen")
    step.run(tiny_model, ctx)
    assert ctx.report["remove_blocks"]["removed"] == expected
    assert adapter.block_counts(tiny_model) == {g: n - 1 for g, n in adapter.block_counts(ctx.teacher).items()}


def test_global_count_and_fraction_rank_over_all_groups(tmp_path):
    model = tiny_flux()
    ctx = context(model, tmp_path)
    result = scan(model, get_adapter(model), ctx.calibration_inputs(), progress=False)
    least = result.ranked()[:2]
    run(model, ctx, fraction=0.4)  # floor(0.4 * 5) = 2 blocks over both groups
    removed = ctx.report["remove_blocks"]["removed"]
    assert sorted((g, i) for g, idx in removed.items() for i in idx) == sorted((b.group, b.index) for b in least)


def test_uses_importance_from_report_through_block_map(tmp_path):
    model = tiny_flux()
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"single": [0]})  # teacher single.0 gone; single.1 is now student single.0
    ImportancePass(ImportanceConfig(progress=False)).run(model, ctx)
    assert [b["teacher_index"] for b in ctx.report["importance"]["blocks"]][2:] == [1, 2]
    scores = {b["teacher_index"]: b["scan"] for b in ctx.report["importance"]["blocks"] if b["group"] == "single"}
    ctx.calibration_inputs = no_calibration  # must reuse the recorded scan
    run(model, ctx, count={"single": 1})
    least = min(scores, key=scores.get)
    assert ctx.report["remove_blocks"]["removed"] == {"double": [], "single": [least]}
    assert ctx.report["remove_blocks"]["reused_importance"] is True
    assert ctx.block_map == {"double": [0, 1], "single": [t for t in (1, 2) if t != least]}


@pytest.mark.parametrize("iterative", [False, True])
def test_importance_from_before_an_earlier_removal_is_not_reused(iterative, tmp_path):
    """Each block's score depends on the blocks around it: an importance pass run before a removal
    scored another model, so the next choice re-scans the current one."""
    model = tiny_pixart(num_layers=5)
    ctx = context(model, tmp_path)
    ImportancePass(ImportanceConfig(progress=False)).run(model, ctx)  # of the teacher
    stale = sorted(ctx.report["importance"]["blocks"], key=lambda b: b["scan"])
    run(model, ctx, blocks={"blocks": [stale[0]["index"]]})
    now = scan(model, ctx.adapter, ctx.calibration_inputs(), progress=False, block_map=ctx.block_map)
    least = now.ranked()[0].teacher_index
    assert least != stale[1]["index"]  # the case: the teacher's ranking picks another block
    run(model, ctx, count=1, iterative=iterative)
    assert ctx.report["remove_blocks"]["removed"] == {"blocks": [least]}


@pytest.mark.parametrize("iterative", [False, True])
def test_importance_from_before_a_weight_change_is_not_reused(iterative, tmp_path, capsys):
    """A pass that changes weights (svd, distill) ran since the importance pass (the runner moved
    ctx.student_version on): its scores are of another model, so the choice scans the student."""
    model = tiny_pixart(num_layers=5)
    ctx = context(model, tmp_path)
    ImportancePass(ImportanceConfig(progress=False)).run(model, ctx)  # of the teacher
    stale = min(ctx.report["importance"]["blocks"], key=lambda b: b["scan"])["index"]
    with torch.no_grad():  # a weight change after which the teacher's least important block matters
        model.transformer_blocks[stale].ff.net[2].weight.mul_(10)
    ctx.student_version += 1
    least = scan(model, ctx.adapter, ctx.calibration_inputs(), progress=False).ranked()[0].index
    assert least != stale  # the case: the stale scores pick another block
    run(model, ctx, count=1, iterative=iterative)
    assert ctx.report["remove_blocks"]["removed"] == {"blocks": [least]}
    assert ctx.report["remove_blocks"]["reused_importance"] is False
    assert "scored the student before a later pass changed its weights" in " ".join(capsys.readouterr().err.split())


def test_block_map_composes_with_earlier_removal(tmp_path):
    model = tiny_flux(num_single_layers=5)
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"single": [1, 3]})
    assert ctx.block_map == {"double": [0, 1], "single": [0, 2, 4]}
    run(model, ctx, blocks={"single": [4], "double": [0]})  # teacher indices
    assert ctx.block_map == {"double": [1], "single": [0, 2]}
    assert model.config.num_single_layers == 2 and model.config.num_layers == 1
    with pytest.raises(UserError, match=r"block single\.3 .* already removed"):
        run(model, ctx, blocks={"single": [3]})


def test_plan_applies_explicit_removal_to_the_meta_model():
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(tiny_flux().config)
    adapter = get_adapter(model)
    first = RemoveBlocksPass(RemoveBlocksConfig(blocks={"single": [0, 2]}))
    second = RemoveBlocksPass(RemoveBlocksConfig(blocks={"double": [1]}))
    chosen = RemoveBlocksPass(RemoveBlocksConfig(count={"double": 1}))
    assert first.plan(model, adapter)["blocks_after"] == {"double": 2, "single": 1}
    first.apply_planned(model, adapter)
    second.check(model, adapter)  # teacher indices, mapped through the planned removal
    assert second.plan(model, adapter)["blocks_after"] == {"double": 1, "single": 1}
    with pytest.raises(UserError, match="removing the one block of group 'single' would leave it empty"):
        RemoveBlocksPass(RemoveBlocksConfig(blocks={"single": [1]})).check(model, adapter)
    with pytest.raises(UserError, match=r"block single\.2 .* already removed"):
        RemoveBlocksPass(RemoveBlocksConfig(blocks={"single": [2]})).check(model, adapter)
    chosen.apply_planned(model, adapter)  # chosen at run time; placeholders keep counts exact
    assert adapter.block_counts(model) == {"double": 1, "single": 1}


def test_plan_takes_teacher_indices_after_a_removal_chosen_at_run_time():
    """A count removes placeholders from the end of the meta model; a later explicit teacher index
    may be any block the count might keep (here the last one), not only a placeholder's position."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = PixArtTransformer2DModel.from_config(tiny_pixart(num_layers=5).config)
    adapter = get_adapter(model)
    steps = [RemoveBlocksPass(RemoveBlocksConfig(blocks={"blocks": [0]})),
             RemoveBlocksPass(RemoveBlocksConfig(count=1)),
             RemoveBlocksPass(RemoveBlocksConfig(blocks={"blocks": [4]}))]
    for step in steps:
        step.check(model, adapter)
        step.apply_planned(model, adapter)
    assert adapter.block_counts(model) == {"blocks": 2} == {"blocks": model.config.num_layers}
    with pytest.raises(UserError, match=r"block blocks\.0 .* already removed"):
        RemoveBlocksPass(RemoveBlocksConfig(blocks={"blocks": [0]})).check(model, adapter)
    with pytest.raises(UserError, match="removing 2 of 2 blocks would leave group 'blocks' empty"):
        RemoveBlocksPass(RemoveBlocksConfig(blocks={"blocks": [1, 2]})).check(model, adapter)


def test_iterative_rescans_after_each_removal(tmp_path):
    model = tiny_pixart(num_layers=4)
    ctx = context(model, tmp_path)
    greedy, adapter, work, teacher_idx = [], get_adapter(model), copy.deepcopy(model), [0, 1, 2, 3]
    for _ in range(2):  # by hand: scan, drop the least important, scan again
        worst = scan(work, adapter, ctx.calibration_inputs(), progress=False).ranked()[0].index
        greedy.append(teacher_idx.pop(worst))
        adapter.remove_blocks(work, {"blocks": [worst]})
    run(model, ctx, count=2, iterative=True)
    record = ctx.report["remove_blocks"]
    assert record["iterative"] and record["order"] == [f"blocks.{t}" for t in greedy]
    assert ctx.block_map == {"blocks": teacher_idx}
    inputs = model_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).sample, work(**inputs).sample, rtol=0, atol=0)


def test_errors_name_the_group(tmp_path):
    pixart, flux = tiny_pixart(), tiny_flux()
    cases = [
        (pixart, dict(blocks={"blocks": [3]}), r"block index 3 out of range for group 'blocks' \(3 blocks: 0\.\.2\)"),
        (flux, dict(blocks={"single": [0, 1, 2]}), "leave group 'single' empty"),
        (flux, dict(count={"double": 2}), "removing 2 of 2 blocks would leave group 'double' empty"),
        (flux, dict(fraction={"single": 1.0}), r"fraction for group 'single' must be a number in \[0, 1\), got 1.0"),
        (pixart, dict(count=3), "leave group 'blocks' empty"),
        (flux, dict(count=4), "leave a group empty .*'double': 2, 'single': 3"),
        (flux, dict(count={"triple": 1}), "no block group 'triple'"),
        (flux, dict(count=1, blocks={"double": [0]}), "exactly one of blocks, count, fraction"),
        (flux, dict(count=-1), "non-negative integer"),
        (flux, dict(count=1, criterion="magic"), "criterion must be one of scan, proxy"),
        (flux, dict(blocks={"double": [0]}, criterion="magic"), "criterion must be one of scan, proxy"),
        (flux, dict(count=1, buckets=0), "remove_blocks: buckets must be a positive integer, got 0"),
    ]
    for model, config, message in cases:
        with pytest.raises(UserError, match=message) as err:
            RemoveBlocksPass(RemoveBlocksConfig(**config)).check(model, get_adapter(model))
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_pruned_model_loads_with_plain_from_pretrained(family, tmp_path):
    model = tiny_pixart() if family == "pixart" else tiny_flux()
    drop = {"blocks": [1]} if family == "pixart" else {"double": [0], "single": [1]}
    run(model, context(model, tmp_path), blocks=drop)
    save_compressed(model, tmp_path / "out")
    cls = PixArtTransformer2DModel if family == "pixart" else FluxTransformer2DModel
    loaded = cls.from_pretrained(tmp_path / "out").eval()
    assert get_adapter(loaded).block_counts(loaded) == get_adapter(model).block_counts(model)
    inputs = model_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).sample, model(**inputs).sample, rtol=0, atol=0)


def test_composes_with_lowrank_blocks(tmp_path):
    model = tiny_pixart()
    dense = model.transformer_blocks[2].attn1.to_q
    u, s, vh = torch.linalg.svd(dense.weight.detach())
    model.transformer_blocks[2].attn1.to_q = LowRankLinear.from_factors(u[:, :4] * s[:4], vh[:4], dense.bias)
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"blocks": [1]})  # after "svd": factorized block 2 becomes block 1
    assert ctx.block_map == {"blocks": [0, 2]}
    save_compressed(model, tmp_path / "out")
    loaded = load_transformer(tmp_path / "out")
    assert isinstance(loaded.transformer_blocks[1].attn1.to_q, LowRankLinear)
    assert len(loaded.transformer_blocks) == loaded.config.num_layers == 2
    inputs = model_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).sample, model(**inputs).sample, rtol=0, atol=0)
    run(model, ctx, count=1)  # importance scan through a factorized block
    assert len(ctx.block_map["blocks"]) == 1 and set(ctx.block_map["blocks"]) < {0, 2}


def test_earlier_svd_records_follow_their_blocks(tmp_path):
    """report["svd"]["layers"] written before a removal is renumbered with the model (what
    `inspect` shows for single_transformer_blocks.1 is that block's record); removed blocks' go."""
    model = tiny_flux(num_single_layers=3)
    layers = {f"single_transformer_blocks.{i}.proj_out": {"loss": float(i)} for i in range(3)}
    layers["proj_out"] = {"loss": 9.0}
    ctx = context(model, tmp_path)
    ctx.report["svd"] = {"layers": layers, "dense": ["single_transformer_blocks.0.proj_out", "proj_out"],
                         "fused_gelu": ["single_transformer_blocks.2.proj_mlp"],
                         "compensation": {"single 0 mlp": 0, "single 2 attention": 2, "double 0 mlp": 5,
                                          "top level modulation": 9}}
    run(model, ctx, blocks={"single": [0]})
    svd = ctx.report["svd"]
    assert svd["layers"] == {"single_transformer_blocks.0.proj_out": {"loss": 1.0},
                             "single_transformer_blocks.1.proj_out": {"loss": 2.0},
                             "proj_out": {"loss": 9.0}}
    assert svd["dense"] == ["proj_out"] and svd["fused_gelu"] == ["single_transformer_blocks.1.proj_mlp"]
    assert svd["compensation"] == {"single 1 attention": 2, "double 0 mlp": 5, "top level modulation": 9}


def _record(rank, dense, kept, loss_ratio):
    return {"rank": rank, "params_dense": dense, "kept_params": kept, "loss_ratio": loss_ratio, "method": "whitened"}


def test_earlier_svd_totals_are_those_of_the_layers_left(tmp_path):
    """report["svd"]'s params_before / params_after / kept_ratio stayed those of every layer the svd
    pass factorized after a removal took some (1,186,560 -> 472,832 for 30 layers left keeping 400,000
    of 988,800): the totals, dense list and worst loss ratio are the remaining layers'."""
    model = tiny_pixart(num_layers=3)
    layers = {"transformer_blocks.0.ff.net.2": _record(8, 1000, 300, 1.0),
              "transformer_blocks.1.ff.net.2": _record("dense", 1000, 1000, 5.0),
              "transformer_blocks.2.ff.net.2": _record(16, 1000, 500, 1.0005)}
    ctx = context(model, tmp_path)
    ctx.report["svd"] = {"layers": layers, "params_before": 3000, "params_after": 1800, "kept_ratio": 0.6,
                         "dense": ["transformer_blocks.1.ff.net.2"], "max_loss_ratio": 5.0,
                         "method": "whitened", "allocation": ["global", "uniform"], "passes": [{"params_after": 1800}]}
    run(model, ctx, blocks={"blocks": [1]})
    svd = ctx.report["svd"]
    assert (svd["params_before"], svd["params_after"], svd["kept_ratio"]) == (2000, 800, 0.4)
    assert svd["dense"] == [] and svd["max_loss_ratio"] == 1.0005
    assert svd["allocation"] == ["global", "uniform"] and svd["passes"] == [{"params_after": 1800}]  # as they ran


def test_importance_scores_follow_their_blocks_through_a_later_removal(tmp_path):
    """report["importance"]["blocks"][*]["index"] kept the numbering of the model it scanned after a
    later removal (index 4 for the block the output has as 3): it is the block's index in the output,
    null for a block removed (its scores stay); teacher_index is unchanged."""
    model = tiny_pixart(num_layers=4)
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"blocks": [0]})  # teacher 1, 2, 3 are student 0, 1, 2
    ImportancePass(ImportanceConfig(progress=False, proxy_only=True)).run(model, ctx)
    run(model, ctx, blocks={"blocks": [2]})  # student 1 goes: teacher 3 is now student 1
    blocks = ctx.report["importance"]["blocks"]
    assert [(b["index"], b["teacher_index"]) for b in blocks] == [(0, 1), (None, 2), (1, 3)]
    assert all(b["proxy"] is not None for b in blocks)
    from compress.passes.importance import ImportanceResult

    names = [b.name for b in ImportanceResult.from_dict(ctx.report["importance"]).blocks]
    assert names == ["blocks.0", "blocks (teacher 2, removed)", "blocks.1"]  # was "blocks.None"


@pytest.mark.parametrize("criterion", ["proxy", "scan"])
def test_a_removal_s_scan_says_nothing_of_empty_timestep_buckets(criterion, tmp_path, capsys):
    """A removal's scan noted 'importance: 1 of the 3 timestep buckets hold no calibration input ...;
    their columns stay empty' in a recipe with no importance pass: its choice reads the scores over
    all inputs, and no column of it is shown, so there is nothing to say."""
    model = tiny_pixart()
    ctx = context(model, tmp_path)
    run(model, ctx, count=1, criterion=criterion, buckets=10)  # most of 10 buckets hold no input
    assert "buckets hold no" not in "".join(capsys.readouterr())
    assert len(ctx.report["remove_blocks"]["removed"]["blocks"]) == 1


@pytest.mark.parametrize("config, key, said", [
    (dict(fraction=0.1), "fraction", "remove_blocks: fraction 0.1 of {n} blocks rounds down to no block, so this "
                                     "pass changes nothing; the smallest fraction that removes one block is {f}"),
    (dict(count=0), "count", "remove_blocks: count removes no block, so this pass changes nothing"),
    (dict(fraction=0.0, iterative=True), "fraction", "remove_blocks: fraction removes no block, so this pass "
                                                     "changes nothing"),
])
def test_a_budget_that_removes_nothing_is_warned_and_scans_nothing(tmp_path, config, key, said):
    """fraction 0.1 of 6 blocks: plan showed budget 0, the run scanned and wrote a 100% copy, no word."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    n = sum(adapter.block_counts(model).values())
    step = RemoveBlocksPass(RemoveBlocksConfig(**config))
    step.check(model, adapter)
    f = {2: "0.5", 3: "0.34", 4: "0.25", 5: "0.2", 6: "0.17"}.get(n)
    assert step.notes(model, adapter) == [(key, said.format(n=n, f=f), ())]  # its value alone read
    ctx = context(model, tmp_path)
    ctx.calibration_inputs = no_calibration
    step.run(model, ctx)
    assert ctx.report["remove_blocks"]["removed"] == {g: [] for g in adapter.block_counts(model)}


def test_a_group_fraction_that_rounds_down_names_its_group_key(tmp_path):
    model = tiny_flux()
    counts = get_adapter(model).block_counts(model)
    step = RemoveBlocksPass(RemoveBlocksConfig(fraction={g: 0.01 for g in counts}))
    notes = step.notes(model, get_adapter(model))
    assert [k for k, *_ in notes] == [f"fraction.{g}" for g in counts] + ["fraction"], notes
    g = next(iter(counts))
    assert notes[0][1].startswith(f"remove_blocks: fraction.{g} 0.01 of {counts[g]} blocks of group '{g}' rounds "
                                  "down to no block"), notes
    some = RemoveBlocksPass(RemoveBlocksConfig(fraction={g: 0.01, **{h: 0.6 for h in counts if h != g}}))
    assert [k for k, *_ in some.notes(model, get_adapter(model))] == [f"fraction.{g}"]


SPREAD_2 = [{"double": 2, "single": 2}, {"double": 1, "single": 3}]  # after a bare count of 2 (double 2, single 4)


@pytest.mark.parametrize("fraction, possible, said", [
    ({"double": 0.4}, SPREAD_2, "fraction.double 0.4 of the 1–2 blocks of group 'double' that earlier removals may "
                                "leave (they pick theirs at run time) rounds down to no block however they go, so "
                                "this pass changes nothing"),
    ({"single": 0.4}, SPREAD_2, "fraction.single 0.4 of the 2–3 blocks of group 'single' that earlier removals may "
                                "leave (they pick theirs at run time) rounds down to no block where it has 2; the "
                                "smallest fraction that removes one block is 0.5"),
    (0.2, [{"double": 2, "single": 2}, {"double": 2, "single": 3}],
     "fraction 0.2 of the 4–5 blocks that earlier removals may leave (they pick theirs at run time) rounds down to "
     "no block where they are 4; the smallest fraction that removes one block is 0.25"),
])
def test_a_fraction_that_rounds_down_for_some_counts_the_run_may_find_says_which(fraction, possible, said):
    """toy Flux (double 2, single 4) less a bare count of 2, groups picked at run time: 'double' has 1
    or 2 blocks by then, 'single' 2 or 3. The warning took the fraction of every block (0.4 of 4
    'single' blocks is 1: no word, though the run takes none of 2); now of each count the run may
    find (`possible`: removed_blocks.possible_counts), saying for which it rounds down to none."""
    from compress.passes.remove_blocks_budget import removes_nothing

    config = RemoveBlocksConfig(fraction=fraction)
    assert [m for _, m, _ in removes_nothing(config, {"double": 2, "single": 4}, possible)] == [f"remove_blocks: {said}"]
    assert removes_nothing(config, possible[0], possible[:1]) == removes_nothing(config, possible[0])  # as before


def test_each_removal_pass_keeps_its_record_and_the_total_is_in_teacher_indices(tmp_path):
    """Two removal passes: report["remove_blocks"] kept the last one only, so report.json and the
    card lost the first pass's blocks. `passes` keeps each, `removed_total` all of them; the top
    level stays the last pass's record (what one-removal readers read)."""
    model = tiny_pixart()
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"blocks": [1]})
    run(model, ctx, count=1, criterion="proxy")
    record = ctx.report["remove_blocks"]
    first, last = record["passes"]
    assert first["removed"] == {"blocks": [1]} and first["criterion"] is None
    assert last["criterion"] == "proxy" and len(last["removed"]["blocks"]) == 1
    assert last["removed"]["blocks"][0] != 1  # teacher indices: the second pass never names block 1 again
    assert record["removed"] == last["removed"] and record["criterion"] == "proxy"
    assert record["removed_total"] == {"blocks": sorted([1] + last["removed"]["blocks"])}
    n = get_adapter(model).block_counts(ctx.teacher)["blocks"]
    assert ctx.block_map == {"blocks": [t for t in range(n) if t not in record["removed_total"]["blocks"]]}


def test_a_record_written_before_passes_were_kept_counts_as_one_pass():
    from compress.passes.remove_blocks import merge_report

    old = {"criterion": None, "iterative": False, "order": ["blocks.1"], "removed": {"blocks": [1]}}
    this = {"criterion": "scan", "iterative": True, "order": ["blocks.3"], "removed": {"blocks": [3]}}
    merged = merge_report(old, this)
    assert merged["passes"] == [old, this] and merged["removed_total"] == {"blocks": [1, 3]}
    assert merged["removed"] == {"blocks": [3]} and merged["order"] == ["blocks.3"]
    assert merge_report(merged, dict(this, removed={"blocks": [0]}))["removed_total"] == {"blocks": [0, 1, 3]}


def test_explicit_blocks_that_remove_nothing_are_warned_as_a_count_of_none_is(tmp_path):
    """blocks: {blocks: []} removed nothing with no word, while count: 0 warns (blocks: {}, which
    names no group, is refused: test_remove_blocks_config)."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    step = RemoveBlocksPass(RemoveBlocksConfig(blocks={"blocks": []}))
    step.check(model, adapter)
    assert step.notes(model, adapter) == [("blocks", "remove_blocks: blocks removes no block, so this pass "
                                                     "changes nothing", ())]
    assert RemoveBlocksPass(RemoveBlocksConfig(blocks={"blocks": [0]})).notes(model, adapter) == []


def _removal_said(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("remove_blocks: removed")]


@pytest.mark.parametrize("config, said", [
    (dict(blocks={"double": [1], "single": [2]}),
     "remove_blocks: removed double [1], single [2] (teacher indices; listed in the recipe)"),
    (dict(count={"single": 1}, criterion="proxy", iterative=True),
     "remove_blocks: removed single [{chosen}] (teacher indices; chosen by proxy, re-scored after each removal)"),
    (dict(count=0), "remove_blocks: removed no blocks"),
])
def test_the_log_names_the_blocks_a_removal_took(config, said, tmp_path, capsys):
    """A job's log said nothing of which blocks a removal took (only block_map.json and `inspect`
    did), though a choice by importance or learning can differ between runs: the pass now ends with
    a line naming them in teacher indices, and how they were chosen, in the model card's words."""
    model = tiny_flux()
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"single": [0]})  # teacher single 1, 2 are now student single 0, 1
    assert _removal_said(capsys) == ["remove_blocks: removed single [0] (teacher indices; listed in the recipe)"]
    run(model, ctx, **config)
    chosen = ctx.report["remove_blocks"]["removed"]["single"]
    assert chosen in ([], [1], [2])  # teacher indices (student ones would be 0 or 1)
    assert _removal_said(capsys) == [said.format(chosen=chosen[0] if chosen else None)]


def test_buckets_change_no_choice_and_are_warned_at_their_line(tmp_path, capsys):
    """remove_blocks' buckets were read only to split the scan's scores by timestep, and the choice reads
    each block's score over all inputs: 1 or 7 buckets removed the same blocks and wrote the same record,
    without a word. A value other than the default is warned at its line (plan and run: `notes`), and
    --resume lets it change (`result_free`), as nothing the pass writes depends on it."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe
    from compress.runner_resume import recipe_changes

    records = []
    for buckets in (1, 7):
        model = tiny_pixart()
        ctx = context(model, tmp_path)
        run(model, ctx, count=2, criterion="scan", iterative=True, buckets=buckets)
        records.append(ctx.report["remove_blocks"])
    assert records[0] == records[1]
    model, adapter = tiny_pixart(), get_adapter(tiny_pixart())
    said = {k: m for k, m, _ in RemoveBlocksPass(RemoveBlocksConfig(count=1, buckets=7)).notes(model, adapter)}
    assert said["buckets"].startswith("remove_blocks: buckets 7 changes nothing: the blocks are chosen by each "
                                      "block's score over all calibration inputs")
    for quiet in (dict(count=1), dict(count=1, buckets=3), dict(blocks={"blocks": [1]})):
        assert "buckets" not in [k for k, *_ in RemoveBlocksPass(RemoveBlocksConfig(**quiet)).notes(model, adapter)]
    text = ("model: pixart\nteacher: toy:pixart\ncalibration: {source: synthetic, num_prompts: 4, timesteps: 2, "
            "batch_size: 4, heldout: 4}\npasses:\n  - remove_blocks:\n      count: 1\n      buckets: B\n")
    capsys.readouterr()
    make_plan(parse_recipe(text.replace("B", "7"), "r.yaml"))
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning: r.yaml:7: remove_blocks: buckets 7 changes nothing") == 1, err
    make_plan(parse_recipe(text.replace("B", "3"), "r.yaml"))
    assert "buckets" not in capsys.readouterr().err
    before, now = (parse_recipe(text.replace("B", b), "r.yaml") for b in "73")
    assert recipe_changes(before.raw, now.raw, [RemoveBlocksPass(now.passes[0].config)]) == []


def test_a_fraction_per_group_after_a_spread_removal_is_warned_of_the_blocks_the_run_may_find(capsys):
    """toy Flux (double 2, single 4): remove_blocks {count: 2} leaves 'double' 1 or 2 blocks and
    'single' 2 or 3. {fraction: {single: 0.4}} was taken of all 4 'single' blocks (1: no warning),
    though the run takes none where 'single' has 2; 0.4 of 'double' was said to round down 'of 2'."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    head = "model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 2}\n"
    make_plan(parse_recipe(head + "  - remove_blocks: {fraction: {single: 0.4, double: 0.4}}\n", "r.yaml"))
    said = " ".join(capsys.readouterr().err.split())
    assert ("warning: r.yaml:5: remove_blocks: fraction.single 0.4 of the 2–3 blocks of group 'single' that earlier "
            "removals may leave (they pick theirs at run time) rounds down to no block where it has 2") in said, said
    assert "fraction.double 0.4 of the 1–2 blocks of group 'double'" in said and "of 2 blocks" not in said, said
