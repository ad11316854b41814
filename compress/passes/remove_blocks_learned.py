"""`remove_blocks` with `criterion: learned`: the blocks to remove are learned (TinyFusion, see
`compress.block_mask`) instead of ranked by what removing each alone costs.

Each group's blocks are split into windows of at most `window` consecutive blocks (the whole group by
default), the removal shared by size; every window holds logits over its keep-patterns. Each step samples
one hard pattern per window, runs the model with the removed blocks passed through (forward hooks: a
block's output becomes keep · output + (1 − keep) · input, so the model's own forward runs) and takes the
normalized squared error of the prediction against the teacher's on a calibration batch. Adam updates
the logits (`logit_lr`; `estimator` gumbel: the straight-through gradient of a Gumbel-softmax sample,
temperature annealed from TAU[0] to TAU[1], as TinyFusion; score: REINFORCE, unbiased for the expected
loss) and, when `learn_lr` > 0, a weight update (TinyFusion's recoverability: the choice then favours
blocks whose removal a weight update can make up for): the weights of a copy of the model, or with
`learn_rank` r, rank-r factors added to every block linear's output through hooks (LoRA-like, no copy).
The update is discarded: the model loses the blocks of each window's likeliest pattern, its weights
untouched.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from compress.arch import group_modules
from compress.block_mask import gated, gumbel_hard, patterns, temperature, windows
from compress.errors import NumericError, UserError
from compress.passes.base import RunContext
from compress.passes.importance_forward import to_model
from compress.passes.remove_blocks_budget import BUDGET_KEYS, one_of
from compress.passes.removed_blocks import AfterRemoval
from compress.progress import WORDS, bar

TAU = (2.0, 0.1)  # Gumbel-softmax temperature: first step, last step
# what the windows of a learned removal are cut from: the budget per group, the window, the criterion
# that makes them (a --set of learn_steps or learn_lr is not named with an error about them)
WINDOW_READS = ("window", "criterion", *BUDGET_KEYS)
# defaults measured on the toy PixArt (tools/bench_remove_blocks.py, README "Which blocks to remove"): with
# the weight update, gumbel found the block whose removal distillation recovers from best; logits alone
# find the blocks whose removal costs least at once (score) or, with gumbel, went astray
DEFAULTS = {"learn_steps": 200, "learn_lr": 5e-4, "logit_lr": 0.05, "estimator": "gumbel"}
CLOSE = 0.8  # a runner-up pattern at this fraction of the winner's probability makes the choice a close call
LOW_RANK_LR = 2e-3  # learn_lr's default with learn_rank: factors starting at zero need a larger step (rank 32
# at 2e-3 chose as the full update did on the toy PixArt; rank 8 at 5e-4 once chose the costliest pair)


@dataclass
class Window:
    group: str
    start: int  # first block (current index) of the window
    keep: torch.Tensor  # (C, size) 1 = kept, one row per pattern
    logits: torch.Tensor  # (C,) learnable
    teacher: list[int]  # (size,) the window's blocks as teacher indices (what reports and notes say)

    def removed(self, pattern: int | None = None) -> list[int]:
        """Current indices a pattern (default: the most likely) removes."""
        row = self.keep[int(self.logits.argmax()) if pattern is None else pattern]
        return [self.start + i for i in range(row.numel()) if row[i] == 0]

    def removed_teacher(self, pattern: int | None = None) -> list[int]:
        """Teacher indices a pattern (default: the most likely) removes."""
        return [self.teacher[i - self.start] for i in self.removed(pattern)]

    def likeliest(self, n: int = 3) -> list[dict]:
        """The n most likely patterns: the blocks each removes (teacher indices) and its probability."""
        probs = torch.softmax(self.logits.detach(), -1)
        top = probs.topk(min(n, probs.numel()))
        return [{"removed": self.removed_teacher(int(j)), "probability": round(float(p), 4)}
                for p, j in zip(top.values, top.indices)]


def make_windows(budget: dict[str, int], counts: dict[str, int], window: int | None,
                 block_map: dict[str, list[int]] | None = None, key: str = "window") -> list[Window]:
    """Windows of every group with a budget; when they cannot be made, an `AfterRemoval` on recipe key
    `key` naming the group (its `group`, too; the windows are cut from the blocks left: the runner says which earlier
    passes removed blocks). block_map: {group: teacher index of each current block} (default: the same
    indices)."""
    out = []
    for g, k in budget.items():
        if not k:
            continue
        try:
            spans = windows(counts[g], k, window)
        except ValueError as e:
            raise AfterRemoval(key, f"remove_blocks: criterion learned, group '{g}': {e}", reads=WINDOW_READS,
                               group=g) from None
        for start, size, remove in spans:
            if not remove:
                continue  # nothing to choose: every block of this window stays
            keep = patterns(size, remove)
            teacher = (block_map[g] if block_map else list(range(counts[g])))[start:start + size]
            out.append(Window(g, start, keep, torch.zeros(keep.shape[0], requires_grad=True), teacher))
    return out


def _drop_of(wins: list[Window]) -> dict[str, list[int]]:
    drop: dict[str, list[int]] = {}
    for w in wins:
        drop.setdefault(w.group, []).extend(w.removed())
    return {g: sorted(v) for g, v in drop.items()}


@contextmanager
def _gates(model: nn.Module, adapter, keep: dict[tuple[str, int], torch.Tensor]):
    """Forward hooks that gate each block by keep[(group, index)] (a 0-d tensor, read at call time).
    A block whose keep is exactly 0 (the sampled pattern removes it) has its output detached: the
    output is multiplied by 0, so the gradient reaching the block's inside is exactly zero, and the
    backward no longer runs through it (keep's own gradient, <g, out − in>, still reads the output;
    `_zero_missing_grads` gives its weights the zero gradients they had)."""
    handles = []
    for group, i, block in adapter.iter_blocks(model):
        def hook(module, args, kwargs, output, key=(group, i)):
            k = keep.get(key)
            if k is None:
                return output
            ins, outs = adapter.hidden_of(args, kwargs), adapter.hidden_of_output(output)
            if passed_through(k):  # its output times 0: no gradient reaches its inside
                outs = [o.detach() for o in outs]
            return adapter.skipped_output([gated(o, x, k.to(o.device, o.dtype)) for o, x in zip(outs, ins)])
        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def passed_through(keep: torch.Tensor) -> bool:
    """Whether a block's keep (0-d) is exactly 0: the sampled pattern removes the block."""
    return bool(keep == 0)


