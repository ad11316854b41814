import pytest
import torch
from safetensors.torch import load_file

from compress.arch import get_adapter
from compress.errors import UserError
from compress.passes.base import RunContext
from compress.passes.svd import SVDConfig, SVDPass
from compress.stream import INDEX, CheckpointBlocks, empty_transformer
from tests.conftest import model_inputs, tiny_flux, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")


def _svd(model, loader, run_dir, batches, **cfg):
    ctx = RunContext(adapter=get_adapter(model), family=get_adapter(model).family, teacher=model,
                     run_dir=run_dir, calibration_inputs=lambda: batches, fingerprint="")
    SVDPass(SVDConfig(multiple=2, modulation_grid=4, progress=False, **cfg), loader).run(model, ctx)
    return ctx.report["svd"]


@pytest.mark.parametrize("make, targets", [(tiny_flux, ["attention", "mlp", "modulation"]),
                                           (tiny_pixart, ["attention", "cross_attention", "mlp", "modulation"])])
@pytest.mark.parametrize("fisher", ["block", "none"])
def test_streamed_blocks_give_the_resident_result(tmp_path, make, targets, fisher):
    """The svd pass over a sharded checkpoint, one block resident at a time, writes exactly the
    factors the resident pass computes."""
    make().save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    assert (tmp_path / "ckpt" / INDEX).is_file()  # really sharded
    resident = make()
    batches = [model_inputs(resident, seed=i) for i in range(2)]
    cfg = dict(targets=targets, fisher=fisher)
    report = _svd(resident, None, tmp_path / "a", batches, **cfg)

    model = empty_transformer(tmp_path / "ckpt")
    loader = CheckpointBlocks(model, tmp_path / "ckpt", tmp_path / "spill")
    loader.load_top()
    streamed = _svd(model, loader, tmp_path / "b", batches, **cfg)
    assert streamed["layers"].keys() == report["layers"].keys()
    assert all(p.device.type == "meta" for g, i, b in get_adapter(model).iter_blocks(model) for p in b.parameters())
    want = resident.state_dict()
    for group, index, _ in get_adapter(model).iter_blocks(model):
        for key, value in load_file(str(loader.spilled(group, index))).items():
            torch.testing.assert_close(value, want[key], rtol=1e-5, atol=1e-6)
    top = {k: v for k, v in model.state_dict().items() if v.device.type != "meta"}
    assert top and all(torch.equal(v, want[k]) for k, v in top.items())  # top-level targets included


def test_not_a_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a diffusers checkpoint"):
        CheckpointBlocks(tiny_pixart(), tmp_path, tmp_path / "spill")
