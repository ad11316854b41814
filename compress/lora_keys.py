"""A LoRA's keys, checked: what a reader (compress.lora_read) refuses before or after diffusers / peft load it.

The loaders drop what they do not know with a log line or silently (kohya diff / diff_b, LyCORIS's
dora_scale, keys of another model, a second adapter): each such case is a one-line UserError here
naming a key, never a merge that lost weights. So is a damaged file (NaN/Inf in a tensor, a lora_A
and lora_B of other ranks) and one of text-encoder modules only. Also: the peft names of diffusers-
and kohya-style keys (`peft_keys`) and the LoraConfig they imply (`lora_config`), the text-encoder
modules listed rather than merged, and the teacher block counts a LoRA's keys may not pass.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable

import torch
from torch import nn

from compress.errors import UserError

STATE_DICT = "the LoRA state dict"
TEXT_ENCODER = re.compile(r"^(?:text_encoders?(?:_\d)?[._]|lora_te\d?_|te\d?_)")  # ComfyUI's `text_encoders.t5xxl.`
LORA_PART = re.compile(r"\.(?:lora_[AB]|lora_down|lora_up|lora_magnitude_vector|dora_scale|alpha|diff_b|diff"
                       r"|lora(?:_linear_layer)?\.(?:down|up))(?:\..*)?$")
KOHYA_WEIGHT = re.compile(r"\.(?:lora_down\.weight|lora_up\.weight|alpha)$")
KOHYA_PREFIX = re.compile(r"^lora_(?:unet|transformer)_")
ADAPTER_NAMED = re.compile(r"\.(lora_[AB])\.(?!weight$|bias$)[^.]+\.(weight|bias)$")  # peft's `lora_A.default.weight`
PEFT_PART = re.compile(r"^(?:transformer\.)?(.+)\.(lora_A|lora_B)\.weight$")
DROPPED = re.compile(r"unsupported|unexpected keys|filter(?:ed)? (?:them |those keys )?out|will be ignored",
                     re.IGNORECASE)
PURGED = re.compile(r"all zeros.*purge", re.IGNORECASE)  # diffusers drops all-zero diff_b / diff: nothing lost
TEXT_ENCODER_ONLY = re.compile(r"T5-xxl|t5xxl|position_embedding|text_projection")  # text-encoder keys only
DIFF_KEYS = re.compile(r"diff_b|Normalization diff")  # a kohya LoRA's, of the transformer or a text encoder


def module_of(key: str) -> str:
    """The module a LoRA key belongs to (`x.lora_A.weight`, `x.alpha` -> `x`)."""
    return LORA_PART.sub("", key)


def check_not_text_encoder_only(keys: list[str], where: str) -> None:
    """A UserError where all of the LoRA's keys are a text encoder's: nothing to merge into the transformer."""
    if keys and all(TEXT_ENCODER.match(k) for k in keys):
        raise UserError(f"{where}: only text-encoder modules ({len(text_encoder_modules(keys))}), nothing for "
                        "the transformer")


def text_encoder_modules(keys) -> list[str]:
    """The text-encoder modules a LoRA's keys adapt (diffusers' `text_encoder.`, kohya's `lora_te_`,
    `lora_te1_`, `lora_te2_`, ComfyUI's `text_encoders.`): one per module, not per weight."""
    return sorted({module_of(k) for k in keys if TEXT_ENCODER.match(k)})


