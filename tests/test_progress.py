"""Progress off a terminal (a job's log): a line per tenth of each task, and one at least every
LOG_EVERY_S while it advances; nothing where progress is off; the bar alone on a terminal."""

from __future__ import annotations

import os

import pytest
from rich.console import Console

from compress.progress import LOG_EVERY_S, LoggedProgress, bar


def _lines(err: str, what: str) -> list[str]:
    return [line.split()[-2] for line in err.splitlines() if line.startswith(what)]


def test_off_a_terminal_a_line_per_tenth_of_each_task(capsys):
    with bar(True) as b:
        blocks, small = b.add_task("calibrate: blocks", total=20), b.add_task("sample prompts", total=3)
        for i in range(20):
            b.update(blocks, description=f"calibrate: block {i}")
            b.advance(blocks)
        for _ in range(3):
            b.advance(small, 1)
    out, err = capsys.readouterr()
    assert out == ""
    assert _lines(err, "calibrate: block") == [f"{s}/20" for s in range(2, 21, 2)]
    assert "calibrate: block 19 20/20 (0:00)" in err.splitlines()  # the description as it is then
    assert _lines(err, "sample prompts") == ["1/3", "2/3", "3/3"]


def test_a_slow_task_logs_at_least_every_few_minutes():
    """A tenth of a pass over a real model can be an hour: its lines come every LOG_EVERY_S too."""
    clock = [0.0]
    console = Console(record=True, width=200, force_terminal=False)
    prog = LoggedProgress(console=console, get_time=lambda: clock[0], disable=True, log=True)
    task = prog.add_task("calibrate: blocks", total=1000)
    for _ in range(9):  # 9 steps of a 1000: no tenth crossed
        clock[0] += LOG_EVERY_S / 3
        prog.advance(task)
    lines = console.export_text().splitlines()
    assert [line.split()[2] for line in lines] == ["3/1000", "6/1000", "9/1000"]
    assert lines[0].endswith("(5:00)") and lines[2].endswith("(15:00)")


def test_nothing_where_progress_is_off_or_a_caller_logs_itself(capsys):
    for b in (bar(False), bar(True, log=False)):
        with b:
            task = b.add_task("calibrate: blocks", total=4)
            for _ in range(4):
                b.advance(task)
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_the_bar_alone():
    console = Console(record=True, width=120, force_terminal=True)
    prog = LoggedProgress(console=console, disable=True, log=False)  # as `bar` makes it there
    task = prog.add_task("calibrate: blocks", total=10)
    for _ in range(10):
        prog.advance(task)
    assert console.export_text() == ""


def test_a_status_off_a_terminal_is_its_lines(capsys):
    """rich's spinner prints nothing in a log: eval's minutes of sampling said nothing there."""
    from compress.progress import status

    with status("eval: the teacher's held-out predictions") as said:
        said.update("eval: the model's")
    assert capsys.readouterr() == ("", "eval: the teacher's held-out predictions\neval: the model's\n")


def test_a_tasks_words_follow_its_count_in_its_lines(capsys):
    """distill's loss terms and remove_blocks' loss were two loggers of their own: a task's WORDS field."""
    from compress.progress import WORDS

    with bar(True) as b:
        task = b.add_task("distill", total=4)
        for step in range(1, 5):
            b.update(task, completed=step, **{WORDS: f"loss {step / 10:g}"})
    assert capsys.readouterr().err.splitlines() == [f"distill {s}/4 loss {s / 10:g} (0:00)" for s in range(1, 5)]


def test_a_task_added_part_done_logs_from_its_next_tenth(capsys):
    """A resumed run's task starts part done: its first line is at the next tenth, not its first step."""
    with bar(True) as b:
        task = b.add_task("distill", total=20, completed=10)
        for step in range(11, 21):
            b.update(task, completed=step)
    assert _lines(capsys.readouterr().err, "distill") == [f"{s}/20" for s in range(12, 21, 2)]


