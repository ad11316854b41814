"""The distill pass on tiny random diffusers models (CPU): loss terms, what trains, block maps, resume,
curves, folder data, and a 2-process data-parallel run."""

from __future__ import annotations

import copy
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.arch import get_adapter
from compress.distill_data import cond_of
from compress.distill_folder import FolderSource, write_shard
from compress.distill_utils import factor_param_names, read_curves
from compress.errors import UserError
from compress.lowrank import LowRankLinear
from compress.passes.base import RunContext
from compress.passes.distill import DistillConfig, DistillPass
from compress.passes.distill_trainer import TrainingInterrupted
from tests.conftest import model_inputs, tiny_flux, tiny_pixart

HERE = Path(__file__).parent


def factorize(model, rank: int = 4):
    """Plain truncated SVD of every block linear -> LowRankLinear (in place)."""
    adapter = get_adapter(model)
    for info in adapter.linears(model):
        if info.group is None:
            continue
        parent_name, _, child = info.name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        r = min(rank, len(s))
        setattr(parent, child, LowRankLinear.from_factors(u[:, :r] * s[:r], vh[:r], layer.bias))
    return model


def toy_data(model, n: int = 16, seed: int = 0):
    """A fixed pool of clean latents + cond; returns train_batch(batch_size, generator)."""
    kwargs = model_inputs(model, batch=n, seed=seed)
    latents, cond = kwargs["hidden_states"], cond_of(kwargs)
    shared = ("img_ids", "txt_ids", "added_cond_kwargs")

    def train_batch(batch_size, generator):
        rows = torch.randint(0, n, (batch_size,), generator=generator)
        return latents[rows], {k: v if k in shared else v[rows] for k, v in cond.items()}

    return train_batch


def context(teacher, run_dir, **kw):
    return RunContext(adapter=get_adapter(teacher), family=get_adapter(teacher).family, teacher=teacher,
                      run_dir=Path(run_dir), seed=0, train_batch=kw.pop("train_batch", toy_data(teacher)),
                      **kw)


def distill(student, teacher, run_dir, **cfg):
    ctx = context(teacher, run_dir, block_map=cfg.pop("block_map", None), resume=cfg.pop("resume", False))
    defaults = dict(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=0, progress=False,
                    plot=False)
    out = DistillPass(DistillConfig(**{**defaults, **cfg})).run(student, ctx)
    return out, ctx


pytestmark = pytest.mark.usefixtures("one_thread")


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
    with pytest.raises(UserError, match="no LowRankLinear"):
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


def test_resume_is_bit_exact(tmp_path):
    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher))
    full, _ = distill(copy.deepcopy(student), teacher, tmp_path / "full", steps=6, checkpoint_every=2)
    with pytest.raises(TrainingInterrupted, match="step 3/6"):
        distill(copy.deepcopy(student), teacher, tmp_path / "cut", steps=6, checkpoint_every=2,
                max_steps_this_run=3)
    resumed, ctx = distill(copy.deepcopy(student), teacher, tmp_path / "cut", steps=6, checkpoint_every=2,
                           resume=True)
    a, b = state(full), state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(read_curves(tmp_path / "cut" / "distill" / "loss.csv")) == 6
    assert read_curves(tmp_path / "cut" / "distill" / "loss.csv") == \
        read_curves(tmp_path / "full" / "distill" / "loss.csv")


