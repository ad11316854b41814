"""One LoRA layer merged into one linear module of a model (compress.lora.merge_lora takes them in turn):
a LowRankLinear grown by the LoRA's rank, or stored dense past break-even, a dense linear's weight added
to; a DoRA's row scale applied; the merged tensors checked finite before the model takes them."""

from __future__ import annotations

import torch
from torch import nn

from compress.errors import NumericError, UserError
from compress.lora_read import LoraLayer
from compress.lowrank import LowRankLinear


def check_merged(name: str, tensors: dict) -> None:
    """The merged layer `name`'s tensors ({what: tensor}) are finite, as stored; a NumericError naming
    the layer otherwise (a large scale overflows the weights' dtype), before the student takes them."""
    from compress.io_tensors import nonfinite

    for what, t in tensors.items():
        bad = 0 if t is None else nonfinite(t)
        if bad:
            raise NumericError(f"merging the LoRA into '{name}' gives its {what} {bad} NaN/Inf values "
                               f"({t.dtype}); use a smaller scale")


def dora_rows(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA's row scale m / ‖W + up·down‖_row (out,): W (out, in) the weight the DoRA was trained on,
    up (out, r') already times s, down (r', in), m (out,)."""
    return magnitude / torch.linalg.norm(weight.to(up.dtype) + up @ down, dim=1)


def grown_factors(up: torch.Tensor, down: torch.Tensor, lora_up: torch.Tensor, lora_down: torch.Tensor,
                  rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(up' (out, r + r'), down' (r + r', in)) with up'·down' = diag(rows) (up·down + lora_up·lora_down)."""
    new_up = torch.cat([up, lora_up], 1)
    return (new_up if rows is None else rows[:, None] * new_up), torch.cat([down, lora_down], 0)


def past_break_even(rank: int, out_f: int, in_f: int) -> bool:
    """Whether factors of `rank` hold at least as many weights as the dense (out, in) matrix:
    rank·(out + in) ≥ out·in, biases aside (always so from min(out, in) on, a rank no output may
    hold); linalg_params.saves_params's break-even, which the svd pass keeps dense at too."""
    from compress.linalg_params import saves_params

    return not saves_params(out_f, in_f, rank)


def dense_merged(weight: torch.Tensor, lora_up: torch.Tensor, lora_down: torch.Tensor,
                 rows: torch.Tensor | None) -> torch.Tensor:
    """diag(rows) (W + lora_up·lora_down) (out, in); rows None: no scaling."""
    merged = weight + lora_up @ lora_down
    return merged if rows is None else rows[:, None] * merged


def merged_layer(student: nn.Module, name: str, layer: LoraLayer, scale: float, weight: torch.Tensor | None):
    """(the student's module `name`, what merging `layer` times `scale` makes of it, checked finite:
    {"module": a grown LowRankLinear, "rank": the rank it adds}, {"linear": an nn.Linear holding a
    LowRankLinear grown past break-even dense (past_break_even, _dense_layer)} or, for a dense
    linear, {"weight": (out, in), "bias": (out,) or None}); `weight`: the teacher's, for a DoRA's
    norms. The student is not changed (`take_layer`)."""
    try:
        module = student.get_submodule(name)
    except AttributeError:
        raise UserError(f"the LoRA adapts '{name}', which the student does not have") from None
    if not isinstance(module, (LowRankLinear, nn.Linear)):
        raise UserError(f"the LoRA adapts '{name}', a {type(module).__name__}, not a linear layer")
    s = layer.scaling * scale
    if layer.bias is not None and module.bias is None:
        raise UserError(f"the LoRA has a bias on lora_B for '{name}', a layer without a bias (neither peft nor "
                        "a saved student can merge it)")
    device = module.bias.device if module.bias is not None else next(module.parameters()).device
    work = torch.promote_types(next(module.parameters()).dtype, torch.float32)  # a float64 model's in float64
    up, down = (layer.up.to(work) * s).to(device), layer.down.to(device, work)  # (out, r'), (r', in)
    rows = None if layer.magnitude is None else dora_rows(weight.to(device), down, up,
                                                          layer.magnitude.to(device, work))
    bias = None if module.bias is None else module.bias.detach().to(work) + \
        (0 if layer.bias is None else s * layer.bias.to(device, work))
    if isinstance(module, LowRankLinear) and past_break_even(module.rank + down.shape[0], module.out_features,
                                                                 module.in_features):
        return module, {"linear": _dense_layer(name, module, up, down, rows, bias)}
    if isinstance(module, LowRankLinear):
        new_up, new_down = grown_factors(module.up.weight.detach().to(work), module.down.weight.detach().to(work),
                                         up, down, rows)
        new = LowRankLinear.from_factors(new_up, new_down, bias, dtype=module.up.weight.dtype)
        check_merged(name, {"up": new.up.weight, "down": new.down.weight, "bias": new.bias})
        new.activation, new.use_kernel = module.activation, module.use_kernel
        return module, {"module": new, "rank": down.shape[0]}
    merged = dense_merged(module.weight.to(work), up, down, rows).to(module.weight.dtype)
    bias = None if bias is None else bias.to(module.bias.dtype)
    check_merged(name, {"weight": merged, "bias": bias})
    return module, {"weight": merged, "bias": bias}


def _dense_layer(name: str, module: LowRankLinear, up: torch.Tensor, down: torch.Tensor,
                 rows: torch.Tensor | None, bias: torch.Tensor | None) -> nn.Linear:
    """The nn.Linear holding diag(rows) (module's up·down + up·down) (out, in) and `bias` in the
    module's dtype, checked finite: a grown LowRankLinear past break-even, stored dense."""
    dtype = module.up.weight.dtype
    weight = dense_merged(module.up.weight.detach().to(up.dtype) @ module.down.weight.detach().to(up.dtype), up, down,
                          rows)
    with torch.device("meta"):  # its parameters are set at once: never initialized
        layer = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
    layer.weight = nn.Parameter(weight.to(dtype))
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(dtype))
    check_merged(name, {"weight": layer.weight, "bias": layer.bias})
    return layer