def _wait_for(condition, seconds: float = 5.0) -> bool:
    import time

    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def test_a_unit_of_work_longer_than_the_silence_still_gets_its_line(monkeypatch):
    """One block's calibration of a real Flux can outlast LOG_EVERY_S: the check ran only in advance(),
    so the log stayed silent until that block was done. A timer says each unfinished task's line."""
    import time

    import compress.progress as progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    clock = [0.0]
    console = Console(record=True, width=200, force_terminal=False)
    prog = LoggedProgress(console=console, get_time=lambda: clock[0], disable=True, log=True)
    with prog:
        prog.add_task("calibrate: blocks", total=20)
        done = prog.add_task("sample prompts", total=1)
        prog.advance(done)
        clock[0] = 400.0  # no advance of `slow` for 6:40
        assert _wait_for(lambda: "calibrate: blocks 0/20 (6:40)" in console.export_text(clear=False))
    clock[0] = 800.0
    time.sleep(0.2)  # the bar closed: no more lines
    lines = console.export_text().splitlines()
    assert lines == ["sample prompts 1/1 (0:00)", "calibrate: blocks 0/20 (6:40)"]


def test_no_timer_lines_on_a_terminal_or_where_progress_is_off(monkeypatch):
    import time

    import compress.progress as progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.02)
    clock = [0.0]
    console = Console(record=True, width=120, force_terminal=True)
    with LoggedProgress(console=console, get_time=lambda: clock[0], disable=True, log=False) as prog:
        prog.add_task("calibrate: blocks", total=10)
        clock[0] = 400.0
        time.sleep(0.2)
    assert console.export_text() == ""


def test_a_status_that_is_not_logged_says_nothing_off_a_terminal(capsys):
    """bench's loading: its UserErrors (a damaged output, a moved LoRA) stay stderr's one line."""
    from compress.progress import status

    with status("bench: loading out", log=False) as said:
        said.update("bench: loading the teacher")
    assert capsys.readouterr() == ("", "")


def _drawn(label: str, total: int, done: int, words: str = "", width: int = 80) -> str:
    """The line `bar` draws on a terminal `width` columns wide for one task."""
    import compress.report
    from compress.progress import WORDS

    console = Console(width=width, record=True, force_terminal=True, file=open("/dev/null", "w"))
    real, compress.report.console = compress.report.console, console
    try:
        prog = bar(True, log=False)
    finally:
        compress.report.console = real
    prog.add_task(label, total=total, completed=done, **({WORDS: words} if words else {}))
    console.print(prog.make_tasks_table(prog.tasks))
    return console.export_text().rstrip()


def test_at_80_columns_a_bar_shows_its_count_and_times_whole():
    """A new user's Flux run at 80 columns: 'calibrate: capture again, through the compressed top-level
    layers ━━ 0… 0:… -…' (rich cut every column alike). Now the bar narrows, then the label is cut
    ('…'), never the count, times or words; the labels of the calibration family show whole."""
    whole = ["calibrate: capture again, top-level compressed", "calibrate: conditioning",
             "calibrate: single_transformer_blocks.18 (teacher 37)", "calibrate: after the blocks"]
    for label in whole:
        line = _drawn(label, 57, 18)
        assert line.startswith(label + " ") and line.endswith(" 18/57 0:00:00 -:--:--"), line
        assert len(line) <= 80
    line = _drawn("calibrate: capture again, through the compressed top-level layers", 1024, 4)
    assert line.startswith("calibrate: capture again, through") and "…" in line, line
    assert line.endswith("   4/1024 0:00:00 -:--:--") and len(line) <= 80, line
    line = _drawn("distill", 5000, 40, "loss 0.1234 out 0.1201 feat 0.0033")
    assert line.endswith(" 40/5000 0:00:00 -:--:-- loss 0.1234 out 0.1201 feat 0.0033"), line
    wide = _drawn("calibrate: capture again, through the compressed top-level layers", 64, 4, width=160)
    assert "top-level layers ━" in wide and sum(c in "━╸╺" for c in wide) == 40  # the bar as it was, with room


