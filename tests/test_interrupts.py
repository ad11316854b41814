"""compress/interrupts.py: a stop held over work it must not break (the SIGINT cases: tests/test_cli.py)."""

import os
import signal

import pytest

from compress import interrupts


@pytest.mark.parametrize("sigint", [signal.default_int_handler, signal.SIG_IGN])
def test_a_sigterm_taken_as_a_ctrl_c_is_held_to_the_end_of_the_block(sigint):
    """cli_entry takes SIGTERM as a Ctrl-C (Python's Ctrl-C handler): raised inside torch's C++
    start-up it can abort the interpreter, so it is held as SIGINT is, also in a background job
    (SIGINT ignored, left so); both handlers are put back after."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, sigint)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.interrupts_held():
                assert (signal.getsignal(signal.SIGINT) is signal.SIG_IGN) == (sigint is signal.SIG_IGN)
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("held: the block goes on")
        assert done == ["held: the block goes on"]
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_a_sigterm_with_its_default_action_is_left_alone():
    """Outside the console script (the Python API, a test) SIGTERM keeps what the caller gave it."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with interrupts.interrupts_held():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
