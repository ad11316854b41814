"""Target selection and fixed ranks for the svd pass (no compute, no hooks).

A pattern is an exact module name, `re:<regex>` (re.search on the module name), or a role name
(`attention`, `cross_attention`, `mlp`, `modulation`, `embedding`, `output`).
"""

from __future__ import annotations

import re
import weakref
from typing import Sequence

from torch import nn

from compress.alloc import DENSE, LayerSpec, per_role, ratio_rank
from compress.arch.base import Adapter, LinearInfo
from compress.errors import BadValue, did_you_mean
from compress.passes.svd_values import check_syntax
from compress.recipe_names import ROLES
from compress.passes.removed_blocks import (MissingBlock, past_the_blocks, removal_words, renumbered_notes,
                                            renumbered_words)

OUTPUT_GRAM_MIN_IN = 8192  # inputs wider than this (and wider than the output) use Σ yᵀy


def matches(pattern: str, info: LinearInfo) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], info.name) is not None
    if pattern in ROLES:
        return info.role == pattern
    return info.name == pattern


def check_pattern(pattern: str, infos: Sequence[LinearInfo], key: str, at: str | None = None) -> None:
    """A valid pattern that matches some linear of `infos` (BadValue naming the recipe key `at`; a
    `MissingBlock` when it names a block past the last of its group, which `explained` says more of)."""
    check_syntax(pattern, key, at)
    if not any(matches(pattern, i) for i in infos):
        digits = re.findall(r"\d+", pattern)  # a name with other block numbers is not a typo of it
        hint = did_you_mean(pattern, [n for n in (*ROLES, *(i.name for i in infos))  # never the pattern itself
                                      if re.findall(r"\d+", n) == digits and n != pattern])
        base = f"svd.{key}: pattern {pattern!r} matches no linear layer of the model"
        message = (role_absent(pattern, infos, base)
                   or f"{base}{hint} (roles: {', '.join(ROLES)}; regexes start with 're:')")
        block = past_the_blocks(pattern, infos) or regex_past_the_blocks(pattern, infos)  # an earlier removal's?
        if block is not None:
            raise MissingBlock(at or key, message, base, block)
        raise BadValue(at or key, message, reads=())  # the pattern against the model alone


def role_absent(pattern: str, infos: Sequence[LinearInfo], base: str) -> str | None:
    """`base` (the pattern matches nothing) said of a role the model has no linear of, with the roles it has:
    Flux's text enters through its joint attention (the attention role's add_*_proj), no cross-attention
    (a PixArt recipe's targets copied over). None for a pattern that is no role."""
    if pattern not in ROLES:
        return None
    have = ", ".join(r for r in ROLES if any(i.role == r for i in infos))
    if pattern == "cross_attention" and any(".attn.add_" in i.name for i in infos):  # Flux's joint attention
        return (f"{base}: Flux has no cross_attention linears: its text enters through the joint attention (role "
                f"attention: attn.add_q_proj, add_k_proj, add_v_proj, to_add_out); drop it (its roles: {have})")
    return f"{base}: the model has no {pattern} linears (its roles: {have})"


def _block_suffixes(infos: Sequence[LinearInfo]) -> dict[str, tuple[str, int, set[str]]]:
    """group -> (module prefix, blocks it has, names of its linears inside a block) of the block groups
    of `infos` ('blocks': ('transformer_blocks', 6, {'attn1.to_q', ...}))."""
    out: dict[str, tuple[str, int, set[str]]] = {}
    for i in infos:
        if i.group is None:
            continue
        attr, suffix = re.match(rf"(.+?)\.{i.block}\.(.+)", i.name).groups()
        _, have, suffixes = out.get(i.group, (attr, 0, set()))
        out[i.group] = attr, max(have, i.block + 1), suffixes | {suffix}
    return out


def _indexed(regex: str, attr: str, suffixes: set[str], indices: range) -> list[int]:
    """The block indices among `indices` whose linears (`attr`.N.suffix) `regex` names by their
    index: for some suffix it matches at some indices and not at others (a regex matching a suffix
    at every index, as re:attn1, names no block by its index)."""
    named: set[int] = set()
    for suffix in suffixes:
        hit = {n for n in indices if re.search(regex, f"{attr}.{n}.{suffix}")}
        if hit and len(hit) < len(indices):
            named |= hit
    return sorted(named)


def regex_past_the_blocks(pattern: str, infos: Sequence[LinearInfo]) -> tuple[str, str, int, int] | None:
    """As `past_the_blocks` for a `re:` pattern matching no linear: (group, module prefix, the first
    index past the blocks of the group it names, blocks the group has), else None. Indices up to the
    largest number the regex writes are tried ('re:transformer_blocks\\.5\\.' with 5 blocks: 5)."""
    if not pattern.startswith("re:"):
        return None
    regex = pattern[3:]
    upto = min(max(map(int, re.findall(r"\d+", regex)), default=-1) + 1, 10_000)
    for group, (attr, have, suffixes) in _block_suffixes(infos).items():
        past = [n for n in range(have, upto) if any(re.search(regex, f"{attr}.{n}.{s}") for s in suffixes)]
        if past:
            return group, attr, past[0], have
    return None


def renumbered_pattern_notes(patterns: Sequence[tuple[str, str]], infos: Sequence[LinearInfo],
                             planned: dict) -> list[tuple[str, str, tuple]]:
    """(key, note, ()) per (key, pattern) naming blocks by their index where earlier removals renumbered
    them (removed_blocks.renumbered_notes; `planned`: removed_blocks.planned_blocks): module names
    as there, and `re:` patterns by the blocks whose index they name (`_indexed`). Each reads its
    pattern alone (and earlier passes): a --set of another key of the pass is not named with it."""
    out = []
    for key, pattern in patterns:
        if not pattern.startswith("re:"):
            out += [(k, said, ()) for k, said in renumbered_notes([(key, pattern)], infos, planned)]
        elif words := _regex_renumbered_words(pattern[3:], infos, planned):
            out.append((key, f"svd.{key.split('.')[0]}: pattern {pattern!r}: {words}", ()))
    return out


def _regex_renumbered_words(regex: str, infos: Sequence[LinearInfo], planned: dict) -> str | None:
    """What a regex naming blocks by their index names after removals of their group: each block it
    names that is not the teacher's of the same index, as a module name is told (`renumbered_words`),
    and each it names past the blocks left (`removal_words`); None where every block it names is."""
    said = []  # (block, words)
    for group, (attr, have, suffixes) in _block_suffixes(infos).items():
        removals = [r for r in planned.get("removals", ()) if group in r["groups"]]
        if not removals:
            continue
        for n in _indexed(regex, attr, suffixes, range(max(planned["teacher_counts"].get(group, have), have))):
            hit = next((i for i in infos if i.group == group and i.block == n and re.search(regex, i.name)), None)
            words = (renumbered_words(hit, hit.name, planned, removals) if hit is not None else
                     removal_words((group, attr, n, have), planned["teacher_counts"], planned["block_map"]))
            said += [(f"{attr}.{n}", words)] if words else []
    if not said:
        return None
    more = [block for block, _ in said[1:]]
    return said[0][1] + (f"; it names {len(more)} more block{'s' if len(more) > 1 else ''} by an index a "
                         f"removal changed: {', '.join(more)}" if more else "")


def resolve_targets(infos: Sequence[LinearInfo], targets: Sequence[str],
                    ignore: Sequence[str]) -> list[LinearInfo]:
    """The linears matched by some target pattern and by no ignore pattern, in module order.
    Every pattern must match at least one linear (BadValue naming the pattern's key)."""
    for key, patterns in (("targets", targets), ("ignore", ignore)):
        for n, p in enumerate(patterns):
            check_pattern(p, infos, key, f"{key}.{n}")
    chosen = [i for i in infos if any(matches(p, i) for p in targets)
              and not any(matches(p, i) for p in ignore)]
    if not chosen:
        raise BadValue("ignore" if ignore else "targets",
                       "svd.targets minus ignore leave no layer to compress", reads=("targets", "ignore"))
    return chosen


def uses_output_gram(info: LinearInfo) -> bool:
    """Flux single-block proj_out (in 15360, out 3072): the out×out Gram Σ yᵀy is 25× smaller."""
    return info.in_features > OUTPUT_GRAM_MIN_IN and info.out_features < info.in_features


def stats_key(info: LinearInfo) -> str:
    """The Gram a target reads. Embedding linears get their own: the adapters give e.g. every
    `time_text_embed.*` linear one input_key although linear_1 and linear_2 read different tensors."""
    if uses_output_gram(info):
        return f"{info.name}#out"
    return f"{info.name}#in" if info.role == "embedding" else info.input_key


def is_model_wide(info: LinearInfo) -> bool:
    """An input shared by all blocks (caption, temb) rather than one block's own tensor."""
    return info.group is None or not info.input_key.startswith(f"{info.group}.{info.block}.")


def shape_spec(info: LinearInfo, curve=()) -> LayerSpec:
    return LayerSpec(info.name, info.out_features, info.in_features, curve, bias=info.bias, role=info.role)


def explicit_rank(info: LinearInfo, ranks: dict[str, int]) -> int | None:
    """The rank of the first `ranks` pattern matching the layer (recipe order), or None."""
    for pattern, rank in ranks.items():
        if matches(pattern, info):
            return rank
    return None


def shadowed_ranks(targets: Sequence[LinearInfo], ranks: dict[str, int]) -> list[tuple[str, str]]:
    """(pattern, the earlier pattern) of `ranks` patterns that give no target its rank: every target
    they match takes the rank of an earlier pattern (the first match wins)."""
    out, patterns = [], list(ranks)
    for n, pattern in enumerate(patterns):
        hit = [i for i in targets if matches(pattern, i)]
        earlier = patterns[:n]
        if hit and all(any(matches(e, i) for e in earlier) for i in hit):
            out.append((pattern, next(e for e in earlier if matches(e, hit[0]))))
    return out


