"""compress.passes.remove_blocks: the removal itself: explicit teacher indices, a count or fraction chosen
by importance (per group or over all, reusing an importance pass's scores while they describe the student),
iterative re-scans, block maps composed through earlier removals, plan's meta model, the errors naming the
group, a pruned model loading with plain from_pretrained, low-rank blocks. The helpers `context`, `run` and
`no_calibration` are imported by the other test_remove_blocks*.py files."""

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
        (flux, dict(fraction={"single": 1.0}), r"remove_blocks\.fraction\.single must be a number in \[0, 1\), got 1.0"),
        (pixart, dict(count=3), "leave group 'blocks' empty"),
        (flux, dict(count=4), "leave a group empty .*'double': 2, 'single': 3"),
        (flux, dict(count={"triple": 1}), "no block group 'triple'"),
        (flux, dict(count=1, blocks={"double": [0]}), "exactly one of blocks, count, fraction"),
        (flux, dict(count=-1), "non-negative integer"),
        (flux, dict(count=1, criterion="magic"), "criterion must be one of scan, proxy"),
        (flux, dict(blocks={"double": [0]}, criterion="magic"), "criterion must be one of scan, proxy"),
        (flux, dict(count=1, buckets=0), "remove_blocks.buckets must be an integer ≥ 1, got 0"),
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
