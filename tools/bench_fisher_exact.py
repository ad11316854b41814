"""The output Fisher's probe estimate against the exact one, on the embedded default: run
`recipes/toy-pixart.yaml` as shipped (today's defaults: `svd.objective: auto`, which runs its svd passes
as `guided_compensation`, a distill pass following) up to the end of its attention/MLP svd pass
(passes.2), and for each layer that pass factorized under an output Fisher print the loss of the
factors it made (at its `fisher_probes`), in the objective weighted by the exact output Fisher, over
that objective's rank-r optimum (1: the factors the exact Fisher would give); then the same for the
factors the `--probes` estimates give of the same matrix at the same rank. The exact Fisher is
measured right after the pass's own sweeps, on the same model and calibration batches: one probe per
coordinate of a sample's prediction (one-hot, the same coordinate in every sample), so Σ gᵀg over
them is the expectation Σ JᵀJ that the random probes estimate; the estimates use the pass's draws
(seed 0); all damped as the pass damps (`fisher_damping`). The matrix factorized (W, or W + βΔ where
compensation stepped) and its input or output Gram are the pass's own. Each line also gives the ratio
in the estimate's own objective (report.json's `loss_ratio`: about 1.000000). The run stops as the
next pass starts its Fisher sweeps.

    python tools/bench_fisher_exact.py [--probes 4 16 64] [--save FILE] [--set KEY.PATH=VALUE ...]
    python tools/bench_fisher_exact.py --load FILE

docs/RECIPES.md's `fisher_probes` row quotes its median and worst ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
from pathlib import Path

import torch

from compress.passes import svd_fisher, svd_fisher_measure, svd_layer, svd_stages
from compress.passes.svd_fisher import FisherSum, dense_fisher
from compress.linalg import factors_from
from compress.passes.svd_fisher_roots import sqrt_pair
from compress.recipe import load_recipe
from compress.runner import Runner

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "toy-pixart.yaml"
SVD = 2  # the attention / cross-attention / MLP svd pass of the recipe
F64 = torch.float64


def exact_probe(ends, names, outputs, probes, gen, fisher, merged=None) -> None:
    """svd_fisher._probe with one one-hot probe per coordinate of each sample's prediction (the
    same coordinate in every sample of the batch) instead of `probes` random ones: Σ over them of
    gᵀg is the expectation of the random probes' estimate (the exact output Fisher)."""
    merged = merged or {}
    ys = [outputs[n] for n in names]
    coords = [(k, j) for k, e in enumerate(ends) for j in range(e[0].numel())]
    for p, (k, j) in enumerate(coords):
        e = ends[k]
        total = e.reshape(e.shape[0], -1)[:, j].sum()
        grads = torch.autograd.grad(total, ys, retain_graph=p < len(coords) - 1, allow_unused=True)
        for n, g in zip(names, grads):
            if g is None:
                raise RuntimeError(f"'{n}' does not reach the probed output")
            if n in merged:
                g = g[merged[n][0].to(g.device)] + g[merged[n][1].to(g.device)]
            fisher.setdefault(n, FisherSum()).add(g)


