"""Calibration inputs captured from real sampling: the teacher runs inside its own diffusers
pipeline on the recipe's prompts and a forward pre-hook records the transformer's inputs at the
kept timesteps. Works for any pipeline that calls `transformer(**kwargs)` (PixArt-Σ, Flux, the toys)
and sees exactly what inference sees: text embeddings, both CFG branches, trajectory latents."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import torch

from compress.calib_pipeline_load import load_pipeline_for, need_transformers, scheduler_config
from compress.calib_prompts import _where, calibration_prompts, one_branch, read_prompts
from compress.calib_store import load_cached, save
from compress.errors import UserError
from compress.inputs import PIPELINE_HELDOUT_SEED
from compress.pipeline_folder import toy_pipeline
from compress.progress import read_back_label


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def capture(pipe, transformer, prompts: list[str], steps: int, keep: int, guidance: float,
            seed: int, per_call: int = 1, size: dict | None = None, source: str = "") -> list[dict]:
    """Forward kwargs at `keep` evenly spread steps of each sampling run; `per_call` prompts share
    a run (one batch; prompt i still draws its noise from seed + i). Streamed weights are read
    once per step of each run, so batching prompts divides that reading. `size`: the pipeline's
    height / width, where the recipe sets them. A failure of the pipeline outside the transformer
    (its tokenizers, text encoders, scheduler: `_outside`) is a UserError naming `source`."""
    kept = set(torch.linspace(0, steps - 1, keep).round().long().tolist())
    records: list[dict] = []
    state = {"step": 0, "inside": False}

    signature = inspect.signature(transformer.forward)

    def hook(module, args, kwargs):
        state["inside"] = True  # until it returns: a failure inside is the transformer's, not the pipeline's
        if state["step"] in kept:  # PixArt-Σ's pipeline passes the latents positionally
            named = signature.bind_partial(*args, **kwargs).arguments
            records.append({k: _detach(v) for k, v in named.items()
                            if k not in ("return_dict", "joint_attention_kwargs", "attention_kwargs")})
        state["step"] += 1

    def left(module, args, output):
        state["inside"] = False

    handles = (transformer.register_forward_pre_hook(hook, with_kwargs=True),
               transformer.register_forward_hook(left))
    try:
        for start in range(0, len(prompts), per_call):
            state["step"] = 0
            chunk = prompts[start:start + per_call]
            gens = [torch.Generator().manual_seed(seed + start + j) for j in range(len(chunk))]
            try:
                pipe(chunk[0] if per_call == 1 else chunk, num_inference_steps=steps,
                     guidance_scale=guidance, generator=gens[0] if per_call == 1 else gens,
                     output_type="pt" if _is_toy(pipe) else "latent", **(size or {}))
            except Exception as e:  # noqa: BLE001 - diffusers' and transformers' errors come in many types
                raise _outside(e, state, pipe, source, chunk) from None
    finally:
        for handle in handles:
            handle.remove()
    if not records:
        raise UserError("the calibration pipeline never called the transformer with keyword inputs")
    return records


def _outside(e: Exception, state: dict, pipe, source: str, chunk: list[str]) -> Exception:
    """The error to raise for `e`, raised by the pipeline `pipe` while it sampled `chunk`: as it is
    inside the transformer (dit-compress's own layers, streamed weights), a UserError, or a failed
    allocation (the runner names what ran out); otherwise a UserError naming the pipeline (`source`)
    and what failed, instead of a traceback through diffusers' encode_prompt or __call__."""
    from compress.io_tensors import one_line
    from compress.runner_failures import is_out_of_memory

    if state["inside"] or isinstance(e, UserError) or is_out_of_memory(e):
        return e
    return UserError(f"the calibration pipeline{f' {source}' if source else ''} ({type(pipe).__name__}) failed "
                     f"outside the transformer while sampling {chunk!r}: {type(e).__name__}: {one_line(e)}; "
                     "check its tokenizers, text encoders and scheduler (a pipeline that samples with diffusers "
                     "alone fails the same way)")


def rebatch(records: list[dict], batch_size: int, seed: int) -> list[dict]:
    """One record per transformer call (a prompt's CFG branches at one step: 1 to 2 · per_call
    rows) into batches of about `batch_size` rows, the records shuffled with `seed` first so every
    batch mixes prompts and noise levels: passes that look at a few batches (compensate_batches,
    sensitivity_batches) and the output Fisher's probes per batch then see the same mix as all of
    them. Tensors batched along their first dimension are concatenated; the rest (Flux's img_ids
    and txt_ids) must agree across the records of a batch."""
    return [_concat([records[i] for i in group]) for group in batch_groups(records, batch_size, seed)]


def batch_groups(records: list[dict], batch_size: int, seed: int) -> list[list[int]]:
    """The records (their indices, shuffled with `seed`) each of rebatch's batches joins, in order."""
    if not records:
        return []
    per = max(1, batch_size // records[0]["hidden_states"].shape[0])
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[k:k + per] for k in range(0, len(order), per)]


def _concat(group: list[dict]) -> dict:
    from compress.inputs import _batched

    n = group[0]["hidden_states"].shape[0]

    def join(key: str, values: list):
        first = values[0]
        if isinstance(first, dict):
            return {k: join(k, [v[k] for v in values]) for k in first}
        if _batched(key, first, n):
            return torch.cat(values)
        if torch.is_tensor(first) and not all(torch.equal(first, v) for v in values[1:]):
            raise UserError("calibration records of one pipeline differ in a shared input (a changed "
                            "resolution?); sample them at one height / width")
        return first

    return {k: join(k, [g[k] for g in group]) for k in group[0]}


def _is_toy(pipe) -> bool:
    return type(pipe).__module__.startswith("compress.toy")


def check_size(calib, toy: bool) -> None:
    """calibration.height / width are for a real pipeline: the toy pipelines sample at their one
    resolution (refused at the key's recipe line, by plan as by run). `toy`: whether the pipeline
    sampled in is a toy's (pipeline_folder.toy_pipeline, as the caller found it)."""
    given = [k for k in ("height", "width") if getattr(calib, k)]
    if given and toy:
        at = _where(calib, given[0], getattr(calib, given[0]), (*given[1:], "source", "pipeline"))
        raise UserError(f"{at}calibration.height / width: "
                        "the toy pipelines sample at their one resolution; leave both out")


def inputs_cache_name(source: str, weights: str, parts: dict | None = None) -> str:
    """The folder of a teacher's sampled records under runs/<recipe>/inputs/: the teacher (source,
    weights checksum), the pipeline's other parts (`parts`: `pipeline_signature`, its scheduler
    config, text encoders, VAE) and the code version only. Each call's file is named by the rest of
    what its records depend on (`PipelineSource._cached`), so a rerun that only batches, spills or
    holds out differently samples nothing again."""
    import compress

    h = hashlib.sha256(f"{source}|{compress.__version__}|{weights}".encode())
    if parts is not None:  # None (toy pipeline, Hub id): the name older runs gave
        h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()[:16]


def run_label(what: str, read_back: int, prompts: int) -> str:
    """The progress label of sampling `prompts` prompts, `read_back` of them cached before: 'held-out
    prompts (read back)' where all are, 'sample calibration prompts (480 read back)' where some are (the
    bar counts prompts too: '480/1600'; at most 43 characters, whole at 80 columns for 4-digit counts)."""
    return read_back_label(f"sample {what} prompts", read_back, prompts, f"{what} prompts")


class PipelineSource:
    """Calibration and held-out batches from real sampling runs (prompts split 80/20)."""

    damaged: tuple[Path, ...] = ()  # the cached calls found damaged, sampled again (one note says the first)

    def __init__(self, family: str, calib, teacher, pipeline: str, recipe_dir: Path | None = None):
        self.family, self.calib, self.teacher, self.pipeline = family, calib, teacher, pipeline
        self.prompts = read_prompts(calib, recipe_dir)
        self.size = {k: getattr(calib, k) for k in ("height", "width") if getattr(calib, k)}
        # read once (a folder's model_index.json): guidance() and _single() ask per sampling call
        self._toy = toy_pipeline(pipeline)
        self._one_branch = one_branch(family, bool(self._toy))
        if not self._toy:  # a toy's (a saved one too) needs no transformers package
            from compress.inputs import pipeline_at
            from compress.pipeline_folder_paths import check_pipeline_source

            check_pipeline_source(pipeline, calib.pipeline is None, family, pipeline_at(calib, pipeline),
                                  auto=calib.source == "auto")
            need_transformers(family)
        check_size(calib, bool(self._toy))
        self._cut()  # before any sampling: heldout may ask more than the prompts give
        self._pipe = None
        self._left = {"calibration", "heldout"}  # the pipeline (text encoders: GBs) goes after both
        self.cache_dir: Path | None = None  # the runner's: each sampling call's records, on disk
        self.read_only = False  # eval's: reads a run's records that are there and valid, writes none
        self._uncond: dict | None = None  # the negative prompt's row (calibration records, CFG)
        self._held_pairs: list | None = None  # per held-out batch, its branches' rows (heldout_guidance)

    @property
    def toy(self) -> bool:
        """Whether the pipeline sampled in is a toy's: toy:NAME, or a folder a toy pipeline was saved
        into (pipeline_folder.toy_pipeline, read once here)."""
        return self._toy is not None

    def inputs_identity(self) -> dict:
        """What the sampled inputs depend on that the recipe's keys do not hold, for the calibration
        caches' keys and --resume to compare: {"prompts": a digest of the prompts read (a prompt_file
        names its path, not its lines), "pipeline": `pipeline_signature` of the pipeline's parts
        other than the transformer (None: a toy pipeline or a Hub id)}."""
        from compress.calib_prompts import prompts_digest
        from compress.io_signature import pipeline_signature

        return {"prompts": prompts_digest(self.prompts), "pipeline": pipeline_signature(self.pipeline)}

    def _run(self, prompts: list[str], seed: int, what: str = "calibration") -> list[dict]:
        """Records of every sampling call (`prompts_per_call` prompts each; prompt i draws its
        noise from seed + i). With a cache_dir each call's records are written as it finishes and
        read back instead of sampled again: a resumed or repeated run samples nothing, and an
        interrupted sampling keeps the calls it finished."""
        from compress.progress import bar as progress_bar

        c, records = self.calib, []
        starts = range(0, len(prompts), c.prompts_per_call)
        kept = [self._cached(prompts[s:s + c.prompts_per_call], seed + s) for s in starts]
        # the cached calls read back first (None: none, or damaged: sampled again), so the label counts those read
        kept = [self._read(p) if p is not None and p.is_file() else None for p in kept]
        if not all(k is not None for k in kept):
            self._loaded()  # before the bar: a Hub's waits are not sampling time
        with progress_bar(True) as bar:
            read_back = sum(len(prompts[s:s + c.prompts_per_call]) for s, k in zip(starts, kept) if k is not None)
            task = bar.add_task(run_label(what, read_back, len(prompts)), total=len(prompts))
            for start, k in zip(starts, kept):
                chunk = prompts[start:start + c.prompts_per_call]
                records += k if k is not None else self._call(chunk, seed + start)
                bar.advance(task, len(chunk))
        return records

    def _call(self, chunk: list[str], seed: int) -> list[dict]:
        """The records of one sampling call, from the cache (where another rank of a launch wrote it since
        `_run` looked: not one found damaged) or sampled (and then cached)."""
        c, path = self.calib, self._cached(chunk, seed)
        if path is not None and path.is_file() and path not in self.damaged:
            kept = self._read(path)
            if kept is not None:
                return kept
        got = capture(self._loaded(), self.teacher, chunk, c.sample_steps, min(c.timesteps, c.sample_steps),
                      self.guidance(), seed, c.prompts_per_call, self.size, self.pipeline)
        if path is not None and not self.read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{os.getpid()}")  # the ranks of a launch may sample the same call
            save(got, tmp, atomic=False)  # (a full disk: ENOSPC naming it, no half file)
            tmp.replace(path)  # atomic: never half a file
        return got

    def _read(self, path: Path) -> list[dict] | None:
        """The records of a cached call; None for a file that cannot be read: where `read_only` (eval of
        another run's folder) any such file, quietly (sampled again in memory instead); else a damaged
        one, with a note (calib_store.load_cached: sampled again and written over it)."""
        if not self.read_only:
            kept = load_cached(path, "sampled again", bool(self.damaged), map_location="cpu")
            self.damaged += (path,) if kept is None else ()
            return kept
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None

    def _loaded(self):
        """The pipeline, loaded on its first use (a run whose calls are all read back loads none)."""
        if self._pipe is None:
            self._pipe = load_pipeline_for(self.teacher, self.pipeline)
            self._pipe.set_progress_bar_config(disable=True)  # one bar over the prompts instead
        return self._pipe

    def _cached(self, chunk: list[str], seed: int) -> Path | None:
        """The cache file of one sampling call: named by everything its records depend on (a local
        pipeline by its absolute path: `pipe`, `pipe/` and `./pipe` are one pipeline)."""
        from compress.report_teacher import absolute_source

        if self.cache_dir is None:
            return None
        c = self.calib
        key = json.dumps([absolute_source(self.pipeline), chunk, seed, c.sample_steps, min(c.timesteps, c.sample_steps),
                          self.guidance(), c.prompts_per_call, self.size, str(self.teacher.dtype)])
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"

    def scheduler_config(self) -> dict | None:
        """The pipeline's scheduler config (distill's teacher samples are drawn as the pipeline
        samples); None for the toy pipelines, whose families' default sampler is theirs."""
        return None if self.pipeline.startswith("toy:") else scheduler_config(self.pipeline)

    def guidance(self) -> float:
        """The pipeline's guidance_scale. A guidance-distilled transformer (Flux.1-dev) takes it as
        an input and its pipeline runs one branch whatever `cfg_branches` says, so it always gets
        the recipe's scale (at 1.0 its modulation would calibrate on a guidance it never sees);
        elsewhere 1.0 turns classifier-free guidance, and with it the empty-prompt branch, off."""
        return self.calib.guidance_scale if self.calib.cfg_branches or self._embedded() else 1.0

    def _done(self, what: str) -> None:
        self._left.discard(what)
        if not self._left:
            self._pipe = None

    def _embedded(self) -> bool:
        """Whether the transformer takes guidance as an input (Flux.1-dev): its pipeline runs one branch."""
        return not self._toy and bool(getattr(self.teacher.config, "guidance_embeds", False))

    def _single(self) -> bool:
        """Whether the pipeline runs one branch per step (`one_branch`: FluxPipeline)."""
        return self._one_branch

    def _cut(self) -> int:
        return calibration_prompts(len(self.prompts), self.calib, self._single())

    def unconditional(self) -> dict:
        """The negative (empty) prompt's cond kwargs, one row, as the pipeline's CFG branch fed
        them: the first row of a calibration record (they are laid out [negative; prompt])."""
        if self._uncond is None and self._single():
            raise UserError("teacher samples with classifier-free guidance take the empty prompt's "
                            "embedding from the calibration inputs, and FluxPipeline runs no CFG branch "
                            "(FLUX.1-dev takes guidance as an input, FLUX.1-schnell samples unguided): "
                            "leave distill.guidance_scale at 1")
        if self._uncond is None:
            raise UserError("teacher samples with classifier-free guidance take the empty prompt's "
                            "embedding from the calibration inputs: set calibration.cfg_branches: true "
                            "(a guidance-distilled model such as Flux.1-dev takes guidance as an input "
                            "instead: leave distill.guidance_scale at 1)")
        return self._uncond

    def _prompt_sets(self) -> dict[str, tuple[list[str], int]]:
        """{"calibration" / "heldout": (prompts, seed)}: the prompts of each set and the seed its
        first prompt draws its noise from (prompt i: seed + i): the held-out set's the same for every
        calibration.seed (inputs.PIPELINE_HELDOUT_SEED)."""
        cut = self._cut()
        rest = self.prompts[cut:] or self.prompts[-1:]  # one prompt: it does both
        return {"calibration": (self.prompts[:cut], self.calib.seed), "heldout": (rest, PIPELINE_HELDOUT_SEED)}

    def call_files(self) -> list[Path]:
        """The cache files of every sampling call this source makes (calibration, then held out),
        whether written yet or not: what a rerun reads back of the calls an interrupted run finished
        (the inputs folder may also hold calls of other prompts, which it does not read)."""
        if self.cache_dir is None:
            return []
        step = self.calib.prompts_per_call
        return [self._cached(prompts[start:start + step], seed + start)
                for prompts, seed in self._prompt_sets().values() for start in range(0, len(prompts), step)]

    def calibration(self) -> list[dict]:
        prompts, seed = self._prompt_sets()["calibration"]
        records = self._run(prompts, seed)
        if records and self.guidance() > 1 and records[0]["hidden_states"].shape[0] > 1 and not self._single():
            from compress.distill_data import cond_of, take_rows

            self._uncond = take_rows(cond_of(records[0]), torch.tensor([0]))
        self._done("calibration")
        return rebatch(records, self.calib.batch_size, self.calib.seed)

    def heldout(self) -> list[dict]:
        rest, seed = self._prompt_sets()["heldout"]
        records = self._run(rest, seed, "held-out")
        self._done("heldout")
        batches = rebatch(records, self.calib.batch_size, PIPELINE_HELDOUT_SEED)
        self._held_pairs = self._branch_pairs(records, batches)
        return batches

    def _branch_pairs(self, records: list[dict], batches: list[dict]) -> list | None:
        """Per held-out batch, (empty prompt's rows, prompt's rows) where the pipeline sampled both CFG
        branches (each call's record [negative × k; prompt × k]) and every pair holds one input; else None."""
        from compress.guided import branch_pairs, same_inputs

        if not records or self.guidance() <= 1 or self._single():
            return None
        groups = batch_groups(records, self.calib.batch_size, PIPELINE_HELDOUT_SEED)
        pairs = [branch_pairs([records[i]["hidden_states"].shape[0] for i in group]) for group in groups]
        same = len(pairs) == len(batches) and all(same_inputs(b, *p) for b, p in zip(batches, pairs))
        return pairs if same else None

    def heldout_guidance(self):
        """How the held-out predictions are guided (guided.HeldOutGuidance), read after `heldout`: at the
        pipeline's guidance scale, each batch's empty-prompt rows against its prompt's; None where the
        pipeline sampled one branch (Flux.1-dev, guidance_scale 1, calibration.cfg_branches false)."""
        from compress.guided import HeldOutGuidance

        return None if self._held_pairs is None else HeldOutGuidance(self.guidance(), pairs=self._held_pairs)

    def train_batch(self, batch_size: int, generator: torch.Generator):
        raise UserError("distill.data: toy trains on the toy data, and this run calibrates through a pipeline: "
                        "set distill.data to 'teacher_samples' or 'folder'")