def block_linears(model: nn.Module, adapter) -> list[nn.Module]:
    """The linear layers inside the blocks, as the adapter lists them (a factorized layer once, not its
    two factors)."""
    return [model.get_submodule(info.name) for info in adapter.linears(model) if info.group is not None]


@contextmanager
def _low_rank_update(model: nn.Module, adapter, rank: int, generator: torch.Generator):
    """A LoRA-style weight update of every linear inside the blocks, through forward hooks (no copy of the
    model): output + (x Aᵀ) Bᵀ with A (rank, in) random and B (out, rank) zero, so training starts from
    the model itself. The factors are float32 whatever the model's dtype (Adam in float16 turns a zero
    gradient, which A has while B is zero, into 0/0). Yields the trainable [A, B, ...]; the hooks go on
    exit, also when making them fails partway."""
    params, handles = [], []
    try:
        for module in block_linears(model, adapter):
            device = next(module.parameters()).device
            a = (torch.randn(rank, module.in_features, generator=generator) / module.in_features ** 0.5)
            a = a.to(device).requires_grad_(True)
            b = torch.zeros(module.out_features, rank, device=device, requires_grad=True)

            def hook(mod, args, output, a=a, b=b):
                return output + ((args[0].float() @ a.T) @ b.T).to(output.dtype)
            handles.append(module.register_forward_hook(hook))
            params += [a, b]
        yield params
    finally:
        for h in handles:
            h.remove()


def _sample(wins: list[Window], tau: float, generator: torch.Generator) -> dict[tuple[str, int], torch.Tensor]:
    keep = {}
    for w in wins:
        _put(keep, w, gumbel_hard(w.logits, tau, generator) @ w.keep)  # 0/1 forward, relaxed gradient
    return keep


def _put(keep: dict, w: Window, mask: torch.Tensor) -> None:
    """keep[(group, block)] = mask[j] for the window's blocks; mask (size,)."""
    for j in range(mask.numel()):
        keep[(w.group, w.start + j)] = mask[j]


def _references(teacher: nn.Module, adapter, batches: list[dict]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [adapter.predict(teacher, to_model(b, teacher)).detach() for b in batches]


def learn_removal(model: nn.Module, ctx: RunContext, budget: dict[str, int], config,
                  block_map: dict[str, list[int]] | None = None) -> tuple[dict, dict]:
    """-> (drop {group: current indices}, record for the report, in teacher indices). budget: {group:
    blocks to remove}; block_map: {group: teacher index of each current block}."""
    adapter = ctx.adapter
    if ctx.calibration_inputs is None:
        raise UserError("remove_blocks.criterion: learned needs calibration inputs")
    steps, lr, logit_lr = (value(config, k) for k in ("learn_steps", "learn_lr", "logit_lr"))
    wins = make_windows(budget, adapter.block_counts(model), config.window, block_map, window_key(config))
    if not wins:  # a budget of 0: nothing to choose
        return {}, {"steps": 0, "windows": []}
    batches = ctx.calibration_inputs()
    refs = _references(ctx.teacher if ctx.teacher is not None else model, adapter, batches)
    rank = config.learn_rank
    full = lr > 0 and rank is None
    work = _trained_copy(model) if full else model  # the full weight update trains a copy
    flags = [p.requires_grad for p in model.parameters()]
    work.requires_grad_(full)  # a frozen model (the teacher's copy) trains too
    generator = torch.Generator().manual_seed(ctx.seed)
    losses, state = [], {"estimator": value(config, "estimator")}
    try:
        with _low_rank_update(work, adapter, rank, generator) if lr > 0 and rank else nullcontext([]) as low:
            weights = [p for p in work.parameters() if p.is_floating_point()] if full else low
            groups = [{"params": [w.logits for w in wins], "lr": logit_lr}] + (
                [{"params": weights, "lr": lr}] if weights else [])
            _learn(work, adapter, wins, batches, refs, steps, torch.optim.Adam(groups), generator, state, losses)
    finally:
        if work is model:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)
    _note_close_calls(wins)
    record = dict(_record(wins, losses, steps, lr, logit_lr, config.window), estimator=state["estimator"],
                  learn_rank=rank)
    if state["estimator"] != "gumbel":
        del record["tau"]  # the score estimator draws from the logits' own softmax
    return _drop_of(wins), record


def _trained_copy(model: nn.Module) -> nn.Module:
    """The copy the full weight update trains: float32 where the model is float16 (Adam in float16 turns
    the zero gradient of a block a pattern removed into 0/0)."""
    work = copy.deepcopy(model)
    return work.float() if any(p.dtype == torch.float16 for p in work.parameters()) else work


def _learn(work, adapter, wins, batches, refs, steps: int, opt, generator, state: dict, losses: list) -> None:
    order = torch.randperm(len(batches), generator=generator).tolist()
    # off a terminal (a job's log) a line per tenth of the steps with the loss: the pass said nothing for
    # its hundreds of steps there, and looked hung
    with bar(True) as shown:
        task = shown.add_task("remove_blocks learned", total=steps)  # (the pass and its criterion)
        for step in range(steps):
            losses.append(_step(work, adapter, wins, batches, refs, order[step % len(order)],
                                temperature(step, steps, *TAU), generator, opt, step, state))
            shown.update(task, advance=1, **{WORDS: f"loss {losses[-1]:.4g}"})


def _note_close_calls(wins: list[Window]) -> None:
    """A note for each window whose runner-up pattern came within CLOSE of the winner's probability."""
    from compress.report import note

    for w in wins:
        first, *rest = w.likeliest(2)
        if rest and rest[0]["probability"] >= CLOSE * first["probability"]:
            note(f"remove_blocks: learned, {''.join(group_modules(w.group))} "  # by module, as the removal line
                 f"{_span(w.teacher)}: a close call: removing {first['removed']} "
                 f"won at probability {first['probability']:.2f}, {rest[0]['removed']} had "
                 f"{rest[0]['probability']:.2f}; more learn_steps sharpen the choice")


def _span(blocks: list[int]) -> str:
    """Teacher indices of a window: 3..7, or 1, 2, 5 where earlier removals left gaps."""
    if blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"{blocks[0]}..{blocks[-1]}"
    return ", ".join(map(str, blocks))


def _sample_hard(wins: list[Window], generator: torch.Generator):
    """One pattern per window drawn from softmax(logits) -> (keep {(group, index): 0-d 0/1}, the draw's
    log-probability, differentiable in the logits)."""
    keep, logprob = {}, 0.0
    for w in wins:
        logp = torch.log_softmax(w.logits, -1)
        j = int(torch.multinomial(logp.detach().exp(), 1, generator=generator))
        logprob = logprob + logp[j]
        _put(keep, w, w.keep[j])
    return keep, logprob


def _step(work, adapter, wins, batches, refs, b: int, tau: float, generator, opt, step: int,
          state: dict) -> float:
    """One optimizer step on batch b: sample the windows' patterns, run the gated model, ||pred − ref||² /
    ||ref||² against the teacher's prediction; the logits' gradient by state["estimator"]: gumbel (the
    straight-through one of the relaxed sample) or score (REINFORCE, (loss − baseline) · ∇ log p of the
    draw, baseline a running mean of the loss). -> the loss."""
    score = state["estimator"] == "score"
    if score:
        keep, logprob = _sample_hard(wins, generator)
    else:
        keep = _sample(wins, tau, generator)
    with _gates(work, adapter, keep):
        pred = adapter.predict(work, to_model(batches[b], work))
    ref = refs[b]
    loss = (pred.float() - ref.float()).pow(2).sum() / ref.float().pow(2).sum().clamp_min(1e-30)
    if not torch.isfinite(loss):
        with _gates(work, adapter, keep):
            raise NumericError(_nonfinite_words(work, adapter, batches, ref, b, opt, step))
    if score:
        now = float(loss.detach())
        base = state.get("baseline", now)
        objective = loss + (now - base) * logprob
        state["baseline"] = 0.9 * base + 0.1 * now
    else:
        objective = loss
    opt.zero_grad(set_to_none=True)
    objective.backward()
    _zero_missing_grads(opt)
    opt.step()
    return float(loss.detach())


