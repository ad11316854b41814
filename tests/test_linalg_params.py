"""compress.linalg_params: parameter counts, the breakeven rank and rank rounding."""

from compress.linalg_params import breakeven_rank, params_dense, params_lowrank, round_rank, saves_params


def test_param_counts_and_breakeven():
    assert params_dense(3072, 12288) == 3072 * 12288 + 3072
    assert params_lowrank(3072, 12288, 64, bias=False) == 64 * (3072 + 12288)
    assert breakeven_rank(128, 128) == 64
    assert breakeven_rank(3, 5) == 2  # 15/8 = 1.875 -> 2
    for m, n in [(128, 128), (3, 5), (3072, 15360), (768, 128)]:
        be = breakeven_rank(m, n)
        assert params_lowrank(m, n, be, False) >= params_dense(m, n, False)
        assert params_lowrank(m, n, be - 1, False) < params_dense(m, n, False)
        assert saves_params(m, n, be - 1) and not saves_params(m, n, be)


def test_round_rank():
    assert round_rank(40, 16) == 48 and round_rank(39, 16) == 32
    assert round_rank(3, 16) == 16  # never below one multiple
    assert round_rank(300, 16, max_rank=128) == 128
    assert round_rank(5, 16, max_rank=8) == 8
