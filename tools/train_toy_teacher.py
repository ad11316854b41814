"""Train one toy teacher from a seed and write it (weights, diffusers config, model card).

    python tools/train_toy_teacher.py --family pixart --seed 0 --steps 1500 --threads 1 --out compress/toy/weights
    python tools/train_toy_teacher.py --family flux   --seed 0 --steps 1500 --threads 1 --out compress/toy/weights

(the shipped teachers; each card in compress/toy/weights/ gives its exact command, wall time and loss)

Data: sklearn digits (train split), prompts "a handwritten 7" / "a handwritten seven", 10% empty.
AdamW, linear warmup then cosine decay, grad-norm clip 1.0; the shipped weights are the EMA.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import platform
import time
from pathlib import Path

import torch

from compress.toy.data import family_module, training_batch
from compress.toy.text import ToyTextEncoder
from compress.toy.weights import save_text_encoder, save_toy_teacher


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["pixart", "flux"], required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path("compress/toy/weights"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the shipped teachers: 1)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after N steps of the --steps schedule (reproduces a run cut short)")
    parser.add_argument("--save-every", type=int, default=250, help="also write the EMA weights every N steps")
    parser.add_argument("--objective", choices=["eps", "flow"], default="eps",
                        help="pixart only: eps (shipped) = PixArt-Σ's epsilon prediction on DDPM betas; "
                             "flow = the rectified-flow variant shipped before (compress/toy/pixart.py)")
    parser.add_argument("--loss-weight-cap", type=float, default=None,
                        help="pixart eps: cap of the (1 + 1/√SNR)² loss weight (default pixart.LOSS_WEIGHT_CAP)")
    return parser.parse_args()


def learning_rate(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    module = family_module(args.family)
    loss_fn = module.training_loss
    if args.family != "pixart" and (args.objective != "eps" or args.loss_weight_cap is not None):
        raise SystemExit("--objective / --loss-weight-cap are for --family pixart (the toy Flux is rectified flow)")
    if args.objective == "flow" and args.loss_weight_cap is not None:
        raise SystemExit("--loss-weight-cap weights the eps objective; --objective flow has no weight")
    if args.loss_weight_cap is not None and not args.loss_weight_cap > 0:
        raise SystemExit(f"--loss-weight-cap must be > 0, got {args.loss_weight_cap}")
    if args.family == "pixart" and args.objective == "eps":
        if args.loss_weight_cap is None:
            args.loss_weight_cap = module.LOSS_WEIGHT_CAP
        loss_fn = functools.partial(module.training_loss, cap=args.loss_weight_cap)
    elif args.family == "pixart":
        loss_fn = module.flow_training_loss
    objective = args.objective if args.family == "pixart" else "flow"  # recorded in the weights
    model = module.new_transformer(seed=args.seed).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    encoder = ToyTextEncoder.from_seed()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    losses, start = [], time.time()
    for step in range(args.stop_after or args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        batch = training_batch(args.family, args.batch_size, generator, text_encoder=encoder)
        loss = loss_fn(model, batch["latents"], batch["text"], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, model, step, args.ema_decay)
        losses.append(loss.item())
        if (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save_toy_teacher(ema, args.family, args.out, objective)
        if (step + 1) % args.log_every == 0 or step == 0:
            recent = sum(losses[-args.log_every :]) / len(losses[-args.log_every :])
            print(f"step {step + 1}/{args.steps} loss {recent:.4f} lr {learning_rate(step, args):.2e} "
                  f"{(time.time() - start) / (step + 1):.2f}s/step", flush=True)
    tail = losses[-min(100, len(losses)) :]
    save_toy_teacher(ema, args.family, args.out, objective)
    save_text_encoder(encoder, args.out)
    return {"final_loss": sum(tail) / len(tail), "wall_s": time.time() - start, "model": ema}


def write_card(args: argparse.Namespace, result: dict) -> None:
    model = result["model"]
    params = sum(p.numel() for p in model.parameters())
    stop = f" --stop-after {args.stop_after}" if args.stop_after else ""
    trained = f"{args.stop_after} of a {args.steps}-step schedule" if args.stop_after else f"{args.steps} steps"
    cap = f"{args.loss_weight_cap:g}" if args.loss_weight_cap is not None else ""
    objective = {"pixart": (f"epsilon on DDPM linear betas (1e-4..0.02, 1000 steps); t at the SNR of a logit-normal "
                            f"flow sigma ({1 - family_module('pixart').UNIFORM_FRACTION:g} of each batch) or uniform (the rest), "
                            f"eps-MSE weighted min((1 + 1/sqrt(SNR))^2, {cap}) (compress/toy/pixart.py)")
                 if args.objective == "eps" else
                 "rectified flow, velocity (noise - x0), sigma ~ logit-normal(0, 1), timestep = 1000 sigma; "
                 "sample with compress.toy.pixart.flow_scheduler()",
                 "flux": "rectified flow, velocity (noise - x0), sigma ~ logit-normal(0, 1); "
                         "guidance embedder fed U[1, 5]; 10% empty prompts for true CFG at sampling"}
    sampler = {"pixart": "DPMSolverMultistepScheduler (dpmsolver++, order 2, epsilon, linear betas), true CFG"
               if args.objective == "eps" else
               "DPMSolverMultistepScheduler (dpmsolver++, order 2, use_flow_sigmas, flow_shift 1.0), true CFG",
               "flux": "FlowMatchEulerDiscreteScheduler (shift 1.0, sigmas linspace(1, 1/N, N)), true CFG"}
    lines = [
        f"# Toy {args.family} teacher",
        "",
        f"`{type(model).__name__}` trained on scikit-learn digits (train split, 16×16 → 4×8×8 latent by",
        "pixel-unshuffle), prompts \"a handwritten 7\" / \"a handwritten seven\", 10% empty prompts.",
        "",
        f"- objective: {objective[args.family]}",
        f"- sampler: {sampler[args.family]}",
        f"- parameters: {params:,} (fp32, {params * 4 / 2**20:.1f} MiB)",
        f"- training: seed {args.seed}, {trained}, batch {args.batch_size}, AdamW lr {args.lr} "
        f"(warmup {args.warmup}, cosine to 10%), grad clip 1.0, EMA {args.ema_decay} (shipped)",
        f"- wall time: {result['wall_s'] / 60:.1f} min on {args.threads} CPU thread(s) ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}",
        f"- final training loss (mean of the last 100 steps): {result['final_loss']:.4f}",
        f"- reproduce: `python tools/train_toy_teacher.py --family {args.family} --seed {args.seed} "
        f"--steps {args.steps}{stop}{' --objective flow' if args.objective == 'flow' else ''}{' --loss-weight-cap ' + cap if cap else ''} --ema-decay {args.ema_decay} --threads {args.threads} --out DIR`",
        "",
        "## Config",
        "",
        "```json",
        json.dumps({k: v for k, v in model.config.items() if not k.startswith("_")}, indent=1, default=list),
        "```",
        "",
    ]
    (args.out / f"{args.family}.md").write_text("\n".join(lines))


def main() -> None:
    args = parse_args()
    result = train(args)
    write_card(args, result)
    print(f"wrote {args.out}/{args.family}.* final loss {result['final_loss']:.4f} in {result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
