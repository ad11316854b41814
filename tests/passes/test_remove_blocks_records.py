"""compress.passes.remove_blocks_records: what a removal leaves in the report and the log: earlier svd records,
their totals and importance scores following their blocks to their new indices, each removal pass's own
record and the total in teacher indices, the line naming the blocks it took."""

import pytest

from compress.arch import get_adapter
from compress.passes.importance import ImportanceConfig, ImportancePass
from tests.conftest import tiny_flux, tiny_pixart
from tests.passes.test_remove_blocks import context, run


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
    from compress.passes.remove_blocks_records import merge_report

    old = {"criterion": None, "iterative": False, "order": ["blocks.1"], "removed": {"blocks": [1]}}
    this = {"criterion": "scan", "iterative": True, "order": ["blocks.3"], "removed": {"blocks": [3]}}
    merged = merge_report(old, this)
    assert merged["passes"] == [old, this] and merged["removed_total"] == {"blocks": [1, 3]}
    assert merged["removed"] == {"blocks": [3]} and merged["order"] == ["blocks.3"]
    assert merge_report(merged, dict(this, removed={"blocks": [0]}))["removed_total"] == {"blocks": [0, 1, 3]}


def _removal_said(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("remove_blocks: removed")]


@pytest.mark.parametrize("config, said", [
    (dict(blocks={"double": [1], "single": [2]}),
     ("remove_blocks: removed transformer_blocks (double) [1], single_transformer_blocks (single) [2] "
      "(teacher indices; listed in the recipe)")),
    (dict(count={"single": 1}, criterion="proxy", iterative=True),
     ("remove_blocks: removed single_transformer_blocks (single) [{chosen}] (teacher indices; chosen by proxy, "
      "re-scored after each removal)")),
    (dict(count=0), "remove_blocks: removed no blocks"),
])
def test_the_log_names_the_blocks_a_removal_took(config, said, tmp_path, capsys):
    """A job's log said nothing of which blocks a removal took (only block_map.json and `inspect`
    did), though a choice by importance or learning can differ between runs: the pass now ends with
    a line naming them in teacher indices, and how they were chosen, in the model card's words: by
    module list, the recipe's group beside it ('double [1], single [2]' named the groups alone)."""
    model = tiny_flux()
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"single": [0]})  # teacher single 1, 2 are now student single 0, 1
    assert _removal_said(capsys) == ["remove_blocks: removed single_transformer_blocks (single) [0] "
                                     "(teacher indices; listed in the recipe)"]
    run(model, ctx, **config)
    chosen = ctx.report["remove_blocks"]["removed"]["single"]
    assert chosen in ([], [1], [2])  # teacher indices (student ones would be 0 or 1)
    assert _removal_said(capsys) == [said.format(chosen=chosen[0] if chosen else None)]
