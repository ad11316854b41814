"""The loss terms distill shows while it trains, in a few words: after its progress bar on a terminal,
in its line per tenth of the run off one (a job's log file; `compress.progress.bar` draws and logs)."""

from __future__ import annotations

TERMS = ("loss", "task", "out", "feat")


def fmt_terms(row: dict) -> str:
    return " ".join(f"{k} {row[k]:.4g}" for k in TERMS)
