import copy

import pytest
import torch

from compress.arch import get_adapter
from compress.errors import BadValue, UserError
from compress.passes.remove_blocks import RemoveBlocksConfig, RemoveBlocksPass
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


def test_plan_counts_the_patterns():
    model = tiny_pixart(num_layers=4)
    step = RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned"))
    planned = step.plan(model, get_adapter(model))
    assert planned["remove"] == "learned at run time" and planned["patterns"] == 6
    assert planned["budget"] == {"blocks": 2} and planned["blocks_after"] == {"blocks": 2}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert planned["learning_holds"].startswith(f"{4 * size / 2**20:.0f} MiB (a copy of the model")
    assert planned["learning_holds"].endswith("; and one calibration batch's activations for the backward")
    low = RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned", learn_rank=2)).plan(
        model, get_adapter(model))
    factors = sum(2 * (m.in_features + m.out_features) * 4 for b in model.transformer_blocks for m in b.modules()
                  if isinstance(m, torch.nn.Linear))
    assert planned["learn_lr"] == 5e-4 and low["learn_lr"] == 2e-3  # factors from zero take larger steps
    assert low["learning_holds"] == f"{4 * factors / 2**20:.0f} MiB (rank-2 factors of the block linears, " \
                                    "their gradients, Adam's moments); and one calibration batch's activations " \
                                    "for the backward"
    assert RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned", learn_lr=0)).plan(
        model, get_adapter(model))["learning_holds"] == "logits only (no backward)"  # score: a forward per step
    assert RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned", learn_lr=0, estimator="gumbel")).plan(
        model, get_adapter(model))["learning_holds"].startswith("logits only; and one calibration batch's")
    half = tiny_pixart(num_layers=4).half()  # the full update trains a float32 copy of a float16 model
    assert RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned")).plan(
        half, get_adapter(half))["learning_holds"] == planned["learning_holds"]
    step = RemoveBlocksPass(RemoveBlocksConfig(count={"blocks": 2}, criterion="learned", window=2))
    assert step.plan(model, get_adapter(model))["patterns"] == 4


@pytest.mark.parametrize("config, error, words", [
    (dict(count=2, criterion="learned"), UserError, r"a budget per group \(count: \{double: 1, single: 1\}\)"),
    (dict(count={"single": 2}, criterion="learned", window=2), UserError,
     r"group 'single': the window of blocks 2\.\.2 would lose all 1: set a larger window"),
    (dict(count={"single": 1}, window=3), BadValue, "window applies to criterion: learned"),
    (dict(count={"single": 1}, criterion="learned", iterative=True), BadValue, "chooses all blocks at once"),
    (dict(count={"single": 1}, criterion="learned", learn_steps=0), BadValue, "learn_steps must be an integer ≥ 1"),
    (dict(count={"single": 1}, criterion="learned", logit_lr=0), BadValue, "logit_lr must be a number > 0"),
    (dict(count={"single": 1}, criterion="learned", learn_rank=0), BadValue, "learn_rank must be an integer ≥ 1"),
    (dict(count={"single": 1}, criterion="learned", learn_rank=4, learn_lr=0), BadValue,
     "learn_rank shapes the weight update, and learn_lr: 0 turns it off"),
    (dict(blocks={"single": [1]}, criterion="learned"), BadValue,
     "blocks lists the blocks to remove; criterion learned chooses them for a count or fraction"),
])
def test_mistakes_are_one_line_errors(config, error, words):
    model = tiny_flux()
    with pytest.raises(error, match=words):
        RemoveBlocksPass(RemoveBlocksConfig(**config)).check(model, get_adapter(model))


def test_streaming_is_refused_naming_the_key_to_change(tmp_path):
    """With stream: true, criterion learned is refused at its line and by the key --set takes, as svd's
    refusals are ('use criterion scan or proxy' named no key); proxy, scan and listed blocks stream."""
    from compress.recipe import parse_recipe
    from compress.runner import build_passes
    from compress.runner_stream import check_streaming

    with pytest.raises(UserError, match="remove_blocks.criterion: learned trains through the whole model"):
        RemoveBlocksPass(RemoveBlocksConfig(count={"single": 1}, criterion="learned")).check_streaming()
    RemoveBlocksPass(RemoveBlocksConfig(count={"single": 1}, criterion="proxy")).check_streaming()
    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ranks: {modulation: 8}, fisher: block}\n"
            "  - remove_blocks:\n      count: 1\n      criterion: learned\n")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"), ["stream=true"])
    with pytest.raises(UserError) as e:
        check_streaming(build_passes(recipe), recipe.passes, recipe.path)
    assert str(e.value) == (f"{tmp_path / 'r.yaml'}:7 (with --set stream=true): remove_blocks.criterion: learned "
                            "trains through the whole model; with stream: true set passes.1.remove_blocks.criterion "
                            "to scan or proxy")


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


def test_model_card_and_note_say_how_sure_the_choice_is(tmp_path, capsys):
    from compress.report_card import _removal_lines

    model = tiny_pixart(num_layers=4)
    ctx = context(model, tmp_path)
    run(model, ctx, count={"blocks": 1}, criterion="learned", learn_steps=3, learn_lr=0.0, logit_lr=1e-3)
    record = ctx.report["remove_blocks"]
    [w] = record["learned"]["windows"]
    p = w["likeliest"][0]["probability"]
    assert w["likeliest"][1]["probability"] > 0.8 * p  # three tiny steps from uniform logits: a close call
    err = capsys.readouterr().err
    assert "a close call" in err
    [_, line] = _removal_lines(record)
    assert line == (f"Blocks removed by the last remove_blocks pass (teacher indices): blocks {w['removed']} "
                    f"(chosen by learned; blocks: probability {p:.2f}).")
    # the log names the blocks too (it did not: learn_steps 10 and 20 can take different ones)
    assert err.splitlines()[-1] == (f"remove_blocks: removed blocks {w['removed']} (teacher indices; chosen by "
                                    f"learned; blocks: probability {p:.2f})")


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


