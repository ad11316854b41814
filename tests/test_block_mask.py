import math

import pytest
import torch

from compress.block_mask import MAX_PATTERNS, gated, gumbel_hard, patterns, temperature, windows


def test_windows_share_the_removal_evenly():
    assert windows(6, 1, None) == [(0, 6, 1)]
    assert windows(8, 4, 2) == [(0, 2, 1), (2, 2, 1), (4, 2, 1), (6, 2, 1)]
    assert windows(8, 0, 4) == [(0, 4, 0), (4, 4, 0)]


def test_uneven_windows_share_the_removal_by_size():
    """Flux.1-dev's 19 double blocks, 8 removed, windows of at most 5: sizes 5 5 5 4, each loses 2
    (quotas 2.1 2.1 2.1 1.7: the largest remainder takes the block left over)."""
    assert windows(19, 8, 5) == [(0, 5, 2), (5, 5, 2), (10, 5, 2), (15, 4, 2)]
    # 38 single blocks, 16 removed, at most 8: sizes 8 8 8 7 7, quotas 3.37 ×3, 2.95 ×2 -> 3 3 3 2 2 and
    # the three left over go to the two 7s (remainder .95), then the first 8
    assert windows(38, 16, 8) == [(0, 8, 4), (8, 8, 3), (16, 8, 3), (24, 7, 3), (31, 7, 3)]
    assert windows(6, 1, 4) == [(0, 3, 1), (3, 3, 0)]  # a tie goes to the earlier window
    for n, remove, window in [(19, 8, 5), (38, 16, 8), (57, 20, 6), (7, 3, 2)]:
        spans = windows(n, remove, window)
        assert sum(s for _, s, _ in spans) == n and sum(k for _, _, k in spans) == remove
        assert max(s for _, s, _ in spans) <= window and max(s for _, s, _ in spans) - min(s for _, s, _ in spans) <= 1
        assert [st for st, _, _ in spans] == [sum(s for _, s, _ in spans[:i]) for i in range(len(spans))]


@pytest.mark.parametrize("n, remove, window, words", [
    (4, 4, 2, "blocks 0..1 would lose all 2"), (3, 2, 2, "blocks 2..2 would lose all 1"),
    (40, 20, None, "keep-patterns"), (4, 1, 0, "at least 1")])
def test_windows_say_why_they_cannot_be_made(n, remove, window, words):
    with pytest.raises(ValueError, match=words):
        windows(n, remove, window)


def test_pattern_limit_is_per_window():
    assert math.comb(40, 20) > MAX_PATTERNS
    assert len(windows(40, 20, 4)) == 10  # 2 of 4 per window: 6 patterns each


def test_patterns_are_every_keep_mask_once():
    rows = patterns(5, 2)
    assert rows.shape == (10, 5)
    assert (rows.sum(1) == 3).all()
    assert len({tuple(r.tolist()) for r in rows}) == 10
    assert rows[0].tolist() == [0, 0, 1, 1, 1]  # lexicographic: positions (0, 1) removed first


def test_gumbel_hard_is_one_hot_with_the_softmax_gradient():
    logits = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    y = gumbel_hard(logits, 0.5, torch.Generator().manual_seed(0))
    assert sorted(y.detach().tolist()) == [0.0, 0.0, 1.0]
    w = torch.tensor([1.0, 2.0, 3.0])
    (y * w).sum().backward()
    # the same draw, relaxed: softmax((logits + noise) / tau)
    u = torch.rand(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    z = logits.detach().clone().requires_grad_(True)
    (torch.softmax((z + (-torch.log(-torch.log(u))).float()) / 0.5, -1) * w).sum().backward()
    torch.testing.assert_close(logits.grad, z.grad)
    assert int(y.argmax()) == int(((logits.detach() + (-torch.log(-torch.log(u))).float())).argmax())


def test_gumbel_hard_samples_the_softmax_distribution():
    """The Gumbel-max trick: argmax(logits + noise) is distributed as softmax(logits)."""
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0]))
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(3)
    for _ in range(6000):
        counts += gumbel_hard(logits, 1.0, g)
    torch.testing.assert_close(counts / 6000, torch.tensor([1 / 6, 2 / 6, 3 / 6]), atol=0.02, rtol=0)


def test_gumbel_hard_repeats_with_its_seed():
    logits = torch.randn(7)
    a = [gumbel_hard(logits, 1.0, g).argmax() for g in [torch.Generator().manual_seed(3)] * 5]
    b = [gumbel_hard(logits, 1.0, g).argmax() for g in [torch.Generator().manual_seed(3)] * 5]
    assert a == b


def test_temperature_anneals_geometrically():
    assert temperature(0, 11, 2.0, 0.02) == pytest.approx(2.0)
    assert temperature(10, 11, 2.0, 0.02) == pytest.approx(0.02)
    assert temperature(5, 11, 2.0, 0.02) == pytest.approx(0.2)
    assert temperature(0, 1, 2.0, 0.1) == 0.1


def test_gated_passes_a_removed_block_through():
    out, x = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(gated(out, x, torch.tensor(1.0)), out)
    torch.testing.assert_close(gated(out, x, torch.tensor(0.0)), x)
