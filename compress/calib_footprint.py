"""How much memory calibration's activations take, from the recipe and the teacher's config alone
(`plan` prints it; `run` warns before it starts when it will not fit).

Block-by-block calibration keeps every calibration input's activations at the block it is at:
its inputs and its outputs (`calib.BlockCalibration`), and, when an svd pass fits targets
asymmetrically (as the pass decides it, `svd_streams`), the same again for the reference stream.
Per row that is the residual stream (image tokens, plus Flux's text tokens) and PixArt-Σ's projected
caption, each `inner_dim` wide, in the compute dtype. `calibration.spill_activations` keeps one batch of them instead.
"""

from __future__ import annotations

import math

import torch

from compress.calib_prompts import calibration_prompts, one_branch, rows_per_prompt
from compress.errors import UserError
from compress.inputs import SYNTHETIC_TEXT_TOKENS, SYNTHETIC_TOKENS, source_kind

PIPELINE_TEXT_TOKENS = {"pixart": 300, "flux": 512}  # the pipelines' max_sequence_length defaults
FLUX_SIDE = 1024  # FluxPipeline's default image size (pixels); PixArt-Σ's is its sample_size x 8
PIXART_BINNED = (32, 64, 128, 256)  # sample sizes whose PixArt-Σ pipeline bins the size asked for


def calibration_rows(recipe, kind: str, config, prompts: int, *, toy: bool) -> int:
    """Rows (batch entries) of the calibration inputs: prompts x kept steps x CFG branches;
    toy: whether the pipeline a pipeline source samples in is a toy's (see footprint)."""
    c = recipe.calibration
    if kind == "toy":
        return c.num_prompts * c.timesteps * (2 if c.cfg_branches else 1)
    if kind == "synthetic":
        return c.num_prompts * c.timesteps
    single = one_branch(recipe.model, toy)  # FluxPipeline: one branch
    kept = calibration_prompts(prompts, c, single)  # the prompts PipelineSource calibrates on
    return kept * rows_per_prompt(c, single)


def row_tokens(recipe, kind: str, config, *, toy: bool) -> tuple[int, int]:
    """(residual-stream tokens, caption tokens kept beside it) of one row at the blocks; toy: whether
    the pipeline a pipeline source samples in is a toy's (see footprint)."""
    image, text = image_tokens(recipe, kind, config, toy=toy), text_tokens(recipe, kind, toy=toy)
    return (image + text, 0) if recipe.model == "flux" else (image, text)


