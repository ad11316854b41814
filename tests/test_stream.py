import contextlib
import re

import pytest
import torch
from safetensors.torch import load_file

from compress.arch import get_adapter
from compress.errors import NumericError, UserError
from compress.passes.base import RunContext
from compress.passes.svd import SVDConfig, SVDPass
from compress.stream import INDEX, CheckpointBlocks, empty_transformer, pieces, streamed
from compress.stream_files import WeightsChanged
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


def test_a_nan_weight_is_an_error_naming_it(tmp_path):
    bad = tiny_pixart()
    with torch.no_grad():
        bad.transformer_blocks[1].attn1.to_k.weight[0, 0] = float("nan")
    bad.save_pretrained(tmp_path / "ckpt")
    model = empty_transformer(tmp_path / "ckpt")
    loader = CheckpointBlocks(model, tmp_path / "ckpt")
    loader.load_top()
    loader.materialize("blocks", 0, model.transformer_blocks[0])  # fine
    with pytest.raises(NumericError, match=r"transformer_blocks\.1\.attn1\.to_k\.weight .* 1 NaN/Inf"):
        loader.materialize("blocks", 1, model.transformer_blocks[1])


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
    (lambda sd: sd.pop("transformer_blocks.1.attn1.to_k.weight"), r"transformer_blocks\.1: missing transformer_blocks\.1\.attn1\.to_k\.weight"),
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nonfinite_counts_exactly_and_passes_sums_that_overflow(dtype):
    """The finite-sum shortcut never hides a NaN/Inf, and finite values whose sum overflows are
    counted (as none), not taken for non-finite ones."""
    from compress.io_tensors import nonfinite

    x = torch.randn(1000, 7).to(dtype)
    assert nonfinite(x) == 0
    for bad in ([float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")],
                [float("nan"), float("inf"), float("nan")]):
        y = x.clone()
        y.view(-1)[torch.arange(len(bad)) * 997] = torch.tensor(bad, dtype=dtype)
        assert nonfinite(y, chunk=333) == len(bad)
    big = torch.full((64,), torch.finfo(dtype).max / 2, dtype=dtype)
    assert not torch.isfinite(big.sum()) and nonfinite(big) == 0


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_nonfinite_counts_float8(dtype):
    """An fp8 Flux checkpoint crashed the streamed read's check: float8 has no sum (nor, e4m3fn,
    isfinite) on the CPU."""
    from compress.io_tensors import nonfinite

    x = torch.randn(1000, 7).to(dtype)
    assert nonfinite(x) == 0
    x.view(-1)[[3, 500, 6999]] = torch.tensor([float("nan")] * 3).to(dtype)
    assert nonfinite(x, chunk=333) == 3


FLOAT8_BAD = {  # dtype: its NaN/Inf byte codes
    torch.float8_e4m3fn: [0x7F, 0xFF], torch.float8_e5m2: [0x7C, 0xFC, 0x7D, 0x7E, 0x7F, 0xFF],
    torch.float8_e4m3fnuz: [0x80], torch.float8_e5m2fnuz: [0x80], torch.float8_e8m0fnu: [0xFF]}


@pytest.mark.parametrize("dtype", list(FLOAT8_BAD))
def test_nonfinite_counts_each_float8_without_a_float_copy(dtype, monkeypatch):
    """fp8's check upcast each chunk to float32: 2.5 s per 75M values, ~400 s a streamed pass over
    an fp8 Flux-dev. Every code each format spends on NaN/Inf is counted, from its bytes (no float
    copy of the tensor), in any layout."""
    from compress.io_tensors import nonfinite

    x = torch.randn(1000, 7).clamp(-4, 4).abs().to(dtype)  # e8m0fnu: powers of two, no sign
    assert nonfinite(x) == 0
    bad = FLOAT8_BAD[dtype]
    x.view(torch.uint8).view(-1)[torch.arange(len(bad)) * 997] = torch.tensor(bad, dtype=torch.uint8)
    monkeypatch.setattr(torch.Tensor, "float", lambda *a, **k: pytest.fail("a float copy"))
    assert nonfinite(x) == len(bad)
    assert nonfinite(x.t()) == len(bad) and nonfinite(x[:, ::2]) == sum(i * 997 % 7 % 2 == 0 for i in range(len(bad)))


def test_nonfinite_of_integers_bool_and_fp4_is_none_at_once(monkeypatch):
    """An integer or bool tensor (and packed fp4, which has no NaN/Inf code and raised
    NotImplementedError) holds no NaN/Inf: 0, without summing or upcasting it."""
    from compress.io_tensors import nonfinite

    tensors = [torch.full((64,), 255, dtype=torch.uint8), torch.full((64,), -1, dtype=torch.int8),
               torch.ones(64, dtype=torch.bool), torch.arange(64, dtype=torch.int32), torch.arange(64),
               torch.full((16,), 0xFF, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)]
    for name in ("sum", "float", "to"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("work"))
    monkeypatch.setattr(torch, "isfinite", lambda *a, **k: pytest.fail("work"))
    assert [nonfinite(t) for t in tensors] == [0] * len(tensors)


def test_a_nan_in_an_fp8_checkpoint_names_the_weight(tmp_path):
    from safetensors.torch import save_file

    model = tiny_flux()
    model.save_config(tmp_path)
    sd = {k: v.to(torch.float8_e4m3fn) if v.dim() == 2 else v for k, v in model.state_dict().items()}
    sd["transformer_blocks.0.attn.to_q.weight"][0, 0] = float("nan")
    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    loader = CheckpointBlocks(empty_transformer(tmp_path), tmp_path)
    loader.load_top()
    assert loader.read(["transformer_blocks.0.attn.to_k.weight"])["transformer_blocks.0.attn.to_k.weight"].dtype \
        == torch.float32
    with pytest.raises(NumericError, match=r"weight transformer_blocks.0.attn.to_q.weight in .* has 1 NaN/Inf"):
        loader.read(["transformer_blocks.0.attn.to_q.weight"])


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


def test_a_streamed_block_weight_beyond_float16_is_said_to_overflow_it_before_the_cast(tmp_path):
    """compute_dtype float16, stream: true, a teacher block holding 1.6e5: the read checked NaN/Inf
    before the cast and never the range, so the cast made Inf and the run said much later that the
    teacher's prediction holds NaN/Inf (ff.net.2's output the first). Now the read says what the
    resident check says: the weight, its file, its largest value, the dtypes that hold it."""
    from tests.runner_helpers import SIMPLE, run_recipe

    name = "transformer_blocks.0.ff.net.2.weight"
    teacher = tiny_pixart()
    with torch.no_grad():
        teacher.get_parameter(name).view(-1)[3] = 1.6e5
    teacher.save_pretrained(tmp_path / "teacher")
    svd = "  - svd: {targets: [mlp], fisher: block, ratio: 0.5, multiple: 2}\n"
    text = SIMPLE.format(teacher=tmp_path / "teacher", passes=svd) + "stream: true\ncompute_dtype: float16\n"
    with pytest.raises(NumericError) as e:
        run_recipe(tmp_path, text, "half")
    stored = tmp_path / "teacher" / "diffusion_pytorch_model.safetensors"
    assert str(e.value) == (f"the teacher's weight {name} (in {stored}) holds values up to 1.6e+05, beyond "
                            "float16's range (max 65504): use compute_dtype bfloat16 or float32")


def test_block_prefixes_name_every_block_in_order(tmp_path):
    """What runner_pending.write_record reads to tell blocks from the top level (it called the
    private _blocks)."""
    model, loader = _streamed_model(tmp_path, tiny_pixart)
    n = model.config.num_layers
    assert loader.block_prefixes() == tuple(f"transformer_blocks.{i}." for i in range(n))


def test_a_loader_in_float16_names_whose_weight_is_beyond_its_range(tmp_path):
    """A loader reading a float32 checkpoint in float16 refuses a finite value beyond 65504 before
    the cast, naming whose weight it is (eval's streamed output: the student's), not an Inf later."""
    model = tiny_pixart()
    with torch.no_grad():
        model.proj_out.weight[0, 0] = -7e4
    model.save_pretrained(tmp_path / "ckpt")
    loader = CheckpointBlocks(empty_transformer(tmp_path / "ckpt", torch.float16), tmp_path / "ckpt", what="student")
    with pytest.raises(NumericError, match=r"^the student's weight proj_out\.weight \(in .*diffusion_pytorch_model"
                                           r"\.safetensors\) holds values up to 7e\+04, beyond float16's range"):
        loader.load_top()
    assert loader.read(["transformer_blocks.0.ff.net.2.weight"])["transformer_blocks.0.ff.net.2.weight"].dtype \
        == torch.float16  # in range: read and cast


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_a_shard_damaged_after_it_was_mapped_is_one_line_naming_it(tmp_path, damage):
    """A shard that read when the loader mapped the checkpoint and is cut short or removed before its
    block is read: a UserError naming the file (not SafetensorError or FileNotFoundError), when
    the block is read, its shapes checked, or its ends digested."""
    import os

    model, loader = _streamed_model(tmp_path, tiny_pixart)
    path = loader.files[loader.block_keys("blocks", 1)[0]]
    if damage == "truncate":
        os.truncate(path, path.stat().st_size - 10)
    else:
        path.unlink()
    now = "is gone" if damage == "remove" else r"can no longer be read \(.*\)"
    match = rf"^{re.escape(str(path))} {now}: it changed while dit-compress read streamed weights from it"
    with pytest.raises(WeightsChanged, match=match):  # a UserError the runner names no recipe line for
        loader.materialize("blocks", 1, model.transformer_blocks[1])
    with pytest.raises(UserError, match=match):
        loader.check_shapes()
    with pytest.raises(UserError, match=match):
        loader.ends(loader.block_keys("blocks", 1))


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGHUP", "ignored SIGHUP"])
def test_a_ctrl_c_while_a_streamed_weight_is_read_is_a_keyboard_interrupt(tmp_path, monkeypatch, stop):
    """A Ctrl-C that came while safetensors read a block's tensor surfaced from its native code as
    `ValueError: could not determine the shape of object type 'torch.storage.UntypedStorage'`, a
    traceback and status 1: the read holds it, and it is a KeyboardInterrupt once the read is done. A run's
    SIGTERM or SIGHUP (runner_setup.sigterm_as_interrupt) is held alike (the same ValueError before), with
    its exit status and raised as it is unheld; an ignored SIGHUP (nohup) stays ignored, the read done."""
    import os
    import signal

    from compress import interrupts, stream_files
    from compress.runner_setup import sigterm_as_interrupt

    if not hasattr(signal, stop.split()[-1]):
        pytest.skip("Windows has no SIGHUP")
    signum = getattr(signal, stop.split()[-1])
    model, loader = _streamed_model(tmp_path, tiny_pixart)
    real = stream_files.opened

    class Native:  # what safetensors' native get_tensor does with an exception raised inside it
        def __init__(self, f):
            self.f = f

        def get_tensor(self, name):
            try:
                os.kill(os.getpid(), signum)
                return self.f.get_tensor(name)
            except BaseException:
                raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    @contextlib.contextmanager
    def opened(path, mapped=False):
        with real(path, mapped) as f:
            yield Native(f)

    monkeypatch.setattr("compress.stream.opened", opened)
    caller = signal.SIG_IGN if stop.startswith("ignored") else signal.default_int_handler  # (not death)
    previous = {s: signal.signal(s, caller if s == signum else signal.default_int_handler)  # SIGINT: a terminal's
                for s in {signal.SIGINT, signum}}
    interrupts.forget_stops()
    try:
        with sigterm_as_interrupt():  # as a run takes SIGTERM and SIGHUP
            if caller is signal.SIG_IGN:
                loader.materialize("blocks", 0, model.transformer_blocks[0])  # read whole, nothing raised
                assert signal.getsignal(signum) is signal.SIG_IGN
                return
            with pytest.raises(KeyboardInterrupt) as stopped:
                loader.materialize("blocks", 0, model.transformer_blocks[0])
        assert interrupts.stop_status() == 128 + signum
        # raised as unheld: KeyboardInterrupt('signal 15') (as_ctrl_c), a Ctrl-C's bare (it was bare for all)
        assert stopped.value.args == (() if signum == signal.SIGINT else (f"signal {signum}",))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        interrupts.forget_stops()