class Recorder:
    """Patches the svd pass for one run: its Fisher sweeps also measure the exact Fisher of the
    same targets (`exact`: name -> F (out, out) float64), and each output-weighted layer it
    factorizes leaves (its math, the estimate's root, rank, the layer it made) in `layers`."""

    def __init__(self, damping: float, more: list[int]):
        self.damping, self.more = damping, more
        self.estimates: dict[int, dict[str, torch.Tensor]] = {}  # k -> name -> the k-probe estimate
        self.exact: dict[str, torch.Tensor] = {}
        self.layers: dict[str, dict] = {}  # name -> the committed candidate
        self.candidates: dict[int, dict] = {}  # key -> a factorization not yet committed
        self.keys = itertools.count()
        self._factors = None

    @contextlib.contextmanager
    def patched(self):
        sweeps, compress_layer = svd_fisher_measure.sweeps, svd_stages.compress_layer
        low_rank, commit = svd_layer.LowRankLinear, svd_stages.Stages.commit
        recorder = self

        def both_sweeps(model, adapter, batches, chunks, probes, roots, progress=True, guide=None):
            if recorder.exact:  # a later pass's sweeps: the measured pass is done
                raise Done
            sweeps(model, adapter, batches, chunks, probes, roots, progress, guide)
            recorder.measure_exact(model, adapter, batches, chunks, guide)  # the first: passes.2's

        class Recorded(low_rank):
            @classmethod
            def from_factors(cls, up, down, bias, dtype=None):
                recorder._factors = (up.detach().to(F64), down.detach().to(F64))
                return low_rank.from_factors(up, down, bias, dtype=dtype)

        def recorded_layer(model, info, stats, **kw):
            """compress_layer, keeping each candidate's math and factors under a key in its record
            (the line search tries several steps; `committed` keeps the one the pass commits)."""
            root, m = kw.get("out_root"), None
            if root is not None and info.name in recorder.exact and info.name not in recorder.layers:
                m = svd_layer.layer_math(model.get_submodule(info.name), stats, kw["gram_is_output"],
                                         kw["center"], kw.get("step"), kw.get("offset"))
            recorder._factors = None
            record = compress_layer(model, info, stats, **kw)
            if m is not None and recorder._factors is not None and isinstance(record.get("rank"), int):
                key = next(recorder.keys)
                recorder.candidates[key] = dict(name=info.name, math=m, root=root[0].to(F64),
                                                rank=record["rank"], alpha=kw["alpha"],
                                                factors=recorder._factors)
                record = dict(record, bench_candidate=key)
            return record

        def committed(stages, info, record):
            key = record.get("bench_candidate")
            if key is not None:
                c = recorder.candidates[key]
                recorder.layers[info.name] = dict(c, made=made_of(c["math"], *c["factors"], c["root"]),
                                                  loss_ratio=record.get("loss_ratio"))
            for k in [k for k, c in recorder.candidates.items() if c["name"] == info.name]:
                del recorder.candidates[k]
            return commit(stages, info, {k: v for k, v in record.items() if k != "bench_candidate"})

        svd_fisher_measure.sweeps, svd_stages.compress_layer = both_sweeps, recorded_layer
        svd_layer.LowRankLinear, svd_stages.Stages.commit = Recorded, committed
        try:
            yield self
        finally:
            svd_fisher_measure.sweeps, svd_stages.compress_layer = sweeps, compress_layer
            svd_layer.LowRankLinear, svd_stages.Stages.commit = low_rank, commit

    def measure_exact(self, model, adapter, batches, chunks, guide) -> None:
        """The exact Fisher of each target (one-hot probes), and its estimate at each of `self.more`
        probe counts (the pass's own draws: seed 0, as svd_fisher.sweeps)."""
        probe = svd_fisher._probe
        for names in chunks:
            for k in self.more:
                for name, f in svd_fisher.output_fisher(model, adapter, batches, names, k, guide=guide).items():
                    self.estimates.setdefault(k, {})[name] = dense_fisher(f)
            svd_fisher._probe = exact_probe
            try:
                for name, f in svd_fisher.output_fisher(model, adapter, batches, names, 1, guide=guide).items():
                    self.exact[name] = dense_fisher(f)
            finally:
                svd_fisher._probe = probe

    def ratios(self) -> dict[str, dict]:
        return ratios_of(self.layers, self.exact, self.estimates, self.damping)


def ratios_of(layers: dict, exact: dict, estimates: dict, damping: float) -> dict[str, dict]:
    """name -> {"pass": (loss / optimum under the exact Fisher of the factors the pass made, the
    same under its estimate), k: (that of the factors from the k-probe estimate, at the same rank of
    the same matrix, the same under that estimate)}; None where the optimum is 0."""
    out = {}
    for name, rec in layers.items():
        root_exact = sqrt_pair(exact[name], damping)[0]
        row = {"pass": (ratio(rec, rec["made"], root_exact, name), ratio(rec, rec["made"], rec["root"], name))}
        for k, fishers in estimates.items():
            root, inv = sqrt_pair(fishers[name], damping)
            made = factors(rec, root, inv, name)
            row[k] = (ratio(rec, made, root_exact, name), ratio(rec, made, root, name))
        out[name] = row
    return out


