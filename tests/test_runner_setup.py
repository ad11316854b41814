"""compress/runner_setup.py's sigterm_as_interrupt: SIGTERM (and SIGHUP) unwinds a run (and convert) as
Ctrl-C does, where the caller left it to be acted on; one the caller ignores stays ignored. (Its numeric checks of
the teacher: test_runner_setup_numeric.py.)"""

import os
import signal
import threading

import pytest

from compress.runner_setup import sigterm_as_interrupt


@pytest.fixture
def sigterm_kept():
    """SIGTERM's handler as the test found it, put back after it."""
    before = signal.getsignal(signal.SIGTERM)
    yield before
    signal.signal(signal.SIGTERM, before)


def test_a_sigterm_the_caller_ignores_stays_ignored_during_a_run(sigterm_kept):
    """A nohup-like launcher, or a parent that wants the run immune, sets SIGTERM to SIG_IGN: the run
    installed its handler over it anyway, so a SIGTERM stopped it (as cli_entry, interrupts_held and
    distill's StopSignals already left an ignored signal ignored)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with sigterm_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: nothing raised
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


@pytest.mark.parametrize("caller", [signal.SIG_DFL, signal.default_int_handler])
def test_a_sigterm_is_a_ctrl_c_within_and_the_callers_handler_comes_back(sigterm_kept, caller):
    """SIGTERM's default action, or cli_entry's Ctrl-C handler for it: within, a SIGTERM raises
    KeyboardInterrupt naming the signal; after, the caller's handler is back."""
    signal.signal(signal.SIGTERM, caller)
    with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is caller


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="Windows has no SIGHUP")
@pytest.mark.parametrize("caller", [signal.default_int_handler, signal.SIG_IGN])
def test_a_sighup_is_a_ctrl_c_within_unless_the_caller_ignores_it(caller):
    """SIGHUP (the terminal closed, an SSH session dropped) killed a run and convert without a word,
    where SIGTERM unwinds them: it does too now, noted for the exit status (129); under nohup
    (SIG_IGN) it stays ignored. The caller's handler is back after. (A caller's Ctrl-C handler, not
    SIGHUP's default action: on code without the fix, that would kill the test run.)"""
    from compress import interrupts

    before = signal.signal(signal.SIGHUP, caller)
    interrupts.forget_stops()
    try:
        if caller is signal.SIG_IGN:
            with sigterm_as_interrupt():
                assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing raised
        else:
            with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGHUP)}"):
                with sigterm_as_interrupt():
                    os.kill(os.getpid(), signal.SIGHUP)
            assert interrupts.stop_status() == 129
        assert signal.getsignal(signal.SIGHUP) is caller
    finally:
        signal.signal(signal.SIGHUP, before)
        interrupts.forget_stops()


def test_off_the_main_thread_nothing_changes(sigterm_kept):
    """Signals cannot be caught outside the main thread: the block runs as it is."""
    done = []

    def body():
        with sigterm_as_interrupt():
            done.append(signal.getsignal(signal.SIGTERM))
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert done == [sigterm_kept] and signal.getsignal(signal.SIGTERM) is sigterm_kept
