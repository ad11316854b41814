"""merge_lora is all or nothing: a layer that cannot be merged (its merged weights overflow) leaves
the model as it was, not with the layers before it merged."""

import copy

import pytest
import torch

from compress.errors import NumericError
from compress.lora import merge_lora
from tests.test_lora import _lora, _student

pytestmark = pytest.mark.usefixtures("one_thread")


def _last_module(student, folder) -> str:
    """The teacher name of the LoRA module merged last (the order merge_lora takes them in)."""
    from compress.arch import get_adapter
    from compress.lora_read import read_lora

    adapter = get_adapter(student)
    block_map = student.compression_meta.get("block_map") or {}
    layers, _ = read_lora(student, adapter, folder, block_map)
    return [n for n in layers if adapter.renumbered(n, block_map) is not None][-1]


def test_an_overflow_in_a_later_layer_leaves_the_model_unmerged(tmp_path):
    """It raised the NumericError after the layers before it were merged into the caller's model."""
    from safetensors.torch import load_file, save_file

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    last = _last_module(student, tmp_path / "lora")
    state = load_file(str(file))
    key = f"transformer.{last}.lora_B.weight"
    state[key] = state[key] * 1e30  # times the scale below: beyond float32; the others stay finite
    (tmp_path / "big").mkdir()
    save_file(state, str(tmp_path / "big" / file.name))
    before = copy.deepcopy(student.state_dict())
    modules = {name: type(m) for name, m in student.named_modules()}
    with pytest.raises(NumericError, match=r"merging the LoRA into '[\w.]+' gives its \w+ \d+ NaN/Inf"):
        merge_lora(student, tmp_path / "big", scale=1e10)
    after = student.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(v, after[k]) for k, v in before.items())
    assert {name: type(m) for name, m in student.named_modules()} == modules
    assert "loras" not in student.compression_meta
    assert merge_lora(student, tmp_path / "lora", scale=1e10)["merged"]  # the others merge at that scale
