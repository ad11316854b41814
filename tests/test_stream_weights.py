"""The weights a streamed read checks as it reads them (compress/stream.py): NaN/Inf named by weight
(counted in every dtype, fp8 without a float copy), a value beyond the compute dtype's range, a shard
damaged after it was mapped, and a stop signal during a read (split from tests/test_stream.py)."""
import contextlib
import re

import pytest
import torch

from compress.errors import NumericError, UserError
from compress.stream import CheckpointBlocks, empty_transformer
from compress.stream_files import WeightsChanged
from tests.conftest import tiny_flux, tiny_pixart
from tests.test_stream import _streamed_model

pytestmark = pytest.mark.usefixtures("one_thread")


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