def _nonfinite_words(work, adapter, batches, ref, b: int, opt, step: int) -> str:
    """Why step `step`'s loss on batch `b` is not finite: the teacher's prediction `ref` (its own
    checkpoint or compute dtype), else the masked model's, naming its first trained weight or (under the
    step's gates) layer to hold NaN/Inf, and the rate to lower: the weight update's, or the logits'."""
    head = f"remove_blocks: criterion learned: non-finite loss at step {step + 1}"
    if not bool(torch.isfinite(ref).all()):
        return f"{head}: the teacher's prediction on calibration batch {b + 1} holds NaN/Inf"
    from compress.runner_setup import locate

    rates = [g["lr"] for g in opt.param_groups]  # (logit_lr, learn_lr where a weight update trains)
    weight = next((n for n, p in work.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if weight is None and len(rates) > 1:
        weight = next((f"its low-rank update's factor {i}" for i, p in enumerate(opt.param_groups[1]["params"])
                       if not bool(torch.isfinite(p).all())), None)
    where = ""
    if weight is not None:
        where = f": the trained weight {weight} holds NaN/Inf"
    elif (found := locate(work, adapter, to_model(batches[b], work), held="NaN/Inf")) is not None:
        where = f": {found}"
    lower = f"lower learn_lr ({rates[1]:g})" if len(rates) > 1 else f"lower logit_lr ({rates[0]:g})"
    return f"{head} (the teacher's prediction is finite, the masked model's is not){where}; {lower}"


def _zero_missing_grads(opt) -> None:
    """A zero gradient for each trained weight the backward did not reach (those of the blocks `_gates`
    detached, whose gradient is exactly zero): Adam then steps them as it would with that zero
    gradient (their moments decay). The logits (the first group) are left as they are."""
    for group in opt.param_groups[1:]:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)


def _record(wins: list[Window], losses: list[float], steps: int, lr: float, logit_lr: float,
            window: int | None) -> dict:
    tail = max(1, len(losses) // 10)
    return {"steps": steps, "learn_lr": lr, "logit_lr": logit_lr, "window": window, "tau": list(TAU),
            "loss_first": sum(losses[:tail]) / tail, "loss_last": sum(losses[-tail:]) / tail,
            "windows": [{"group": w.group, "blocks": w.teacher, "size": w.keep.shape[1],
                         "patterns": w.keep.shape[0], "removed": w.removed_teacher(),
                         "likeliest": w.likeliest()} for w in wins]}


def value(config, key: str):
    """A learned-criterion key's recipe value, or its default (learn_lr: LOW_RANK_LR with learn_rank;
    estimator: score without a weight update, where the straight-through gradient is biased toward
    the costliest removal)."""
    v = getattr(config, key)
    if v is None and key == "learn_lr" and config.learn_rank:
        return LOW_RANK_LR
    if v is None and key == "estimator" and value(config, "learn_lr") == 0:
        return "score"
    return DEFAULTS[key] if v is None else v


def window_key(config) -> str:
    """The recipe key an error about the windows points at: window, else the budget's key."""
    return "window" if config.window else one_of(config)


def pattern_count(budget: dict[str, int], counts: dict[str, int], window: int | None,
                  key: str = "window") -> int:
    """Keep-patterns over all windows (for plan and the checks; `key`: as `make_windows`)."""
    return sum(w.keep.shape[0] for w in make_windows(budget, counts, window, key=key))


def learning_bytes(model: nn.Module, adapter, lr: float, rank: int | None = None, estimator: str = "gumbel") -> str:
    """What learning holds beside the model (for plan): with the full weight update, a copy of the model
    (float32 where the model is float16), its gradients and Adam's two moments, each as large as the
    copy's weights; with a low-rank one, four times its float32 factors; and, unless only the score
    estimator's logits learn, the activations of one calibration batch's backward through the model."""
    from compress.calib_footprint import human_size

    backward = "; and one calibration batch's activations for the backward"
    if lr <= 0:
        return "logits only (no backward)" if estimator == "score" else "logits only" + backward
    if rank:
        size = sum(rank * (m.in_features + m.out_features) * 4 for m in block_linears(model, adapter))
        return (f"{human_size(4 * size)} (rank-{rank} factors of the block linears, their gradients, "
                f"Adam's moments){backward}")
    size = sum(p.numel() * (4 if p.dtype == torch.float16 else p.element_size()) for p in model.parameters())
    return f"{human_size(4 * size)} (a copy of the model, its gradients, Adam's moments){backward}"
