"""Flux's noise levels as its sampler places them: `shift_sigmas` / `sampler_shift` against diffusers'
own FlowMatchEulerDiscreteScheduler, and the σ the adapter's grid and task loss hand the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from compress.arch import get_adapter
from compress.arch import flux as flux_arch
from compress.arch.flux import sampler_shift, shift_sigmas
from compress.errors import UserError
from tests.conftest import model_inputs, tiny_flux

FLUX_DEV = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                max_image_seq_len=4096)  # FLUX.1-dev's scheduler config
SD3 = dict(shift=3.0)  # a static shift
LINEAR = dict(FLUX_DEV, time_shift_type="linear")


def _theirs(config: dict, steps: int, image_seq_len: int) -> torch.Tensor:
    """The σ FluxPipeline's scheduler steps through (its trailing 0 dropped)."""
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    c = scheduler.config
    mu = calculate_shift(image_seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift,
                         c.max_shift) if c.use_dynamic_shifting else None
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler.sigmas[:-1]


@pytest.mark.parametrize("tokens", [1, 16, 256, 1024, 4096, 9000])
def test_calculate_shift_is_flux_pipelines(tokens):
    assert flux_arch.calculate_shift(tokens) == pytest.approx(calculate_shift(tokens), rel=1e-12)
    assert flux_arch.calculate_shift(tokens, 64, 1024, 0.3, 0.9) == pytest.approx(
        calculate_shift(tokens, 64, 1024, 0.3, 0.9), rel=1e-12)


def test_flux_noise_levels_need_no_transformers():
    """The toy Flux samples and distills on the core install: placing σ never imports diffusers'
    FluxPipeline module (which needs transformers, an optional extra). A core install has no peft
    either (the lora extra, which brings transformers): with peft present, diffusers' model classes
    import it, and it imports transformers."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['transformers'] = sys.modules['peft'] = None\n"
            "import torch\n"
            "from compress.arch import get_adapter\n"
            "from compress.arch.flux import sampler_shift\n"
            "from compress.distill_data import _scheduler\n"
            f"print(sampler_shift({FLUX_DEV!r}, 4096)['mu'])\n"
            "from compress.toy.weights import load_toy_teacher\n"
            "adapter = get_adapter(load_toy_teacher('flux'))\n"
            f"print(len(_scheduler(adapter, {FLUX_DEV!r}, 4, (1, 4096, 64), 'cpu').sigmas))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    mu, sigmas = out.stdout.split()
    assert float(mu) == pytest.approx(1.15) and int(sigmas) == 5  # 4 steps and the final 0
    assert "torchvision" not in out.stderr


@pytest.mark.parametrize("config", [FLUX_DEV, SD3, LINEAR, {}], ids=["dynamic", "static", "linear", "none"])
@pytest.mark.parametrize("tokens", [16, 1024, 4096])
def test_shift_sigmas_are_the_schedulers_own(config, tokens):
    grid = torch.tensor(np.linspace(1.0, 1 / 28, 28))  # FluxPipeline's 28 steps, float64
    ours = shift_sigmas(grid, **sampler_shift(config, tokens))
    torch.testing.assert_close(ours.float(), _theirs(config, 28, tokens), rtol=2e-6, atol=1e-7)
    if config in (FLUX_DEV, SD3):  # a > 1: the steps crowd toward σ = 1
        assert (ours[1:] > grid[1:]).all() and ours[0] == 1


def test_flux_dev_at_1024_squared_shifts_by_e_to_the_1_15():
    """1024² images: 64² packed tokens, μ = max_shift = 1.15; σ = ½ goes to e^1.15 / (e^1.15 + 1)."""
    kw = sampler_shift(FLUX_DEV, 4096)
    assert kw["mu"] == pytest.approx(1.15) and kw["time_shift"] == "exponential"
    assert float(shift_sigmas(torch.tensor([0.5], dtype=torch.float64), **kw)) == pytest.approx(0.7595, abs=1e-4)
    assert shift_sigmas(torch.tensor([0.0, 1.0]), **kw).tolist() == [0.0, 1.0]


def test_no_shift_returns_the_draw_itself():
    sigma = torch.rand(5)
    assert shift_sigmas(sigma, **sampler_shift(None, 4096)) is sigma
    assert shift_sigmas(sigma, **sampler_shift({"shift": 1.0}, 4096)) is sigma


def test_a_sampler_option_it_does_not_follow_is_refused():
    with pytest.raises(UserError, match="shift_terminal"):
        sampler_shift(dict(FLUX_DEV, shift_terminal=0.1), 4096)


@pytest.mark.parametrize("config", [FLUX_DEV, None, {"shift": 1.0}], ids=["flux-dev", "none", "shift-1"])
def test_grid_and_task_loss_hand_the_model_the_samplers_sigma(config):
    """timestep_grid: the σ an n-step FluxPipeline passes the transformer at the batch's image tokens;
    task_loss: the logit-normal draw moved by the same shift (the same draw when unshifted)."""
    model, adapter = tiny_flux(), get_adapter("flux")
    batch = model_inputs(model, batch=3)  # (3, 16, 8): 16 image tokens
    grid = adapter.timestep_grid(6, batch, config)
    if config is FLUX_DEV:
        torch.testing.assert_close(grid, _theirs(FLUX_DEV, 6, 16).flip(0), rtol=2e-6, atol=1e-7)
    else:
        assert torch.equal(grid, torch.linspace(1 / 6, 1.0, 6))  # the grid before the shift existed
    latents, cond = batch.pop("hidden_states"), batch
    cond.pop("timestep")
    _, plain = adapter.task_loss(model, latents, cond, torch.Generator().manual_seed(0))
    _, used = adapter.task_loss(model, latents, cond, torch.Generator().manual_seed(0), sampler=config)
    if config is FLUX_DEV:
        mu = calculate_shift(16, 256, 4096, 0.5, 1.15)
        want = np.exp(mu) * plain["timestep"].double() / (np.exp(mu) * plain["timestep"].double()
                                                           + 1 - plain["timestep"].double())
        torch.testing.assert_close(used["timestep"], want.float())
        assert not torch.equal(used["timestep"], plain["timestep"])
    else:
        assert torch.equal(used["timestep"], plain["timestep"])
        assert torch.equal(used["hidden_states"], plain["hidden_states"])
