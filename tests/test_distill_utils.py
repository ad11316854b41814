"""The distill pass's learning-rate schedule (distill_utils.warmup_cosine): a warm-up as long as the run is
shortened, and the shipped recipes keep the one they write; its stop signals (StopSignals)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from compress.distill_utils import warmup_cosine
from compress.recipe import load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_a_warmup_not_below_steps_reaches_lr_and_decays(steps):
    """steps shortened for a quick try under the default warmup_steps 20: the rate reaches lr and decays
    (it ramped to 5/20 of lr, or ended at lr, before)."""
    rates = [warmup_cosine(s, steps, 20, min_ratio=0.1) for s in range(steps)]
    assert max(rates) == 1.0
    peak = rates.index(1.0)
    after = rates[peak:]
    assert after == sorted(after, reverse=True) and rates[-1] < 0.6  # decays from lr to the end
    from compress.distill_utils import warmup_length

    assert warmup_length(steps, 20) == steps // 10


def test_a_warmup_below_steps_is_as_written():
    from compress.distill_utils import warmup_length

    assert warmup_length(21, 20) == 20 and warmup_length(200, 0) == 0
    assert [warmup_cosine(s, 200, 20) for s in range(20)] == [(s + 1) / 20 for s in range(20)]


def test_shipped_recipes_warm_up_as_written():
    """The cap leaves every shipped recipe's schedule (and so its results) as it was."""
    from compress.distill_utils import warmup_length

    configs = [p.config for path in RECIPES for p in load_recipe(path).passes if p.name == "distill"]
    assert configs
    assert all(warmup_length(c.steps, c.warmup_steps) == c.warmup_steps for c in configs)


def test_a_signal_passed_on_by_a_launcher_keeps_the_clean_stop(monkeypatch):
    """A terminal's Ctrl-C reaches every torchrun worker and its agent, which sends the workers its
    own SIGINT at once: the second signal raised KeyboardInterrupt, so no stop was agreed and no
    checkpoint written. One within SAME_STOP_S of the first (or the same one under a launcher) is
    that stop; a user's second, later, still gets out of a plain run."""
    import signal

    from compress import distill_utils
    from compress.distill_utils import StopSignals, same_stop

    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    stop = StopSignals()
    stop._handler(signal.SIGINT, None)
    stop._handler(signal.SIGINT, None)  # at once: the launcher's
    assert stop.requested == signal.SIGINT
    clock = [1000.0]
    monkeypatch.setattr(distill_utils.time, "monotonic", lambda: clock[0])
    stop = StopSignals()
    stop._handler(signal.SIGINT, None)
    clock[0] += 5  # the user's second Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        stop._handler(signal.SIGINT, None)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    stop = StopSignals()
    stop._handler(signal.SIGINT, None)
    clock[0] += 5  # a loaded launcher's, late: its SIGKILL follows 30 s on
    stop._handler(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        stop._handler(signal.SIGTERM, None)  # another signal, later: not the same stop
    assert (same_stop(0.5, False, False), same_stop(3.0, False, True), same_stop(3.0, True, True)) == (True, False, True)


def test_an_interrupted_loss_curve_png_leaves_the_old_file_and_no_other(tmp_path, monkeypatch):
    """write_curves saved its PNG straight under its name: a Ctrl-C mid-write left a cut-off PNG
    there. It is written as inspect's and importance's figures are (report.save_figure): a temp file
    renamed into place, the old one (or none) left where the write stops."""
    import matplotlib.figure

    from compress.distill_utils import write_curves

    def cut_off(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    history = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    csv, png = tmp_path / "curves.csv", tmp_path / "curves.png"
    png.write_bytes(b"old")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_off)
    with pytest.raises(KeyboardInterrupt):
        write_curves(history, csv, png)
    assert png.read_bytes() == b"old" and sorted(f.name for f in tmp_path.iterdir()) == [csv.name, png.name]
    monkeypatch.undo()
    write_curves(history, csv, png)
    assert png.read_bytes()[:4] == b"\x89PNG" and sorted(f.name for f in tmp_path.iterdir()) == [csv.name, png.name]


@pytest.mark.parametrize("ignored", ["SIGINT", "SIGTERM"])
def test_a_signal_the_caller_ignores_stays_ignored_during_distill(ignored):
    """A background job's shell sets SIGINT to SIG_IGN (as cli_entry and interrupts_held leave it):
    distill's stop handler caught it anyway, so a Ctrl-C meant for the foreground job stopped the
    background run (a tester's finding). The signal not ignored is still caught."""
    import os
    import signal

    from compress.distill_utils import StopSignals

    sig = getattr(signal, ignored)
    other = signal.SIGTERM if sig == signal.SIGINT else signal.SIGINT
    before = {s: signal.getsignal(s) for s in (sig, other)}
    # the other as a terminal's command has it (a launcher may start the suite with it ignored too)
    acted_on = signal.default_int_handler if other == signal.SIGINT else signal.SIG_DFL
    signal.signal(other, acted_on)
    signal.signal(sig, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(sig) is signal.SIG_IGN
            os.kill(os.getpid(), sig)
            assert stop.requested is None
            os.kill(os.getpid(), other)
            assert stop.requested == other
        assert signal.getsignal(sig) is signal.SIG_IGN and signal.getsignal(other) is acted_on
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="Windows has no SIGHUP")
def test_a_sighup_requests_a_stop_as_sigterm_does():
    """SIGHUP (the terminal closed, an SSH session dropped) killed distill without a checkpoint since
    its last checkpoint_every, while SIGTERM stopped it at the end of its step with one: it stops as
    SIGTERM does now, noted for the exit status (129); the caller's handler is back after (here one
    that notes it: SIGHUP's default action would end the test run on code without the fix)."""
    import os

    from compress import interrupts
    from compress.distill_utils import StopSignals

    caller = []
    before = signal.signal(signal.SIGHUP, lambda signum, frame: caller.append(signum))
    interrupts.forget_stops()
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert (stop.requested, caller) == (signal.SIGHUP, [])
        assert interrupts.stop_status() == 129
        os.kill(os.getpid(), signal.SIGHUP)
        assert caller == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, before)
        interrupts.forget_stops()


