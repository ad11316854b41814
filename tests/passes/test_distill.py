"""The distill pass on tiny random diffusers models (CPU): loss terms, what trains, block maps,
curves, folder and teacher-sampled data, config checks (the training loop's resume, signals, logs and
two processes: test_distill_trainer; its checkpoints on a full disk or damaged:
test_distill_checkpoints)."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from compress.arch import get_adapter
from compress.distill_data import cond_of
from compress.distill_folder import FolderSource, write_shard
from compress.distill_utils import factor_param_names, read_curves
from compress.errors import UserError
from compress.inputs import moved
from compress.io import cast
from compress.passes.base import STUDENT_CHANGED, predictions, relative_error
from compress.passes.distill import DistillConfig, DistillPass
from tests.conftest import model_inputs, tiny_flux, tiny_pixart
from tests.passes.distill_helpers import context, distill, factorize, state

pytestmark = pytest.mark.usefixtures("one_thread")



def probe(student, teacher, run_dir):
    """The loss terms of one step on the batch/noise of seed 0, taken before its update, on a copy (the
    model is unchanged; lr 0 is refused)."""
    _, ctx = distill(copy.deepcopy(student), teacher, run_dir, steps=1, batch_size=8)
    return ctx.report["distill"]["first"]


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux], ids=["pixart", "flux"])
def test_terms_finite_and_decrease(make, tmp_path):
    """A random teacher is bad at the task, so the task term and the KD terms pull apart: train the KD
    terms (out + feat, both minimised by matching the teacher) and the task term in two runs."""
    teacher = make()
    student = factorize(copy.deepcopy(teacher), rank=2)
    before = probe(student, teacher, tmp_path / "before")
    assert all(before[t] > 0 for t in ("loss", "task", "out", "feat"))
    kd, ctx = distill(copy.deepcopy(student), teacher, tmp_path / "kd", steps=6, lr=3e-3, lambda_task=0.0,
                      plot=make is tiny_pixart)
    rows = read_curves(tmp_path / "kd" / "distill" / "loss.csv")
    assert len(rows) == 6 and (tmp_path / "kd" / "distill" / "loss.png").exists() == (make is tiny_pixart)
    assert all(torch.isfinite(torch.tensor(r[t])) for r in rows for t in ("loss", "task", "out", "feat"))
    assert ctx.report["distill"]["files"]["loss_csv"].endswith("loss.csv")
    task_only, _ = distill(copy.deepcopy(student), teacher, tmp_path / "task", steps=6, lr=3e-3,
                           lambda_out=0.0, lambda_feat=0.0)
    after_kd, after_task = probe(kd, teacher, tmp_path / "p1"), probe(task_only, teacher, tmp_path / "p2")
    assert after_kd["out"] < before["out"] and after_kd["feat"] < before["feat"], (before, after_kd)
    assert after_task["task"] < before["task"], (before, after_task)


@pytest.mark.parametrize("mode", ["factors", "non_factors"])
def test_train_modes_freeze_the_rest(mode, tmp_path):
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    factors = factor_param_names(student)
    before = state(student)
    out, _ = distill(student, teacher, tmp_path, steps=2, train=mode)
    after = state(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trained = factors if mode == "factors" else set(before) - factors
    assert changed and changed <= trained
    assert all(p.requires_grad for p in out.parameters())  # restored


def test_factors_needs_lowrank(tmp_path):
    from compress.errors import UserError

    teacher = tiny_pixart()
    with pytest.raises(UserError, match="train: factors, but no svd pass before it factorizes a layer"):
        distill(copy.deepcopy(teacher), teacher, tmp_path, train="factors")


def test_block_map_with_removed_blocks(tmp_path):
    teacher = tiny_flux()
    adapter = get_adapter(teacher)
    student = copy.deepcopy(teacher)
    block_map = adapter.remove_blocks(student, {"double": [0], "single": [1]})
    assert block_map == {"double": [1], "single": [0, 2]}
    from compress.distill_utils import BlockOutputs, feature_loss

    s_out, t_out = BlockOutputs(student, adapter, False), BlockOutputs(teacher, adapter, True)
    kwargs = model_inputs(teacher)
    student(**kwargs), teacher(**kwargs)
    # student single block 1 is teacher single block 2 (same weights), fed a different input: loss > 0;
    # without the map (identity) the counts do not match, which is refused
    assert feature_loss(s_out.outputs, t_out.outputs, block_map).item() > 0
    s_out.remove(), t_out.remove()
    out, ctx = distill(student, teacher, tmp_path, steps=2, block_map=block_map)
    assert ctx.report["distill"]["block_map"] == block_map
    from compress.errors import UserError

    with pytest.raises(UserError, match="block map"):
        distill(copy.deepcopy(student), teacher, tmp_path / "b", steps=1)


def test_folder_data(tmp_path):
    teacher = tiny_flux()
    kwargs = model_inputs(teacher, batch=6)
    folder = tmp_path / "latents"
    folder.mkdir()
    cond = cond_of(kwargs)
    write_shard(folder / "a.safetensors", kwargs["hidden_states"][:4],
                {k: v if k.endswith("_ids") else v[:4] for k, v in cond.items()})
    torch.save({"latents": kwargs["hidden_states"][4:],
                **{("shared." if k.endswith("_ids") else "cond.") + k: v if k.endswith("_ids") else v[4:]
                   for k, v in cond.items()}}, folder / "b.pt")
    source = FolderSource(folder)
    assert len(source) == 6
    latents, batch_cond = source.batch(5, torch.Generator().manual_seed(0))
    assert latents.shape == (5,) + kwargs["hidden_states"].shape[1:]
    assert batch_cond["img_ids"].shape == kwargs["img_ids"].shape and len(batch_cond["guidance"]) == 5
    streamed = FolderSource(folder)  # a folder too big to keep: files are read per batch
    streamed._resident = None
    latents2, cond2 = streamed.batch(5, torch.Generator().manual_seed(0))
    assert torch.equal(latents, latents2) and all(torch.equal(batch_cond[k], cond2[k]) for k in cond2)
    out, ctx = distill(copy.deepcopy(teacher), teacher, tmp_path, steps=1, data="folder", latents_dir=str(folder))
    assert ctx.report["distill"]["data"] == "folder"


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux], ids=["pixart", "flux"])
def test_a_latents_folder_that_does_not_fit_the_model_is_refused_before_any_compute(tmp_path, make):
    """The runner checks passes on a meta copy of the teacher: one row of the folder runs through it
    there (shapes only), so a wrong layout is a one-line error before calibration and svd."""
    from compress.distill_folder import check_folder
    from compress.runner_checks import meta_clone

    teacher = make()
    meta, adapter = meta_clone(teacher), get_adapter(teacher)
    kwargs = model_inputs(teacher, batch=2)
    cond = {k: v for k, v in cond_of(kwargs).items() if torch.is_tensor(v)}
    good = kwargs["hidden_states"]
    cases = {
        "channels": (good[:, 1:], cond, "does not run through the model"),
        "integers": (good.long(), cond, "must be floating rows"),
        "no rows": (good[:0], {k: v if k.endswith("_ids") else v[:0] for k, v in cond.items()},
                    "must be floating rows"),
        "text width": (good, {**cond, "encoder_hidden_states": cond["encoder_hidden_states"][..., :-1]},
                       "does not run through the model")}
    for name in ("ok", *cases):
        (tmp_path / name).mkdir()
    write_shard(tmp_path / "ok" / "a.safetensors", good, cond)
    check_folder(tmp_path / "ok", meta, adapter)
    for name, (latents, c, words) in cases.items():
        write_shard(tmp_path / name / "a.safetensors", latents, c)
        with pytest.raises(UserError, match=words):
            check_folder(tmp_path / name, meta, adapter)


def test_teacher_samples_cached(tmp_path):
    teacher = tiny_pixart()
    batches = [model_inputs(teacher, batch=4, seed=s) for s in (1, 2)]
    ctx = context(teacher, tmp_path, calibration_inputs=lambda: batches, train_batch=None)
    cfg = DistillConfig(steps=1, batch_size=3, data="teacher_samples", num_samples=5, sample_steps=2,
                        checkpoint_every=0, progress=False, plot=False)
    DistillPass(cfg).run(copy.deepcopy(teacher), ctx)
    (folder,) = (tmp_path / "distill" / "teacher_samples").iterdir()
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == 2 and (folder / "complete.json").exists() and len(FolderSource(folder)) == 5
    stamp = shards[0].stat().st_mtime_ns
    ctx.calibration_inputs = lambda: pytest.fail("cached samples must not be drawn again")
    DistillPass(cfg).run(copy.deepcopy(teacher), ctx)
    assert shards[0].stat().st_mtime_ns == stamp


def test_guided_teacher_samples_guide_against_the_unconditional_row(tmp_path):
    """distill.guidance_scale: the toy source's empty-prompt row; each row's sample is
    uncond + g (cond − uncond) at every step, so a sample drawn on the empty prompt itself is the
    unguided one, and the cache key holds the scale. Without an unconditional row: a clear error."""
    from compress.distill_data import sample_latents
    from compress.inputs import ToySource
    from compress.recipe import CalibrationConfig
    from compress.toy.weights import load_toy_teacher

    # float64: guidance scales each row's rounding by g, and a CPU gemm need not round identical
    # rows alike at different batch positions (3 of 512 values off by 2e-5 in float32 on one machine)
    teacher = load_toy_teacher("pixart").double()
    source = ToySource("pixart", CalibrationConfig(num_prompts=2, timesteps=2, batch_size=8))
    uncond = source.unconditional()
    assert uncond["encoder_hidden_states"].shape[0] == 1 and set(uncond) >= {"encoder_attention_mask"}
    batch = source.calibration()[0]  # rows [empty prompts; prompts]
    cond = {k: (v[-2:] if torch.is_tensor(v) and v.ndim else v) for k, v in batch.items()
            if k not in ("hidden_states", "timestep")}
    shape, adapter = (2, 4, 8, 8), get_adapter(teacher)
    guided, plain = (sample_latents(adapter, teacher, cond, shape, 3, torch.Generator().manual_seed(0), "cpu", None, g,
                                    uncond) for g in (3.0, 1.0))
    assert not torch.allclose(guided, plain, atol=1e-3)
    empty = {k: (v.expand(2, *v.shape[1:]) if torch.is_tensor(v) else v) for k, v in uncond.items()}
    on_empty = [sample_latents(adapter, teacher, empty, shape, 3, torch.Generator().manual_seed(0), "cpu", None, g,
                               uncond) for g in (3.0, 1.0)]
    torch.testing.assert_close(on_empty[0], on_empty[1], rtol=1e-5, atol=1e-5)

    batches = source.calibration()
    ctx = context(teacher, tmp_path, calibration_inputs=lambda: batches, train_batch=None,
                  unconditional=source.unconditional)
    for g in (1.0, 3.0):
        cfg = DistillConfig(steps=1, batch_size=2, data="teacher_samples", num_samples=2, sample_steps=2,
                            guidance_scale=g, checkpoint_every=0, progress=False, plot=False)
        DistillPass(cfg).run(copy.deepcopy(teacher), ctx)
    assert len(list((tmp_path / "distill" / "teacher_samples").iterdir())) == 2  # one cache per scale
    ctx.unconditional = None
    cfg = DistillConfig(steps=1, batch_size=2, data="teacher_samples", num_samples=2, sample_steps=3,
                        guidance_scale=3.0, checkpoint_every=0, progress=False, plot=False)
    with pytest.raises(UserError, match="no unconditional"):
        DistillPass(cfg).run(copy.deepcopy(teacher), ctx)


@pytest.mark.parametrize("bad, words", [
    ({"lr": 0.0}, "lr must be > 0"),
    ({"lr": -1e-4}, "lr must be > 0"),
    ({"lr": float("nan")}, "lr must be > 0"),
    ({"warmup_steps": -1}, "warmup_steps must be ≥ 0"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio must be in [0, 1]"),
    ({"min_lr_ratio": -0.1}, "min_lr_ratio must be in [0, 1]"),
    ({"weight_decay": -0.01}, "weight_decay must be ≥ 0"),
    ({"mask_massive": -3.0}, "mask_massive must be ≥ 0"),
    ({"grad_clip": -1.0}, "grad_clip must be ≥ 0"),
    ({"max_steps_this_run": 0}, "max_steps_this_run must be an integer ≥ 1 or null"),
    ({"steps": 0}, "steps must be an integer ≥ 1"),
    ({"lambda_out": -1.0}, "lambda_out must be ≥ 0"),
    ({"lambda_task": 0.0, "lambda_out": 0.0, "lambda_feat": 0.0},
     "lambda_task, lambda_out and lambda_feat must not all be 0"),
    ({"data": "folder"}, "data: folder needs latents_dir"),
    ({"latents_dir": "/data/latents"}, "latents_dir is read only with data: folder (data is 'toy')"),
    ({"num_samples": 64}, "num_samples is used only with data: teacher_samples"),
    ({"data": "folder", "latents_dir": "x", "sample_steps": 4}, "sample_steps is used only with data: teacher_samples"),
    ({"mask_massive": 3.0, "lambda_feat": 0.0}, "mask_massive masks the feature loss"),
])
def test_bad_values_are_refused_with_their_key(bad, words):
    """Checked at recipe load (validate: the error names the key) and again by check (Python callers)."""
    from compress.errors import BadValue

    with pytest.raises(BadValue, match=re.escape(f"distill.{words}")) as e:
        DistillConfig(**bad).validate()
    assert e.value.key in bad
    model = tiny_pixart()
    with pytest.raises(UserError, match=re.escape(words)):
        DistillPass(DistillConfig(**bad)).check(model, get_adapter(model))


def test_documented_zero_and_null_values_stay_allowed():
    """grad_clip 0: no clipping; mask_massive 0 or null: off; warmup 0; min_lr_ratio 0 or 1; no step cap."""
    DistillConfig(grad_clip=0.0, mask_massive=0.0, warmup_steps=0, min_lr_ratio=0.0, weight_decay=0.0,
                  checkpoint_every=0, max_steps_this_run=None).validate()
    DistillConfig(mask_massive=None, min_lr_ratio=1.0, max_steps_this_run=1).validate()


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux], ids=["pixart", "flux"])
def test_task_noise_is_drawn_where_the_generator_is(make, monkeypatch):
    """distill's generator is a CPU one; on a GPU the adapters' task losses drew with it on the
    latents' device, which CUDA refuses ("Expected a 'cuda' device type for generator"). Emulated
    on the meta device: a draw with a generator on another device raises as CUDA does."""
    from compress.runner_checks import meta_clone

    def strict(draw):
        def wrapped(*args, generator=None, device=None, **kw):
            if generator is not None and device is not None and torch.device(device) != generator.device:
                raise RuntimeError(f"Expected a '{torch.device(device).type}' device type for generator")
            return draw(*args, generator=generator, device=device, **kw)
        return wrapped

    model = meta_clone(make())
    kwargs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in model_inputs(make()).items()}
    latents, cond = kwargs["hidden_states"], cond_of(kwargs)  # (B, ...) on meta
    for name in ("randn", "randint"):
        monkeypatch.setattr(torch, name, strict(getattr(torch, name)))
    loss, used = get_adapter(model).task_loss(model, latents, cond, torch.Generator().manual_seed(0))
    assert loss.device.type == "meta" and used["hidden_states"].device.type == "meta"


def test_a_second_distill_pass_keeps_the_first_ones_curves_and_record(tmp_path):
    """Both wrote run_dir/distill and report["distill"]: the second pass replaced the first's
    loss curves and record (and cleared its checkpoints). Now the second has run_dir/distill-2."""
    teacher = tiny_pixart()
    ctx = context(teacher, tmp_path)
    student = factorize(copy.deepcopy(teacher))
    for steps in (2, 3):
        cfg = DistillConfig(steps=steps, batch_size=2, checkpoint_every=1, progress=False, plot=False)
        student = DistillPass(cfg).run(student, ctx)
    assert len(read_curves(tmp_path / "distill" / "loss.csv")) == 2
    assert len(read_curves(tmp_path / "distill-2" / "loss.csv")) == 3
    assert (tmp_path / "distill" / "checkpoints" / "step-00000002").exists()
    record = ctx.report["distill"]
    assert record["steps"] == 3 and [r["steps"] for r in record["earlier"]] == [2]
    assert record["earlier"][0]["files"]["loss_csv"] == str(tmp_path / "distill" / "loss.csv")


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux], ids=["pixart", "flux"])
def test_errors_before_and_after_are_of_the_student_in_its_own_dtype(make, tmp_path):
    """pred_rel_error_before/after measure the bfloat16 student the pass took and returns (what the
    runner's stage errors measure), not the float32 master weights it trains in between."""
    teacher = make()
    student = cast(factorize(copy.deepcopy(teacher), rank=2), torch.bfloat16)
    teacher = cast(teacher, torch.bfloat16)
    batches = [moved(model_inputs(teacher, batch=2, seed=s), torch.device("cpu"), torch.bfloat16) for s in (1, 2)]
    adapter = get_adapter(teacher)
    reference = predictions(teacher, adapter, batches)
    with torch.no_grad():
        before = relative_error(student, reference, adapter, batches)
    ctx = context(teacher, tmp_path, eval_inputs=lambda: batches)
    cfg = DistillConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=0, progress=False,
                        plot=False)
    out = DistillPass(cfg).run(student, ctx)
    assert next(out.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        after = relative_error(out, reference, adapter, batches)
    record = ctx.report["distill"]
    assert record["pred_rel_error_before"] == pytest.approx(before, rel=1e-9)
    assert record["pred_rel_error_after"] == pytest.approx(after, rel=1e-9)


@pytest.mark.parametrize("sampler", [None, {"shift": 1.0}, "flux-dev"])
def test_flux_task_noise_follows_the_samplers_shift(tmp_path, sampler):
    """The noise levels the task loss draws (which the KD terms share) are moved as the teacher's
    sampler moves them (ctx.scheduler_config: FLUX.1-dev's dynamic shift at the latents' image tokens);
    without a config, or at shift 1, they are the same draws as before."""
    from compress.arch.flux import sampler_shift, shift_sigmas
    from tests.arch.test_flux import FLUX_DEV

    def seen_sigmas(config, where):
        teacher = tiny_flux()
        ctx = context(teacher, tmp_path / where, scheduler_config=lambda: config)
        sigmas = []
        hook = teacher.register_forward_pre_hook(lambda m, a, kw: sigmas.append(kw["timestep"].clone()),
                                                 with_kwargs=True)  # the KD forward: the task loss's kwargs
        DistillPass(DistillConfig(steps=2, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=0,
                                  progress=False, plot=False)).run(factorize(copy.deepcopy(teacher), 2), ctx)
        hook.remove()
        return torch.cat(sigmas)  # (steps · B,)

    plain = seen_sigmas(None, "plain")
    ours = seen_sigmas(FLUX_DEV if sampler == "flux-dev" else sampler, "ours")
    if sampler == "flux-dev":
        assert torch.equal(ours, shift_sigmas(plain, **sampler_shift(FLUX_DEV, 16)))  # (B, 16, 8) latents
        assert (ours > plain).all()
    else:
        assert torch.equal(ours, plain)


def test_a_warmup_not_below_steps_is_noted():
    """steps shortened under the default warmup_steps 20: `plan` and `run` warn, at warmup_steps, that
    the warm-up is a tenth of steps instead; a warm-up below steps gets no note."""
    model = tiny_pixart()
    setattr(model, STUDENT_CHANGED, True)  # as after an svd pass: a distill of the teacher itself is noted too
    notes = DistillPass(DistillConfig(steps=5)).notes(model, get_adapter(model))
    assert notes == [("warmup_steps", "distill.warmup_steps (20) is not below steps (5): the learning rate "
                                      "would never reach lr nor decay; the run has no warm-up instead (a tenth of "
                                      "5 steps rounds to 0); set warmup_steps below steps to choose it",
                      ("steps",))]  # the keys it read besides warmup_steps (a --set of lr is not named)
    assert "the warm-up is 3 steps (a tenth of steps) instead" in \
        DistillPass(DistillConfig(steps=30, warmup_steps=40)).notes(model, get_adapter(model))[0][1]
    assert DistillPass(DistillConfig(steps=21)).notes(model, get_adapter(model)) == []
