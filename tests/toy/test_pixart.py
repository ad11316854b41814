"""The epsilon-objective experiment kept in compress.toy.pixart (the shipped toy uses flow)."""
import torch

from compress.toy import pixart
from compress.toy.data import training_batch
from tests.conftest import tiny_pixart


def test_eps_noised_is_the_ddpm_forward_process():
    x0 = torch.randn(6, 4, 8, 8)
    noisy, t, eps = pixart.eps_noised(x0, torch.Generator().manual_seed(0))
    a = pixart.alphas_cumprod()[t].view(-1, 1, 1, 1)
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < pixart.NUM_TRAIN_TIMESTEPS
    assert torch.allclose(noisy, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)


def test_eps_weight_is_the_v_loss_weight_capped():
    """||v − v̂||² = ||ε − ε̂||² / ᾱ = (1 + 1/SNR)·||ε − ε̂||² for v̂ derived from ε̂."""
    t = torch.tensor([0, 100, 400, 999])
    a = pixart.alphas_cumprod()[t]
    x0, eps, eps_hat = torch.randn(3, 4, 16).double().unbind(0)
    v_err = []
    for i in range(4):
        xt = a[i].sqrt() * x0 + (1 - a[i]).sqrt() * eps
        x0_hat = (xt - (1 - a[i]).sqrt() * eps_hat) / a[i].sqrt()
        v, v_hat = a[i].sqrt() * eps - (1 - a[i]).sqrt() * x0, a[i].sqrt() * eps_hat - (1 - a[i]).sqrt() * x0_hat
        v_err.append(float((v - v_hat).pow(2).sum() / (eps - eps_hat).pow(2).sum()))
    w = pixart.eps_weight(t, cap=1e9)
    assert torch.allclose(w, torch.tensor(v_err, dtype=w.dtype), rtol=1e-4)
    assert float(pixart.eps_weight(t, cap=20.0).max()) == 20.0


def test_eps_training_loss_trains_and_sampler_is_epsilon_dpm_solver():
    model = tiny_pixart(in_channels=4, out_channels=4, sample_size=8, caption_channels=64)
    batch = training_batch("pixart", 4, torch.Generator().manual_seed(0))
    loss = pixart.eps_training_loss(model, batch["latents"], batch["text"], torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    scheduler = pixart.eps_scheduler()
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.beta_schedule == "linear"