def take_layer(student: nn.Module, name: str, module: nn.Module, merged: dict) -> None:
    """The student's `module` (at `name`) replaced by, or given, what `merged_layer` made of it."""
    if "module" in merged:
        student.set_submodule(name, merged["module"])
    elif "linear" in merged:
        _set_dense(student, name, module, merged["linear"])
    else:
        with torch.no_grad():
            module.weight.copy_(merged["weight"])
            if merged["bias"] is not None:
                module.bias.copy_(merged["bias"])


def _set_dense(student: nn.Module, name: str, module: LowRankLinear, linear: nn.Linear) -> None:
    """`linear` in place of the LowRankLinear `module` at `name`; a tanh-GELU it applied itself (fused,
    compress.fuse) is applied by diffusers' module again (a GELU with `linear` as its proj, or the Flux
    single block's act_mlp), as a load of the saved output builds it (only low-rank layers are fused)."""
    student.set_submodule(name, linear)
    if module.activation is None:
        return
    from diffusers.models.activations import GELU

    from compress.fuse import FusedGELU

    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name)
    if isinstance(parent, FusedGELU):
        with torch.device("meta"):  # its own proj, replaced at once: never allocated
            gelu = GELU(linear.in_features, linear.out_features, approximate="tanh", bias=linear.bias is not None)
        gelu.proj = linear
        student.set_submodule(parent_name, gelu)
    elif attr == "proj_mlp":
        parent.act_mlp = nn.GELU(approximate="tanh")
    else:
        raise RuntimeError(f"'{name}' applies a fused GELU that no module of the model would apply once dense")


def before_taking(student: nn.Module, name: str, module: nn.Module, merged: dict) -> tuple:
    """What `take_layer` changes at `name`, for `put_back`: the parent (a fused GELU's is replaced), its
    act_mlp (a Flux single block's is), the module, and a dense layer's weight and bias (added to in place)."""
    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name)
    values = None
    if "module" not in merged and "linear" not in merged:
        values = (module.weight.detach().clone(), None if module.bias is None else module.bias.detach().clone())
    return parent_name, attr, parent, getattr(parent, "act_mlp", None), module, values


@torch.no_grad()
def put_back(student: nn.Module, taken: list[tuple]) -> None:
    """The layers `take_layer` changed, last first, as `before_taking` kept them: the student as before."""
    for parent_name, attr, parent, act_mlp, module, values in reversed(taken):
        if parent_name and student.get_submodule(parent_name) is not parent:
            student.set_submodule(parent_name, parent)
        setattr(parent, attr, module)
        if act_mlp is not None:
            parent.act_mlp = act_mlp
        if values is not None:
            module.weight.copy_(values[0])
            if values[1] is not None:
                module.bias.copy_(values[1])