def image_tokens(recipe, kind: str, config, *, toy: bool) -> int:
    """Image tokens of one row at the blocks (see row_tokens)."""
    c, family = recipe.calibration, recipe.model
    if kind == "synthetic":
        return SYNTHETIC_TOKENS
    if kind == "toy" or toy:  # the toy data or a toy pipeline (a saved one too)
        # the toys' latents (4, 8, 8): PixArt patches them, Flux packs 2 x 2
        from compress.toy.vae import LATENT_SIZE

        return (config.sample_size // config.patch_size) ** 2 if family == "pixart" else (LATENT_SIZE // 2) ** 2
    side = config.sample_size * 8 if family == "pixart" else FLUX_SIDE  # the pipelines' defaults
    height, width = c.height or side, c.width or side
    if family == "pixart":
        height, width = pixart_binned(config.sample_size, height, width)
    step = 8 * (config.patch_size if family == "pixart" else 2)  # VAE 8x, then patches
    return (height // step) * (width // step)


def text_tokens(recipe, kind: str, *, toy: bool) -> int:
    """Text tokens of one row at the blocks: Flux's residual stream holds them beside the image's,
    PixArt-Σ's blocks read them as the caption (see row_tokens); the teacher's config says nothing of them."""
    if kind == "synthetic":
        return SYNTHETIC_TEXT_TOKENS
    if kind == "toy" or toy:  # the toy text encoder's length
        from compress.toy.text import MAX_TOKENS

        return MAX_TOKENS
    return PIPELINE_TEXT_TOKENS[recipe.model]


def pixart_binned(sample_size: int, height: int, width: int) -> tuple[int, int]:
    """The size PixArt-Σ's pipeline samples at: it bins the one asked for to the closest of the
    aspect ratios its resolution was trained on (`use_resolution_binning`, on by default). The bins
    live in diffusers' pipeline module, which needs transformers (the pipelines extra); a square
    size is binned to the square bin, the resolution's own (sample_size x 8) in each, so it needs
    neither (tested against diffusers' bins)."""
    from compress.calib_pipeline import need_transformers
    from diffusers.image_processor import PixArtImageProcessor

    if height == width and sample_size in PIXART_BINNED:
        return sample_size * 8, sample_size * 8
    need_transformers()
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    bins = {256: sigma.ASPECT_RATIO_2048_BIN, 128: sigma.ASPECT_RATIO_1024_BIN,
            64: sigma.ASPECT_RATIO_512_BIN, 32: sigma.ASPECT_RATIO_256_BIN}.get(sample_size)
    return PixArtImageProcessor.classify_height_width_bin(height, width, bins) if bins else (height, width)


def svd_streams(recipe, config=None) -> tuple[bool, bool]:
    """(whether some svd pass fits targets asymmetrically: a reference stream calibrates beside the
    student's; whether some calibrates within-block sequentially: a block's dense linears stay beside
    their factors until it is done). Each pass's own decisions (svd_decisions.fits_asymmetrically,
    calibrates_sequentially) on its targets among the teacher's linears (a meta model of `config`, the
    teacher's diffusers config; None: recipe.teacher's), so that the estimate counts what the run does."""
    from compress.arch import get_adapter
    from compress.passes.svd_decisions import calibrates_sequentially, fits_asymmetrically
    from compress.passes.svd_targets import resolve_targets

    fits = sequential = False
    svds = [s.config for s in recipe.passes if s.name == "svd"]
    if not svds:
        return fits, sequential
    model = _meta_teacher(recipe, config)
    infos = get_adapter(model).linears(model)
    for cfg in svds:
        try:
            targets = resolve_targets(infos, cfg.targets, cfg.ignore)
        except UserError:  # the pass's own check says what is wrong with them
            continue
        fits = fits or fits_asymmetrically(cfg, targets)
        sequential = sequential or calibrates_sequentially(cfg, targets)
    return fits, sequential


def _meta_teacher(recipe, config):
    """The teacher on the meta device, from its diffusers `config` (None: recipe.teacher's)."""
    if config is None:
        from compress.plan import meta_model

        return meta_model(recipe.teacher)
    from compress.arch import ADAPTERS
    from compress.stream import empty_transformer

    dense = {k: v for k, v in dict(config).items() if k != "compression"}  # an output's: its linears' roles
    return empty_transformer({"_class_name": ADAPTERS[recipe.model].class_name, **dense})


def asymmetric_streams(recipe, config=None) -> int:
    """2 when some svd pass fits targets asymmetrically (a reference stream beside the student's)."""
    return 2 if svd_streams(recipe, config)[0] else 1


def block_copies(recipe, config=None) -> int:
    """2 when some svd pass calibrates within-block sequentially (svd.sequential): a block's dense
    linears stay beside their factors until the block is done (the reference stream runs them)."""
    return 2 if svd_streams(recipe, config)[1] else 1


def footprint(recipe, teacher: str, config, prompts: int, *, toy: bool, kind: str | None = None) -> dict:
    """Bytes of calibration activations held at once in the recipe's compute dtype, all of them and
    one batch's (spilled); teacher: its source; prompts: how many a pipeline source reads; toy: whether
    the pipeline a pipeline source samples in (`calibration.pipeline`, else the teacher) is a toy's:
    toy:NAME or a folder a toy pipeline was saved into (pipeline_folder.toy_pipeline, as the caller
    found it: make_plan's calibration.toy_pipeline, PipelineSource.toy; False for other sources); kind:
    the source's (inputs.source_kind of the recipe's calibration and `teacher`) where the caller has it."""
    kind, itemsize = kind or source_kind(recipe.calibration, teacher), getattr(torch, recipe.compute_dtype).itemsize
    rows = calibration_rows(recipe, kind, config, prompts, toy=toy)
    stream, caption = row_tokens(recipe, kind, config, toy=toy)
    width = config.num_attention_heads * config.attention_head_dim
    per_row = (2 * stream + caption) * width * itemsize  # inputs + outputs, and the caption once
    fits, sequential = svd_streams(recipe, config)
    streams, copies = (2 if fits else 1), (2 if sequential else 1)
    batch = min(rows, recipe.calibration.batch_size)
    return {"rows": rows, "tokens": stream, "caption_tokens": caption, "streams": streams,
            "bytes": rows * per_row * streams, "batch_bytes": batch * per_row * streams,
            "batches": math.ceil(rows / recipe.calibration.batch_size),
            "batch_rows": recipe.calibration.batch_size, "itemsize": itemsize,
            "block_copies": copies, "probe_bytes": probe_bytes(copies, stream, caption, width, itemsize)}


def probe_bytes(copies: int, tokens: int, caption: int, width: int, itemsize: int) -> int:
    """Bytes of calib_flow's dependency probe under within-block sequential calibration (else 0): one
    block's forward and backward on one calibration row, with what autograd keeps for it.
    copies: `block_copies` (2: within-block sequential)."""
    if copies == 1:
        return 0
    return (SAVED_PER_TOKEN * tokens + 2 * (tokens + caption)) * width * itemsize


# values per token and block, in units of the hidden width, that autograd keeps for a backward
# through a block (tools/bench_backward_memory.py: Flux.1-dev's double blocks 18.2, single 15.2,
# PixArt-Σ's 17)
SAVED_PER_TOKEN = 18


def backward_bytes(f: dict, config, blocks: int) -> tuple[int, int]:
    """(without, with gradient checkpointing) bytes a whole-model backward keeps for one calibration
    batch (the prediction's Fisher, compensation): every block's activations, or every other block's
    residual-stream input plus one block's activations while it is rebuilt (its input among them).
    PixArt-Σ's projected caption is one tensor every block reads: kept once either way, and each
    block's cross-attention keys and values of it count with its activations. (The caption counted
    as every block's input made the checkpointed estimate the larger with a long caption and few
    image tokens.) f: a `footprint`."""
    width, itemsize = config.num_attention_heads * config.attention_head_dim, f["itemsize"]
    unit = width * itemsize * min(f["rows"], f["batch_rows"])  # bytes of one token, all the batch's rows
    per_block = (SAVED_PER_TOKEN * f["tokens"] + 2 * f["caption_tokens"]) * unit
    caption = f["caption_tokens"] * unit
    return blocks * per_block + caption, (blocks - 1) * f["tokens"] * unit + caption + per_block


def tap_tokens(family: str, tap: dict, f: dict, text: int) -> int:
    """Rows per calibration row of a tapped target's output: 1 for a linear reading one per sample
    (modulation, timestep embedders: tap["per_sample"]), the caption's tokens for PixArt-Σ's
    cross-attention keys and values (an input every block shares) and its caption projection, Flux's
    text tokens for a double block's text-side linears (parts ctx_*) and its context embedder, the
    image tokens for a double block's image side and its top level's, else the residual stream's.
    tap: svd_statistics' (plan_statistics); f: a `footprint`; text: `text_tokens`."""
    if tap["per_sample"]:
        return 1
    if family == "pixart":
        caption = tap["shared"] or tap["part"] == "caption"
        return f["caption_tokens"] if caption else f["tokens"]
    reads_text = tap["part"].startswith("ctx") or tap["part"] == "context"
    if reads_text or tap["group"] in ("double", None):
        return text if reads_text else f["tokens"] - text
    return f["tokens"]


def sweep_held_bytes(targets: list[dict], chunks: list[list[str]], itemsize: int) -> int:
    """Bytes an output Fisher's sweep holds for one calibration batch beside the backward's saved
    activations and the Fishers, at the largest of its `chunks` (target names, svd_fisher_budget.fisher_chunks:
    one sweep taps only its chunk's targets). Per target {name, out, rows: of its output in one batch,
    dense: its Fisher kept as F}: svd_fisher_budget.TAP_COPIES of its output (its tap, the probe's gradient;
    a checkpointed backward's rerun of a block does not tap it again, svd_fisher.tapped), and the
    float64 copy of the widest dense target's gradient rows with its gᵀg and the new sum while they
    are added (FisherSum.add). A target's "fisher" bytes, where given, count with its chunk's (a
    block's Fishers, which no other part counts)."""
    from compress.passes.svd_fisher_budget import TAP_COPIES

    by_name = {t["name"]: t for t in targets}
    held = 0
    for chunk in chunks:
        ts = [by_name[n] for n in chunk]
        outputs = sum(t["out"] * t["rows"] for t in ts) * itemsize * TAP_COPIES
        adding = max((8 * (t["rows"] * t["out"] + 2 * t["out"] ** 2) for t in ts if t["dense"]), default=0)
        fishers = sum(t.get("fisher", 0) for t in ts)
        held = max(held, outputs + adding + fishers)
    return held


def block_backward_bytes(f: dict) -> int:
    """Bytes one block's backward keeps for one calibration batch: a block's share of `backward_bytes`
    (whatever the block count it was taken over), a token's bytes (all the batch's rows) read off
    `batch_bytes`. f: a `footprint`."""
    per_row = f["streams"] * (2 * f["tokens"] + f["caption_tokens"])  # tokens of a batch_bytes row
    return (SAVED_PER_TOKEN * f["tokens"] + 2 * f["caption_tokens"]) * (f["batch_bytes"] // per_row)


def skip_scan_bytes(f: dict, config, blocks: int) -> int:
    """Bytes the streamed skip scan (passes/importance_stream.py) holds for one calibration batch
    at its last block: the residual stream of every skipped block's run and the clean one (N + 1),
    the caption once. f: a `footprint`."""
    width, itemsize = config.num_attention_heads * config.attention_head_dim, f["itemsize"]
    rows = min(f["rows"], f["batch_rows"])
    return ((blocks + 1) * f["tokens"] + f["caption_tokens"]) * width * itemsize * rows


def describe(f: dict) -> str:
    what = "inputs and outputs" + (", for the reference stream too" if f["streams"] == 2 else "")
    caption = f" + {f['caption_tokens']} caption" if f["caption_tokens"] else ""
    return (f"calibration: {f['rows']:,} inputs of {f['tokens']:,}{caption} tokens; each block's "
            f"activations ({what}) hold about {human_size(f['bytes'])} at once, "
            f"{human_size(f['batch_bytes'])} with calibration.spill_activations (one batch)")


SIZE_UNITS = (("GiB", 2**30, 1), ("MiB", 2**20, 0), ("KiB", 2**10, 0))  # (unit, bytes, decimals); then bytes


def human_size(n: float, more: int = 0) -> str:
    """`n` bytes in words: '1.5 GiB', '12 MiB', '3 KiB', '512 bytes' ('1 byte'): a unit from where the one
    below, with its decimals, would say 1024 (1023.6 MiB: '1.0 GiB', not '1024 MiB'; with `more` 1, 1023.7
    MiB stays '1023.7 MiB'), so no size under 1 MiB reads '0 MiB'; `more`: decimals beyond the unit's
    (human_sizes), none for bytes. A size not finite as Python writes it ('inf bytes')."""
    if not math.isfinite(n):
        return f"{n} bytes"
    for i, (unit, scale, places) in enumerate(SIZE_UNITS):
        below = SIZE_UNITS[i + 1][2] + more if i + 1 < len(SIZE_UNITS) else 0  # bytes: whole
        if n >= scale * (1024 - 0.5 * 10**-below) / 1024:  # the unit below rounds it to 1024
            return f"{n / scale:.{places + more}f} {unit}"
    return _in_bytes(n, grouped=False)


def _in_bytes(n: float, grouped: bool = True) -> str:
    """`n` bytes, a whole number of them: '1,536 bytes' ('1536 bytes' not `grouped`), '1 byte'."""
    return "1 byte" if round(n) == 1 else f"{round(n):,} bytes" if grouped else f"{round(n)} bytes"


def human_sizes(a: float, b: float) -> tuple[str, str]:
    """human_size of two sizes a message compares ('take A, more than the B of memory'), with as many more
    decimals (up to 2) as show their real ratio where the words misstate it (said_ratio_off): where they
    read the same ('1.3 MiB' and '1.0 MiB', not '1 MiB' twice) or rounding moves them further apart
    ('1.50 KiB' and '1.50 KiB' would read the same, so 1,536 and 1,535 bytes, not '2 KiB' and '1 KiB'),
    else in bytes ('1,360,000 bytes' and '1,359,999 bytes'). Sizes far apart, or one not finite, read as
    human_size says."""
    words, more = (human_size(a), human_size(b)), 0
    if not (math.isfinite(a) and math.isfinite(b)):
        return words
    while round(a) != round(b) and said_ratio_off(a, b, words):
        if more == 2:
            return _in_bytes(a), _in_bytes(b)
        more += 1
        words = human_size(a, more), human_size(b, more)
    return words


UNITS = {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10, "bytes": 1, "byte": 1}


def said_ratio_off(a: float, b: float, words: tuple[str, str]) -> bool:
    """Whether human_size's `words` of sizes `a` and `b` (bytes, both > 0) misstate how far apart they are:
    the ratio of the sizes they say off the real one by more than half the real one's distance from 1,
    on a log scale ('2 KiB' and '1 KiB' of 1,536 and 1,535 bytes: 2 for 1.0007; '1 MiB' twice of 1.3
    and 1.0 MiB: 1 for 1.3). Sizes of 0 (or under) are said exactly."""
    if a <= 0 or b <= 0:
        return False
    said = [float(w.split()[0]) * UNITS[w.split()[1]] for w in words]
    if min(said) <= 0:  # a fraction of a byte said as '0 bytes'
        return True
    real = math.log(a / b)
    return abs(math.log(said[0] / said[1]) - real) > abs(real) / 2
