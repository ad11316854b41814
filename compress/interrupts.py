"""Ctrl-C held over work it must not break: a first SIGINT during the block is raised as
KeyboardInterrupt at its end (`interrupts_held`): torch's and diffusers' imports, and a safetensors
read, whose native code turns a KeyboardInterrupt raised inside it into another error. A SIGTERM
the console script takes as a Ctrl-C (cli_entry) is held alike."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

SECOND_INTERRUPT_S = 1.0  # a SIGINT this soon after the first is the same stop, signalled twice
STOPS = (signal.SIGINT, signal.SIGTERM)  # held where their handler is Python's Ctrl-C one


@contextmanager
def interrupts_held():
    """A first Ctrl-C (SIGINT) during the block is held until its end, then raised as KeyboardInterrupt:
    one raised inside torch's or diffusers' imports (seconds) can abort the interpreter (SIGABRT
    from torch's C++ start-up) or leave a module half-made. A second one raises at once (an import
    that hangs can still be stopped), unless it comes within SECOND_INTERRUPT_S of the first: that is
    one stop signalled twice (`timeout -s INT` signals the command, then its process group), held
    too. SIGTERM is held with it where it raises a KeyboardInterrupt as SIGINT does (cli_entry sets
    it so). Where neither has Python's default SIGINT handler (ignored in a background job, or set by
    the caller), the block runs as it is."""
    stops = [s for s in STOPS if signal.getsignal(s) is signal.default_int_handler]
    if threading.current_thread() is not threading.main_thread() or not stops:
        yield
        return
    held = []

    def hold(signum, frame):
        now = time.monotonic()
        if held and now - held[0] >= SECOND_INTERRUPT_S:
            raise KeyboardInterrupt  # a second Ctrl-C: an import that hangs is stopped
        held.append(now)

    for stop in stops:
        signal.signal(stop, hold)
    try:
        yield
    finally:
        for stop in stops:
            signal.signal(stop, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt
