"""What every model-family adapter knows: block lists, linear roles, block chaining, removal, task loss.

Adapters never fork diffusers model code: they read module names of the real classes and call the
real blocks. Roles are coarse kinds users target in recipes (`attention`, `cross_attention`, `mlp`,
`modulation`, `embedding`, `output`) plus a `part` (q, k, v, out, in, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from compress.errors import UserError, did_you_mean


@dataclass(frozen=True)
class BlockGroup:
    name: str  # "blocks" | "double" | "single"
    attr: str  # attribute holding the nn.ModuleList on the model
    config_key: str  # config field counting the blocks


@dataclass(frozen=True)
class LinearInfo:
    name: str  # full module name, e.g. "transformer_blocks.3.attn1.to_q"
    role: str  # one of recipe_names.ROLES
    part: str  # "q", "k", "v", "out", "in", "mod", ...
    group: str | None  # block group name, None outside blocks
    block: int | None  # index within the group
    in_features: int
    out_features: int
    input_key: str  # linears with the same input_key (within a block) read the same tensor
    bias: bool = True  # whether the layer adds a bias (counted in its kept parameters)


def is_linear(module: nn.Module) -> bool:
    from compress.lowrank import LowRankLinear

    return isinstance(module, (nn.Linear, LowRankLinear))


class Adapter:
    family: str = ""
    class_name: str = ""
    groups: tuple[BlockGroup, ...] = ()
    # (regex on the name inside a block or at top level, role, part, input_key)
    block_rules: tuple[tuple[str, str, str, str], ...] = ()
    top_rules: tuple[tuple[str, str, str, str], ...] = ()
    # parts of the linears that read one row per sample (the timestep / conditioning vector), not
    # one per token
    per_sample_parts: tuple[str, ...] = ("mod",)

    # ---- blocks -------------------------------------------------------------------------------
    def group(self, name: str) -> BlockGroup:
        for g in self.groups:
            if g.name == name:
                return g
        names = [g.name for g in self.groups]
        raise UserError(f"{self.family} has no block group '{name}'{did_you_mean(name, names)} (groups: "
                        f"{', '.join(names)})")

    def blocks(self, model: nn.Module, group: str) -> nn.ModuleList:
        return getattr(model, self.group(group).attr)

    def block_counts(self, model: nn.Module) -> dict[str, int]:
        return {g.name: len(getattr(model, g.attr)) for g in self.groups}

    def iter_blocks(self, model: nn.Module):
        """(group, index, block) in execution order."""
        for g in self.groups:
            for i, blk in enumerate(getattr(model, g.attr)):
                yield g.name, i, blk

    def block_prefix(self, group: str, index: int) -> str:
        return f"{self.group(group).attr}.{index}."

    # ---- roles --------------------------------------------------------------------------------
    def classify(self, name: str) -> tuple[str, str, str | None, int | None, str]:
        """Module name -> (role, part, group, block, input_key). Raises KeyError if unknown."""
        for g in self.groups:
            m = re.match(rf"{re.escape(g.attr)}\.(\d+)\.(.+)$", name)
            if m:
                idx, rest = int(m.group(1)), m.group(2)
                for pat, role, part, key in self.block_rules:
                    hit = re.fullmatch(pat, rest)
                    if hit:  # keys starting with "/" are model-wide inputs
                        full = key[1:] if key.startswith("/") else f"{g.name}.{idx}.{key}"
                        return role, hit.expand(part), g.name, idx, full  # part r"\1" -> "q"
                raise KeyError(name)
        for pat, role, part, key in self.top_rules:
            if re.fullmatch(pat, name):  # key None: the module reads an input of its own
                return role, part, None, None, key or f"{name}.in"
        raise KeyError(name)

    def linears(self, model: nn.Module) -> list[LinearInfo]:
        """Every Linear (or LowRankLinear) of the model with its role, in module order."""
        out = []
        factored = {n + "." for n, _ in _lowrank_children(model)}
        for name, mod in model.named_modules():
            if not is_linear(mod) or any(name.startswith(p) for p in factored):
                continue
            role, part, group, block, key = self.classify(name)
            out.append(LinearInfo(name, role, part, group, block, mod.in_features,
                                  mod.out_features, key, bias=mod.bias is not None))
        return out

    def per_sample(self, info: LinearInfo) -> bool:
        """Whether the linear reads one row per sample (modulation, timestep embedders)."""
        return info.part in self.per_sample_parts

    # ---- running one block on captured inputs -------------------------------------------------
    def next_inputs(self, group: str, args: tuple, kwargs: dict, output) -> tuple[tuple, dict]:
        """Inputs of the following block given this block's inputs and output."""
        raise NotImplementedError

    def run_block(self, block: nn.Module, args: tuple, kwargs: dict):
        return block(*args, **kwargs)

    def hidden_of(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """The residual-stream tensors among a block's inputs (for importance proxies)."""
        raise NotImplementedError

    def caption_rows(self, kwargs: dict) -> torch.Tensor | None:
        """(B, L) bool: the caption tokens attention reads, from the model's or a block's kwargs;
        None where every token is read (Flux attends to its padding too)."""
        return None

    def hidden_of_output(self, output) -> list[torch.Tensor]:
        raise NotImplementedError

    def skipped_output(self, hidden: list[torch.Tensor]):
        """What a skipped block outputs: its input, from `hidden_of` back to the block's output form
        (the inverse of `hidden_of_output`)."""
        raise NotImplementedError

    # ---- timesteps and predictions ----------------------------------------------------------------
    def noise_level(self, timestep) -> torch.Tensor:
        """(B,) float64 in [0, 1], 1 = pure noise, from the model's `timestep` input (here taken to
        be that already, as Flux's σ; a family with another scale overrides)."""
        return torch.as_tensor(timestep).detach().double().cpu().flatten()

    def timestep_grid(self, n: int, batch: dict, sampler: dict | None = None) -> torch.Tensor:
        """n timestep inputs spanning the family's range as its sampler spreads them over n steps,
        in the dtype and on the device of `batch`'s timestep; `sampler`: the teacher pipeline's
        scheduler config (None: the family's default sampler)."""
        raise NotImplementedError

    def sampled_prediction(self, model: nn.Module, pred: torch.Tensor) -> torch.Tensor:
        """The part of the model's output a sampler uses (all of it unless the family says otherwise)."""
        return pred

    # ---- removal ------------------------------------------------------------------------------
    def remove_blocks(self, model: nn.Module, drop: dict[str, list[int]]) -> dict[str, list[int]]:
        """Remove blocks in place; renumber the rest; keep the config true.

        Returns the block map {group: [teacher index of student block 0, 1, ...]}.
        """
        block_map = {}
        for g in self.groups:
            blocks = getattr(model, g.attr)
            n = len(blocks)
            gone = sorted(set(drop.get(g.name, [])))
            bad = [i for i in gone if not 0 <= i < n]
            if bad:
                raise UserError(f"block index {bad[0]} out of range for group '{g.name}' "
                                f"({n} blocks: 0..{n - 1})")
            if gone and len(gone) >= n:
                raise UserError(f"removing {len(gone)} of {n} blocks would leave group '{g.name}' "
                                "empty; keep at least one")
            keep = [i for i in range(n) if i not in gone]
            setattr(model, g.attr, nn.ModuleList([blocks[i] for i in keep]))
            model.register_to_config(**{g.config_key: len(keep)})
            block_map[g.name] = keep
        return block_map

    def renumbered(self, name: str, keep: dict[str, list[int]], sep: str = ".",
                   by_name: bool = False) -> str | None:
        """`name` ("transformer_blocks.3.attn.to_q", or with by_name a label "double 3 mlp") after
        `remove_blocks` kept blocks keep[g] (old indices, in order): its block's new index, None if
        its block was removed; unchanged outside the blocks and in groups `keep` does not name."""
        for g in self.groups:
            head = f"{g.name if by_name else g.attr}{sep}"
            index, _, rest = name[len(head):].partition(sep)
            if name.startswith(head) and index.isdigit() and g.name in keep:
                kept = keep[g.name]
                return f"{head}{kept.index(int(index))}{sep}{rest}" if int(index) in kept else None
        return name

    # ---- objective ----------------------------------------------------------------------------
    def task_loss(self, model: nn.Module, latents: torch.Tensor, cond: dict,
                  generator: torch.Generator | None = None, sampler: dict | None = None) -> tuple[torch.Tensor, dict]:
        """The model's own training loss on clean latents; returns (loss, forward kwargs used).
        `sampler`: the teacher pipeline's scheduler config where its noise levels depend on it
        (Flux's σ shift), None for the family's default."""
        raise NotImplementedError

    def predict(self, model: nn.Module, kwargs: dict) -> torch.Tensor:
        """The prediction a sampler uses (`sampled_prediction`): what the teacher-relative errors,
        the output Fisher, compensation and output distillation measure."""
        return self.sampled_prediction(model, model(**kwargs, return_dict=False)[0])


def draw_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    """Where random draws with `generator` are made (then moved to `like`'s device): a CUDA draw
    refuses a CPU generator, and distill's generator is a CPU one, whatever the device."""
    return generator.device if generator is not None else like.device


def _lowrank_children(model: nn.Module):
    from compress.lowrank import LowRankLinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
