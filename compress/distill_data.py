"""Training data for distillation (`data:` in the distill pass): clean latents + conditioning kwargs.

- `toy`: the runner's `ctx.train_batch` (the toy teachers' digits dataset).
- `folder`: a folder of `.safetensors` / `.pt` files the user provides (`latents_dir`), in the format
  of `compress.distill_folder` (which reads and checks it).
- `teacher_samples` (data-free): latents sampled from the teacher on the conditioning of the runner's
  calibration inputs (the recipe's prompts; random rows of each batch, so unconditional CFG-branch rows
  are sampled too, like CFG dropout; with `guidance_scale` > 1 the sampler guides against the empty
  prompt, as the pipelines do, else it does not), cached on disk in the folder format under
  `run_dir/distill/teacher_samples/<key>/` (with `about.json`: the settings of its key and its shard
  count, which the note of an interrupted run reads, runner_kept.teacher_samples_kept); shards already
  written are reused (an interrupted cache fills up where it stopped), so a second run or a resume
  samples nothing. While it samples, a bar "distill: teacher samples" (off a terminal, a line per tenth).
Every source has `batch(batch_size, generator) -> (latents, cond)`; rows are drawn with the generator.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from compress import json_read
from compress.distill_folder import SAMPLE_FILE, SHARED_KWARGS, FolderSource, _shapes, named, write_shard
from compress.errors import UserError
from compress.inputs import moved
from compress.progress import bar as progress_bar, read_back_label
from compress.runner_resume import SAMPLES_ABOUT, TEACHER_SAMPLES

NOT_COND = ("hidden_states", "timestep", "return_dict")


class ToySource:
    def __init__(self, train_batch):
        if train_batch is None:
            raise UserError("distill.data: toy needs a toy teacher (the runner gave no training batches); "
                            "use data: folder with latents_dir, or data: teacher_samples")
        self.train_batch = train_batch

    def batch(self, batch_size: int, generator: torch.Generator):
        return self.train_batch(batch_size, generator)


# ---- teacher samples -----------------------------------------------------------------------------


def cond_of(kwargs: dict) -> dict:
    """Forward kwargs minus the noisy input and timestep (what a latent is conditioned on)."""
    return {k: v for k, v in kwargs.items() if k not in NOT_COND}


def sample_latents(adapter, teacher, cond: dict, shape: tuple, steps: int, generator: torch.Generator,
                   device, scheduler_config: dict | None = None, guidance_scale: float = 1.0,
                   uncond: dict | None = None) -> torch.Tensor:
    """Clean latents of `shape` sampled from the teacher, as the teacher's pipeline samples when its
    scheduler config is given (FluxPipeline's σ schedule with its resolution-dependent shift;
    PixArt-Σ's DPM-Solver), else PixArt: DPM-Solver++ on its DDPM schedule (ε); Flux: Euler on the
    rectified-flow ODE from σ = 1 to 0, unshifted. guidance_scale > 1: classifier-free guidance
    against `uncond` (the empty prompt's cond kwargs, one row), as the pipelines guide; else none
    (Flux.1-dev's guidance is an input, in `cond`). Runs in inference mode (no autograd bookkeeping:
    1% (toy PixArt) to 3% (toy Flux) of the sampler's CPU time, the same samples); returns an
    ordinary tensor."""
    with torch.inference_mode():
        x = _sampled(adapter, teacher, cond, shape, steps, generator, device, scheduler_config,
                     guidance_scale, uncond)
    return x.clone()  # (an inference tensor cannot be changed in place outside inference mode)


def _sampled(adapter, teacher, cond: dict, shape: tuple, steps: int, generator: torch.Generator, device,
             scheduler_config: dict | None, guidance_scale: float, uncond: dict | None) -> torch.Tensor:
    """sample_latents' sampler loop."""
    param = next(teacher.parameters())
    x = torch.randn(shape, generator=generator).to(device, param.dtype)
    guided = guidance_scale != 1.0
    if guided and uncond is None:
        raise ValueError("classifier-free guidance needs the unconditional cond kwargs")
    cond = moved(_with_uncond(cond, uncond, shape[0]) if guided else cond, param.device, param.dtype)
    scheduler = _scheduler(adapter, scheduler_config, steps, shape, device)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # DPM-Solver: 1; flow matching has none
    if adapter.family == "pixart":
        cond.setdefault("added_cond_kwargs", {"resolution": None, "aspect_ratio": None})
    for t in scheduler.timesteps:
        timestep = t.expand(shape[0] * (2 if guided else 1)).to(device)
        if adapter.family == "flux":  # the pipeline's timesteps are 1000 σ; the transformer takes σ
            timestep = (timestep / 1000).to(param.dtype)
        pred = adapter.predict(teacher, dict(cond, hidden_states=torch.cat([x, x]) if guided else x,
                                             timestep=timestep))
        if guided:
            empty, text = pred.chunk(2)  # (n, ...) each
            pred = empty + guidance_scale * (text - empty)
        x = scheduler.step(pred, t, x).prev_sample
    return x.float().cpu()


def _with_uncond(cond: dict, uncond: dict, n: int) -> dict:
    """[uncond repeated n times; cond] along the batch, as the pipelines lay out CFG; kwargs shared
    by every row (Flux's img_ids / txt_ids) stay as they are."""
    out = {}
    for k, v in cond.items():
        u = uncond.get(k)
        if isinstance(v, dict):
            out[k] = _with_uncond(v, u or {}, n)
        elif torch.is_tensor(v) and k not in SHARED_KWARGS and v.dim() > 0 and v.shape[0] == n:
            if u is None:
                raise ValueError(f"the unconditional cond kwargs lack '{k}'")
            out[k] = torch.cat([u.expand(n, *u.shape[1:]).to(v.dtype), v])
        else:
            out[k] = v
    return out


def _scheduler(adapter, config: dict | None, steps: int, shape: tuple, device):
    """The sampler with its timesteps set, as the family's diffusers pipeline sets them."""
    import numpy as np
    import diffusers

    if adapter.family == "pixart":
        if config is None:
            config = dict(adapter.noise_scheduler.config, _class_name="DPMSolverMultistepScheduler",
                          algorithm_type="dpmsolver++")
        scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
        scheduler.set_timesteps(steps, device=device)
        return scheduler
    from compress.arch.flux import calculate_shift

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        config or {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False})
    c = scheduler.config
    mu = calculate_shift(shape[1], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15)) if c.use_dynamic_shifting else None
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=device, mu=mu)
    return scheduler


