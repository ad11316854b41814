import math

import numpy as np
import pytest
import torch
from PIL import Image

from compress.toy import evaluate as ev
from compress.toy.grid import save_sample_grid


def test_classifier_is_accurate_on_heldout():
    assert ev.classifier_accuracy() >= 0.97


def test_distances_are_sane():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    assert ev.frechet_distance(a, a) < 1e-6
    assert ev.frechet_distance(a, b + 3) > 30
    assert abs(ev.mmd(a, b, bandwidth=1.0)) < 0.02 < ev.mmd(a, b + 3, bandwidth=1.0)


def test_the_median_distance_is_the_whole_arrays_to_the_bit():
    """The RBF bandwidth's median pairwise distance, computed rows at a time (the whole (N, N, D)
    difference was 232 MB for the train features), equals the whole-array formula exactly, chunks
    of any size (one row, uneven, more than N), and so the bandwidth of the real train features."""
    from scipy import linalg

    def whole(f):
        return float(np.median(linalg.norm(f[:, None] - f[None], axis=-1)))

    f = np.random.default_rng(0).normal(size=(50, 16)) * 3
    assert all(ev.median_distance(f, rows) == whole(f) for rows in (1, 7, 50, 128))
    train = ev.features(ev.real_pixels("train")[0])
    assert ev._bandwidth() == ev.median_distance(train) == whole(train)


def test_frechet_distance_matches_the_closed_form():
    """||μa − μb||² + tr(Ca + Cb − 2 (Ca^½ Cb Ca^½)^½), symmetric, on covariances of any rank."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16)) + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(w)) @ v.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ cb @ root_a)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross
    assert math.isclose(ev.frechet_distance(a, b), expected, rel_tol=1e-9)
    assert math.isclose(ev.frechet_distance(b, a), expected, rel_tol=1e-9)


def test_frechet_distance_of_collapsed_samples_is_exact_and_quiet():
    """A student whose samples collapse (zero or rank-1 covariance): no singular-sqrtm warning, and
    the exact value (with Ca = 0 the cross term vanishes)."""
    import warnings

    rng = np.random.default_rng(1)
    b = rng.normal(size=(450, 16)) * 3
    collapsed = np.ones((200, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = ev.frechet_distance(collapsed, b)
        rank1 = ev.frechet_distance(np.outer(rng.normal(size=200), rng.normal(size=16)), b)
    expected = ((1 - b.mean(0)) ** 2).sum() + np.trace(np.cov(b, rowvar=False))
    assert math.isclose(fd, expected, rel_tol=1e-12)
    assert math.isfinite(rank1) and rank1 > 0


def test_evaluate_is_deterministic_and_flat(teachers):
    settings = dict(family="pixart", seed=1, n_per_prompt=1, num_inference_steps=2, n_pred=16)
    first = ev.evaluate(teachers["pixart"], teacher=teachers["pixart"], **settings)
    second = ev.evaluate(teachers["pixart"], teacher=teachers["pixart"], **settings)
    assert first == second
    assert all(isinstance(v, (int, float, str)) for v in first.values())
    assert first["pred_rel_error"] == 0.0 and math.isinf(first["psnr_vs_teacher"])
    assert first["n_samples"] == 10 and 0 <= first["adherence"] <= 1


def test_prediction_error_is_deterministic_and_sensitive(family, teachers):
    teacher = teachers[family]
    student = type(teacher).from_config(teacher.config)
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1.01)
    err = ev.prediction_error(student, teacher, family, n=32, seed=0)
    assert err == ev.prediction_error(student, teacher, family, n=32, seed=0)
    assert 0 < err < 1
    assert ev.prediction_error(teacher, teacher, family, n=8) == 0.0


def _scaled(teacher, factor: float):
    student = type(teacher).from_config(teacher.config)
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(factor)
    return student


def test_the_guided_prediction_error_is_that_of_what_the_toy_pipeline_samples(family, teachers):
    """The error of uncond + 3 (cond − uncond), the toy pipeline's guided prediction, on prediction_error's
    held-out triples, equal to one computed with the pipeline's own guide(); 0 against itself."""
    from compress.toy.data import model_inputs
    from compress.toy.pipeline import DEFAULT_GUIDANCE, guide

    teacher = teachers[family]
    student = _scaled(teacher, 1.01)
    kwargs = model_inputs(family, 16, seed=3, split="heldout", cfg=True)
    with torch.no_grad():
        s, t = (guide(m(**kwargs).sample.double(), DEFAULT_GUIDANCE) for m in (student, teacher))
    err = ev.guided_prediction_error(student, teacher, family, n=16, seed=3)
    assert err == pytest.approx(((s - t).norm() / t.norm()).item(), rel=1e-9)
    assert err != pytest.approx(ev.prediction_error(student, teacher, family, n=16, seed=3), rel=1e-3)
    assert ev.guided_prediction_error(teacher, teacher, family, n=8) == 0.0


