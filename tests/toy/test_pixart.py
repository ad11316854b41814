"""The toy PixArt objective: epsilon prediction on DDPM betas, trained at the flow toy's noise levels."""
import math

import torch

from compress.toy import pixart
from compress.toy.data import training_batch
from tests.conftest import tiny_pixart


def test_noised_is_the_ddpm_forward_process():
    x0 = torch.randn(6, 4, 8, 8)
    for training in (True, False):
        noisy, t, eps = pixart.noised(x0, torch.Generator().manual_seed(0), training=training)
        a = pixart.alphas_cumprod()[t].view(-1, 1, 1, 1)
        assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < pixart.NUM_TRAIN_TIMESTEPS
        assert torch.allclose(noisy, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)


def test_training_timesteps_match_the_snr_of_a_logit_normal_sigma():
    """Median σ = 0.5 ↔ SNR 1; the quartiles of logit-normal σ are sigmoid(±0.674)."""
    t = pixart.training_timesteps(20000, torch.Generator().manual_seed(0), uniform_fraction=0.0)
    snr = pixart.snr(t).double()
    quartiles = torch.quantile(snr, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    for q, z in zip(quartiles.tolist(), (0.674, 0.0, -0.674)):  # high σ = low SNR first
        sigma = 1 / (1 + math.exp(-z))
        assert math.isclose(q, ((1 - sigma) / sigma) ** 2, rel_tol=0.05)
    assert float((t >= 900).double().mean()) < 1e-3  # the logit-normal alone never trains the noisy end
    mixed = pixart.training_timesteps(20000, torch.Generator().manual_seed(0))  # default: 20% uniform
    assert 0.015 < float((mixed >= 900).double().mean()) < 0.025
    uniform = pixart.noised(torch.zeros(20000, 1, 1, 1), torch.Generator().manual_seed(0), training=False)[1]
    assert float(uniform.double().mean()) > float(t.double().mean()) + 100  # eval covers the noisy end too


def test_loss_weight_is_the_flow_loss_in_epsilon_terms():
    """x_t / (√ᾱ + √(1−ᾱ)) is the flow point (1−σ)·x0 + σ·ε of the same SNR, whose velocity is ε − x0;
    the velocity error of (ε̂, the x0 it implies) is (1 + 1/√SNR)² times the ε error."""
    t = torch.tensor([0, 100, 300, 600])
    a = pixart.alphas_cumprod()[t].double()
    x0, eps, eps_hat = torch.randn(3, 64).double().unbind(0)
    ratios = []
    for i in range(len(t)):
        xt = a[i].sqrt() * x0 + (1 - a[i]).sqrt() * eps
        x0_hat = (xt - (1 - a[i]).sqrt() * eps_hat) / a[i].sqrt()
        v, v_hat = eps - x0, eps_hat - x0_hat  # flow velocity noise − x0 at the same ε
        ratios.append(float((v - v_hat).pow(2).sum() / (eps - eps_hat).pow(2).sum()))
    w = pixart.loss_weight(t, cap=1e9).double()
    assert torch.allclose(w, torch.tensor(ratios, dtype=torch.float64), rtol=1e-4)
    assert float(pixart.loss_weight(torch.tensor([999]), cap=20.0)) == 20.0


def test_training_loss_trains_and_sampler_is_epsilon_dpm_solver():
    model = tiny_pixart(in_channels=4, out_channels=4, sample_size=8, caption_channels=64)
    batch = training_batch("pixart", 4, torch.Generator().manual_seed(0))
    loss = pixart.training_loss(model, batch["latents"], batch["text"], torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    scheduler = pixart.new_scheduler()
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.beta_schedule == "linear"
    assert scheduler.config.algorithm_type == "dpmsolver++"
    flow = pixart.flow_training_loss(model, batch["latents"], batch["text"], torch.Generator().manual_seed(1))
    assert torch.isfinite(flow) and pixart.flow_scheduler().config.prediction_type == "flow_prediction"


def test_shipped_pipeline_samples_the_shipped_epsilon_teacher():
    from compress.toy.weights import load_toy_pipeline

    pipe = load_toy_pipeline("pixart")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.scheduler.config.beta_schedule == "linear" and pipe.scheduler.config.beta_end == 0.02


def test_distill_task_loss_is_the_teachers_target_at_its_noise_levels():
    """compress.inputs.ToySource.task_loss (distill's task term): the ε-MSE at the training draw of
    (t, ε), without the training loss weights."""
    from compress.inputs import ToySource
    from compress.recipe import CalibrationConfig

    model = tiny_pixart(in_channels=4, out_channels=4, sample_size=8, caption_channels=64)
    batch = training_batch("pixart", 6, torch.Generator().manual_seed(0))
    noisy, t, eps = pixart.noised(batch["latents"], torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = (model(**pixart.forward_kwargs(noisy, t, batch["text"])).sample - eps).pow(2).mean()
    cond = {k: v for k, v in pixart.forward_kwargs(batch["latents"], torch.zeros(6), batch["text"]).items()
            if k not in ("hidden_states", "timestep")}
    task, kwargs = ToySource("pixart", CalibrationConfig()).task_loss(
        model, batch["latents"], cond, torch.Generator().manual_seed(3))
    assert torch.allclose(task, expected, rtol=1e-5) and torch.equal(kwargs["timestep"], t)


def test_pipeline_scheduler_follows_the_objective_in_the_weights(tmp_path):
    from compress.toy.weights import load_toy_pipeline, save_text_encoder, save_toy_teacher, toy_objective
    from compress.toy.text import ToyTextEncoder

    model = pixart.new_transformer(seed=1)
    save_text_encoder(ToyTextEncoder.from_seed(), tmp_path)
    for objective, prediction in (("flow", "flow_prediction"), ("eps", "epsilon")):
        save_toy_teacher(model, "pixart", tmp_path, objective)
        assert toy_objective("pixart", tmp_path) == objective
        pipe = load_toy_pipeline("pixart", weights_dir=tmp_path)
        assert pipe.scheduler.config.prediction_type == prediction


def test_shipped_teacher_predicts_epsilon():
    """On noised held-out digits the shipped teacher's output is far closer to ε than to the flow
    velocity ε − x0 (it would be the other way round for flow weights)."""
    from compress.toy.data import digits, prompt_for
    from compress.toy.vae import ToyVAE
    from compress.toy.weights import load_text_encoder, load_toy_teacher

    images, labels = digits("heldout")
    x0 = ToyVAE().encode(images[:64])  # (64, 4, 8, 8)
    noisy, t, eps = pixart.noised(x0, torch.Generator().manual_seed(0), training=False)
    text = load_text_encoder()([prompt_for(int(y)) for y in labels[:64]])
    with torch.no_grad():
        pred = load_toy_teacher("pixart")(**pixart.forward_kwargs(noisy, t, text)).sample
    to_eps, to_velocity = (pred - eps).square().mean(), (pred - (eps - x0)).square().mean()
    assert float(to_eps) < 0.1 * float(to_velocity)
