"""Ctrl-C held over work it must not break: a first SIGINT during the block is raised as
KeyboardInterrupt at its end (`interrupts_held`): torch's and diffusers' imports, and a safetensors
read, whose native code turns a KeyboardInterrupt raised inside it into another error. A SIGTERM or
SIGHUP taken as a Ctrl-C (`as_ctrl_c`: the console script's, cli_entry, and a run's, runner_setup) is
held alike; an ignored one (SIGHUP under nohup) is left as it is.

The signal that stopped a command gives its exit status, 128 + its number as a shell reports a
process the signal killed (`stop_status`: 130 for a Ctrl-C, 143 for SIGTERM, 129 for SIGHUP): the
handlers here, runner_setup's and distill's StopSignals note it (`took`)."""

from __future__ import annotations

import errno
import signal
import threading
import time
from contextlib import contextmanager

SECOND_INTERRUPT_S = 1.0  # a SIGINT this soon after the first is the same stop, signalled twice
# SIGTERM: kill, timeout, a job scheduler; SIGHUP: the terminal closed, an SSH session dropped (none on Windows)
TERMINATIONS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
STOPS = (signal.SIGINT, *TERMINATIONS)  # held where their handler raises a KeyboardInterrupt (`ctrl_c_like`)
_TAKEN: list[int] = []  # the first stop signal of this command (cli.main starts it empty: `forget_stops`)


def took(signum: int) -> None:
    """Notes `signum` as the command's stop signal, unless one came before it."""
    if not _TAKEN:
        _TAKEN.append(signum)


def forget_stops() -> None:
    """A new command: no stop signal taken yet."""
    _TAKEN.clear()


def stop_status() -> int:
    """The exit status of a command stopped by a signal: 128 + the number of the first one it took, as
    a shell reports a process the signal killed; 130 (SIGINT) for a KeyboardInterrupt no signal
    handler of ours noted (Python's own Ctrl-C handler)."""
    return 128 + taken_stop()


def taken_stop() -> int:
    """The first stop signal the command took; SIGINT where no handler of ours noted one (Python's own)."""
    return int(_TAKEN[0] if _TAKEN else signal.SIGINT)


def hung_up(e: BaseException) -> bool:
    """Whether `e` is a write to a terminal that hung up (EIO) in a command a SIGHUP stopped: the
    terminal closed (an SSH session dropped), so nothing can be said there any more."""
    return (isinstance(e, OSError) and e.errno == errno.EIO and hasattr(signal, "SIGHUP")
            and _TAKEN[:1] == [signal.SIGHUP])


def as_ctrl_c(signum, frame):
    """A SIGTERM or SIGHUP taken as a Ctrl-C (cli_entry installs it, runner_setup.sigterm_as_interrupt
    over a run and convert): a KeyboardInterrupt naming the signal, as Python's Ctrl-C handler raises
    one, the signal noted for the exit status. `interrupts_held` holds it as it holds a Ctrl-C."""
    took(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def raise_stop(signum, frame, handler) -> None:
    """Raises the KeyboardInterrupt a stop signal raises unheld: `handler`'s, the signal's own outside
    the hold (interrupts_held's, distill's StopSignals') where it raises one (Python's bare one for a
    Ctrl-C, `as_ctrl_c`'s KeyboardInterrupt('signal 15')), else `as_ctrl_c`'s (SIGTERM's default action)."""
    (handler if ctrl_c_like(handler) else as_ctrl_c)(signum, frame)


def ctrl_c_like(handler) -> bool:
    """Whether a signal's handler raises a KeyboardInterrupt: Python's Ctrl-C one, or `as_ctrl_c`."""
    return handler is signal.default_int_handler or handler is as_ctrl_c


@contextmanager
def handled(signals, handler):
    """`handler` for each of `signals` the caller does not ignore (SIG_IGN stays ignored: SIGINT in a
    background job, SIGHUP under nohup), in the main thread only (elsewhere signals cannot be caught:
    none is set); yields {signal: the handler it replaced}, each put back after."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handler) for s in signals if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield previous
    finally:
        for stop, handler_before in previous.items():
            signal.signal(stop, handler_before)


@contextmanager
def interrupts_held():
    """A first Ctrl-C (SIGINT) during the block is held until its end, then raised as KeyboardInterrupt:
    one raised inside torch's or diffusers' imports (seconds) can abort the interpreter (SIGABRT
    from torch's C++ start-up) or leave a module half-made. A second one raises at once (an import
    that hangs can still be stopped), unless it comes within SECOND_INTERRUPT_S of the first: that is
    one stop signalled twice (`timeout -s INT` signals the command, then its process group), held
    too. SIGTERM and SIGHUP are held with it where they raise a KeyboardInterrupt as SIGINT does
    (`as_ctrl_c`: cli_entry and runner_setup set them so). Where none raises one (SIGINT ignored in a
    background job, SIGHUP under nohup, or set by the caller), the block runs as it is; each handler is
    put back after it. A held signal is raised by its own handler, as it would have been unheld
    (`as_ctrl_c`'s KeyboardInterrupt('signal 15'), Python's bare one for a Ctrl-C)."""
    stops = {s: signal.getsignal(s) for s in STOPS if ctrl_c_like(signal.getsignal(s))}
    if threading.current_thread() is not threading.main_thread() or not stops:
        yield
        return
    held = []  # (when, signum) of each signal held

    def hold(signum, frame):
        took(signum)
        now = time.monotonic()
        if held and now - held[0][0] >= SECOND_INTERRUPT_S:
            raise_stop(signum, frame, stops[signum])  # a second Ctrl-C: an import that hangs is stopped
        held.append((now, signum))

    with handled(stops, hold):  # none of them ignored: each raises a KeyboardInterrupt
        yield
    if held:
        signum = held[0][1]
        raise_stop(signum, None, stops[signum])  # as its own handler raises it: KeyboardInterrupt('signal 15')
