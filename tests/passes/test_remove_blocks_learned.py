"""remove_blocks criterion learned (remove_blocks_learned): gates that equal removing the blocks, the
choice learned (windows, seeds, the score estimator, teacher indices after an earlier removal), its
weight update (a copy, low-rank hooks, float16, the backward skipping a removed block's inside)."""

import copy

import pytest
import torch

from compress.arch import get_adapter
from compress.passes.remove_blocks_learned import _gates, make_windows
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.passes.test_remove_blocks import context, run


def identity_block(model, group: str, i: int) -> None:
    """Zero the block's residual branches' output projections (and their biases): block(x) = x."""
    block = get_adapter(model).blocks(model, group)[i]
    names = ("attn1.to_out.0", "attn2.to_out.0", "ff.net.2") if group == "blocks" else \
        ("proj_out",) if group == "single" else ("attn.to_out.0", "attn.to_add_out", "ff.net.2", "ff_context.net.2")
    with torch.no_grad():
        for n in names:
            block.get_submodule(n).weight.zero_()
            block.get_submodule(n).bias.zero_()


@pytest.mark.parametrize("family, group, i", [("pixart", "blocks", 1), ("flux", "single", 2),
                                              ("flux", "double", 0)])
def test_gates_equal_removing_the_blocks(family, group, i):
    """The hooks pass a removed block's input through inside the model's own forward: the same
    prediction as the model with that block gone."""
    model = tiny_pixart(num_layers=4) if family == "pixart" else tiny_flux()
    adapter = get_adapter(model)
    removed = copy.deepcopy(model)
    adapter.remove_blocks(removed, {group: [i]})
    keep = {(g, j): torch.tensor(float((g, j) != (group, i))) for g, j, _ in adapter.iter_blocks(model)}
    kwargs = model_inputs(model, batch=3)
    with torch.no_grad(), _gates(model, adapter, keep):
        gated = adapter.predict(model, kwargs)
    with torch.no_grad():
        torch.testing.assert_close(gated, adapter.predict(removed, kwargs), rtol=0, atol=1e-6)
        assert not torch.allclose(adapter.predict(model, kwargs), gated)  # hooks gone after the context


@pytest.mark.parametrize("learn_lr", [0.0, 1e-3])
@pytest.mark.parametrize("family, group, i", [("pixart", "blocks", 2), ("flux", "single", 1)])
def test_learns_to_remove_a_block_that_does_nothing(family, group, i, learn_lr, tmp_path, capsys):
    model = tiny_pixart(num_layers=4) if family == "pixart" else tiny_flux()
    identity_block(model, group, i)
    before = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ctx = context(model, tmp_path)
    run(model, ctx, count={group: 1}, criterion="learned", learn_steps=40, learn_lr=learn_lr, logit_lr=0.1)
    record = ctx.report["remove_blocks"]
    assert {g: v for g, v in record["removed"].items() if v} == {group: [i]}
    [w] = record["learned"]["windows"]
    assert w["removed"] == [i] == w["likeliest"][0]["removed"] and w["likeliest"][0]["probability"] > 0.5
    assert "a close call" not in capsys.readouterr().err
    assert len(w["likeliest"]) == 3 and w["likeliest"][1]["probability"] <= w["likeliest"][0]["probability"]
    assert record["learned"]["loss_last"] < record["learned"]["loss_first"]
    # the weights of the blocks kept are the model's own (the weight update trained a copy)
    ref = copy.deepcopy(ctx.teacher)
    get_adapter(ref).remove_blocks(ref, {group: [i]})
    for (n, p), (m, q) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert n == m and torch.equal(p, q)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        n: f for n, f in flags.items() if n in dict(model.named_parameters())}
    assert len(before) > len(model.state_dict())


def test_windows_each_lose_their_share(tmp_path):
    model = tiny_pixart(num_layers=4)
    identity_block(model, "blocks", 0)
    identity_block(model, "blocks", 3)
    ctx = context(model, tmp_path)
    run(model, ctx, count={"blocks": 2}, criterion="learned", window=2, learn_steps=40, learn_lr=0.0,
        logit_lr=0.1)
    record = ctx.report["remove_blocks"]
    assert record["removed"] == {"blocks": [0, 3]}
    assert [(w["blocks"], w["size"], w["patterns"]) for w in record["learned"]["windows"]] == [([0, 1], 2, 2),
                                                                                              ([2, 3], 2, 2)]
    assert ctx.block_map == {"blocks": [1, 2]}


def test_same_seed_same_choice_and_curve(tmp_path):
    records = []
    for k in range(2):
        model = tiny_flux()
        ctx = context(model, tmp_path / str(k))
        run(model, ctx, count={"double": 1, "single": 1}, criterion="learned", learn_steps=6)
        records.append(ctx.report["remove_blocks"])
    assert records[0] == records[1]
    assert [w["group"] for w in records[0]["learned"]["windows"]] == ["double", "single"]


def test_make_windows_skips_groups_without_removal():
    wins = make_windows({"double": 0, "single": 1}, {"double": 2, "single": 3}, None)
    assert [(w.group, w.keep.shape) for w in wins] == [("single", (3, 3))]


@pytest.mark.parametrize("rank", [None, 4])
def test_weight_update_trains_a_copy_of_a_frozen_model(rank, tmp_path):
    """The student may come frozen (a copy of the teacher): learn_lr > 0 still trains the copy's weights
    (rank None) or rank-4 factors hooked onto the block linears, which lowers the loss below the
    logits-only run's; the model keeps its weights and flags, and no hook stays behind."""
    records = {}
    for lr in (0.0, 3e-3):
        model = tiny_pixart(num_layers=4).requires_grad_(False)
        before = copy.deepcopy(model)
        ctx = context(model, tmp_path / str(lr))
        run(model, ctx, count={"blocks": 1}, criterion="learned", learn_steps=30, learn_lr=lr,
            **({"learn_rank": rank} if rank and lr else {}))
        assert not any(m._forward_hooks for m in model.modules())
        records[lr] = ctx.report["remove_blocks"]["learned"]
        assert not any(p.requires_grad for p in model.parameters())
        removed = ctx.report["remove_blocks"]["removed"]["blocks"]
        get_adapter(before).remove_blocks(before, {"blocks": removed})
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))
    assert records[3e-3]["loss_last"] < 0.8 * records[0.0]["loss_last"]


def _pattern_losses(model, ctx, remove: int) -> dict[tuple, float]:
    """Mean normalized squared error against the teacher over the calibration batches, per removal."""
    adapter, batches = ctx.adapter, ctx.calibration_inputs()
    [w] = make_windows({"blocks": remove}, adapter.block_counts(model), None)
    out = {}
    with torch.no_grad():
        for j in range(w.keep.shape[0]):
            keep = {("blocks", i): w.keep[j, i] for i in range(w.keep.shape[1])}
            errs = []
            for b in batches:
                ref = adapter.predict(ctx.teacher, b)
                with _gates(model, adapter, keep):
                    errs.append(float((adapter.predict(model, b) - ref).pow(2).sum() / ref.pow(2).sum()))
            out[tuple(w.removed(j))] = sum(errs) / len(errs)
    return out


def test_score_estimator_finds_the_removal_that_costs_least(tmp_path):
    """Logits alone with the unbiased (score) estimator minimize the expected loss: they settle on the
    pair whose removal costs least, found here by trying all six."""
    model = tiny_pixart(seed=4, num_layers=4)
    ctx = context(model, tmp_path)
    losses = _pattern_losses(model, ctx, 2)
    best = min(losses, key=losses.get)
    assert sorted(losses.values())[1] > 1.2 * losses[best]  # a clear winner
    run(model, ctx, count={"blocks": 2}, criterion="learned", estimator="score", learn_lr=0.0,
        learn_steps=150, logit_lr=0.1)
    record = ctx.report["remove_blocks"]
    assert tuple(record["removed"]["blocks"]) == best
    assert record["learned"]["estimator"] == "score" and "tau" not in record["learned"]
    assert record["learned"]["windows"][0]["likeliest"][0]["probability"] > 0.5


def test_low_rank_update_hooks_each_block_linear_once():
    """A factorized layer takes one update (not one more on each of its factors); top-level linears none."""
    from compress.passes.remove_blocks_learned import _low_rank_update, block_linears
    from tests.conftest import factorize

    model = tiny_flux()
    adapter = get_adapter(model)
    factorize(model, ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.proj_mlp"], rank=3)
    expected = [i for i in adapter.linears(model) if i.group is not None]
    assert len(block_linears(model, adapter)) == len(expected)
    with _low_rank_update(model, adapter, 2, torch.Generator().manual_seed(0)) as params:
        assert len(params) == 2 * len(expected)
        assert sum(bool(m._forward_hooks) for m in model.modules()) == len(expected)
        kwargs = model_inputs(model)
        with torch.no_grad():
            hooked = adapter.predict(model, kwargs)  # B starts at zero: the model itself
    with torch.no_grad():
        torch.testing.assert_close(hooked, adapter.predict(model, kwargs), rtol=0, atol=0)
    assert not any(m._forward_hooks for m in model.modules())


def test_a_budget_of_nothing_learns_nothing(tmp_path):
    model = tiny_pixart(num_layers=4)
    ctx = context(model, tmp_path)
    run(model, ctx, count={"blocks": 0}, criterion="learned", learn_lr=0.0)
    assert ctx.report["remove_blocks"]["removed"] == {"blocks": []}
    assert ctx.report["remove_blocks"]["learned"] == {"steps": 0, "windows": []}


def test_reports_teacher_indices_after_an_earlier_removal(tmp_path, capsys):
    """Windows, patterns and notes name teacher blocks, as `removed` does, not the current positions."""
    model = tiny_pixart(num_layers=6)
    for i in (0, 1, 3):  # removing 0 and 1 first leaves the teacher's prediction: block 3 costs nothing
        identity_block(model, "blocks", i)
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"blocks": [0, 1]})
    run(model, ctx, count={"blocks": 1}, criterion="learned", learn_steps=40, learn_lr=0.0, logit_lr=0.1)
    record = ctx.report["remove_blocks"]
    assert record["removed"] == {"blocks": [3]} and ctx.block_map == {"blocks": [2, 4, 5]}
    [w] = record["learned"]["windows"]
    assert w["blocks"] == [2, 3, 4, 5] and w["removed"] == [3] == w["likeliest"][0]["removed"]
    assert {tuple(p["removed"]) for p in w["likeliest"]} <= {(2,), (3,), (4,), (5,)}


@pytest.mark.parametrize("learn_rank", [None, 4])
def test_float16_weight_updates_stay_finite(learn_rank, tmp_path):
    """Adam in float16 turns a zero gradient (the low-rank A while B is zero; a block a pattern removed)
    into 0/0: the update runs in float32 and the model keeps its float16 weights."""
    model = tiny_pixart(num_layers=4).half()
    identity_block(model, "blocks", 2)
    ctx = context(model, tmp_path)  # the pass moves the float32 batches to the model's dtype
    run(model, ctx, count={"blocks": 1}, criterion="learned", learn_steps=6, learn_rank=learn_rank)
    record = ctx.report["remove_blocks"]
    assert all(torch.isfinite(torch.tensor(p["probability"])) for p in record["learned"]["windows"][0]["likeliest"])
    assert torch.isfinite(torch.tensor(record["learned"]["loss_last"]))
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_low_rank_hooks_go_when_making_them_fails(monkeypatch):
    from compress.passes import remove_blocks_learned as learned

    model = tiny_flux()
    adapter = get_adapter(model)
    calls = {"n": 0}
    real = torch.zeros

    def failing_zeros(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kw)
    monkeypatch.setattr(learned.torch, "zeros", failing_zeros)
    with pytest.raises(torch.OutOfMemoryError):
        with learned._low_rank_update(model, adapter, 2, torch.Generator().manual_seed(0)):
            pass
    assert calls["n"] == 3 and not any(m._forward_hooks for m in model.modules())


def test_backward_skips_the_inside_of_a_removed_block(monkeypatch):
    """A block the sampled pattern removes (keep exactly 0) gets no backward through its inside (its
    weights' gradient would be exactly zero); the prediction, keep's gradient and the kept blocks'
    gradients are those of the full backward."""
    import compress.passes.remove_blocks_learned as learned

    model = tiny_pixart(num_layers=4)
    adapter = get_adapter(model)
    kwargs = model_inputs(model, batch=3)
    skips = learned.passed_through

    def grads(skip: bool):
        monkeypatch.setattr(learned, "passed_through", skips if skip else lambda k: False)
        model.zero_grad(set_to_none=True)
        keep = {("blocks", j): torch.tensor(float(j != 1), requires_grad=True) for j in range(4)}
        with _gates(model, adapter, keep):
            pred = adapter.predict(model, kwargs)
            pred.square().sum().backward()
        return pred, {n: p.grad for n, p in model.named_parameters()}, [keep["blocks", j].grad for j in range(4)]

    full_pred, full, full_keep = grads(skip=False)
    fast_pred, fast, fast_keep = grads(skip=True)
    assert torch.equal(full_pred, fast_pred) and all(torch.equal(a, b) for a, b in zip(full_keep, fast_keep))
    inside = [n for n in full if n.startswith("transformer_blocks.1.")]
    assert inside and all(fast[n] is None and not full[n].any() for n in inside)
    assert all(torch.equal(full[n], fast[n]) for n in full if n not in inside)
