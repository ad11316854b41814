"""Progress of long work. On a terminal, rich's bar; off one (a job's log file) or on a dumb one
(TERM=dumb), where the bar is not drawn, a line per tenth of each task and at least one every
`LOG_EVERY_S` while it is unfinished (a timer's where one unit of work outlasts that), so a pass that
runs for hours (calibration and svd of a real model) does not look hung in the log."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from rich.measure import Measurement
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column, Table
from rich.text import Text

LOG_EVERY_S = 300.0  # the longest silence between two lines off a terminal, while a task is unfinished
WORDS = "words"  # a task's field of a few words shown after its bar and in its lines (distill's loss terms)
BAR_AT_LEAST = 4  # the bar's narrowest, on a narrow terminal, before its label is cut short ('…')
# a label's start kept whole on a narrow terminal before the bar and the times go (a pass and what it
# does: 'remove_blocks learned', 'calibrate: conditioning')
LABEL_AT_LEAST = 24
WORDS_AT_LEAST = 10  # the words' start ('loss 0.12…') kept before the label is cut below LABEL_AT_LEAST
BAR, ELAPSED, REMAINING = 1, 3, 4  # `bar`'s columns that go on a narrow terminal, in the order they go
# a label of a name the user gave (convert's file): with the bar at BAR_AT_LEAST, a count of up to five
# digits and both times, whole at 80 columns (shortened)
NAMED_LABEL_MOST = 40


class LoggedProgress(Progress):
    """A rich `Progress` that, where `log` is set, also prints '<description> <done>/<total> [<words>]
    (<elapsed>)' to its console as each task crosses a tenth of its total (or LOG_EVERY_S after its
    last line); <words>, the task's WORDS field where it has one. A task added part done (a resumed
    run's) logs from the next tenth on. While it runs (start to stop, `with`), a timer thread logs
    each unfinished task's line LOG_EVERY_S after its last one even where it does not advance (one
    unit of work of more than LOG_EVERY_S: a real Flux block's calibration); never after stop."""

    def __init__(self, *columns, log: bool = False, **kwargs):
        super().__init__(*columns, **kwargs)
        self.log = log
        self._logged: dict[TaskID, tuple[int, float]] = {}  # task -> (tenths logged, when)
        self._saying = threading.Lock()  # one line at a time, from advance/update or the timer
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        super().start()
        if self.log and self._ticker is None:
            self._stopped.clear()
            self._ticker = threading.Thread(target=self._tick, name="progress-log", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            with self._saying:  # a line being printed ends first; none after this
                self._stopped.set()
            self._ticker.join()
            self._ticker = None
        super().stop()

    def _tick(self) -> None:
        """The timer: every tenth of LOG_EVERY_S, each unfinished task's line where LOG_EVERY_S passed
        since its last."""
        while not self._stopped.wait(max(LOG_EVERY_S / 10, 0.01)):  # (a floor: no spin where it is 0)
            with self._lock:
                ids = [i for i, task in self._tasks.items() if task.total and not task.finished]
            for task_id in ids:
                self._log_line(task_id, timer=True)

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        task = self._tasks[task_id]
        self._logged[task_id] = (tenths(task.completed, task.total), self.get_time())
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_line(task_id)

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        if "advance" in kwargs or "completed" in kwargs:
            self._log_line(task_id)

    def make_tasks_table(self, tasks):
        """rich's table of the bars, fitted to the terminal by `fitted` (else rich cut every column alike:
        'calibrate: capture again, ... ━━ 0… 0:… -…', and at 40 columns 'remove_bl… ━━━ 0/200')."""
        table = super().make_tasks_table(tasks)
        if getattr(self, "live", None) is None:  # (rich's __init__ makes one before its console is kept)
            return table
        widths = [max((Measurement.get(self.console, self.console.options, cell).maximum for cell in c.cells),
                      default=0) for c in table.columns]
        kept, label_most, words_most = fitted(self.console.width, widths)
        columns = [c.copy() for i, c in enumerate(table.columns) if i in kept]  # (copies: no cells)
        label, words = columns[0], columns[-1]
        label.no_wrap, label.overflow, label.max_width = True, "ellipsis", label_most
        words.no_wrap, words.overflow, words.max_width = True, "ellipsis", words_most or None  # (None: no words)
        shown = Table.grid(*columns, padding=(0, 1), expand=self.expand)
        for row in range(table.row_count):
            shown.add_row(*(c._cells[row] for i, c in enumerate(table.columns) if i in kept))
        return shown

    def _log_line(self, task_id: TaskID, timer: bool = False) -> None:
        with self._saying:
            task = self._tasks.get(task_id)
            if not self.log or task is None or not task.total or timer and self._stopped.is_set():
                return
            now = self.get_time()  # rich's clock, as task.start_time
            logged, last = self._logged[task_id]
            reached = tenths(task.completed, task.total)
            if reached > logged or now - last >= LOG_EVERY_S:
                self._logged[task_id] = (max(reached, logged), now)
                what = Text.from_markup(str(task.description)).plain
                words = task.fields.get(WORDS)
                self.console.print(f"{what} {task.completed:g}/{task.total:g}{f' {words}' if words else ''} "
                                   f"({_clock(task.elapsed or 0.0)})", highlight=False, markup=False)


def fitted(width: int, widths: list[int]) -> tuple[set[int], int, int]:
    """Which of `bar`'s columns show on a terminal `width` wide, and the label's and the words' widest,
    given each column's widest cell (`widths`: label, bar, count, elapsed, remaining, words). The count
    is not cut (but on a terminal too narrow for it and the words' start). The bar narrows first (to
    BAR_AT_LEAST), then the label is cut short ('…') down to LABEL_AT_LEAST, then the bar goes, then the
    elapsed and the remaining time, then the words are cut down to WORDS_AT_LEAST, then the label
    further: at 40 columns 'remove_blocks learned   0/200 loss 0.12…' (41 whole), the pass whole."""
    label, words = widths[0], widths[-1]
    kept = set(range(len(widths)))

    def room() -> int:  # the label's, beside the others whole (the bar at its narrowest) and a gap each
        return width - sum(BAR_AT_LEAST if i == BAR else widths[i] for i in kept if i != 0) - (len(kept) - 1)

    for going in (BAR, ELAPSED, REMAINING):
        if room() >= min(label, LABEL_AT_LEAST):
            break
        kept.discard(going)
    words_most = max(min(words, words + room() - min(label, LABEL_AT_LEAST)), min(words, WORDS_AT_LEAST))
    return kept, max(room() + words - words_most, 1), words_most


class _Words(ProgressColumn):
    """A task's WORDS field ('' where it has none)."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get(WORDS, "")))


def bar(enabled: bool, *, log: bool = True, transient: bool = True) -> LoggedProgress:
    """A bar with its count, elapsed and remaining time (and a task's WORDS) on the terminal the notes
    go to (stderr), or nothing where that is not a terminal (rich would leave a blank line per bar in
    the log) but, with `log`, a line per tenth there. enabled=False: neither (a recipe's `progress:
    false`, or a process of a launch other than rank 0)."""
    from compress.report import console

    shown = enabled and drawn(console)
    whole = lambda: Column(no_wrap=True)  # noqa: E731  (the count, times and words: LoggedProgress.make_tasks_table)
    return LoggedProgress(TextColumn("{task.description}"), BarColumn(None, table_column=Column(max_width=40)),
                          MofNCompleteColumn(table_column=whole()), TimeElapsedColumn(table_column=whole()),
                          TimeRemainingColumn(table_column=whole()), _Words(table_column=whole()), console=console,
                          disable=not shown, transient=transient, log=enabled and log and not drawn(console))


def drawn(console) -> bool:
    """Whether rich draws its bars and spinners on `console`: a terminal, not a dumb one (TERM=dumb: an
    Emacs shell, some CI ttys, where rich draws nothing and leaves a blank line): there, as in a log,
    the lines instead."""
    return console.is_terminal and not console.is_dumb_terminal


def tenths(done: float, total: float | None) -> int:
    """How many tenths of `total` are done (0 where there is no total yet)."""
    return int(10 * done / total) if total else 0


def _clock(seconds: float) -> str:
    """'0:42', '12:05', '3:02:17': the elapsed time as rich's bar shows it."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class _Said:
    """Off a terminal, where rich's spinner prints nothing: each status text as a line."""

    def __init__(self, console, text: str):
        self.console = console
        self.update(text)

    def update(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


class _Quiet:
    """Off a terminal, a status that says nothing (status(log=False))."""

    def update(self, text: str) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


def status(text: str, log: bool = True):
    """rich's spinner with `text` on the terminal the notes go to (stderr); off a terminal (a job's log)
    the text as a line, and each `update` another, so a step of minutes is not a silent log. log=False:
    nothing off a terminal (where a UserError the step may raise must be stderr's one line)."""
    from compress.report import console

    if drawn(console):
        return console.status(text)
    return _Said(console, text) if log else _Quiet()


@contextlib.contextmanager
def no_library_bars(text_encoders: bool = False):
    """diffusers' tqdm bars held off ('Loading checkpoint shards' of a sharded checkpoint, 'Loading
    pipeline components' of a pipeline: a second kind of bar beside the commands' own, rich's), and
    transformers' too where `text_encoders` (a pipeline's load: 'Loading weights' of each text
    encoder; not imported otherwise), each put back as it was: a library user who turned them off
    keeps them off."""
    import importlib.util

    from diffusers.utils import logging as diffusers_logging

    libraries = [diffusers_logging]
    if text_encoders and importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as transformers_logging

        libraries.append(transformers_logging)
    shown = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was in zip(libraries, shown):
            if was:
                library.enable_progress_bar()


def shortened(name: str, most: int) -> str:
    """`name` in at most `most` characters: a longer one keeps its start and its end (a file's extension
    and the 6 characters before it), '…' between ('flux1-dev-fp8…merged.safetensors'); rich would cut
    its end, the extension first."""
    if len(name) <= most:
        return name
    tail = min(len(Path(name).suffix) + 6, most - 9)  # the start: at least 8 characters
    return name[:most - 1 - tail] + "…" + name[len(name) - tail:]


def read_back_label(doing: str, read_back: int, total: int, whole: str | None = None) -> str:
    """A bar's label of work on `total` items, `read_back` of them read back from what an earlier
    (interrupted) run wrote: `doing` ('sample calibration prompts'), '(480 read back)' after it where
    some were, `whole` (default `doing`) and '(read back)' where all were ('calibration prompts (read back)')."""
    if total and read_back == total:
        return f"{whole or doing} (read back)"
    return doing + (f" ({read_back} read back)" if read_back else "")
