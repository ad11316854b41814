"""A loaded output's own diffusers config (`register_compression`): what diffusers' save_pretrained (a model's, a
pipeline's) writes of it is read from the model as it is when saved, so the folder loads back with
`load_transformer` and is refused by plain `from_pretrained`; and a model whose every weight is on the meta device
(loaded with device='meta') is refused in one line before save_pretrained writes anything but its config.json."""

from __future__ import annotations

import copy
import weakref

from torch import nn

from compress.io import FORMAT
from compress.io_export import check_materialized, ranks_of
from compress.output_names import REFUSAL, REFUSAL_KEY


def register_compression(model: nn.Module) -> None:
    """The compression section (its ranks, what the run recorded) in the model's diffusers config: its
    own save_pretrained (and a pipeline's) then writes an output that loads back, with the ranks its
    layers have when it is saved (`LiveSection`), not those they had at load, and plain diffusers'
    refusal of it while it has a factorized layer (`LiveRefusal`; none in a model with no factorized layer at
    registration, blocks removed alone: its config then holds no refusal, as its config.json and what its
    save_pretrained writes). Its save_pretrained where every weight is on the meta device is a UserError
    naming the first one (`unsaved_weights`)."""
    section = {"format": FORMAT, "ranks": ranks_of(model), **model.compression_meta}
    refusal = {REFUSAL_KEY: LiveRefusal(model)} if ranks_of(model) else {}
    model.register_to_config(compression=LiveSection(section, model), **refusal)
    if unsaved_weights not in model._state_dict_pre_hooks.values():  # once (merge_lora registers again)
        model.register_state_dict_pre_hook(unsaved_weights)


def unsaved_weights(model: nn.Module, prefix: str, keep_vars: bool) -> None:
    """state_dict's pre-hook: diffusers' save_pretrained of a model loaded with device='meta' wrote its
    config.json and ended in safetensors' 'Cannot copy out of meta tensor' traceback (torch.save wrote a
    file of no data): a UserError naming the first weight on the meta device instead, where every one is
    there (a model with some on meta is left alone: peft puts a LoRA's there while load_lora_weights reads it).
    Only inside save_pretrained: accelerate's load_checkpoint_in_model / check_device_map and a state_dict()
    under cpu_offload ask a weightless model for its state_dict by design (R2 stop 51). (Not save_config's
    to_dict: diffusers opens config.json for writing before it, so a refusal there would leave it empty.)"""
    if not inside_save_pretrained():
        return
    check_materialized(model, "save_pretrained")  # any: a weight on meta there is safetensors' traceback


def inside_save_pretrained(depth: int = 8) -> bool:
    """Whether diffusers' ModelMixin.save_pretrained is among the `depth` callers above state_dict's hook."""
    return called_from("save_pretrained", "diffusers.", depth)


def called_from(function: str, package: str, depth: int) -> bool:
    """Whether `function` of a module of `package` ('diffusers.') is among the `depth` callers above the
    function that asks."""
    import sys

    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code.co_name == function and frame.f_globals.get("__name__", "").startswith(package):
            return True
        frame = frame.f_back
    return False


class LiveSection(dict):
    """config.compression of a loaded output: the section as registered, whose `to_dict()` (diffusers'
    save_config calls it on each config value that has one) gives the ranks of the model's layers as
    they are then: a layer swapped for another rank, or made dense, after loading is saved as it is.
    The model is held by a weak reference (no reference cycle); a deepcopy refers to the model's copy,
    a pickle is a plain dict (the ranks when pickled)."""

    def __init__(self, section: dict, model: nn.Module):
        super().__init__(section)
        self.model = weakref.ref(model)

    def to_dict(self) -> dict:
        model = self.model()
        return {**self, "ranks": ranks_of(model)} if model is not None else dict(self)

    def __deepcopy__(self, memo):
        model = self.model()
        twin = memo.get(id(model)) if model is not None else None  # the model's copy, where it is being copied
        section = copy.deepcopy(self.to_dict(), memo)
        return LiveSection(section, twin) if twin is not None else section

    def __reduce__(self):
        return dict, (self.to_dict(),)


class LiveRefusal(dict):
    """config.quantization_config of a loaded output: io_export.REFUSAL, which plain diffusers' from_pretrained
    refuses, and `to_dict()` (what save_config writes) REFUSAL while the model has a factorized layer, else None
    (null: blocks removed alone load with plain from_pretrained). Held and copied as LiveSection. peft's
    model card (PeftModel.save_pretrained of a LoRA trained on the output) reads None: it wrote 'The following
    `bitsandbytes` quantization config was used during training: - quant_method: dit-compress (...)'."""

    def __init__(self, model: nn.Module):
        super().__init__(REFUSAL)
        self.model = weakref.ref(model)

    def to_dict(self) -> dict | None:
        if called_from("create_or_update_model_card", "peft.", 1):  # no quantization: nothing for its card to say
            return None
        model = self.model()
        return dict(self) if model is None or ranks_of(model) else None

    def __deepcopy__(self, memo):
        model = self.model()
        twin = memo.get(id(model)) if model is not None else None
        return LiveRefusal(twin) if twin is not None else self.to_dict()

    def __reduce__(self):
        value = self.to_dict()
        return (dict, (value,)) if value is not None else (type(None), ())
