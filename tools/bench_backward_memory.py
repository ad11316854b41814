"""What a whole-model backward keeps for Flux.1-dev, with and without gradient checkpointing.

The svd pass's prediction Fisher and compensation run a backward from the final prediction down to
the first target (`svd_fisher.output_fisher`, `prediction_gradients`). This builds a full-width
FluxTransformer2DModel (hidden 3072, 24 heads, Flux.1-dev's config) with one double and one single
block in bf16, taps every linear as a Fisher sweep does, and measures with `saved_tensors_hooks`
the bytes autograd keeps for the backward per sample (each storage once, weights not counted): per block, and with
`svd.gradient_checkpointing` (diffusers' block checkpointing), where a block keeps only its inputs
and rebuilds its activations, one block at a time, during the backward. Tokens are fewer than at
1024² (4,096 image + 512 text) to fit this machine's time; the kept bytes grow linearly with the
tokens (attention here is PyTorch's CPU kernel; GPU flash attention keeps less), and the script scales
them to 4,608 tokens and Flux.1-dev's 19 double + 38 single blocks; likewise one PixArt-Σ-1024
block (hidden 1152) for its 28. Then it times one Fisher sweep
(4 probes, every attention + MLP linear) on the shipped toy teachers both ways: what the
recomputation costs.

    python tools/bench_backward_memory.py [--image 256] [--text 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.arch import get_adapter  # noqa: E402
from compress.passes.svd_fisher import checkpointed, tapped  # noqa: E402

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56))
DOUBLE, SINGLE, TOKENS = 19, 38, 4096 + 512


def inputs(image: int, text: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(image, 3)
    ids[:, 1] = torch.arange(image)
    bf = torch.bfloat16
    return dict(hidden_states=torch.randn(1, image, 64, generator=g).to(bf),
                encoder_hidden_states=torch.randn(1, text, 4096, generator=g).to(bf),
                pooled_projections=torch.randn(1, 768, generator=g).to(bf),
                timestep=torch.tensor([0.5], dtype=bf), guidance=torch.tensor([3.5], dtype=bf),
                img_ids=ids, txt_ids=torch.zeros(text, 3))


def pixart_inputs(side: int, caption: int) -> dict:
    """PixArt-Σ inputs: a (side x side) latent (patch 2) and `caption` T5 tokens, bf16."""
    g = torch.Generator().manual_seed(0)
    bf = torch.bfloat16
    return dict(hidden_states=torch.randn(1, 4, side, side, generator=g).to(bf),
                encoder_hidden_states=torch.randn(1, caption, 4096, generator=g).to(bf),
                encoder_attention_mask=torch.ones(1, caption), timestep=torch.tensor([500]),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def kept_bytes(model, kwargs: dict, checkpointing: bool) -> dict[str, int]:
    """Bytes saved for the backward, by where they were saved: the block group ('double', 'single',
    'blocks'), 'top' (outside the blocks), and '<group> inputs' (what a checkpointed block keeps
    instead of its activations)."""
    adapter = get_adapter(model)
    groups = [g.name for g in adapter.groups]
    where, kept = ["top"], {"top": 0, **{g: 0 for g in groups}, **{f"{g} inputs": 0 for g in groups}}

    # storages already counted (q, k and v save the same input), and the weights a linear saves
    # for its input's gradient (held anyway, and not growing with the tokens)
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:  # saved tensors stay alive to the backward: no reuse
            seen.add(storage.data_ptr())
            kept[where[-1]] += storage.nbytes()
        return t

    def enter(kind):
        def hook(mod, args, kw):
            where.append(kind)
            if checkpointing:  # what the checkpoint keeps: the block's tensor inputs
                kept[f"{kind} inputs"] += sum(v.numel() * v.element_size() for v in list(args) + list(kw.values())
                                            if torch.is_tensor(v))
        return hook

    blocks = list(adapter.iter_blocks(model))
    hooks = [b.register_forward_pre_hook(enter(g), with_kwargs=True) for g, _, b in blocks]
    hooks += [b.register_forward_hook(lambda *a: where.pop() and None) for _, _, b in blocks]
    names = [i.name for i in adapter.linears(model)]
    try:
        with checkpointed(model, checkpointing), tapped(model, names), torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            adapter.predict(model, kwargs)
    finally:
        for h in hooks:
            h.remove()
    return kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", type=int, default=256)
    ap.add_argument("--text", type=int, default=64)
    args = ap.parse_args()
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**FLUX_DEV).to(torch.bfloat16).requires_grad_(False).eval()
    kwargs = inputs(args.image, args.text)
    scale = TOKENS / (args.image + args.text)
    plain, ckpt = kept_bytes(model, kwargs, False), kept_bytes(model, kwargs, True)
    gib = lambda n: n * scale / 2**30  # noqa: E731  (at 4,608 tokens)
    whole = DOUBLE * plain["double"] + SINGLE * plain["single"] + plain["top"]
    # checkpointed: every block's inputs, the top level, and one block's activations while it is rebuilt
    low = DOUBLE * ckpt["double inputs"] + SINGLE * ckpt["single inputs"] + ckpt["top"] \
        + max(plain["double"], plain["single"])
    print(f"kept for the backward, per sample, scaled to {TOKENS:,} tokens (measured at "
          f"{args.image + args.text}):")
    print(f"  one double block {gib(plain['double']):.2f} GiB, one single block {gib(plain['single']):.2f} GiB, "
          f"top level {gib(plain['top']):.3f} GiB")
    print(f"  Flux.1-dev ({DOUBLE} double + {SINGLE} single): {gib(whole):.1f} GiB without checkpointing")
    print(f"  with svd.gradient_checkpointing: a double block keeps {gib(ckpt['double inputs']):.3f} GiB of "
          f"inputs, a single one {gib(ckpt['single inputs']):.3f} GiB; {gib(low):.1f} GiB at the peak "
          f"({whole / low:.0f}x less)")
    pixart_sigma()
    for family in ("pixart", "flux"):
        print(f"  one Fisher sweep on the toy {family}, checkpointed / not: {sweep_time_ratio(family):.2f}x the time")


def pixart_sigma(side: int = 32, caption: int = 300) -> None:
    """The same for PixArt-Σ-1024 (28 blocks, hidden 1152; one built): 4,096 image tokens at
    1024², measured at (side / 2)², with its 300 caption tokens (their share scaled too: an
    upper bound)."""
    import json
    from importlib import resources

    from diffusers import PixArtTransformer2DModel

    config = json.loads(resources.files("compress.configs").joinpath("PixArt-Sigma-XL-2-1024-MS.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    model = PixArtTransformer2DModel(**dict(config, num_layers=1)).to(torch.bfloat16).requires_grad_(False).eval()
    kwargs = pixart_inputs(side, caption)
    scale = 4096 / (side // 2) ** 2
    plain, ckpt = kept_bytes(model, kwargs, False), kept_bytes(model, kwargs, True)
    gib = lambda n: n * scale / 2**30  # noqa: E731
    whole = 28 * plain["blocks"] + plain["top"]
    low = 28 * ckpt["blocks inputs"] + ckpt["top"] + plain["blocks"]
    print(f"  PixArt-Σ-1024 (28 blocks, 4,096 image tokens): one block {gib(plain['blocks']):.2f} GiB; "
          f"{gib(whole):.1f} GiB without checkpointing, {gib(low):.1f} GiB with it ({whole / low:.0f}x less)")


def sweep_time_ratio(family: str) -> float:
    """Time of one output-Fisher sweep with block checkpointing / without, on a toy teacher."""
    import time

    from compress.passes.svd_fisher import output_fisher
    from compress.passes.svd_targets import resolve_targets
    from compress.toy.weights import load_toy_teacher
    from tools.bench_svd import calibration_batches

    model = load_toy_teacher(family)
    adapter = get_adapter(model)
    batches = calibration_batches(family)
    names = [i.name for i in resolve_targets(adapter.linears(model), ["attention", "mlp"], [])]
    times = []
    for on in (False, True, False, True):  # interleaved, the second of each kept
        t0 = time.perf_counter()
        with checkpointed(model, on):
            output_fisher(model, adapter, batches, names, probes=4)
        times.append(time.perf_counter() - t0)
    return times[3] / times[2]


if __name__ == "__main__":
    main()
