"""`inspect --plot DIR`'s figures: ranks.png and the spectra of the most and the least compressed
layers, each marked at the rank the svd cut it (`svd_cut`), its title and legend saying where a LoRA grew
it since."""

from __future__ import annotations

from pathlib import Path

from compress.errors import UserError
from compress.report import console, plot_ranks, plot_spectrum


def write_plots(rows: list[dict], report: dict, plot_dir: Path) -> list[Path]:
    """ranks.png and the spectra of the most and the least compressed layers into `plot_dir`, each
    said as written; a PNG that cannot be written (a folder of its name, no permission, a full disk)
    is a one-line UserError naming it."""
    layers = ((report.get("svd") or {}).get("layers") or {})
    cuts = {r["name"]: svd_cut(r, layers.get(r["name"], {})) for r in rows}  # the spectrum is the svd's: so is the cut
    chosen = [r for r in rows if cuts[r["name"]] and layers.get(r["name"], {}).get("spectrum")]
    chosen.sort(key=lambda r: svd_kept(r, cuts[r["name"]]))
    plots = [(plot_dir / "ranks.png", lambda p: plot_ranks(rows, p))]
    for r in chosen[:2] + chosen[-2:]:  # the most and the least compressed layers, as the svd cut them
        plots.append((plot_dir / f"spectrum-{r['name'].replace('.', '_')}.png",
                      lambda p, r=r: plot_spectrum(spectrum_title(r, cuts[r["name"]]), layers[r["name"]]["spectrum"],
                                                   cuts[r["name"]], p, label=cut_label(r, cuts[r["name"]]))))
    paths = []
    for path, plot in plots:
        try:
            paths.append(plot(path))
        except OSError as e:
            raise UserError(f"--plot: cannot write {path} ({e.strerror or e})") from None
        console.print(f"wrote {path}")
    return paths


def svd_cut(row: dict, record: dict) -> int | None:
    """The rank the svd cut a layer at (its report `record`'s), before a LoRA grew it (dit-compress
    lora: `row`'s rank is the model's now); the row's rank where the report records none."""
    return record["rank"] if isinstance(record.get("rank"), int) and record["rank"] > 0 else row["rank"]


def svd_kept(row: dict, rank: int) -> float:
    """The fraction of a layer's dense parameters the svd's cut at `rank` kept (row: layer_rows')."""
    from compress.linalg_params import params_lowrank

    out_features, in_features = row["shape"]
    bias = row["dense_params"] > out_features * in_features
    return params_lowrank(out_features, in_features, rank, bias) / row["dense_params"]


def cut_label(row: dict, rank: int) -> str:
    """A spectrum plot's legend for the svd's cut at `rank`: 'rank 8', and where a LoRA grew the layer
    since, by how much ('rank 8 + LoRA 4') or that it is stored dense now, as spectrum_title says."""
    if row["rank"] == rank:
        return f"rank {rank}"
    return f"rank {rank} + LoRA {row['rank'] - rank}" if row["rank"] else f"rank {rank} + LoRA (stored dense now)"


def spectrum_title(row: dict, rank: int) -> str:
    """A spectrum plot's title: the layer's name, and where a LoRA grew it since the svd's cut at
    `rank` (marked), by how much ('+ LoRA 4') or that it is stored dense now."""
    if row["rank"] == rank:
        return row["name"]
    grown = f"+ LoRA {row['rank'] - rank}: rank {row['rank']} now" if row["rank"] else "+ LoRA: stored dense now"
    return f"{row['name']} (svd's cut; {grown})"
