"""compress.kd_losses: the teacher-normalized MSE and the massive-activation mask."""

import pytest
import torch

from compress.kd_losses import massive_activation_mask, normalized_mse


def test_normalized_mse_and_massive_mask():
    t = torch.randn(2, 16, 8)
    assert float(normalized_mse(t, t)) == 0.0
    s = t + 0.1 * torch.randn_like(t)
    expect = ((s - t) ** 2).mean() / (t ** 2).mean()
    assert float(normalized_mse(s, t)) == pytest.approx(float(expect), rel=1e-5)
    t_massive = t.clone()
    t_massive[0, 3, 5] = 1e4  # one massive activation
    mask = massive_activation_mask(t_massive, k=5.0)
    assert mask.dtype == torch.bool and mask.shape == t.shape
    assert not mask[0, 3, 5] and int((~mask).sum()) == 1
    s_massive = s.clone()
    s_massive[0, 3, 5] = 0.0  # a huge error there is ignored under the mask
    masked = normalized_mse(s_massive, t_massive, mask=mask)
    assert float(masked) == pytest.approx(float(normalized_mse(s[mask], t[mask])), rel=1e-5)
    assert normalized_mse(s.bfloat16(), t.bfloat16()).dtype == torch.float32