@contextlib.contextmanager
def quiet_loaders(where: str = STATE_DICT):
    """peft's and diffusers' warnings and log lines (INFO and above) held back while a LoRA is read: they
    name every key of a LoRA they cannot place (kilobytes for one mistake), where the UserErrors here
    quote a few. A log line saying the loader dropped weights (a LyCORIS DoRA's dora_scale keys, which
    diffusers' Flux loader filters out, a Hub LoRA's too; "Unsupported keys"; unexpected keys; keys it
    will filter out or ignore: a kohya LoRA's non-zero diff_b / diff) or that the LoRA lacks weights
    (missing keys) is a UserError as the block ends (check_nothing_dropped): the LoRA would be merged
    without them (`where`: the LoRA, in words). Yields a namespace whose `keys_seen` a reader sets
    where it checked the LoRA's own keys for weights the loader drops (check_kohya_flux)."""
    import logging
    import types
    import warnings

    records: list[logging.LogRecord] = []

    class Held(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    held = Held(logging.INFO)
    state = types.SimpleNamespace(keys_seen=False)
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft")]
    saved = [(logger.level, logger.handlers[:], logger.propagate) for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.INFO)
            logger.handlers[:] = [held]
            logger.propagate = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield state
    finally:
        for logger, (level, handlers, propagate) in zip(loggers, saved):
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate
    check_nothing_dropped([r.getMessage() for r in records], where, state.keys_seen)


def check_nothing_dropped(messages: list[str], where: str, keys_seen: bool = False) -> None:
    """A UserError for the first of a loader's log `messages` that says it dropped some of the LoRA's
    weights (DROPPED): a LyCORIS DoRA's dora_scale (refused, as for a local file), or any other; or that
    the LoRA lacks weights for modules the loader adapted (missing keys). Not for all-zero keys purged
    (nothing lost), nor text-encoder keys only (T5, position_embedding, text_projection: the student is
    the transformer), nor diff_b / diff keys where `keys_seen` (check_kohya_flux refused the
    transformer's: those left are a text encoder's, or zero)."""
    for message in messages:
        if "dora_scale" in message:
            raise UserError(f"{where}: a LyCORIS DoRA (dora_scale keys), which is not supported: diffusers' loader "
                            "drops its dora_scale, which would merge it as a plain LoRA")
        if "missing keys" in message:
            raise UserError(f"{where}: the LoRA lacks weights for some modules the loader adapted (a lora_A without "
                            f"its lora_B?) ({short(Exception(message))[len('Exception: '):]})")
        if PURGED.search(message) or TEXT_ENCODER_ONLY.search(message) or (keys_seen and DIFF_KEYS.search(message)):
            continue
        if DROPPED.search(message):
            raise UserError(f"{where}: the LoRA loader dropped some of its weights, so merging would lose them "
                            f"silently ({short(Exception(message))[len('Exception: '):]})")


def short(e: Exception) -> str:
    """A loader's exception in one line quoting at most 3 of the keys it lists (diffusers names them all)."""
    head, sep, tail = " ".join(str(e).split()).partition(": ")
    items = tail.split(", ")
    if len(items) > 3:
        tail = f"{', '.join(items[:3])}, … ({len(items)} in all)"
    text = f"{type(e).__name__}: {head}{sep}{tail}"
    return text if len(text) <= 400 else text[:400] + " …"


def without_adapter_names(state: dict, where: str) -> dict:
    """`state` with peft's adapter segment dropped from its keys (`x.lora_A.default.weight` ->
    `x.lora_A.weight`: a raw get_peft_model_state_dict(..., adapter_name) as diffusers saves it); a
    UserError where it names more than one adapter, or where two keys would become one (check_adapters)."""
    check_adapters(list(state), where)
    return {ADAPTER_NAMED.sub(r".\1.\2", k): v for k, v in state.items()}


def check_adapters(keys: list[str], where: str) -> None:
    """A UserError where the LoRA's keys name more than one peft adapter (`lora_A.default.weight`,
    `lora_A.style.weight`: two LoRAs in one file, which one merge cannot pick between) or hold a key
    both with and without an adapter name (the same weight twice): dropping the names would keep one
    of them silently."""
    names = sorted({m[0].split(".")[2] for k in keys for m in [ADAPTER_NAMED.search(k)] if m})
    if len(names) > 1:
        raise UserError(f"{where}: its keys name {len(names)} peft adapters ({', '.join(names)}): one LoRA "
                        "is merged at a time; save each adapter on its own")
    seen: dict[str, str] = {}
    for key in keys:
        plain = ADAPTER_NAMED.sub(r".\1.\2", key)
        if plain in seen:
            raise UserError(f"{where}: '{seen[plain]}' and '{key}' are the same weight (with and without "
                            "a peft adapter name): which one to merge?")
        seen[plain] = key


def check_finite(state: dict, where: str, origin: dict[str, str] | None = None) -> None:
    """A UserError naming the first of the LoRA's tensors holding NaN or Inf (a damaged file: merged,
    it would make the student's layer NaN whatever the scale); `origin`: {key: the file's key}."""
    from compress.io_tensors import nonfinite

    for key, value in state.items():
        bad = nonfinite(value) if isinstance(value, torch.Tensor) else 0
        if bad:
            raise UserError(f"{where}: holds {bad} NaN/Inf values in '{(origin or {}).get(key, key)}': "
                            "the file is damaged")


def check_ranks(state: dict, where: str) -> None:
    """A UserError naming the first module whose lora_A (r, in) and lora_B (out, r') of `state`
    (`[transformer.]<module>.lora_A.weight` ...) disagree on the rank: a damaged file, which peft
    would refuse with a size mismatch of its own parameter names."""
    parts = {(m[1], m[2]): v for k, v in state.items() for m in [PEFT_PART.match(k)] if m and v.dim() == 2}
    for (module, part), a in parts.items():
        b = parts.get((module, "lora_B")) if part == "lora_A" else None
        if b is not None and a.shape[0] != b.shape[1]:
            raise UserError(f"{where}: lora_A rank {a.shape[0]} vs lora_B rank {b.shape[1]} for '{module}': "
                            "the file is damaged")


def check_shapes(state: dict, skeleton: nn.Module, where: str) -> None:
    """A UserError naming the first lora_A / lora_B of `state` (`[transformer.]<module>.lora_A.weight`)
    whose shape does not fit its linear in `skeleton` (A (r', in), B (out, r')): a LoRA of a model of
    the same family with other widths, which peft would refuse with a size mismatch for every key."""
    modules = dict(skeleton.named_modules())
    for key, value in state.items():
        m = PEFT_PART.match(key)
        layer = modules.get(m[1]) if m else None
        if not isinstance(layer, nn.Linear) or value.dim() != 2:
            continue
        fits = value.shape[1] == layer.in_features if m[2] == "lora_A" else value.shape[0] == layer.out_features
        if not fits:
            raise UserError(f"{where}: its '{key}' is {tuple(value.shape)}, but '{m[1]}' of the "
                            f"{type(skeleton).__name__} is a linear of {layer.in_features} -> {layer.out_features} "
                            f"features (lora_A takes (rank, {layer.in_features}), lora_B ({layer.out_features}, rank)): "
                            "a LoRA of another model (other widths)?")


def with_transformer_prefix(state: dict, skeleton: nn.Module) -> dict:
    """A Flux LoRA state dict whose keys (text-encoder ones aside) have no `transformer.` prefix (a raw
    get_peft_model_state_dict saved as it is, which PixArt's reader takes too) given it: diffusers'
    loader reads only the prefixed keys, and would find none. Only where each such key starts with one
    of `skeleton`'s top-level modules (`transformer_blocks.`, `x_embedder.` ...): another format's
    keys (`diffusion_model.`, `unet.`, `lora_transformer_`) stay as they are, and are said unread."""
    keys = [k for k in state if not TEXT_ENCODER.match(k)]
    children = {name for name, _ in skeleton.named_children()}
    if not keys or any(k.startswith("transformer.") for k in keys) or \
            not all(k.split(".", 1)[0] in children for k in keys):
        return state
    return {k if TEXT_ENCODER.match(k) else f"transformer.{k}": v for k, v in state.items()}


def check_kohya_flux(keys: list[str], value: Callable[[str], torch.Tensor], where: str) -> None:
    """A UserError naming the first of a kohya / ComfyUI Flux LoRA's transformer keys (text-encoder ones
    aside: not merged, listed) that diffusers' Flux loader would drop, with at most an INFO log line:
    any but a lora_unet_ (ComfyUI: diffusion_model.) module's lora_down / lora_up / alpha, such as a
    non-zero bias delta (diff_b) or weight delta (diff), a norm's, or another prefix's (`value`: a
    key's tensor, read for diff / diff_b keys only). LoRAs of other formats: their converted keys are
    compared with what peft read (unread), which names any left."""
    if not any(".lora_down.weight" in k for k in keys) or \
            any(k.startswith("lora_transformer_") and re.search("lora_down|lora_up|alpha", k) for k in keys):
        return  # not diffusers' kohya reader (its mixture one refuses what it does not know)
    renamed = {k: k.replace("diffusion_model.", "lora_unet_") for k in keys if not TEXT_ENCODER.match(k)}
    norm_diff = any(".norm" in r and ".diff" in r for r in renamed.values())

    def dropped(key: str, name: str) -> bool:
        if re.search(r"\.diff(?:_b)?$", key) and not value(key).any():
            return False  # all zeros: changes nothing
        return not name.startswith("lora_unet_") or not KOHYA_WEIGHT.search(name) or ".diff_b" in name or \
            (norm_diff and (".norm" in name or ".diff" in name)) or "position_embedding" in name or \
            "text_projection" in name
    lost = sorted(k for k, r in renamed.items() if dropped(k, r))
    if lost:
        n = len(lost)
        raise UserError(f"{where}: {n} transformer key{'s' if n > 1 else ''} ('{lost[0]}'{', …' if n > 1 else ''}) "
                        "not a LoRA weight diffusers' Flux loader reads for a kohya LoRA (a lora_unet_ module's "
                        "lora_down, lora_up or alpha; a bias delta diff_b, a weight delta diff?): it drops "
                        f"{'them' if n > 1 else 'it'}, so merging would lose {'them' if n > 1 else 'it'} silently")


def check_all_read(unused: list[str], where: str, skeleton: nn.Module | None = None) -> None:
    """A UserError naming the first of the LoRA's keys that nothing read (peft ignores those it does
    not know: the LoRA would be merged without them, silently); where none of their modules is one of
    `skeleton`'s, that it looks like a LoRA of another model."""
    if not unused:
        return
    more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
    names = {name for name, _ in skeleton.named_modules()} if skeleton is not None else set()
    modules = {re.sub(r"^(?:transformer\.|base_model\.model\.)", "", module_of(k)) for k in unused}
    if skeleton is not None and not modules & names:
        raise UserError(f"{where}: '{unused[0]}'{more} names a layer {type(skeleton).__name__} does not have"
                        + (prefix_words(modules, names) or ": a LoRA of another model?"))
    raise UserError(f"{where}: '{unused[0]}'{more} is not a key peft reads, so merging would drop it "
                    "silently; a LoRA format dit-compress does not read?")


OTHER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.", "model.")  # longest first


def prefix_words(modules, names: set[str]) -> str:
    """Where every module of `modules` (a LoRA's, none the model's) is one of `names` (the model's modules)
    without one prefix another format puts on its keys (`unet.`: a UNet pipeline's; `diffusion_model.`,
    `model.diffusion_model.`: ComfyUI's / the original checkpoints'), words saying which to rename: diffusers'
    transformer LoRA loaders read only `transformer.<layer>` keys (load_lora_adapter's prefix), its
    converters of those formats only their own layer names (double_blocks, lora_unet_ ...), so a LoRA of
    diffusers' layer names under such a prefix is not read as it is. Else ''."""
    modules = sorted(modules)
    for prefix in OTHER_PREFIXES:
        if modules and all(m.startswith(prefix) and m[len(prefix):] in names for m in modules):
            return (f"; without its '{prefix}' prefix it names '{modules[0][len(prefix):]}', a layer it has: "
                    f"rename the LoRA's '{prefix}' keys to 'transformer.' (the prefix diffusers reads a "
                    "transformer's LoRA by), if it was trained on this model")
    return ""


def check_linear(adapted: set[str], modules: dict[str, nn.Module], where: str) -> None:
    """A UserError for the first module the LoRA adapts that is not a linear of the skeleton
    (`modules`): one it does not have (a LoRA of another model?), or another kind of layer (a
    Conv2d: the patch embedding), which a merge into a linear cannot take."""
    missing = sorted(adapted - set(modules))
    if missing:
        raise UserError(f"{where}: the LoRA adapts '{missing[0]}', which {type(modules['']).__name__} does not "
                        + (f"have{words}" if (words := prefix_words(missing, set(modules))) else
                           "have (a LoRA of another model?)"))
    other = sorted(n for n in adapted if not isinstance(modules[n], nn.Linear))
    if other:
        raise UserError(f"{where}: the LoRA adapts '{other[0]}', a {type(modules[other[0]]).__name__}, "
                        "not a linear layer")


def peft_keys(state: dict, linears: list[str], where: str) -> tuple[dict, dict[str, float], dict[str, str]]:
    """(state with peft's names, `<module>.lora_A.weight` ..., its kohya alphas {module: alpha},
    {peft's name (`<module>.alpha` for an alpha): the file's key}). Diffusers-style keys lose their
    `transformer.` (or `base_model.model.`) prefix; kohya-style `lora_unet_<module with _>` keys find
    their module among `linears` by name. LyCORIS's DoRA (`dora_scale`) is refused."""
    by_flat = {n.replace(".", "_"): n for n in linears}
    check_adapters(list(state), where)
    out, alphas, origin = {}, {}, {}
    for file_key, value in state.items():
        key = file_key
        if key.endswith(".dora_scale"):
            raise UserError(f"{where}: {lycoris_dora(key, tuple(value.shape))}")
        if KOHYA_PREFIX.match(key):
            flat, _, part = KOHYA_PREFIX.sub("", key).partition(".")
            if flat not in by_flat:
                raise UserError(f"{where}: '{key}' names no linear layer of the transformer")
            key = f"{by_flat[flat]}.{part.replace('lora_down', 'lora_A').replace('lora_up', 'lora_B')}"
        key = ADAPTER_NAMED.sub(r".\1.\2", re.sub(r"^(?:transformer\.|base_model\.model\.)", "", key))
        if key in origin:
            raise UserError(f"{where}: '{origin[key]}' and '{file_key}' are the same weight of '{module_of(key)}' "
                            "(its keys in two formats?): which one to merge?")
        origin[key] = file_key
        if key.endswith(".alpha"):
            alphas[key[: -len(".alpha")]] = float(value)
            continue
        out[key] = value
    if not any(k.endswith("lora_A.weight") for k in out):
        raise no_lora_weights(where)
    return out, alphas, origin


def no_lora_weights(where: str) -> UserError:
    """The error for a file that holds no LoRA weights (a model's own weights given as the LoRA)."""
    return UserError(f"{where}: no LoRA weights (lora_A / lora_down) in it")


def lycoris_dora(key: str, shape: tuple[int, ...]) -> str:
    """Why a LyCORIS DoRA magnitude `key` (dora_scale) is refused. A (1, in) one holds column norms
    (LyCORIS's default, wd_on_out false): no row scaling of peft's DoRA is that. An (out, 1) one holds
    row norms, but LyCORIS adds an eps to the norm and applies a strength w as w·(m/n − 1) + 1 around
    the whole weight, where peft scales B A inside the norm: the same only at strength 1, up to eps."""
    if len(shape) == 2 and shape[1] == 1 and shape[0] > 1:
        return (f"'{key}' is a LyCORIS DoRA (dora_scale, row norms), which is not supported: its strength and "
                "norms are not peft's DoRA's (lora_magnitude_vector), which dit-compress merges")
    return f"'{key}' is a LyCORIS DoRA (dora_scale, column-wise norms), which is not supported"


def lora_config(state: dict, alphas: dict[str, float], metadata: dict, where: str):
    """The peft LoraConfig of a state dict with peft's names: each module's rank from its A; its
    alpha from `alphas`, else the metadata's config, else its rank (scaling 1)."""
    from peft import LoraConfig

    ranks = {k[: -len(".lora_A.weight")]: v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight")}
    use_dora = any("lora_magnitude_vector" in k for k in state)
    lora_bias = any(k.endswith("lora_B.bias") for k in state)
    if metadata and not alphas:
        try:
            config = LoraConfig(**metadata)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: its LoRA metadata is not a peft LoraConfig ({e})") from None
        config.target_modules = sorted(ranks)
        return config
    pattern = {f"^{re.escape(m)}$": r for m, r in ranks.items()}
    alpha = {f"^{re.escape(m)}$": alphas.get(m, r) for m, r in ranks.items()}
    return LoraConfig(r=max(ranks.values()), lora_alpha=max(ranks.values()), target_modules=sorted(ranks),
                      rank_pattern=pattern, alpha_pattern=alpha, use_dora=use_dora, lora_bias=lora_bias)


def blocks_named(attr: str, names: list[str]) -> list[int]:
    """The block indices i of the module names under `attr`.i. (e.g. the LoRA modules merge_lora dropped)."""
    return [int(m[1]) for name in names for m in [re.match(rf"{re.escape(attr)}\.(\d+)\.", name)] if m]


def in_blocks(adapter, names: list[str]) -> bool:
    """Whether a module of `names` ("transformer_blocks.3.attn1.to_q") is in a block of a group of
    `adapter`: a LoRA of none (proj_out alone) is given no block, so no block numbering can be wrong
    (merge_lora's DoRA norms with a teacher given; lora_replay_moved.moved_away's replay)."""
    return any(blocks_named(g.attr, names) for g in adapter.groups)


class BlocksPast(UserError):
    """check_blocks' error: a LoRA block past its base's count (merge_lora adds why, where the base is
    a moved teacher read in its place)."""


def check_blocks(attr: str, count: int, mentioned: list[int], where: str, base: str | None = None) -> None:
    """A UserError where the LoRA adapts a block `attr`.i that its base model (`count` blocks) never had:
    a LoRA of a deeper model, which no block map could have removed. The base is the model the LoRA's
    blocks are read as (lora_teacher.lora_base): the teacher, or for an output of an output the first
    teacher of its chain, not the output's own teacher; `base` names it where the caller knows it."""
    past = [i for i in mentioned if i >= count]
    if past:
        model = f"the base model {base}" if base else "the base model"
        raise BlocksPast(f"{where}: the LoRA adapts {attr}.{max(past)}, but {model} has {count} {attr} "
                        f"(0 to {count - 1}): a LoRA of another (deeper) model?")
