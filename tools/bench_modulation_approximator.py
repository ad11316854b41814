"""Could a Chroma-style approximator meet the modulation goal where factorizations cannot (toy Flux)?

Every modulation linear of the toy Flux reads the same vector silu(temb). Chroma replaces Flux's with one
small shared MLP that takes that vector (there: the timestep and guidance) plus a learned embedding of the
slot (which 128-wide chunk of which linear's output) and returns that chunk. One head then serves all
chunks, so the linear-head floor of `tools/bench_svd.py` does not bound it. This script fits such an
approximator within 10x fewer parameters than the toy Flux's modulation linears (each slot's mean counted)
directly to their outputs over 1000 noise levels x 11 prompts (guidance 3, as the toy is sampled) and
prints the relative error of all outputs on held-out noise levels, beside the PCA floor of one linear.

    python tools/bench_modulation_approximator.py [--width 80] [--depth 2] [--steps 12000] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_svd import flux_conditioning, pca_tails  # noqa: E402

from compress.arch import get_adapter  # noqa: E402
from compress.toy.data import _text_encoder, prompt_for  # noqa: E402
from compress.toy.weights import load_toy_teacher  # noqa: E402

CHUNK = 128  # the toy's hidden width: every modulation output is a stack of such chunks


def outputs(model: nn.Module, names: list[str], pooled: torch.Tensor, sigma: torch.Tensor):
    """(silu(temb) (N, 128), every modulation output as chunks (N, slots, 128)) for each (σ, prompt)."""
    x = flux_conditioning(model, pooled, sigma)
    with torch.no_grad():
        y = torch.cat([model.get_submodule(n)(x) for n in names], 1)
    return x, y.reshape(len(x), -1, CHUNK)


class Approximator(nn.Module):
    """chunk = out(h_L), h_0 = inp(x) + slot[s], h_{l+1} = h_l + MLP(norm(h_l))."""

    def __init__(self, slots: int, width: int, depth: int):
        super().__init__()
        self.inp, self.slot, self.out = nn.Linear(CHUNK, width), nn.Embedding(slots, width), nn.Linear(width, CHUNK)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width, elementwise_affine=False), nn.Linear(width, width),
                                                  nn.SiLU(), nn.Linear(width, width)) for _ in range(depth))

    def forward(self, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:  # (B, 128), (B,) -> (B, 128)
        h = self.inp(x) + self.slot(slot)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_toy_teacher("flux")
    names = [i.name for i in get_adapter(model).linears(model) if i.role == "modulation"]
    pooled = _text_encoder()([prompt_for(d) for d in range(10)] + [""])["pooled"]  # (11, 64)
    x, y = outputs(model, names, pooled, torch.linspace(1e-3, 1.0, 1000))
    x_test, y_test = outputs(model, names, pooled, torch.rand(300, generator=torch.Generator().manual_seed(1)) * 0.999 + 1e-3)
    slots = y.shape[1]
    mean, scale = y.mean(0), y.std(0).mean()  # (slots, 128): each slot's mean, counted below
    net = Approximator(slots, args.width, args.depth)
    dense = sum(model.get_submodule(n).weight.numel() + model.get_submodule(n).bias.numel() for n in names)
    params = sum(p.numel() for p in net.parameters()) + mean.numel()
    print(f"modulation linears: {len(names)}, {slots} chunks, {dense:,} params; approximator {params:,} "
          f"({dense / params:.1f}x fewer)", flush=True)

    rows, ids = x.repeat_interleave(slots, 0), torch.arange(slots).repeat(len(x))
    target = ((y - mean) / scale).reshape(-1, CHUNK)
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=args.steps)

    def error(xs: torch.Tensor, ys: torch.Tensor) -> float:
        with torch.no_grad():
            pred = net(xs.repeat_interleave(slots, 0), torch.arange(slots).repeat(len(xs)))
            pred = pred.reshape(len(xs), slots, CHUNK) * scale + mean
        return float((pred - ys).norm() / ys.norm())

    start = time.perf_counter()
    for step in range(args.steps):
        pick = torch.randint(0, len(rows), (4096,))
        loss = (net(rows[pick], ids[pick]) - target[pick]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if (step + 1) % (args.steps // 4) == 0:
            print(f"step {step + 1}: relative output error train {error(x[::10], y[::10]):.2e}, held-out "
                  f"{error(x_test, y_test):.2e} ({time.perf_counter() - start:.0f}s)", flush=True)
    with torch.no_grad():
        block0 = model.transformer_blocks[0].norm1.linear(x)
    print(f"for scale: PCA floor of double block 0 norm1.linear alone, {pca_tails(block0, [8])}; goal ≤ 1e-3 rise")


if __name__ == "__main__":
    main()
