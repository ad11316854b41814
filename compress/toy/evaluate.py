"""Toy evaluator: scores generated digits the way GenEval / FID / CMMD score the real models.

- adherence (GenEval analogue): an SVC digit classifier, fit on the train split, labels each sample;
  score = fraction labelled as prompted, over "a handwritten 0".."9" × n_per_prompt seeds.
- fd (FID analogue) and mmd (CMMD analogue, unbiased MMD² with a fixed RBF bandwidth) between samples and
  held-out real digits, in a PCA space fit on the train split; `*_floor` = the same between an equally
  large train subsample and held-out (real vs real).
- with a teacher: psnr_vs_teacher (same prompts and seeds), pred_rel_error (`prediction_error`) and the
  guided prediction's error at the sampling guidance, guided_error (`guided_prediction_error`); of an
  output whose run calibrated without the empty prompt's branch, a note saying so (`unguided_run_note`).
  Both are on the toy's own held-out triples, not the run's inputs: eval's line below them says so, with the
  run's figures from report.json beside (`measured_on_line`).

Samples are compared at 8×8 (2×2 mean-pooled), the resolution sklearn's digits come in.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch.nn import functional as F

from compress.errors import UserError
from compress.inputs import moved
from compress.toy.data import digits, model_inputs, prompt_for
from compress.toy.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from compress.toy.weights import load_toy_pipeline

PCA_DIM = 16
N_PER_PROMPT = 20
SEED_LIMIT = 2**32  # numpy's default_rng takes no negative seed, torch's none past 2**64 (seed·100003 + j)
N_PRED = 256  # held-out (latent, timestep, prompt) triples eval's teacher-relative errors are measured on


# ---- feature space -------------------------------------------------------------------------------


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """images (N, 1, 16, 16) in [0, 1] -> (N, 64) float64 on sklearn's 0..16 scale (2×2 mean pool)."""
    small = F.avg_pool2d(images.float().cpu(), 2)  # (N, 1, 8, 8)
    return (small.reshape(len(images), -1) * 16).double().numpy()


def real_pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Real digits of a split through the same path as samples: (N, 64) pixels, (N,) labels."""
    images, labels = digits(split)
    return to_pixels((images + 1) / 2), labels.numpy()


@functools.lru_cache(maxsize=1)
def classifier():
    """SVC fit on the train split (deterministic)."""
    from sklearn.svm import SVC

    x, y = real_pixels("train")
    return SVC(C=10.0, gamma="scale").fit(x, y)


@functools.lru_cache(maxsize=1)
def classifier_accuracy() -> float:
    """The classifier's accuracy on held-out real digits."""
    x, y = real_pixels("heldout")
    return float((classifier().predict(x) == y).mean())


@functools.lru_cache(maxsize=1)
def _pca():
    from sklearn.decomposition import PCA

    return PCA(n_components=PCA_DIM, svd_solver="full").fit(real_pixels("train")[0])


def features(pixels: np.ndarray) -> np.ndarray:
    """(N, 64) pixels -> (N, 16) PCA features (fit on the train split)."""
    return _pca().transform(pixels)


@functools.lru_cache(maxsize=1)
def _bandwidth() -> float:
    """RBF bandwidth: median pairwise distance between train features (fixed, like CMMD's σ)."""
    return median_distance(features(real_pixels("train")[0]))


def median_distance(f: np.ndarray, rows: int = 128) -> float:
    """Median Euclidean distance over all N² ordered pairs of the rows of f (N, D), each row's zero
    distance to itself included, `rows` rows at a time: a (rows, N, D) temporary, not (N, N, D)
    (N=1347 train features: 18 MB, not 232 MB). Each distance is computed as over the whole array,
    so the median is the same to the bit."""
    n = len(f)
    distances = np.empty((n, n))  # (N, N)
    for i in range(0, n, rows):
        distances[i:i + rows] = linalg.norm(f[i:i + rows, None] - f[None], axis=-1)  # (rows, N)
    return float(np.median(distances))


