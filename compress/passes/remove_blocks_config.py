"""`remove_blocks`' recipe keys (`RemoveBlocksConfig`): their values checked at recipe load (BadValue
names the key), the hints a value of the wrong shape gets, and the note on a biased estimator.
Imports no torch (the note imports remove_blocks_learned as it is made): recipe.load_recipe builds a
RemoveBlocksConfig before torch's start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from compress.errors import BadValue, not_one_of
from compress.passes.importance_config import check_buckets

CRITERIA = ("scan", "proxy", "learned")
LEARNED_KEYS = ("window", "learn_steps", "learn_lr", "logit_lr", "estimator", "learn_rank")
ESTIMATORS = ("gumbel", "score")
# what a recipe writes, said after a value of the wrong shape (recipe_convert.build_dataclass)
BLOCKS_HINT = ("blocks maps a block group to teacher indices: blocks: {blocks: [4]} (PixArt: one group, "
               "blocks) or blocks: {double: [3], single: [10]} (Flux: groups double and single)")
COUNT_HINT = ("{0} is over all blocks or per block group: {0}: {1}, {0}: {{blocks: {1}}} (PixArt) or "
              "{0}: {{double: {1}, single: {1}}} (Flux)")


@dataclass
class RemoveBlocksConfig:
    """Recipe keys of `remove_blocks`. Give exactly one of `blocks`, `count`, `fraction`."""

    # teacher indices per group: {double: [3, 5], single: [10]}
    blocks: dict[str, list[int]] | None = field(default=None, metadata={"hint": BLOCKS_HINT})
    # per group, or an int over all blocks
    count: dict[str, int] | int | None = field(default=None, metadata={"hint": COUNT_HINT.format("count", 1)})
    # of each group (rounded down), or of all blocks
    fraction: dict[str, float] | float | None = field(default=None,
                                                      metadata={"hint": COUNT_HINT.format("fraction", 0.25)})
    criterion: str = "scan"  # scan | proxy: how importance-chosen blocks are ranked; learned: see below
    iterative: bool = False  # re-score after each removal (greedy) instead of one-shot
    buckets: int = 3  # changes nothing (the choice reads scores over all inputs); a value other than 3 is warned of
    # criterion learned (remove_blocks_learned.py), null = its default:
    window: int | None = None  # at most this many consecutive blocks per window (null: the group)
    learn_steps: int | None = None  # optimizer steps (200)
    learn_lr: float | None = None  # Adam lr of the weight update (5e-4; 2e-3 with learn_rank); 0: logits only
    learn_rank: int | None = None  # the weight update as rank-r factors on the block linears (no copy)
    logit_lr: float | None = None  # Adam lr of the keep-pattern logits (0.05)
    estimator: str | None = None  # the logits' gradient: gumbel (straight-through, TinyFusion's) | score
    # the string keys' choices: refused at recipe load naming them (recipe_convert._choosing), and here
    CHOICES = {"criterion": CRITERIA, "estimator": ESTIMATORS}

    def validate(self) -> None:
        """The keys' values alone, at recipe load (BadValue names the key); `check` calls it too."""
        nullable = {f.name for f in fields(self) if f.default is None}  # null: their default
        for key, allowed in self.CHOICES.items():
            value = getattr(self, key)
            if value not in allowed and not (value is None and key in nullable):
                raise BadValue(key, not_one_of(f"remove_blocks.{key}", value, allowed), reads=())
        check_buckets(self.buckets, "remove_blocks")
        self._validate_learned()
        self._validate_explicit()

    def _validate_learned(self) -> None:
        given = [k for k in LEARNED_KEYS if getattr(self, k) is not None]
        if given and self.criterion != "learned":
            raise BadValue(given[0], f"remove_blocks.{given[0]} applies to criterion: learned "
                                     f"(this pass ranks by {self.criterion})", reads=("criterion",))
        if self.criterion == "learned" and self.blocks is not None:
            raise BadValue("criterion", "remove_blocks.criterion: learned chooses blocks for a count or fraction; "
                                        "blocks lists the blocks to remove", reads=("blocks",))
        if self.criterion == "learned" and self.iterative:
            raise BadValue("iterative", "remove_blocks.iterative applies to scan and proxy; criterion learned "
                                        "chooses all blocks at once", reads=("criterion",))
        for key, ok, allowed in (("window", lambda v: _int(v) and v >= 1, "an integer ≥ 1"),
                                 ("learn_steps", lambda v: _int(v) and v >= 1, "an integer ≥ 1"),
                                 ("learn_lr", lambda v: _num(v) and v >= 0, "a number ≥ 0"),
                                 ("learn_rank", lambda v: _int(v) and v >= 1, "an integer ≥ 1"),
                                 ("logit_lr", lambda v: _num(v) and v > 0, "a number > 0")):
            v = getattr(self, key)
            if v is not None and not ok(v):
                raise BadValue(key, f"remove_blocks.{key} must be {allowed}, got {v!r}", reads=())
        if self.learn_rank is not None and self.learn_lr == 0:
            raise BadValue("learn_rank", "remove_blocks.learn_rank shapes the weight update, and learn_lr: 0 "
                                         "turns it off; drop one of them", reads=("learn_lr",))

    def _validate_explicit(self) -> None:
        """Listed blocks are removed as listed: a criterion, iterative or buckets other than the
        default would be ignored (the defaults pass, as a resolved recipe.yaml writes them)."""
        if self.blocks is None or self.count is not None or self.fraction is not None:
            return  # not only blocks: `one_of` says so
        for f in fields(self):
            if f.name in ("criterion", "iterative", "buckets") and getattr(self, f.name) != f.default:
                raise BadValue(f.name, f"remove_blocks.{f.name} applies to a count or fraction chosen by "
                                       "importance; blocks lists the blocks to remove",
                               reads=("blocks", "count", "fraction"))


def check_named(key: str, value, groups: list[str]) -> None:
    """A budget `key` (blocks, count, fraction) given as a mapping that names no block group
    (`count: {}`, or one whose only group a `--set ...=null` took out) removes nothing, surely not
    what was meant: refused at its key, naming the model's `groups`. A group given 0 (or no
    indices) removes none as written: warned, not refused (remove_blocks_budget.removes_nothing)."""
    if value != {}:
        return
    example = f"{key}: {{{groups[-1]}: {_EXAMPLE[key]}}}"
    raise BadValue(key, f"remove_blocks.{key} names no block group, so this pass would remove nothing; "
                        f"{_name_groups(groups)}, as {example}, or leave the pass out", reads=())


def _name_groups(groups: list[str]) -> str:
    """'name the model's group (blocks)'; 'name one or more of the model's groups (double, single)'."""
    if len(groups) == 1:
        return f"name the model's group ({groups[0]})"
    return f"name one or more of the model's groups ({', '.join(groups)})"


_EXAMPLE = {"blocks": "[0]", "count": 1, "fraction": 0.25}  # a group's value, for check_named's example


def _biased(config: RemoveBlocksConfig) -> list[tuple[str, str, tuple]]:
    """gumbel without a weight update: its straight-through gradient, linearized at hard masks,
    drove the toy PixArt's pair logits to the costliest pair (README, "Which blocks to remove")."""
    from compress.passes.remove_blocks_learned import value

    if config.estimator == "gumbel" and value(config, "learn_lr") == 0:
        return [("estimator", "remove_blocks.estimator: gumbel with learn_lr: 0 learns the logits alone "
                              "through a biased gradient, which can settle on the costliest removal; use "
                              "estimator: score (the default without a weight update) or learn_lr > 0",
                 ("learn_lr",))]  # the keys it read besides estimator (Pass.notes)
    return []


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