def test_estimator_defaults_to_score_without_a_weight_update(capsys):
    """gumbel's straight-through gradient needs the update (README, "Which blocks to remove"): the
    default turns to score at learn_lr 0, and an explicit gumbel there is a note (the runner warns)."""
    model = tiny_pixart(num_layers=4)
    step = lambda **kw: RemoveBlocksPass(RemoveBlocksConfig(count=1, criterion="learned", **kw))
    plan = lambda **kw: step(**kw).plan(model, get_adapter(model))
    notes = lambda **kw: step(**kw).notes(model, get_adapter(model))
    assert plan()["estimator"] == "gumbel" and plan(learn_rank=2)["estimator"] == "gumbel"
    assert plan(learn_lr=0)["estimator"] == "score"
    assert plan(learn_lr=0, estimator="score")["estimator"] == "score"
    assert plan(learn_lr=0, estimator="gumbel")["estimator"] == "gumbel"
    assert "warning" not in capsys.readouterr().err  # plan and check print nothing: the runner warns
    (key, words, reads), = notes(learn_lr=0, estimator="gumbel")
    assert key == "estimator" and reads == ("learn_lr",)  # a --set of learn_steps is not named with it
    assert words.startswith("remove_blocks: estimator gumbel with learn_lr: 0")
    assert "use estimator: score" in words
    assert notes(learn_lr=0) == notes(learn_lr=1e-4, estimator="gumbel") == notes() == []


def test_plan_warns_of_a_biased_estimator_once_at_its_line(capsys):
    """It printed from check(), which plan runs twice (the upfront check and the pass's plan)."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    recipe = parse_recipe("model: pixart\nteacher: toy:pixart\n"
                          "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}\n"
                          "passes:\n  - remove_blocks:\n      count: 1\n      criterion: learned\n"
                          "      learn_lr: 0\n      estimator: gumbel\n", "r.yaml")
    make_plan(recipe)
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("estimator gumbel with learn_lr: 0") == 1
    assert "warning: r.yaml:9: remove_blocks: estimator gumbel" in said


def test_estimator_must_be_known():
    with pytest.raises(BadValue, match="estimator must be one of gumbel, score, got 'adam'"):
        RemoveBlocksConfig(count={"single": 1}, criterion="learned", estimator="adam").validate()


@pytest.mark.parametrize("pass_text, where", [
    ("  - remove_blocks:\n      count: {blocks: 1}\n      window: 3\n", r"r\.yaml:10: remove_blocks: window applies"),
    ("  - remove_blocks:\n      count: {blocks: 1}\n      criterion: learned\n      estimator: adam\n",
     r"r\.yaml:11: remove_blocks: estimator must be one of"),
])
def test_recipe_mistakes_name_the_line(pass_text, where):
    from compress.recipe import parse_recipe

    text = ("version: 1\nmodel: pixart\nteacher: toy:pixart\ncalibration:\n  num_prompts: 4\n  timesteps: 2\n"
            "passes:\n" + pass_text)
    with pytest.raises(UserError, match=where):
        parse_recipe(text, "r.yaml")


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


def test_close_call_note_names_teacher_blocks(tmp_path, capsys):
    model = tiny_pixart(num_layers=6)
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"blocks": [1]})
    run(model, ctx, count={"blocks": 1}, criterion="learned", learn_steps=2, learn_lr=0.0, logit_lr=1e-4)
    [w] = ctx.report["remove_blocks"]["learned"]["windows"]
    err = " ".join(capsys.readouterr().err.split())
    assert f"blocks 0, 2, 3, 4, 5: a close call: removing {w['removed']} won" in err
    assert w["removed"][0] in (0, 2, 3, 4, 5)


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


def test_learning_off_a_terminal_is_lines_on_stderr(tmp_path, capsys):
    """The bar is not drawn off a terminal (a job's log): the default recipe's learned removal said nothing
    after 'pass 2/5: remove_blocks' for minutes, and looked hung. A line per tenth of the steps, as distill's."""
    model = tiny_pixart(num_layers=4)
    run(model, context(model, tmp_path), count={"blocks": 1}, criterion="learned", learn_steps=20, learn_lr=0.0)
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line.split() for line in err.splitlines() if line.startswith("remove_blocks learned ")]
    assert [words[2] for words in lines] == [f"{s}/20" for s in range(2, 21, 2)]
    assert all(words[3] == "loss" and float(words[4]) >= 0 for words in lines)


def test_learning_off_a_terminal_logs_every_few_minutes_too(tmp_path, capsys, monkeypatch):
    """Its lines were its own logger's, a tenth apart alone: a slow step of a real model left the log silent
    for a tenth of the learning. Now compress.progress decides, with a line every LOG_EVERY_S (here each step)."""
    monkeypatch.setattr("compress.progress.LOG_EVERY_S", 0.0)
    model = tiny_pixart(num_layers=4)
    run(model, context(model, tmp_path), count={"blocks": 1}, criterion="learned", learn_steps=20, learn_lr=0.0)
    err = capsys.readouterr().err
    lines = [line.split() for line in err.splitlines() if line.startswith("remove_blocks learned ")]
    counts = list(dict.fromkeys(words[2] for words in lines))  # (the timer may say a step's line again)
    counts = counts[counts[:1] == ["0/20"]:]  # (and, where the first step outlasts its 10 ms tick, 0/20 first)
    assert counts == [f"{s}/20" for s in range(1, 21)]  # (a tenth apart: 10 of them)



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