# ---- distances -----------------------------------------------------------------------------------


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (D, D) by eigh (round-off negatives clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fit to feature sets a (N, D) and b (M, D):
    ||μa − μb||² + tr(Ca) + tr(Cb) − 2 tr((Ca Cb)^½). tr((Ca Cb)^½) is taken as the sum of the square
    roots of the eigenvalues of the symmetric PSD Ca^½ Cb Ca^½ (the same eigenvalues as Ca Cb): real,
    symmetric in a and b, and exact for singular covariances (collapsed samples), where a general sqrtm
    of the non-symmetric product warns and loses accuracy."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    cross = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def mmd(a: np.ndarray, b: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD² with the RBF kernel exp(-||x-y||² / (2σ²)) between a (N, D) and b (M, D)."""
    sigma = _bandwidth() if bandwidth is None else bandwidth

    def kernel(x, y):
        return np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * sigma**2))

    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    n, m = len(a), len(b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = F.mse_loss(a.double(), b.double()).item()
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


# ---- sampling ------------------------------------------------------------------------------------


def prompts_and_labels(n_per_prompt: int) -> tuple[list[str], np.ndarray]:
    """"a handwritten 0" × n, ..., "a handwritten 9" × n, in that order."""
    labels = np.repeat(np.arange(10), n_per_prompt)
    return [prompt_for(int(d)) for d in labels], labels


def sample(transformer, family: str, n_per_prompt: int = N_PER_PROMPT, seed: int = 0,
           num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
           batch_size: int = 200, progress: str | None = None) -> torch.Tensor:
    """Samples (10·n, 1, 16, 16) in [0, 1], digit-major. Sample j of every digit uses the noise seed
    seed·100003 + j, so two transformers are compared on identical noise. `progress`: the name of a
    progress.bar task over the denoising steps of all batches (off a terminal, a line per tenth)."""
    from compress.progress import bar

    pipe = load_toy_pipeline(family, transformer=transformer)
    prompts, _ = prompts_and_labels(n_per_prompt)
    seeds = [seed * 100003 + j for _ in range(10) for j in range(n_per_prompt)]
    starts = range(0, len(prompts), batch_size)
    out = []
    with bar(progress is not None) as shown:
        task = shown.add_task(progress or "sampling", total=len(starts) * num_inference_steps)
        pipe.progress_bar = functools.partial(_stepping, shown, task)  # the pipeline's loop over its timesteps
        for start in starts:
            chunk = slice(start, start + batch_size)
            generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
            out.append(pipe(prompts[chunk], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                            generator=generators, output_type="pt").images.cpu())
    return torch.cat(out)


def _stepping(shown, task, iterable=None, total=None):
    """The pipeline's progress_bar: its timesteps, `task` of the bar `shown` advanced after each step."""
    for t in iterable:
        yield t
        shown.advance(task)


# ---- scores --------------------------------------------------------------------------------------


def quality_scores(samples: torch.Tensor, labels: np.ndarray, seed: int = 0) -> dict:
    """adherence, fd, mmd of samples (N, 1, 16, 16) in [0, 1] prompted with `labels`, plus the real floors."""
    pixels = to_pixels(samples)
    held = features(real_pixels("heldout")[0])
    gen = features(pixels)
    return {
        "adherence": float((classifier().predict(pixels) == labels).mean()),
        "fd": frechet_distance(gen, held),
        "mmd": mmd(gen, held),
        **real_floor(len(samples), seed),
    }


@functools.lru_cache(maxsize=8)
def real_floor(n: int, seed: int = 0) -> dict:
    """Real vs real: n random train digits against held-out, and the classifier's held-out accuracy."""
    train = features(real_pixels("train")[0])
    pick = np.random.default_rng(seed).choice(len(train), size=min(n, len(train)), replace=False)
    held = features(real_pixels("heldout")[0])
    return {
        "fd_floor": frechet_distance(train[pick], held),
        "mmd_floor": mmd(train[pick], held),
        "classifier_heldout_accuracy": classifier_accuracy(),
    }


@torch.no_grad()
def prediction_error(student, teacher, family: str, n: int = N_PRED, seed: int = 0, cfg: bool = False) -> float:
    """||student_pred − teacher_pred|| / ||teacher_pred|| (Frobenius, over the whole batch) on n held-out
    (noised latent, timestep, prompt) triples from `model_inputs`: one batched forward each, no sampling."""
    kwargs = model_inputs(family, n, seed=seed, split="heldout", cfg=cfg)
    preds = []
    for model in (student, teacher):
        param = next(model.parameters())
        on_model = moved(kwargs, param.device, param.dtype)
        preds.append(model(**on_model).sample.double().cpu())
    student_pred, teacher_pred = preds
    return float((student_pred - teacher_pred).norm() / teacher_pred.norm())


@torch.no_grad()
def guided_prediction_error(student, teacher, family: str, n: int = N_PRED, seed: int = 0,
                            scale: float = DEFAULT_GUIDANCE) -> float:
    """||g(student) − g(teacher)|| / ||g(teacher)|| of the guided prediction g = uncond + scale · (cond − uncond)
    the toy pipeline samples with, on prediction_error's n held-out triples (`model_inputs` with cfg: each
    triple's empty-prompt row beside its prompt's, the same noisy latent and timestep): one batched forward
    of the 2n rows each."""
    from compress.guided import guided, relative_distance

    kwargs = model_inputs(family, n, seed=seed, split="heldout", cfg=True)  # rows [uncond × n; cond × n]
    preds = []
    for model in (student, teacher):
        param = next(model.parameters())
        pred = model(**moved(kwargs, param.device, param.dtype)).sample.double().cpu()  # (2n, ...)
        preds.append(guided(pred[:n], pred[n:], scale))
    return relative_distance(preds[:1], preds[1:])


def evaluate(transformer, family: str, teacher=None, seed: int = 0, n_per_prompt: int = N_PER_PROMPT,
             num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
             n_pred: int = N_PRED, progress: bool = False) -> dict:
    """All scores of `transformer` (a toy-family diffusers model, compressed or not) as a flat JSON-able dict:
    family, n_samples, steps, guidance, adherence, fd, mmd, fd_floor, mmd_floor, classifier_heldout_accuracy,
    and with `teacher`: psnr_vs_teacher, pred_rel_error and (guidance above 1) guided_error. Deterministic for a given seed. `progress`: a bar
    over each model's sampling steps ('eval: sampling (model)', '(teacher)'; a line per tenth in a log)."""
    check_seed(seed)
    prompts, labels = prompts_and_labels(n_per_prompt)
    settings = dict(n_per_prompt=n_per_prompt, seed=seed, num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale)
    samples = sample(transformer, family, **settings, progress="eval: sampling (model)" if progress else None)
    result = {"family": family, "n_samples": len(prompts), "steps": num_inference_steps,
              "guidance": guidance_scale, "seed": seed}
    result.update(quality_scores(samples, labels, seed))
    if teacher is not None:
        teacher_samples = sample(teacher, family, **settings, progress="eval: sampling (teacher)" if progress else None)
        result["psnr_vs_teacher"] = psnr(samples, teacher_samples)
        result["pred_rel_error"] = prediction_error(transformer, teacher, family, n=n_pred, seed=seed)
        if guidance_scale > 1:  # the pipeline guides (runner_heldout's guided error, on these triples)
            result["guided_error"] = guided_prediction_error(transformer, teacher, family, n=n_pred, seed=seed,
                                                             scale=guidance_scale)
        from compress.eval_errors import warn_if_not_finite  # (shared with a real model's eval)

        warn_if_not_finite(result, f"the {n_pred} held-out triples")
    return result


def unguided_run_note(out, result: dict) -> str | None:
    """The note for `result` (evaluate's, with its teacher) of the output folder `out` whose recipe.yaml
    calibrated without the empty prompt's branch (calibration.cfg_branches: false): its guided_error is
    at the guidance eval samples with (the toy pipeline's), a branch that run neither calibrated nor
    checked (its held-out check measured no guided error). None otherwise, or where recipe.yaml is
    missing or unreadable."""
    import yaml

    if "guided_error" not in result:
        return None
    try:
        recipe = yaml.safe_load((Path(out) / "recipe.yaml").read_text(encoding="utf-8")) or {}
        calibration = recipe.get("calibration") or {}
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return None
    if not isinstance(calibration, dict) or calibration.get("cfg_branches") is not False:
        return None
    return (f"guided_error is at guidance {result['guidance']:g}, the toy pipeline's, which eval samples the "
            f"digits with; the run of {out} calibrated without the empty prompt's branch that guided sampling "
            "reads (its recipe.yaml's calibration.cfg_branches: false), and measured no guided error of its own")


def measured_on_line(result: dict, report: dict, n_pred: int = N_PRED, of_run: bool = True) -> str | None:
    """eval's line below a toy model's pred_rel_error (and guided_error), `result` (evaluate's, with a teacher):
    the inputs they are measured on, the toy's `n_pred` held-out triples, not the run's (`of_run` False: a
    model no run made, a toy given as it is, has no run's inputs to set them apart from); and where `report`
    (the output's report.json, {} for none) holds the run's figures of the exported weights (its `export`),
    those beside, on its `heldout.inputs` held-out inputs. None without pred_rel_error. Not where the output
    took LoRAs after its run: its export's figures are of the weights before the merge."""
    from compress.report import is_number

    names = [k for k in ("pred_rel_error", "guided_error") if k in result]
    if "pred_rel_error" not in names:
        return None
    on = f"{' / '.join(names)}: on the toy's {n_pred} held-out triples (seed {result.get('seed', 0)})"
    on += ", not the run's inputs" if of_run else ""
    export = report.get("export") if isinstance(report.get("export"), dict) else {}
    keys = {"pred_rel_error": "relative_error", "guided_error": "guided_error"}
    figures = [export.get(keys[k]) for k in names]
    if report.get("loras") or not all(is_number(f) for f in figures):
        return f"({on})"
    inputs = (report.get("heldout") or {}).get("inputs") if isinstance(report.get("heldout"), dict) else None
    its = f"its {inputs:,} held-out inputs" if is_number(inputs) else "its held-out inputs"
    return f"({on}; the run measured {' / '.join(f'{f:.4g}' for f in figures)} on {its}: report.json export)"


def check_seed(seed) -> None:
    """A seed every generator here takes (0 .. 2**32-1), or a one-line UserError before any sampling."""
    if type(seed) is not int or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"seed must be an integer from 0 to {SEED_LIMIT - 1}, got {seed!r}")


def evaluate_real(seed: int = 0, n: int = 10 * N_PER_PROMPT) -> dict:
    """The same scores for real digits: held-out classified (adherence) and a train subsample vs held-out."""
    floor = real_floor(n, seed)
    return {"family": "real", "n_samples": n, "adherence": floor["classifier_heldout_accuracy"],
            "fd": floor["fd_floor"], "mmd": floor["mmd_floor"], **floor}