def test_evaluate_gives_the_guided_error_beside_pred_rel_error_where_it_samples_guided(teachers):
    """evaluate gave pred_rel_error (the prompt's branch alone) only, though its samples are guided at 3: now
    guided_error beside it (guided_prediction_error on the same triples); at guidance 1, none."""
    teacher = teachers["pixart"]
    student = _scaled(teacher, 1.01)
    settings = dict(family="pixart", seed=1, n_per_prompt=1, num_inference_steps=2, n_pred=16)
    result = ev.evaluate(student, teacher=teacher, **settings)
    assert result["guided_error"] == ev.guided_prediction_error(student, teacher, "pixart", n=16, seed=1)
    assert list(result)[-2:] == ["pred_rel_error", "guided_error"]
    assert "guided_error" not in ev.evaluate(student, teacher=teacher, guidance_scale=1.0, **settings)


def _nan_where(model, rows: tuple[int, ...], part: slice):
    """`model` whose prediction of a batch of any of `rows` rows is NaN in `part` of them."""
    forward = model.forward

    def nan_in_part(*args, **kwargs):
        out = forward(*args, **kwargs)
        if out.sample.shape[0] in rows:
            out.sample[part] = float("nan")
        return out
    model.forward = nan_in_part
    return model


def test_a_guided_error_that_is_not_finite_is_warned_of(teachers, capsys):
    """A toy student whose guided prediction held NaN/Inf (its empty prompt's branch) gave guided_error nan
    (null in --json) without a word, where the run warns of it. Now warned of; one whose prediction itself
    holds NaN/Inf is too, naming both errors; a finite one warns of nothing."""
    teacher = teachers["pixart"]
    settings = dict(family="pixart", seed=1, n_per_prompt=1, num_inference_steps=2, n_pred=16)
    ev.evaluate(_scaled(teacher, 1.01), teacher=teacher, **settings)
    assert "warning" not in capsys.readouterr().err
    result = ev.evaluate(_nan_where(_scaled(teacher, 1.01), (32,), slice(0, 16)), teacher=teacher, **settings)
    assert math.isfinite(result["pred_rel_error"]) and math.isnan(result["guided_error"])
    assert " ".join(capsys.readouterr().err.split()) == (
        "warning: eval: the model's guided prediction (with the empty prompt's branch) holds NaN/Inf on the 16 "
        "held-out triples: its guided_error is not finite")
    ev.evaluate(_nan_where(_scaled(teacher, 1.01), (16, 32), slice(None)), teacher=teacher, **settings)
    assert "warning: eval: the model's prediction holds NaN/Inf on the 16 held-out triples: its pred_rel_error " \
           "and guided_error are not finite" in " ".join(capsys.readouterr().err.split())


def test_sample_grid_png(tmp_path, teachers):
    path = save_sample_grid(teachers["flux"], "flux", tmp_path / "grid.png", n_per_prompt=2, num_inference_steps=2)
    image = Image.open(path)
    assert image.size == (2 * 50 + 2, 10 * 50 + 2)


def test_shipped_teachers_follow_prompts(family, teachers):
    """A small version of the acceptance check (the full one: tools/eval_toy_teachers.py, 200 samples)."""
    images = ev.sample(teachers[family], family, n_per_prompt=2, seed=5)
    labels = np.repeat(np.arange(10), 2)
    assert ev.quality_scores(images, labels)["adherence"] >= 0.9


def test_sampling_shows_its_steps_a_line_per_tenth_in_a_log(teachers, capsys):
    """Toy `eval OUT > log` said it was sampling, then nothing for minutes: each model's sampling is a
    bar over its denoising steps (of all batches), a line per tenth off a terminal; none unless asked."""
    quiet = ev.sample(teachers["flux"], "flux", n_per_prompt=1, num_inference_steps=5, batch_size=5)
    assert capsys.readouterr().err == ""
    shown = ev.sample(teachers["flux"], "flux", n_per_prompt=1, num_inference_steps=5, batch_size=5,
                      progress="eval: sampling (model)")
    lines = capsys.readouterr().err.splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines] == [f"eval: sampling (model) {s}/10" for s in range(1, 11)]
    assert torch.equal(quiet, shown)
