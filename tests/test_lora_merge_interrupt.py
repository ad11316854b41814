"""merge_lora is all or nothing under an interrupt too: Ctrl-C (or any error) while the student takes
the merged layers puts back those it took, so the model, its modules and its record are as before."""

import copy

import pytest
import torch

import compress.lora
from compress.lora import merge_lora
from tests.test_lora import _lora, _student

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(model) -> tuple:
    """What a merge changes: weights, module types (a fused GELU, act_mlp), the config's record."""
    meta = copy.deepcopy(getattr(model, "compression_meta", None))
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {name: type(m) for name, m in model.named_modules()}, dict(model.config).get("compression"), meta)


def _same(a: tuple, b: tuple) -> bool:
    return (sorted(a[0]) == sorted(b[0]) and all(torch.equal(v, b[0][k]) for k, v in a[0].items())
            and a[1:] == b[1:])


def _interrupted_at(monkeypatch, k: int, after: bool) -> None:
    """take_layer raises KeyboardInterrupt at its k-th call, before taking that layer or (`after`) once taken."""
    real, calls = compress.lora.take_layer, [0]

    def take(*args):
        calls[0] += 1
        if calls[0] == k and not after:
            raise KeyboardInterrupt
        real(*args)
        if calls[0] == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(compress.lora, "take_layer", take)


@pytest.mark.parametrize("into", ["student", "teacher"])
def test_an_interrupt_at_any_layer_taken_leaves_the_model_as_it_was(tmp_path, monkeypatch, into):
    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora")
    model = student if into == "student" else teacher
    before, whole = _state(model), copy.deepcopy(model)
    layers = merge_lora(whole, tmp_path / "lora")["merged"]
    assert not _same(_state(whole), before)
    for k in range(1, layers + 1):
        for after in (False, True):
            with monkeypatch.context() as m:
                _interrupted_at(m, k, after)
                with pytest.raises(KeyboardInterrupt):
                    merge_lora(model, tmp_path / "lora")
            assert _same(_state(model), before), (k, after)
    if into == "student":  # in recording the merge, once all are taken (a teacher records none)
        with monkeypatch.context() as m:
            m.setattr("compress.io_output.register_compression", _raises)
            with pytest.raises(KeyboardInterrupt):
                merge_lora(model, tmp_path / "lora")
        assert _same(_state(model), before)
    merge_lora(model, tmp_path / "lora")  # and it merges whole afterwards
    assert _same(_state(model), _state(whole))


def _raises(*args):
    raise KeyboardInterrupt
