"""What the distill pass shows while it trains: a progress bar on a terminal, a log line per tenth of
the run off one (a job's log file), the loss terms in a few words."""

from __future__ import annotations

TERMS = ("loss", "task", "out", "feat")


def fmt_terms(row: dict) -> str:
    return " ".join(f"{k} {row[k]:.4g}" for k in TERMS)


def progress_bar(enabled: bool):
    """The bar on the terminal the notes go to (stderr). Off a terminal (a log file) rich would draw
    nothing until the end: `log_line` writes a line per tenth of the run there instead."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from compress.report import console

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[terms]}"), console=console,
                    disable=not (enabled and console.is_terminal))


def log_line(enabled: bool, step: int, steps: int, row: dict) -> None:
    """One line per tenth of the run (and the last step) where the bar is not drawn."""
    from compress.report import console

    if enabled and not console.is_terminal and (step % max(1, steps // 10) == 0 or step == steps):
        console.print(f"distill {step}/{steps} {fmt_terms(row)}", highlight=False)
