"""The fused kernel's output-tile groups (fused.py): a row tile's output tiles split into contiguous
ranges, one program each, every group recomputing the row tile's x @ downᵀ.

Under the interpreter the tiles are 16 wide and the stand-in SM count is INTERPRETER_SMS, so the odd
shapes below span several row and output tiles and the automatic count is above one too. The output is
NaN-filled before each launch: a tile no group writes fails the comparison."""

import pytest
import torch

from tests.kernels._env import DEVICE, HAS_TRITON, ON_GPU
from tests.kernels.test_lowrank_kernels import FP32_KERNELS, SHAPES, assert_matches_ref, make_inputs, needs_kernels

if HAS_TRITON:
    from compress.kernels import fused


@pytest.fixture
def nan_output(monkeypatch):
    """Every launch writes into a NaN-filled (M, N) output instead of uninitialized memory."""
    monkeypatch.setattr(fused, "_empty_output", lambda m, n, like: torch.full(
        (m, n), float("nan"), device=like.device, dtype=like.dtype))


@pytest.fixture
def launched_programs(monkeypatch):
    """The program count of each launch of the fused kernel, as its grid gave it."""
    seen, kernel = [], fused._lowrank_fused_kernel

    class Spy:
        def __getitem__(self, grid):
            def recorded(meta):
                seen.append(grid(meta)[0])
                return grid(meta)
            return kernel[recorded]

    monkeypatch.setattr(fused, "_lowrank_fused_kernel", Spy())
    return seen


def _tiles(lead, k, n, r):
    """(row tiles, output tiles) at the interpreter's 16-wide tiles."""
    m = 1
    for d in lead:
        m *= d
    return -(-m // 16), -(-n // 16)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_group_count_fills_the_sms_and_is_capped_at_the_output_tiles():
    sms = 132  # an H100 / H200
    assert fused.n_groups(32, 72, sms) == 8  # M 4096 at BM 128: 32 row tiles x 8 groups, 256 <= 2 x 132 programs
    assert fused.n_groups(64, 72, sms) == 4  # BM 64: 256 programs (5 groups: 320, a second round for 56)
    assert fused.n_groups(32, 5, sms) == 5  # N 80: at most one group per output tile
    assert fused.n_groups(256, 72, sms) == 1  # BM 16: enough row tiles, the ungrouped kernel
    assert fused.n_groups(140, 72, sms) == 1  # more row tiles than SMs: no group added
    assert fused.n_groups(1000, 72, sms) == 1
    assert fused.n_groups(4, 72, sms, groups=3) == 3  # asked for: as asked, whatever the SMs
    assert fused.n_groups(4, 2, sms, groups=100) == 2  # asked for more than the tiles: capped
    assert fused.n_groups(4, 72, sms, groups=1) == 1


@needs_kernels
@pytest.mark.parametrize("groups", [2, 3, None, 100], ids=lambda g: f"groups={g}")
@pytest.mark.parametrize("dtype", [FP32_KERNELS, pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("act,bias", [(a, b) for a in (None, "gelu_tanh") for b in (True, False)], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_groups_match_the_reference_and_one_group(nan_output, groups, dtype, act, bias, shape):
    x, down, up, b = make_inputs(*shape, dtype, DEVICE, bias)
    y = fused.fused_lowrank(x, down, up, b, act, groups=groups)
    assert_matches_ref(y, x, down, up, b, act)
    if not ON_GPU:  # one config under the interpreter: each tile is the same arithmetic in any group
        assert torch.equal(y, fused.fused_lowrank(x, down, up, b, act, groups=1))


@needs_kernels
def test_uneven_ranges_cover_every_output_tile(nan_output, launched_programs):
    """7 output tiles in 2, 3, 4 and 6 groups: ranges of unequal sizes, each a tile's width from the next."""
    x, down, up, b = make_inputs((20,), 40, 7 * 16 - 3, 5, torch.float16, DEVICE)  # 2 row tiles, N = 109
    for groups in (2, 3, 4, 6):
        assert_matches_ref(fused.fused_lowrank(x, down, up, b, "gelu_tanh", groups=groups), x, down, up, b,
                           "gelu_tanh")
    if not ON_GPU:
        assert launched_programs == [2 * 2, 2 * 3, 2 * 4, 2 * 6]


@needs_kernels
@pytest.mark.skipif(ON_GPU, reason="interpreter tile sizes")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_group_counts_above_the_output_tiles_are_capped(nan_output, launched_programs, shape):
    x, down, up, b = make_inputs(*shape, torch.float32, DEVICE)
    row_tiles, out_tiles = _tiles(*shape)
    assert_matches_ref(fused.fused_lowrank(x, down, up, b, groups=out_tiles + 1), x, down, up, b, None)
    assert_matches_ref(fused.fused_lowrank(x, down, up, b, groups=1000), x, down, up, b, None)
    assert_matches_ref(fused.fused_lowrank(x, down, up, b), x, down, up, b, None)  # from the SM count
    auto = fused.n_groups(row_tiles, out_tiles, fused.INTERPRETER_SMS)
    assert launched_programs == [row_tiles * out_tiles, row_tiles * out_tiles, row_tiles * auto]
    assert auto > 1  # the interpreter's SM count still gives these shapes several groups


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("groups", [0, -2, 1.5, True, "4"])
def test_bad_group_counts_are_refused(groups):
    x, down, up, b = make_inputs((4,), 8, 6, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="groups must be None .* or an int >= 1"):
        fused.fused_lowrank(x, down, up, b, groups=groups)
