"""Learned block selection, the math (pure functions): which blocks of a group to keep, as one categorical
choice per window of consecutive blocks over every keep-pattern of the window, sampled differentiably.

TinyFusion (Fang et al., "TinyFusion: Diffusion Transformers Learned Shallow", CVPR 2025; the thesis's
reference [31]) learns such a distribution jointly with a weight update, so that the choice favours
blocks whose removal the update can recover from, not only those whose removal costs least at once. A
window of `size` blocks that loses `remove` of them has C(size, remove) patterns; its logits are sampled
with the Gumbel-max trick and a straight-through softmax (the forward sees one hard pattern, the
gradient flows through the relaxed one), and the mask of a block is the sum of the sampled one-hot over
the patterns that keep it.
"""

from __future__ import annotations

import itertools
import math

import torch

MAX_PATTERNS = 4096  # per window: beyond this, split the group into windows


def windows(n: int, remove: int, window: int | None) -> list[tuple[int, int, int]]:
    """Split n blocks into consecutive windows of at most `window` blocks, as equal in size as possible
    (window None: one window of all n) -> [(start, size, remove)]. The removal is shared in proportion to
    the sizes, the largest remainders (then the earlier window) taking the blocks left over. Raises
    ValueError (with the reason) when a window would lose all its blocks or hold too many patterns."""
    size = n if window is None else window
    if size < 1:
        raise ValueError(f"window must be at least 1, got {size}")
    count = -(-n // size)
    sizes = [n // count + (1 if i < n % count else 0) for i in range(count)]
    quotas = [remove * s / n for s in sizes]
    each = [int(q) for q in quotas]
    for i in sorted(range(count), key=lambda i: (each[i] - quotas[i], i))[:remove - sum(each)]:
        each[i] += 1
    spans, start = [], 0
    for s, k in zip(sizes, each):
        if k >= s:
            raise ValueError(f"the window of blocks {start}..{start + s - 1} would lose all {s}: set a larger window")
        if math.comb(s, k) > MAX_PATTERNS:
            raise ValueError(f"a window of {s} blocks losing {k} has {math.comb(s, k):,} keep-patterns "
                             f"(at most {MAX_PATTERNS:,}): set a smaller window")
        spans.append((start, s, k))
        start += s
    return spans


def patterns(size: int, remove: int) -> torch.Tensor:
    """(C(size, remove), size) float: 1 = the block is kept; row j removes the j-th combination of
    `remove` positions in lexicographic order."""
    rows = torch.ones(math.comb(size, remove), size)
    for j, gone in enumerate(itertools.combinations(range(size), remove)):
        rows[j, list(gone)] = 0.0
    return rows


def gumbel_hard(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """(C,) one-hot of argmax(logits + Gumbel noise) whose gradient is that of softmax((logits + noise) / tau)
    (straight-through). The noise comes from `generator` (CPU), so a seeded run repeats."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    noise = (-torch.log(-torch.log(u))).to(logits.device, logits.dtype)
    soft = torch.softmax((logits + noise) / tau, dim=-1)
    hard = torch.nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def temperature(step: int, steps: int, start: float, end: float) -> float:
    """Geometric annealing from `start` (step 0) to `end` (the last step)."""
    if steps <= 1:
        return end
    return start * (end / start) ** (step / (steps - 1))


def gated(block_out: torch.Tensor, block_in: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """keep · out + (1 − keep) · in: a kept block's output, or a removed block's residual pass-through."""
    return keep * block_out + (1 - keep) * block_in
