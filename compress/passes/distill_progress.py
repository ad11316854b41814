"""The loss terms distill shows while it trains, in a few words: after its progress bar on a terminal,
in its line per tenth of the run off one (a job's log file; `compress.progress.bar` draws and logs)."""

from __future__ import annotations

TERMS = ("loss", "task", "out", "feat")


def fmt_terms(row: dict, weights: dict | None = None) -> str:
    """'loss 50.13 out 7.335 feat 427.9': the loss and the terms of `row` whose weight in it is not 0
    (`weights`: {term: its lambda}, `weights_of`; None: every term): a term of weight 0 (lambda_task, 0 in
    every shipped recipe) is no part of the loss, and its words wrapped distill's bar at 80 columns."""
    return " ".join(f"{k} {row[k]:.4g}" for k in TERMS if k == "loss" or weights is None or weights.get(k))


def weights_of(cfg) -> dict:
    """{term: its weight in the loss} of a DistillConfig `cfg` (its lambda_task, lambda_out, lambda_feat)."""
    return {k: getattr(cfg, f"lambda_{k}") for k in TERMS if k != "loss"}