def test_on_a_narrow_terminal_the_label_stays_whole_and_the_bar_and_times_go_first():
    """At 40 columns the label was cut ('remove_bl… ━━━   0/200 0:00:00 -:--:-- loss 0.1234', and 'distill'
    lost its loss terms): the pass's name and its loss went, the bar and times stayed. Now the bar goes,
    then the elapsed and the remaining time, then the words are cut, and the label (to 24 characters) last."""
    line = _drawn("remove_blocks learned", 200, 0, "loss 0.1234", width=40)
    assert line == "remove_blocks learned   0/200 loss 0.12…", line
    line = _drawn("remove_blocks learned", 200, 0, "loss 0.1234", width=50)
    assert line == "remove_blocks learned   0/200 -:--:-- loss 0.1234", line
    line = _drawn("distill", 5000, 40, "loss 0.1234 out 0.1201 feat 0.0033", width=40)
    assert line == "distill   40/5000 loss 0.1234 out 0.120…", line
    line = _drawn("distill", 5000, 40, "loss 0.1234 out 0.1201 feat 0.0033", width=60)
    assert line == "distill   40/5000 -:--:-- loss 0.1234 out 0.1201 feat 0.0033", line
    line = _drawn("calibrate: capture again, through the compressed top-level layers", 1024, 4, width=40)
    assert line == "calibrate: capture again, th…    4/1024", line
    for width in (12, 20, 30):  # too narrow for anything whole: nothing wider than the terminal
        for label, words in (("remove_blocks learned", "loss 0.1234"), ("calibrate: blocks", "")):
            line = _drawn(label, 200, 3, words, width=width)
            assert len(line) <= width and (width < 30 or "3/200" in line), (width, line)


def test_a_long_name_is_shortened_in_its_middle_keeping_its_extension():
    from compress.progress import shortened

    assert shortened("flux1-dev.safetensors", 32) == "flux1-dev.safetensors"
    assert shortened("pixart_sigma_xl_2_1024_ms_finetuned_v3.safetensors", 32) == "pixart_sigma_…ned_v3.safetensors"
    assert shortened("a" * 50, 32) == "a" * 25 + "…" + "a" * 6
    assert all(len(shortened(n * "x" + ".pth", 32)) <= 32 for n in range(60))


def test_a_bar_says_what_it_read_back_in_one_form():
    """calib_pipeline.run_label and distill_data.samples_label each kept the rule: '(N read back)' where
    some were, '(read back)' where all were; now progress.read_back_label, and their words unchanged."""
    from compress.calib_pipeline import run_label
    from compress.distill_data import samples_label
    from compress.progress import read_back_label

    assert read_back_label("sample held-out prompts", 0, 4, "held-out prompts") == "sample held-out prompts"
    assert read_back_label("sample held-out prompts", 3, 4, "held-out prompts") == "sample held-out prompts (3 read back)"
    assert read_back_label("sample held-out prompts", 4, 4, "held-out prompts") == "held-out prompts (read back)"
    assert read_back_label("distill: teacher samples", 0, 0) == "distill: teacher samples"
    assert run_label("held-out", 4, 4) == "held-out prompts (read back)"
    assert samples_label(8, 8) == "distill: teacher samples (read back)"


_ON_A_TERMINAL = """
from compress.progress import bar, status
with status("eval: sampling"):
    pass
with bar(True) as b:
    task = b.add_task("remove_blocks: search", total=10)
    for _ in range(10):
        b.advance(task)
print("done", flush=True)
"""


def _in_a_terminal(term: str) -> str:
    """What a bar of 10 steps and a status print on a pseudo-terminal whose TERM is `term`."""
    import os
    import pty
    import sys

    env = dict(os.environ, TERM=term, COLUMNS="100")
    pid, terminal = pty.fork()
    if pid == 0:
        try:
            os.execve(sys.executable, [sys.executable, "-c", _ON_A_TERMINAL], env)
        finally:
            os._exit(127)
    seen = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the child ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(terminal)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, seen
    return seen.decode().replace("\r\n", "\n")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no pseudo-terminal")
def test_on_a_dumb_terminal_the_lines_a_log_gets():
    """On a TERM=dumb tty (an Emacs shell, some CI ttys) rich draws no bar and no spinner, and `run`
    showed nothing at all (remove_blocks' minutes of search silent) but a stray blank line: there, the
    lines a log gets."""
    said = _in_a_terminal("dumb")
    assert said.splitlines() == ["eval: sampling"] + [f"remove_blocks: search {s}/10 (0:00)" for s in range(1, 11)] + [
        "done"], said
    drawn = _in_a_terminal("xterm")  # a terminal that draws: the bar, not the lines
    assert "━" in drawn and "search 10/10 (0:00)" not in drawn, drawn