def teacher_sample_cache(ctx, num_samples: int, steps: int, shard_size: int, accelerator,
                         guidance_scale: float = 1.0, progress: bool = True) -> Path:
    """Fills (or reuses) the cache folder of teacher samples and returns it. Shard i holds samples
    conditioned on calibration batch i mod len(batches), noise seeded by (seed, i), and is written by
    process i mod num_processes: the cache is the same whatever the process count or interruptions.
    guidance_scale > 1: sampled with classifier-free guidance (`ctx.unconditional`). `progress`: a bar
    over the samples (rank 0's own, in a launch; the other processes show none)."""
    if ctx.calibration_inputs is None:
        raise UserError("distill.data: teacher_samples needs the recipe's prompts (calibration inputs); "
                        "none were given")
    sampler = ctx.scheduler_config()  # the teacher pipeline's (None: the family's default)
    key = hashlib.sha256(json.dumps([ctx.fingerprint, ctx.seed, num_samples, steps, shard_size, sampler]
                                    + ([guidance_scale] if guidance_scale != 1.0 else []),
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(ctx.run_dir) / TEACHER_SAMPLES / key
    done = _complete(folder, num_samples)
    accelerator.wait_for_everyone()  # every process decided on the same files, before any writes one
    if done:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    batches = ctx.calibration_inputs()
    if not batches:
        raise UserError("distill.data: teacher_samples needs the recipe's prompts, but the calibration "
                        "inputs hold no batches")
    sizes = shard_sizes(num_samples, shard_size, [len(b["hidden_states"]) for b in batches])
    uncond = None
    if guidance_scale != 1.0:
        if ctx.unconditional is None:
            raise UserError("distill.guidance_scale: this calibration source has no unconditional (empty "
                            "prompt) inputs to guide against; use a toy or pipeline source, or leave it at 1")
        uncond = ctx.unconditional()
    if accelerator.is_main_process:
        _write_about(folder, ctx.fingerprint, num_samples, steps, shard_size, guidance_scale, len(sizes))
    mine = range(accelerator.process_index, len(sizes), accelerator.num_processes)
    shown = progress and accelerator.is_main_process
    with progress_bar(shown) as bar:
        written = sum(sizes[i] for i in mine if _rows_in(_shard(folder, i)) == sizes[i])
        total = sum(sizes[i] for i in mine)
        task = bar.add_task(samples_label(written, total), total=total, completed=written)
        if shown and total and written == total:  # every shard kept, complete.json lost: the bar never moves
            bar.console.print(f"{samples_label(written, total)} {written}/{total}", highlight=False, markup=False)
        for i in mine:
            if _rows_in(_shard(folder, i)) != sizes[i]:  # else written before (a cache cut short)
                _sample_shard(ctx, _shard(folder, i), i, sizes[i], batches, steps, accelerator.device, sampler,
                              guidance_scale, uncond)
                bar.advance(task, sizes[i])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (folder / "complete.json").write_text(json.dumps({"num_samples": num_samples, "steps": steps,
                                                          "samples": sum(sizes)}), encoding="utf-8")
    accelerator.wait_for_everyone()
    return folder


def samples_label(read_back: int, samples: int) -> str:
    """The bar's label of sampling `samples` teacher samples, `read_back` of them in shards an
    interrupted run wrote, as a pipeline's sampling says it (progress.read_back_label), in the bar's
    unit: 'distill: teacher samples (320 read back)' (then 416/1024 ...), '... (read back)' where all are."""
    return read_back_label("distill: teacher samples", read_back, samples)


def _shard(folder: Path, i: int) -> Path:
    """Shard i's file in the cache `folder`."""
    return folder / f"shard-{i:05d}.safetensors"


def _sample_shard(ctx, path: Path, i: int, n: int, batches: list, steps: int, device, sampler,
                  guidance_scale: float, uncond: dict | None) -> None:
    """Shard i: `n` teacher samples on random rows of calibration batch i mod len(batches), its noise
    and rows drawn with a generator seeded by (ctx.seed, i), written to `path`."""
    kwargs = batches[i % len(batches)]
    generator = torch.Generator().manual_seed((ctx.seed * 100_003 + i) % 2**63)  # any valid seed
    rows = torch.randperm(len(kwargs["hidden_states"]), generator=generator)[:n]  # (n,)
    cond = take_rows(cond_of(kwargs), rows)
    shape = (n,) + tuple(kwargs["hidden_states"].shape[1:])
    latents = sample_latents(ctx.adapter, ctx.teacher, cond, shape, steps, generator, device, sampler,
                             guidance_scale, uncond)
    write_shard(path, latents, cond)


def _write_about(folder: Path, fingerprint: str, num_samples: int, steps: int, shard_size: int,
                 guidance_scale: float, shards: int) -> None:
    """The cache's about.json: the fingerprint and distill keys its folder's key is made of (the seed is
    the fingerprint's, the sampler the teacher's) and how many shards it fills, so an interrupted run
    can say which caches --resume reads back and how far they got (runner_kept.teacher_samples_kept)."""
    about = {"fingerprint": fingerprint, "num_samples": num_samples, "sample_steps": steps,
             "batch_size": shard_size, "guidance_scale": guidance_scale, "shards": shards}
    tmp = folder / (SAMPLES_ABOUT + ".tmp")
    tmp.write_text(json.dumps(about, sort_keys=True), encoding="utf-8")
    tmp.replace(folder / SAMPLES_ABOUT)


def shard_sizes(num_samples: int, shard_size: int, rows: list[int]) -> list[int]:
    """Samples in each shard: shard i is drawn on calibration batch i mod len(rows), at most
    `shard_size` and at most that batch's rows, until the shards hold `num_samples` in all."""
    if not any(rows):
        raise UserError("distill.data: teacher_samples: the calibration batches hold no rows")
    sizes, left = [], num_samples
    while left > 0:
        sizes.append(min(shard_size, left, rows[len(sizes) % len(rows)]))
        left -= sizes[-1]
    return sizes


def _complete(folder: Path, num_samples: int) -> bool:
    """The cache holds all its samples (an earlier layout drew fewer when calibration batches had
    fewer rows than a shard; its complete.json does not count them, so its shards are checked), in
    shards that are there: a complete.json whose shards went missing (written elsewhere by a process
    of a launch that read the recipe otherwise) is not complete, and its cache fills up again."""
    try:
        if json_read.read(folder / "complete.json").get("samples") != num_samples:
            return False
    except (OSError, ValueError):
        return False
    return sum(_rows_in(path) for path in folder.glob("shard-*.safetensors")) == num_samples


def _rows_in(path: Path) -> int | None:
    """Rows of a written shard (read from its header), None when there is none."""
    if not path.exists():
        return None
    with named(SAMPLE_FILE):
        return _shapes(path)["latents"][0]


def take_rows(cond: dict, rows: torch.Tensor) -> dict:
    """The given rows of every batched kwarg (shared ones untouched)."""
    out = {}
    for k, v in cond.items():
        if isinstance(v, dict):
            out[k] = take_rows(v, rows)
        elif torch.is_tensor(v) and k not in SHARED_KWARGS and v.dim() > 0:
            out[k] = v[rows]
        else:
            out[k] = v
    return out


def make_source(cfg, ctx, accelerator):
    if cfg.data == "toy":
        return ToySource(ctx.train_batch)
    if cfg.data == "folder":
        if not cfg.latents_dir:
            raise UserError("distill.data: folder needs latents_dir")
        return FolderSource(cfg.latents_dir)
    if cfg.data == "teacher_samples":
        folder = teacher_sample_cache(ctx, cfg.num_samples, cfg.sample_steps, cfg.batch_size, accelerator,
                                      cfg.guidance_scale, cfg.progress)
        return FolderSource(folder, SAMPLE_FILE)
    raise UserError(f"distill.data must be toy, folder or teacher_samples, not {cfg.data!r}")
