"""Model inputs for a run: calibration batches, held-out batches, training batches.

Sources: `toy` (the shipped toy teachers' real digits and prompts; chosen for `toy:` teachers and
outputs compressed from them) and
`synthetic` (random text embeddings and Gaussian latents with the teacher's shapes: smoke tests and
memory benchmarks of full-size models, where no text encoder is at hand). Every batch is a dict of
the diffusers forward kwargs of the family.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch

from compress.errors import UserError


def moved(value, device, dtype):
    """Model kwargs (tensors, nested dicts, anything else) on `device`; floating tensors in `dtype`,
    integer ones (ids, masks, timesteps) keep theirs."""
    if isinstance(value, dict):
        return {k: moved(v, device, dtype) for k, v in value.items()}
    if torch.is_tensor(value):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    return value


def _chunks(kwargs: dict, batch_size: int) -> list[dict]:
    """Split forward kwargs along the batch dim (tensors whose first dim is the batch)."""
    n = kwargs["hidden_states"].shape[0]
    out = []
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        out.append({k: (v[sl] if _batched(k, v, n) else v) for k, v in kwargs.items()})
    return out


def interleave_branches(kwargs: dict) -> dict:
    """Rows [uncond 0..n; cond 0..n] (model_inputs' cfg=True) reordered to uncond 0, cond 0, uncond 1, …:
    every batch cut from it then holds both branches, as a pipeline's calls record them, so a pass that
    reads only the first batches (global's sensitivity, compensation's subset) sees the prompt rows too."""
    rows = kwargs["hidden_states"].shape[0]  # 2n
    n = rows // 2
    order = torch.stack([torch.arange(n), torch.arange(n, rows)], dim=1).flatten()  # (2n,)
    return {k: (v[order] if _batched(k, v, rows) else v) for k, v in kwargs.items()}


def _batched(key: str, value, n: int) -> bool:
    return (isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n
            and key not in ("img_ids", "txt_ids"))


# The seed each source draws its held-out inputs with: one for every calibration.seed, so that runs of
# different seeds measure their errors on the same inputs, and never a calibration draw's. The toy source
# draws them from the digits' held-out split (calibration: the train split) with seed 1, as seed 0's run did;
# the synthetic source, whose calibration draws with torch's generator seeded with calibration.seed, with numpy's
# PCG64 (`_Draws`): torch's CPU generator reads 32 bits of a seed (s and s + 2**32 draw alike), so any seed of
# its is some calibration.seed's; a pipeline source samples its held-out prompts (not the calibration's) from
# seed 10_000 (prompt i: 10_000 + i), as seed 0's run did.
HELDOUT_SEED = 1
SYNTHETIC_HELDOUT_SEED = 1  # of numpy's PCG64
PIPELINE_HELDOUT_SEED = 10_000


def heldout_seed(kind: str) -> int:
    """The seed the held-out inputs of a source of `kind` (source_kind's) are drawn with."""
    return {"synthetic": SYNTHETIC_HELDOUT_SEED, "pipeline": PIPELINE_HELDOUT_SEED}.get(kind, HELDOUT_SEED)


def older_heldout_is_todays(kind: str, seed: int) -> bool:
    """Whether an older dit-compress (before the held-out inputs stopped depending on calibration.seed: drawn with
    seed + 1, a pipeline source's + 10000) drew the held-out inputs of a source of `kind` for calibration.seed
    `seed` as today's: seed 0's of the toy and pipeline sources; never the synthetic source's (numpy's generator now)."""
    return kind != "synthetic" and seed == 0


class ToySource:
    def __init__(self, family: str, calib):
        self.family, self.calib = family, calib

    def calibration(self) -> list[dict]:
        from compress.toy.data import model_inputs

        c = self.calib
        n = c.num_prompts * c.timesteps
        kwargs = model_inputs(self.family, n, seed=c.seed, split="train", cfg=c.cfg_branches)
        return _chunks(interleave_branches(kwargs) if c.cfg_branches else kwargs, c.batch_size)

    def heldout(self) -> list[dict]:
        from compress.toy.data import model_inputs

        kwargs = model_inputs(self.family, self.calib.heldout_inputs, seed=HELDOUT_SEED, split="heldout", cfg=False)
        return _chunks(kwargs, self.calib.batch_size)

    def heldout_guidance(self):
        """How the held-out predictions are guided (guided.HeldOutGuidance): at the toy pipeline's scale, each
        held-out batch against its rows with the empty prompt (model_inputs' cfg=True rows [0, n): the same
        noisy latents and timesteps, as `heldout`'s); None where the recipe calibrates without CFG branches."""
        from compress.guided import HeldOutGuidance
        from compress.toy.data import model_inputs
        from compress.toy.pipeline import DEFAULT_GUIDANCE

        if not self.calib.cfg_branches:
            return None
        n = self.calib.heldout_inputs
        both = model_inputs(self.family, n, seed=HELDOUT_SEED, split="heldout", cfg=True)  # [uncond; cond]
        uncond = {k: (v[:n] if _batched(k, v, 2 * n) else v) for k, v in both.items()}
        return HeldOutGuidance(DEFAULT_GUIDANCE, unconditional=_chunks(uncond, self.calib.batch_size))

    def unconditional(self) -> dict:
        """The empty prompt's cond kwargs, one row (the toy text encoder's, as its pipeline's CFG)."""
        from compress.distill_data import cond_of, take_rows
        from compress.toy.data import model_inputs

        both = model_inputs(self.family, 1, seed=self.calib.seed, split="train", cfg=True)  # [uncond; cond]
        return take_rows(cond_of(both), torch.tensor([0]))

    def train_batch(self, batch_size: int, generator: torch.Generator):
        from compress.toy import data

        batch = data.training_batch(self.family, batch_size, generator)
        module = data.family_module(self.family)
        latents = batch["latents"]  # (B, 4, 8, 8)
        if self.family == "flux":
            latents = module.pack(latents)  # (B, 16, 16)
            kw = module.forward_kwargs(latents, torch.zeros(batch_size), batch["text"])
            low, high = module.TRAIN_GUIDANCE
            kw["guidance"] = low + (high - low) * torch.rand(batch_size, generator=generator)
        else:
            kw = module.forward_kwargs(latents, torch.zeros(batch_size, dtype=torch.long),
                                       batch["text"])
        kw.pop("hidden_states"), kw.pop("timestep")
        return latents, kw


    def task_loss(self, model, latents: torch.Tensor, cond: dict, generator: torch.Generator):
        """The toy teacher's target at its training noise levels (compress.toy.<family>.noised), as a
        plain MSE: the ε toy PixArt's per-sample loss weights (up to 20×) are left out, which distilled
        better (tools/bench_distill.py, PixArt: PSNR vs teacher 34.3 vs 31.3 dB, prediction error
        0.025 vs 0.026). Returns (loss, kwargs)."""
        from torch.nn import functional as F

        from compress.toy.data import family_module

        module = family_module(self.family)
        x0 = module.unpack(latents) if self.family == "flux" else latents  # (B, 4, 8, 8)
        noisy, timestep, target = module.noised(x0.detach().cpu(), generator)
        device = latents.device
        kwargs = dict(cond, hidden_states=noisy.to(device, latents.dtype),
                      timestep=timestep.to(device))
        pred = model(**kwargs, return_dict=False)[0]
        return F.mse_loss(pred.float(), target.to(device).float()), kwargs


class _Draws:
    """The synthetic source's random tensors: from torch's CPU generator seeded with `seed` (calibration, training),
    or, `heldout`, from numpy's PCG64 seeded with it, a generator no calibration.seed seeds (SYNTHETIC_HELDOUT_SEED)."""

    def __init__(self, seed: int, heldout: bool = False):
        import numpy as np

        self.numpy = np.random.default_rng(seed) if heldout else None
        self.torch = None if heldout else torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> torch.Tensor:  # float32, standard normal
        if self.numpy is None:
            return torch.randn(*shape, generator=self.torch)
        return torch.from_numpy(self.numpy.standard_normal(shape, dtype="float32"))

    def randint(self, high: int, n: int) -> torch.Tensor:  # (n,) int64 in [0, high)
        if self.numpy is None:
            return torch.randint(0, high, (n,), generator=self.torch)
        return torch.from_numpy(self.numpy.integers(0, high, n, dtype="int64"))

    def rand(self, n: int) -> torch.Tensor:  # (n,) float32 in [0, 1)
        if self.numpy is None:
            return torch.rand(n, generator=self.torch)
        return torch.from_numpy(self.numpy.random(n, dtype="float32"))


SYNTHETIC_TOKENS, SYNTHETIC_TEXT_TOKENS = 16, 8  # image and text tokens of a synthetic input


class SyntheticSource:
    """Random embeddings and latents shaped for the teacher's config (no text encoder needed)."""

    def __init__(self, family: str, calib, config, tokens: int = SYNTHETIC_TOKENS,
                 text_tokens: int = SYNTHETIC_TEXT_TOKENS):
        self.family, self.calib, self.config = family, calib, config
        self.tokens, self.text_tokens = tokens, text_tokens

    def _make(self, n: int, seed: int, heldout: bool = False) -> dict:
        g = _Draws(seed, heldout)
        cfg = self.config
        if self.family == "pixart":
            side = max(1, int(math.isqrt(self.tokens))) * cfg.patch_size
            return dict(
                hidden_states=g.randn(n, cfg.in_channels, side, side),
                encoder_hidden_states=g.randn(n, self.text_tokens, cfg.caption_channels),
                encoder_attention_mask=torch.ones(n, self.text_tokens),
                timestep=g.randint(1000, n),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        side = max(1, int(math.isqrt(self.tokens)))
        ids = torch.zeros(side * side, 3)
        ids[:, 1], ids[:, 2] = torch.arange(side * side) // side, torch.arange(side * side) % side
        kw = dict(
            hidden_states=g.randn(n, side * side, cfg.in_channels),
            encoder_hidden_states=g.randn(n, self.text_tokens, cfg.joint_attention_dim),
            pooled_projections=g.randn(n, cfg.pooled_projection_dim),
            timestep=g.rand(n), img_ids=ids,
            txt_ids=torch.zeros(self.text_tokens, 3))
        if cfg.guidance_embeds:
            kw["guidance"] = torch.full((n,), 3.5)
        return kw

    def calibration(self) -> list[dict]:
        c = self.calib
        return _chunks(self._make(c.num_prompts * c.timesteps, c.seed), c.batch_size)

    def heldout(self) -> list[dict]:
        return _chunks(self._make(self.calib.heldout_inputs, SYNTHETIC_HELDOUT_SEED, heldout=True), self.calib.batch_size)

    def train_batch(self, batch_size: int, generator: torch.Generator):
        kw = self._make(batch_size, int(torch.randint(0, 2**31, (1,), generator=generator)))
        latents = kw.pop("hidden_states")
        kw.pop("timestep")
        return latents, kw


def example_row(family: str, config) -> dict:
    """One row of the forward kwargs a teacher of `family` with `config` takes (SyntheticSource's,
    random; one latent token, one text token): what they are and their layout, not their sizes."""
    return SyntheticSource(family, None, config, tokens=1, text_tokens=1)._make(1, 0)


class Sampling(NamedTuple):
    """A recipe's calibration source checked against its teacher once (source_sampling), for the checks
    and the plan that read it: its `kind` (source_kind's); `index`: the model_index.json of the local
    pipeline folder a pipeline source samples in, as read (pipeline_folder.folder_index; None where
    there is none: toy:NAME, a Hub id); `toy`: whether that pipeline is a toy's (toy:NAME, or a folder a
    toy pipeline's save_pretrained wrote, as pipeline_folder.toy_pipeline tells it)."""

    kind: str
    index: dict | None = None
    toy: bool = False


def source_kind(calib, teacher_source: str) -> str:
    """The calibration source's kind; `auto` is `toy` for toy teachers, else `pipeline`. A toy
    teacher is toy:NAME or a dit-compress output compressed from one (through outputs compressed
    from outputs: report_teacher.toy_base), whose inputs are that toy's. Where that chain of teachers
    breaks off (a teacher moved away: report_teacher.chain_break) neither can be told, and `auto`
    (with no calibration.pipeline to sample in) or `toy` is a UserError saying so, at the recipe's
    `teacher:`; so is a pipeline to sample in that is no pipeline folder or a saved toy
    pipeline (pipeline_folder.check_calibration_pipeline)."""
    return source_sampling(calib, teacher_source).kind


def source_sampling(calib, teacher_source: str) -> Sampling:
    """source_kind's kind, with the model_index.json its check of a pipeline source read (`Sampling`)."""
    from compress.report_teacher import toy_base

    toy = toy_base(teacher_source) is not None
    if not toy and (calib.source == "toy" or (calib.source == "auto" and not calib.pipeline)):
        _check_chain(calib, teacher_source)
    if calib.source == "toy" and not toy:
        raise UserError(f"{calib.where('source', calib.source)}calibration.source 'toy' needs a toy teacher "
                        f"(toy:pixart or toy:flux, or an output compressed from one), not {teacher_source}; leave "
                        "it auto (pipeline for a real teacher) or use synthetic")
    kind = calib.source if calib.source != "auto" else "toy" if toy else "pipeline"
    if kind != "pipeline":
        return Sampling(kind)
    from compress.pipeline_folder import check_calibration_pipeline, index_toy

    index = check_calibration_pipeline(calib, teacher_source)  # a local folder's, read once
    pipeline = calib.pipeline or teacher_source
    return Sampling(kind, index, pipeline.startswith("toy:") or index_toy(index) is not None)


def noise_levels(calib, kind: str) -> tuple[int, str]:
    """(the most distinct noise levels the calibration inputs hold, how, in words) of a recipe's
    `calibration` (CalibrationConfig) and its source's kind (inputs.source_kind): a pipeline source keeps
    min(timesteps, sample_steps) sampler steps; the toy and synthetic sources draw each of their
    num_prompts × timesteps inputs at its own level."""
    if kind == "pipeline":
        return (min(calib.timesteps, calib.sample_steps),
                f"calibration.timesteps {calib.timesteps} of a {calib.sample_steps}-step sampler")
    return calib.num_prompts * calib.timesteps, (f"calibration.num_prompts × timesteps: {calib.num_prompts} × "
                                                 f"{calib.timesteps} inputs")


def _check_chain(calib, teacher_source: str) -> None:
    """A UserError where the chain of teachers `teacher_source` leads to breaks off (chain_break):
    whether it starts at a toy, the calibration source's kind, cannot be told."""
    from compress.report_teacher import NOT_THERE, broken_chain, chain_break, teacher_chain

    chain = teacher_chain(teacher_source)
    why = chain_break(chain) if len(chain) > 1 else None
    if why is None:
        return
    which = ("calibration.source auto takes a toy's inputs for an output compressed from a toy and samples in a "
             "pipeline otherwise" if calib.source == "auto" else "calibration.source 'toy' needs a toy teacher")
    back = "put it back where it was, or " if why == NOT_THERE else ""
    raise UserError(f"{teacher_at(calib, teacher_source)}{broken_chain(None, chain)}: {which}, and whether the "
                    f"chain of teachers starts at a toy cannot be told; {back}set calibration.pipeline (and "
                    "prompts) to the pipeline to sample in")


def pipeline_at(calib, teacher_source: str) -> str:
    """'PATH:LINE: ' of the recipe key that names the pipeline a pipeline source samples in:
    calibration.pipeline where set, else the teacher's (teacher_at)."""
    return calib.where("pipeline", calib.pipeline) if calib.pipeline else teacher_at(calib, teacher_source)


def teacher_at(calib, teacher_source: str) -> str:
    """'PATH:LINE: ' of the `teacher:` of the recipe `calib` was read from (CalibrationConfig.where),
    where `teacher_source` is that teacher ('PATH (--set teacher): ' for a --set one); '' for one
    --teacher gave, or a config made otherwise."""
    from compress.recipe_where import recipe_where
    from compress.report_teacher import absolute_source

    recipe = calib.__dict__.get("_recipe")
    if recipe is None or not recipe.teacher or absolute_source(recipe.teacher) != absolute_source(str(teacher_source)):
        return ""
    return recipe_where(recipe, "teacher", recipe.teacher) + ": "


def check_pipeline_packages(recipe, teacher_source: str | None = None) -> None:
    """Before the teacher is loaded (a Hugging Face teacher downloads GBs first): a recipe that
    samples in a real pipeline needs the pipelines extra. teacher_source: `--teacher`, if given."""
    from compress.io_source import looks_local
    from compress.pipeline_folder import toy_pipeline

    source = teacher_source or recipe.teacher
    if looks_local(source) and not Path(source).expanduser().exists():
        return  # loading it says so
    if source_kind(recipe.calibration, source) == "pipeline" and \
            not toy_pipeline(recipe.calibration.pipeline or source):  # toy:NAME, or a saved toy pipeline
        from compress.calib_pipeline import need_transformers

        need_transformers(recipe.model)


def input_source(family: str, teacher_source: str, calib, teacher, recipe_dir=None):
    """The recipe's calibration source (`source_kind`)."""
    kind = source_kind(calib, teacher_source)
    if kind == "toy":
        return ToySource(family, calib)
    if kind == "synthetic":
        return SyntheticSource(family, calib, teacher.config)
    from compress.calib_pipeline import PipelineSource

    return PipelineSource(family, calib, teacher, calib.pipeline or teacher_source, recipe_dir)