def _summed(*requested):
    """{rank: signal} from the step's all-reduce: the sum of each process's stop_slots."""
    from compress.distill_utils import stop_slots, stops_taken

    slots = [stop_slots(r, rank, len(requested)) for rank, r in enumerate(requested)]
    return stops_taken([sum(v) for v in zip(*slots)])


def test_a_process_stops_on_its_own_signal_else_on_the_one_most_processes_took():
    """The step's all-reduce sums each process's stop_slots: one that took no signal stops on the
    signal the others took (it said a Ctrl-C's 130 whatever that was); a tie goes SIGINT, SIGTERM."""
    from compress.distill_utils import agreed_stop

    assert agreed_stop(None, _summed(None, None)) is None
    assert agreed_stop(None, _summed(None, signal.SIGTERM)) == signal.SIGTERM
    assert agreed_stop(signal.SIGINT, _summed(signal.SIGINT, signal.SIGTERM, signal.SIGTERM)) == signal.SIGINT
    assert agreed_stop(None, _summed(None, signal.SIGINT, signal.SIGTERM, signal.SIGTERM)) == signal.SIGTERM
    assert agreed_stop(None, _summed(None, signal.SIGTERM, signal.SIGINT)) == signal.SIGINT


@pytest.mark.parametrize("requested, words", [
    ((None, signal.SIGTERM), "a stop signal (rank 1 took SIGTERM)"),
    ((signal.SIGINT, None), "a stop signal (rank 0 took SIGINT)"),
    ((signal.SIGINT, signal.SIGINT), "a stop signal (every process took SIGINT)"),  # a Ctrl-C of the launch
    ((signal.SIGINT, None, signal.SIGINT, signal.SIGINT, signal.SIGTERM),
     "a stop signal (ranks 0, 2-3 took SIGINT, rank 4 took SIGTERM)"),
    ((signal.SIGTERM,), "a stop signal (SIGTERM)"),  # one process: its own ('a stop signal' said none)
    ((signal.SIGINT,), "a stop signal (SIGINT)"),
    ((None,), "a stop signal"),
])
def test_the_stop_line_says_which_rank_took_which_signal(requested, words):
    """Rank 0's 'distill: stopped at step N/M on a stop signal; ...' did not say which process of a
    launch took which signal (a follower's SIGTERM read as if rank 0 had one)."""
    from compress.distill_utils import stop_words

    assert stop_words(_summed(*requested), len(requested)) == words


@pytest.mark.parametrize("stop, previous, args", [
    ("SIGTERM", "as_ctrl_c", ("signal 15",)),  # a run's SIGTERM (runner_setup, cli_entry)
    ("SIGTERM", "SIG_DFL", ("signal 15",)),  # the pass run on its own
    ("SIGINT", "default_int_handler", ()),  # Python's Ctrl-C: a bare one, as unheld
])
def test_a_users_second_signal_raises_as_the_signals_own_handler_does(monkeypatch, stop, previous, args):
    """The second signal of a plain run (past SAME_STOP_S) raised a bare KeyboardInterrupt whatever it
    was; it is raised as interrupts_held raises a held one, as the signal's own handler would unheld
    (interrupts.raise_stop): KeyboardInterrupt('signal 15') for a SIGTERM, as outside distill."""
    import os

    from compress import distill_utils, interrupts
    from compress.distill_utils import StopSignals

    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    sig = getattr(signal, stop)
    handler = getattr(interrupts, previous, None) or getattr(signal, previous)
    clock = [1000.0]
    monkeypatch.setattr(distill_utils.time, "monotonic", lambda: clock[0])
    before = signal.signal(sig, handler)
    interrupts.forget_stops()
    try:
        with pytest.raises(KeyboardInterrupt) as e, StopSignals() as stops:
            os.kill(os.getpid(), sig)
            assert stops.requested == sig
            clock[0] += 5  # the user's second, later
            os.kill(os.getpid(), sig)
        assert e.value.args == args and interrupts.stop_status() == 128 + sig
        assert signal.getsignal(sig) is handler
    finally:
        signal.signal(sig, before)
        interrupts.forget_stops()
