"""Ctrl-C held over work it must not break: a first SIGINT during the block is raised as
KeyboardInterrupt at its end (`interrupts_held`): torch's and diffusers' imports, and a safetensors
read, whose native code turns a KeyboardInterrupt raised inside it into another error."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

SECOND_INTERRUPT_S = 1.0  # a SIGINT this soon after the first is the same stop, signalled twice


@contextmanager
def interrupts_held():
    """A first Ctrl-C (SIGINT) during the block is held until its end, then raised as KeyboardInterrupt:
    one raised inside torch's or diffusers' imports (seconds) can abort the interpreter (SIGABRT
    from torch's C++ start-up) or leave a module half-made. A second one raises at once (an import
    that hangs can still be stopped), unless it comes within SECOND_INTERRUPT_S of the first: that is
    one stop signalled twice (`timeout -s INT` signals the command, then its process group), held
    too. Where SIGINT is not Python's default handler (ignored in a background job, or set by the
    caller), the block runs as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held = []

    def hold(signum, frame):
        now = time.monotonic()
        if held and now - held[0] >= SECOND_INTERRUPT_S:
            raise KeyboardInterrupt  # a second Ctrl-C: an import that hangs is stopped
        held.append(now)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt
