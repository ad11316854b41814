"""compress/runner_setup.py's sigterm_as_interrupt: SIGTERM unwinds a run (and convert) as Ctrl-C does,
where the caller left it to be acted on; one the caller ignores stays ignored. (Its numeric checks of
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