def made_of(m, up: torch.Tensor, down: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """The layer a factorization makes, as the map the loss reads: W' = up·down (out, in) for an
    input Gram; for an output Gram the projection P (out, out) with W' = P W, P = L⁻¹ Q Qᵀ L
    (Q: an orthonormal basis of L·up, L the root it was fitted under)."""
    if not m.gram_is_output:
        return up @ down
    q, _ = torch.linalg.qr(root @ up)
    return torch.linalg.solve(root, q @ (q.T @ root))


def factors(rec: dict, root: torch.Tensor, inv: torch.Tensor, name: str) -> torch.Tensor:
    """made_of the whitened factors of the recorded matrix, at its rank, under the output weighting L = root."""
    m = rec["math"]
    w = svd_layer.weighted(m, root)
    dec = svd_layer.decompose_layer(w, "whitened", rec["alpha"], name)
    fac = factors_from(dec, w.weight, rec["rank"], name=name)
    return made_of(m, inv @ fac.up, fac.down, root)


def ratio(rec: dict, made: torch.Tensor, root: torch.Tensor, name: str) -> float:
    """Loss of the layer `made` (made_of) over the rank-r optimum, both in the objective weighted by L = root."""
    m, rank = rec["math"], rec["rank"]
    if m.gram_is_output:
        a = root @ (torch.eye(made.shape[0], dtype=F64) - made)  # (out, out)
        loss = float(torch.diagonal(a @ m.gram @ a.T).sum())
    else:
        err = root @ (m.weight - made)  # (out, in)
        loss = float(((err @ m.gram) * err).sum())
    w = svd_layer.weighted(m, root)
    optimum = float(svd_layer.decompose_layer(w, "whitened", rec["alpha"], name).curve[rank])
    return loss / optimum if optimum > 1e-10 * w.energy else None  # None: the data spans at most r directions


class Done(BaseException):
    """Raised as the next pass after the measured one starts its Fisher sweeps: nothing later is read."""


def run(tmp: Path, more: list[int], sets: list[str], save: Path | None = None) -> tuple[int, dict]:
    """(the pass's fisher_probes, Recorder.ratios) of one run of the recipe with `sets`; save: a
    torch.save of what the ratios are computed from (layers, exact Fishers, estimates, damping)."""
    recipe = load_recipe(RECIPE, sets)
    config = recipe.passes[SVD].config
    with Recorder(config.fisher_damping, more).patched() as rec:
        try:
            Runner(recipe, tmp / "out", tmp / "run").run()
        except Done:
            pass
    if save is not None:
        torch.save(dict(layers=rec.layers, exact=rec.exact, estimates=rec.estimates, damping=rec.damping,
                        fisher_probes=config.fisher_probes), save)
    return config.fisher_probes, rec.ratios()


def summary(ratios: dict, key) -> str:
    exact = {n: r[key][0] for n, r in ratios.items() if r[key][0] is not None}
    est = [r[key][1] for r in ratios.values() if r[key][1] is not None]
    if not exact:
        return "no layer has a nonzero optimum"
    worst = max(exact, key=exact.get)
    return (f"median {statistics.median(exact.values()):.4f}, worst {exact[worst]:.4f} ({worst}); in the "
            f"estimate's own objective median {statistics.median(est):.6f}, worst {max(est):.6f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", nargs="+", type=int, default=[4, 16, 64])
    parser.add_argument("--save", type=Path, help="keep what the ratios are computed from (torch.save)")
    parser.add_argument("--load", type=Path, help="the ratios of a --save's file, without a run (--probes: its own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args(argv)
    if args.load:
        saved = torch.load(args.load, weights_only=False)
        own, args.probes = saved.get("fisher_probes", "?"), list(saved["estimates"])
        ratios = ratios_of(saved["layers"], saved["exact"], saved["estimates"], saved["damping"])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            own, ratios = run(Path(tmp), args.probes, args.overrides, args.save)
    none = sum(r["pass"][0] is None for r in ratios.values())
    print(f"{len(ratios) - none} output-weighted layers of passes.{SVD}.svd; loss / rank-r optimum in the objective with "
          "the exact output Fisher (1 = the exact Fisher's factors)"
          + (f"; {none} more whose calibration data spans at most their rank (an optimum of 0) left out:" if none else ":"))
    print(f"  the factors the pass made (fisher_probes {own}): {summary(ratios, 'pass')}")
    for k in args.probes:
        print(f"  factors from a {k}-probe estimate (same matrix, rank): {summary(ratios, k)}")


if __name__ == "__main__":
    main()