def untargeted(pattern: str, infos: Sequence[LinearInfo], targets: Sequence[LinearInfo], key: str) -> str | None:
    """Why svd.`key`'s `pattern`, which names some of the model's linears `infos`, names none of the
    pass's `targets` (None where it names some): it would silently do nothing."""
    if any(matches(pattern, i) for i in targets):
        return None
    named = [i.name for i in infos if matches(pattern, i)]
    return (f"svd.{key}: pattern {pattern!r} names {', '.join(named[:3])}{' …' if len(named) > 3 else ''}, "
            "which this pass does not factorize (not in svd.targets, or left out by svd.ignore); add "
            f"{'it' if len(named) == 1 else 'them'} to svd.targets or remove the pattern from svd.{key}")


def idle_ignore_notes(infos: Sequence[LinearInfo], targets: Sequence[str],
                      ignore: Sequence[str]) -> list[tuple[str, str, tuple]]:
    """(key, note, keys read) per svd.ignore pattern that names none of the layers svd.targets matches
    (`ignore: [modulation]` with `targets: [attention, mlp]`): it leaves nothing out, where one naming no
    layer of the model at all is an error (check_pattern)."""
    out, targeted = [], [i for i in infos if any(matches(p, i) for p in targets)]
    for n, pattern in enumerate(ignore):
        if any(matches(pattern, i) for i in targeted):
            continue
        named = [i.name for i in infos if matches(pattern, i)]
        out.append((f"ignore.{n}", f"svd.ignore: pattern {pattern!r} names {', '.join(named[:3])}"
                                   f"{' …' if len(named) > 3 else ''}, none of which svd.targets targets, so it "
                                   "leaves nothing out; remove it, or add its layers to svd.targets", ("targets",)))
    return out


def check_explicit_ranks(infos: Sequence[LinearInfo], targets: Sequence[LinearInfo],
                         ranks: dict[str, int]) -> None:
    """Every `ranks` pattern names some of the pass's `targets` (of the model's linears `infos`),
    with a rank each of them can take."""
    for pattern, rank in ranks.items():
        check_pattern(pattern, infos, "ranks", f"ranks.{pattern}")
        if said := untargeted(pattern, infos, targets, "ranks"):
            raise BadValue(f"ranks.{pattern}", said, reads=("targets", "ignore"))
        for info in targets:
            if not matches(pattern, info):
                continue
            top = min(info.in_features, info.out_features)
            if not isinstance(rank, int) or not 1 <= rank <= top:
                raise BadValue(f"ranks.{pattern}", f"svd.ranks: rank {rank!r} for {pattern!r} is outside "
                                                   f"1..{top} (min(in, out) of {info.name})",
                               reads=("targets", "ignore"))  # which layers it names: not ratio nor multiple


def fixed_ranks(targets: Sequence[LinearInfo], allocation: str, ratio: float,
                ratios: dict | None, ranks: dict[str, int], multiple: int) -> dict[str, int | None]:
    """Ranks known before calibration (uniform, per_role, explicit `ranks`); DENSE (None) where a
    rank would not save parameters. Layers decided later (energy/global) are left out."""
    out: dict[str, int | None] = {}
    if allocation == "uniform":
        out = {i.name: ratio_rank(shape_spec(i), ratio, multiple) for i in targets}
    elif allocation == "per_role":
        out = per_role([shape_spec(i) for i in targets], ratios or {}, multiple).ranks
    for info in targets:
        rank = explicit_rank(info, ranks)
        if rank is not None:
            out[info.name] = DENSE if rank >= shape_spec(info).breakeven else rank
    return out


class Resolved:
    """A config's targets and fixed ranks on a model, each computed once while the model's modules stay
    as they were (`check`, `notes`, `plan` and `apply_planned` ask in turn): another model, blocks
    removed, a layer replaced by its factors or its bias dropped start over. Holds no reference that
    keeps the model alive; callers do not modify what it returns."""

    def __init__(self, config):
        self.config, self._model, self._structure, self._values = config, None, None, {}

    def _on(self, model: nn.Module) -> dict:
        """The values known for the model as it is now (emptied when it is another, or changed)."""
        structure = tuple((n, id(m), type(m), getattr(m, "bias", None) is None) for n, m in model.named_modules())
        if self._model is None or self._model() is not model or structure != self._structure:
            self._model, self._structure, self._values = weakref.ref(model), structure, {}
        return self._values

    def targets(self, model: nn.Module, adapter: Adapter) -> tuple[list[LinearInfo], list[LinearInfo]]:
        """(the model's linears, the targets among them), as `resolve_targets` (and its errors)."""
        known = self._on(model)
        if "targets" not in known:
            infos = adapter.linears(model)
            known["targets"] = infos, resolve_targets(infos, self.config.targets, self.config.ignore)
        return known["targets"]

    def ranks(self, model: nn.Module, adapter: Adapter) -> dict[str, int | None]:
        """`fixed_ranks` of the targets."""
        targets = self.targets(model, adapter)[1]
        if "ranks" not in self._values:
            c = self.config
            self._values["ranks"] = fixed_ranks(targets, c.allocation, c.ratio, c.ratios, c.ranks, c.multiple)
        return self._values["ranks"]
