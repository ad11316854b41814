"""compress/interrupts.py: a stop held over work it must not break (the SIGINT cases: tests/test_cli_interrupts.py),
and the exit status of the signal that stopped a command."""

import os
import signal

import pytest

from compress import interrupts


NO_SIGHUP = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="Windows has no SIGHUP")


@pytest.mark.parametrize("stop, taken_by", [("SIGTERM", "Python's"), ("SIGTERM", "cli_entry's"),
                                            pytest.param("SIGHUP", "cli_entry's", marks=NO_SIGHUP)])
@pytest.mark.parametrize("sigint", [signal.default_int_handler, signal.SIG_IGN])
def test_a_sigterm_taken_as_a_ctrl_c_is_held_to_the_end_of_the_block(sigint, stop, taken_by):
    """cli_entry takes SIGTERM as a Ctrl-C: raised inside torch's C++ start-up it can abort the
    interpreter, so it is held as SIGINT is, also in a background job (SIGINT ignored, left so); both
    handlers are put back after. So is SIGHUP (a terminal closed), whose default action killed the
    process without a word. The signal gives the command's status, 128 + its number (143, 129: it
    was 130, a Ctrl-C's), whichever handler raised it (Python's Ctrl-C one, or cli_entry's as_ctrl_c)."""
    sig = getattr(signal, stop)
    handler = signal.default_int_handler if taken_by == "Python's" else interrupts.as_ctrl_c
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, sig)}
    signal.signal(signal.SIGINT, sigint)
    signal.signal(sig, handler)
    interrupts.forget_stops()
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.interrupts_held():
                assert (signal.getsignal(signal.SIGINT) is signal.SIG_IGN) == (sigint is signal.SIG_IGN)
                os.kill(os.getpid(), sig)
                done.append("held: the block goes on")
        assert done == ["held: the block goes on"]
        assert signal.getsignal(sig) is handler
        assert signal.getsignal(signal.SIGINT) is sigint
        assert interrupts.stop_status() == 128 + sig
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
        interrupts.forget_stops()


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", pytest.param("SIGHUP", marks=NO_SIGHUP)])
@pytest.mark.parametrize("second", [False, True])
def test_a_held_signal_is_raised_as_it_is_unheld(monkeypatch, stop, second):
    """A signal held to the block's end (or a second one, raised at once) is raised by its own handler:
    a SIGTERM or SIGHUP under as_ctrl_c is KeyboardInterrupt('signal 15') held or not (it was a bare
    KeyboardInterrupt held), a Ctrl-C under Python's handler a bare one."""
    sig = getattr(signal, stop)
    handler = signal.default_int_handler if sig == signal.SIGINT else interrupts.as_ctrl_c
    previous = signal.signal(sig, handler)
    monkeypatch.setattr(interrupts, "SECOND_INTERRUPT_S", 0.0)  # any second one is a user's second
    interrupts.forget_stops()
    try:
        with pytest.raises(KeyboardInterrupt) as unheld:
            os.kill(os.getpid(), sig)
        with pytest.raises(KeyboardInterrupt) as held:
            with interrupts.interrupts_held():
                for _ in range(1 + second):
                    os.kill(os.getpid(), sig)
        assert held.value.args == unheld.value.args == (() if sig == signal.SIGINT else (f"signal {sig}",))
    finally:
        signal.signal(sig, previous)
        interrupts.forget_stops()


def test_a_sigterm_with_its_default_action_is_left_alone():
    """Outside the console script (the Python API, a test) SIGTERM keeps what the caller gave it."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with interrupts.interrupts_held():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_status_is_that_of_the_first_stop_signal():
    """128 + the first stop signal noted (a Ctrl-C then a SIGTERM: 130); none noted (Python's own
    Ctrl-C handler raised it): 130."""
    interrupts.forget_stops()
    try:
        assert interrupts.stop_status() == 130
        interrupts.took(signal.SIGTERM)
        interrupts.took(signal.SIGINT)
        assert interrupts.stop_status() == 143
        interrupts.forget_stops()
        interrupts.took(signal.SIGINT)
        interrupts.took(signal.SIGTERM)
        assert interrupts.stop_status() == 130
    finally:
        interrupts.forget_stops()


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (None, 130)])
def test_each_command_exits_with_the_status_of_its_own_stop(monkeypatch, capsys, tmp_path, signum, status):
    """cli.main, twice in one process (the Python API, tests): a command stopped by a SIGTERM exits 143
    (it was 130, a Ctrl-C's); the next one, stopped by a Ctrl-C, 130 whatever stopped the one before."""
    from compress import cli

    (tmp_path / "x").mkdir()  # bench's output is there (one not there is refused before the command runs)
    monkeypatch.chdir(tmp_path)

    def stopped(args):
        if signum is not None:
            interrupts.took(signum)  # as runner_setup's, cli_entry's and distill's handlers note it
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "bench", stopped)
    interrupts.took(signal.SIGHUP if hasattr(signal, "SIGHUP") else signal.SIGTERM)  # an earlier command's
    try:
        assert cli.main(["bench", "x"]) == status
    finally:
        interrupts.forget_stops()
    assert capsys.readouterr().err.strip() == "dit-compress: interrupted"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="Windows has no SIGHUP")
def test_only_a_write_that_failed_after_a_sighup_is_a_terminal_that_hung_up():
    """cli_entry ends with SIGHUP's status, quietly, where a write failed with EIO once a SIGHUP stopped
    the command (its terminal closed); an EIO without one, or another error, is an error as before."""
    import errno

    interrupts.forget_stops()
    try:
        assert not interrupts.hung_up(OSError(errno.EIO, "Input/output error"))
        interrupts.took(signal.SIGHUP)
        assert interrupts.hung_up(OSError(errno.EIO, "Input/output error"))
        assert not interrupts.hung_up(OSError(errno.ENOSPC, "No space left on device"))
    finally:
        interrupts.forget_stops()