def test_checkpoints_of_another_run_are_never_resumed(tmp_path):
    """A fresh run clears the checkpoints an earlier run left in the same run dir (else they sort
    after its own and outlive them), and a resume refuses checkpoints trained from another student."""
    teacher = tiny_pixart()
    student, other = factorize(copy.deepcopy(teacher)), factorize(copy.deepcopy(teacher), rank=2)
    distill(copy.deepcopy(other), teacher, tmp_path, steps=6, checkpoint_every=2)  # leaves step-4, step-6
    with pytest.raises(TrainingInterrupted, match="step 1/6"):
        distill(copy.deepcopy(student), teacher, tmp_path, steps=6, checkpoint_every=2, max_steps_this_run=1)
    assert [p.name for p in (tmp_path / "distill" / "checkpoints").glob("step-*")] == ["step-00000001"]
    resumed, _ = distill(copy.deepcopy(student), teacher, tmp_path, steps=6, checkpoint_every=2, resume=True)
    full, _ = distill(copy.deepcopy(student), teacher, tmp_path / "full", steps=6, checkpoint_every=2)
    a, b = state(full), state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingInterrupted):  # another student's checkpoint, then a resume of this one
        distill(copy.deepcopy(other), teacher, tmp_path / "o", steps=6, checkpoint_every=2, max_steps_this_run=2)
    with pytest.raises(UserError, match="another incoming student"):
        distill(copy.deepcopy(student), teacher, tmp_path / "o", steps=6, checkpoint_every=2, resume=True)


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


def test_two_processes_agree(tmp_path):
    """2 CPU processes (gloo) via torchrun: after the steps both hold the same weights."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(HERE / "distill_two_procs.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"weights_{r}.pt") for r in (0, 1))
    start = torch.load(tmp_path / "weights_start.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], start[k]) for k in w0)
    assert (tmp_path / "distill" / "loss.csv").exists()


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

    teacher = load_toy_teacher("pixart")
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


def test_signal_checkpoints_and_stops(tmp_path):
    import signal

    teacher = tiny_pixart()
    data = toy_data(teacher)
    calls = []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job

    def train_batch(batch_size, generator):  # SIGINT arrives during step 2
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return data(batch_size, generator)

    ctx = context(teacher, tmp_path, train_batch=train_batch)
    cfg = DistillConfig(steps=5, batch_size=2, checkpoint_every=0, progress=False, plot=False)
    with pytest.raises(TrainingInterrupted, match="step 2/5 on a stop signal"):
        DistillPass(cfg).run(copy.deepcopy(teacher), ctx)
    assert (tmp_path / "distill" / "checkpoints" / "step-00000002" / "meta.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


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

    with pytest.raises(BadValue, match=re.escape(f"distill: {words}")) as e:
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


@pytest.mark.parametrize("where", ["prediction", "block"])
def test_a_teacher_that_overflows_is_blamed_not_the_student(tmp_path, where):
    """A non-finite loss names the teacher when its prediction or a block output it feeds the
    feature loss is not finite (a float16 overflow), and the student (lower lr) otherwise."""
    from compress.errors import NumericError

    teacher = tiny_pixart()
    student = factorize(copy.deepcopy(teacher), rank=2)
    layer = teacher.proj_out if where == "prediction" else teacher.transformer_blocks[1].ff.net[2]
    layer.bias.data[:] = float("inf")
    words = "the teacher's prediction" if where == "prediction" else "the teacher's output of block 1 of 'blocks'"
    with pytest.raises(NumericError, match=f"non-finite loss at step 1 .*; {words} is not finite"):
        distill(student, teacher, tmp_path)
    with pytest.raises(NumericError, match="lower lr or check the student"):
        distill(factorize(copy.deepcopy(tiny_pixart()), rank=2), tiny_pixart(), tmp_path / "s", lr=1e30, steps=3)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_distill_runs_on_cuda(tmp_path):
    teacher = tiny_pixart()
    ctx = context(teacher, tmp_path, device=torch.device("cuda"))
    cfg = DistillConfig(steps=2, batch_size=2, checkpoint_every=0, progress=False, plot=False)
    out = DistillPass(cfg).run(factorize(copy.deepcopy(teacher)), ctx)
    assert all(torch.isfinite(p).all() for p in out.parameters())


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


def test_progress_off_a_terminal_is_lines_on_stderr(tmp_path, capsys):
    """stdout carries results only; where the bar is not drawn (a log) a line per tenth of the run says
    how far it got."""
    teacher = tiny_pixart()
    distill(factorize(copy.deepcopy(teacher), rank=2), teacher, tmp_path, steps=20, batch_size=2,
            progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("distill ")]
    assert [line.split()[1] for line in lines] == [f"{s}/20" for s in range(2, 21, 2)]
    assert all("task " in line and "loss " in line for line in lines)
