"""Streamed blocks (compress/stream.py), one resident at a time: the resident result and forward, the
checkpoint checked against its config, spill and export pieces, digests; the weights a read checks as it
reads them: tests/test_stream_weights.py."""
import pytest
import torch
from safetensors.torch import load_file

from compress.arch import get_adapter
from compress.errors import UserError
from compress.passes.base import RunContext
from compress.passes.svd import SVDConfig, SVDPass
from compress.stream import INDEX, CheckpointBlocks, empty_transformer, pieces, streamed
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
        spilled = {k: v for path in loader.spilled(group, index) for k, v in load_file(str(path)).items()}
        assert spilled.keys() == {k for k in want if k.startswith(loader._prefix(group, index))}
        for key, value in spilled.items():
            torch.testing.assert_close(value, want[key], rtol=1e-5, atol=1e-6)
    top = {k: v for k, v in model.state_dict().items() if v.device.type != "meta"}
    assert top and all(torch.equal(v, want[k]) for k, v in top.items())  # top-level targets included


def test_not_a_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="has neither .* no diffusers weights to read there"):
        CheckpointBlocks(tiny_pixart(), tmp_path, tmp_path / "spill")


def _streamed_model(tmp_path, make):
    make().save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    model = empty_transformer(tmp_path / "ckpt")
    loader = CheckpointBlocks(model, tmp_path / "ckpt")
    loader.load_top()
    return model, loader


@pytest.mark.parametrize("make", [tiny_flux, tiny_pixart])
def test_streamed_forward_is_the_resident_forward(tmp_path, make):
    model, loader = _streamed_model(tmp_path, make)
    kw = model_inputs(make(), seed=3)
    with torch.no_grad(), streamed(model, loader):
        got = model(**kw, return_dict=False)[0]
    want = make()(**kw, return_dict=False)[0]
    assert torch.equal(got, want)
    assert all(p.device.type == "meta" for _, _, b in get_adapter(model).iter_blocks(model) for p in b.parameters())


def test_a_forward_stopped_midway_leaves_every_block_on_meta(tmp_path):
    model, loader = _streamed_model(tmp_path, tiny_pixart)
    blocks = model.transformer_blocks
    blocks[1].register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt), torch.no_grad(), streamed(model, loader):
        model(**model_inputs(tiny_pixart()))
    assert all(p.device.type == "meta" for p in blocks.parameters())


def test_pieces_bound_each_file():
    state = {"a": torch.zeros(10), "b": torch.zeros(30), "c": torch.zeros(5), "d": torch.zeros(4, dtype=torch.int64)}
    assert pieces(state, 160) == [["a", "b"], ["c", "d"]]  # float32: 40, 120, 20 bytes; int64: 32
    assert pieces(state, 100, itemsize=2) == [["a", "b", "c"], ["d"]]  # as bf16: 20, 60, 10; 32
    assert pieces(state, 1) == [["a"], ["b"], ["c"], ["d"]]  # a bigger tensor goes alone


def test_small_pieces_change_nothing(tmp_path, monkeypatch):
    """Spill and export split into many files give the same tensors."""
    import compress.stream as stream

    monkeypatch.setattr(stream, "SHARD_BYTES", 4096)
    model, loader = _streamed_model(tmp_path, tiny_flux)
    loader.spill = tmp_path / "spill"
    loader.spill.mkdir()
    want = tiny_flux().state_dict()
    for group, index, block in get_adapter(model).iter_blocks(model):
        loader.materialize(group, index, block)
        loader.release(group, index, block)
        assert len(loader.spilled(group, index)) > 1
    out = stream.save_streamed(model, loader, tmp_path / "out")
    from compress.io_output import load_transformer

    got = load_transformer(out).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert len(list(out.glob("*.safetensors"))) > len(list(get_adapter(model).iter_blocks(model))) + 1


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop("transformer_blocks.1.attn1.to_k.weight"),
     r"transformer_blocks\.1: missing transformer_blocks\.1\.attn1\.to_k\.weight"),
    (lambda sd: sd.update(extra=torch.zeros(1)), r"the top level: unexpected extra"),
])
def test_a_checkpoint_that_does_not_match_its_config_is_named(tmp_path, edit, match):
    from safetensors.torch import save_file

    model = tiny_pixart()
    model.save_pretrained(tmp_path / "ckpt")
    sd = dict(model.state_dict())
    edit(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "ckpt" / "diffusion_pytorch_model.safetensors"))
    meta = empty_transformer(tmp_path / "ckpt")
    loader = CheckpointBlocks(meta, tmp_path / "ckpt")
    with pytest.raises(UserError, match=match):
        loader.load_top()
        for group, index, block in get_adapter(meta).iter_blocks(meta):
            loader.materialize(group, index, block)


K = "transformer_blocks.1.attn1.to_k.weight"


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.update({K: sd[K][:-1]}), r"transformer_blocks\.1\.attn1\.to_k\.weight has shape \[15, 16\], "
                                             r"the model's config gives it \[16, 16\]"),
    (lambda sd: sd.update({K: sd[K].to(torch.int32)}), r"to_k\.weight is stored as I32, not as floating point"),
])
def test_a_checkpoint_whose_shapes_or_dtypes_do_not_fit_is_named_before_any_block(tmp_path, edit, match):
    """A config that does not match the weights' shapes (or an integer tensor where the model has
    a floating one) is a UserError when the top level loads, not accelerate's ValueError when the
    block is reached mid-run (nor a silent cast)."""
    from safetensors.torch import save_file

    model = tiny_pixart()
    model.save_pretrained(tmp_path / "ckpt")
    sd = dict(model.state_dict())
    edit(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "ckpt" / "diffusion_pytorch_model.safetensors"))
    loader = CheckpointBlocks(empty_transformer(tmp_path / "ckpt"), tmp_path / "ckpt")
    with pytest.raises(UserError, match=match):
        loader.load_top()


def test_the_digest_of_a_streamed_model_sees_its_block_weights(tmp_path):
    """Streamed blocks are on meta: the stats cache's model digest reads a few of their stored
    values, so a student whose blocks an earlier pass wrote differently gets other cache files."""
    from compress.calib import model_digest

    digests = []
    for scale in (1.0, 1.0, 2.0):
        teacher = tiny_pixart()
        with torch.no_grad():
            teacher.transformer_blocks[1].ff.net[2].weight.mul_(scale)  # (out, in): same shape
        folder = tmp_path / f"ckpt-{len(digests)}"
        teacher.save_pretrained(folder, max_shard_size="40KB")
        model = empty_transformer(folder)
        loader = CheckpointBlocks(model, folder)
        loader.load_top()
        digests.append(model_digest(model, None, loader))
    assert digests[0] == digests[1] != digests[2]


def test_ends_reads_the_first_and_last_values(tmp_path):
    model, loader = _streamed_model(tmp_path, tiny_flux)
    want = tiny_flux().state_dict()
    names = ["transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.to_q.bias"]
    got = loader.ends(names, n=3)
    for k in names:
        flat = want[k].reshape(-1)
        assert torch.equal(got[k], torch.cat([flat[:3], flat[-3:]]))


def test_block_prefixes_name_every_block_in_order(tmp_path):
    """What runner_pending.write_record reads to tell blocks from the top level (it called the
    private _blocks)."""
    model, loader = _streamed_model(tmp_path, tiny_pixart)
    n = model.config.num_layers
    assert loader.block_prefixes() == tuple(f"transformer_blocks.{i}." for i in range(n))
