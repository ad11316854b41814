"""The Python API of an output as a user shipping it calls it (T2, stop 50): save_pretrained after
changing layers, diffusers' subfolder=."""

import copy
import gc
import pickle
import weakref

import pytest
import torch

from compress import LowRankLinear, load_transformer, save_compressed
from tests.conftest import factorize, forward, model_inputs, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")

LOWRANK = "transformer_blocks.0.attn1.to_q"  # rank 4 at save
DENSE = "transformer_blocks.0.attn1.to_k"


@pytest.fixture
def out(tmp_path):
    return save_compressed(factorize(tiny_pixart(), [LOWRANK, DENSE], rank=4), tmp_path / "out")


def _changed(model):
    """`model` with LOWRANK at rank 2 (its factors cut) and DENSE made an nn.Linear of its product."""
    old = model.get_submodule(LOWRANK)
    model.set_submodule(LOWRANK, LowRankLinear.from_factors(old.up.weight[:, :2], old.down.weight[:2], old.up.bias))
    low = model.get_submodule(DENSE)
    dense = torch.nn.Linear(low.in_features, low.out_features)
    with torch.no_grad():
        dense.weight.copy_(low.weight)
        dense.bias.copy_(low.bias)
    model.set_submodule(DENSE, dense)
    return model


def test_save_pretrained_after_changing_layers_records_the_ranks_they_have_then(out, tmp_path):
    """A loaded output's save_pretrained wrote the ranks config.json had at load (register_compression),
    so after a layer was given another rank or made dense load_transformer of the folder said it
    'does not match its config.json'. The section now gives the ranks at save time."""
    model = _changed(load_transformer(out))
    model.save_pretrained(tmp_path / "saved")
    back = load_transformer(tmp_path / "saved")
    assert back.get_submodule(LOWRANK).rank == 2 and type(back.get_submodule(DENSE)) is torch.nn.Linear
    inputs = model_inputs(model)
    assert torch.equal(forward(back, inputs), forward(model, inputs))
    assert back.config["compression"]["ranks"] == {LOWRANK: 2}


def test_a_copy_of_a_loaded_output_saves_its_own_ranks_and_holds_the_model_by_no_cycle(out, tmp_path):
    """A deepcopy's section reads the copy's layers; a pickled model's is the dict of its ranks then; the
    section keeps no deleted model alive (a weak reference, no cycle to wait on the collector for)."""
    model = load_transformer(out)
    twin = _changed(copy.deepcopy(model))
    twin.save_pretrained(tmp_path / "twin")
    model.save_pretrained(tmp_path / "model")
    assert load_transformer(tmp_path / "twin").get_submodule(LOWRANK).rank == 2
    assert load_transformer(tmp_path / "model").get_submodule(LOWRANK).rank == 4
    assert pickle.loads(pickle.dumps(model)).config["compression"]["ranks"] == {LOWRANK: 4, DENSE: 4}
    gc.disable()
    try:
        gone = weakref.ref(model)
        del model
        assert gone() is None
    finally:
        gc.enable()


def test_load_transformer_takes_diffusers_subfolder(out, tmp_path):
    """load_transformer(dir, subfolder="transformer"), as diffusers' from_pretrained spells it, was a
    TypeError (unexpected keyword)."""
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    out.rename(pipe / "transformer")
    model = load_transformer(pipe, subfolder="transformer")
    assert model.get_submodule(LOWRANK).rank == 4
