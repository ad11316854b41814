"""`dit-compress`'s console script (pyproject's [project.scripts]): a Ctrl-C from its first line on
ends it with one line and status 130, never a traceback.

The console script imports this module and calls `main`; the CLI (argparse, the parser, cli.main's
own handling) is imported and built inside main's `try`, so a Ctrl-C while it loads is caught too.
Once the command has ended, a Ctrl-C while the process exits ends it at once with the command's
status, saying nothing more: `timeout -s INT` signals the command and then its process group, so a
second SIGINT can land as the first one's one line is printed or the interpreter shuts down (a
traceback from threading's shutdown, or death by the signal, in place of status 130). Where the
interpreter frees its modules after its exit handlers (seconds, with torch loaded), a Ctrl-C is
ignored: Python has put SIGINT's default action back by then, which killed the process, a run whose
output was complete and said ('wrote OUT') read as failed (status 130, no word said).
A SIGTERM (kill, timeout, a job scheduler) or SIGHUP (the terminal closed, an SSH session dropped) is a
Ctrl-C from that first line on too (one line), as a run's passes and convert take it
(runner_setup.sigterm_as_interrupt), where the caller left its default action (SIGHUP under nohup is
ignored, and stays so): before, one while the CLI or a command's imports loaded killed the process
without a word. The status is the stopping signal's, 128 + its number, as a shell reports a process it
killed (interrupts.stop_status): 130 for a Ctrl-C, 143 for SIGTERM, 129 for SIGHUP, also where the
terminal that sent the SIGHUP has gone and what the stop said there failed (EIO).
Stdout never fails to encode what a command prints (the project's … × λ Δ → − – Σ, a path's é): where it
is not UTF-8 (LC_ALL=C PYTHONUTF8=0, a Latin-1 locale, PYTHONIOENCODING=ascii) or its errors are strict,
a character it cannot encode is written as a backslash escape ('128\\xd7128'), as Python writes stderr
(`_stdout_never_fails_to_encode`): before, plan, inspect, bench and --help ended with a traceback there,
and a finished run's last line ('wrote OUT') failed it.
Nothing else is imported here but compress.interrupts (signal, threading, time), codecs and _thread, and
`import compress` does not import this module."""

import atexit
import codecs
import os
import signal
import sys
import threading

from compress.interrupts import STOPS, TERMINATIONS, as_ctrl_c, ctrl_c_like, hung_up, stop_status, taken_stop

AGAIN_AFTER_S = 0.01  # a Ctrl-C swallowed by a finalizer is raised again this long after
_QUIET_EXITS = []  # the SIGINT handler _exit_quietly_on_interrupt installed, while it is installed


def main() -> int:
    _stdout_never_fails_to_encode()
    try:
        _sigterm_as_interrupt()
        _no_ctrl_c_lost_in_finalizers()
        from compress.cli import main as cli_main

        code = cli_main()
    except KeyboardInterrupt:  # before cli.main handles it (imports, argument parsing), or in its handling
        print("dit-compress: interrupted", file=sys.stderr)
        code = stop_status()
    except OSError as e:  # the terminal closed: what the stop said there (a progress bar, its line) failed
        if not hung_up(e):
            raise
        _unheard()
        code = stop_status()
    _exit_quietly_on_interrupt(code)
    return code


def _stdout_never_fails_to_encode() -> None:
    """sys.stdout's errors 'backslashreplace' (stderr's) unless it is UTF-8 with errors already lenient
    (Python's UTF-8 mode: surrogateescape, which writes a path's undecodable bytes back as they were)."""
    out = sys.stdout
    if not hasattr(out, "reconfigure") or not getattr(out, "encoding", None):  # replaced by a caller: theirs
        return
    try:
        utf8 = codecs.lookup(out.encoding).name == "utf-8"
    except LookupError:
        utf8 = False
    if not utf8 or out.errors == "strict":
        out.reconfigure(errors="backslashreplace")


def _unheard() -> None:
    """What is still to be written to a terminal that hung up goes nowhere (it failed there: the
    interpreter's last flush would end the process with status 120, not the signal's)."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)


def _sigterm_as_interrupt() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does (Python's Ctrl-C handler), where they
    have their default action (death by the signal): not where the caller ignores one (SIGHUP under
    nohup) or set its own."""
    if threading.current_thread() is not threading.main_thread():
        return
    for stop in TERMINATIONS:
        if signal.getsignal(stop) is signal.SIG_DFL:
            signal.signal(stop, as_ctrl_c)


def _no_ctrl_c_lost_in_finalizers() -> None:
    """A Ctrl-C (or a SIGTERM or SIGHUP taken as one) whose KeyboardInterrupt is raised inside a finalizer
    (a __del__, a weakref callback: the garbage collector runs them anywhere) is not lost: Python prints
    'Exception ignored in: <function Group.__del__ ...> ... KeyboardInterrupt' and goes on, which let a run
    stopped just after its last distill step write its output and end with 0 (T2: 6 of 9 tries). It is
    raised again in the main thread (as the signal would: its handler, `_thread.interrupt_main`) once the
    finalizer has returned (a moment later, from a timer thread: signalled from the hook, it is raised in
    the hook, and swallowed too), where the command's stop handles it; any other exception is reported as
    before."""
    import _thread

    previous = sys.unraisablehook

    def hook(unraisable):
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            return previous(unraisable)
        again = threading.Timer(AGAIN_AFTER_S, _thread.interrupt_main, args=(taken_stop(),))
        again.daemon = True
        again.start()
    sys.unraisablehook = hook


def _exit_quietly_on_interrupt(code: int) -> None:
    """From now on (the command ended with status `code`), a SIGINT (or a SIGTERM or SIGHUP taken as
    one) flushes what was printed and ends the process with `code`; where a signal's handler raises no
    KeyboardInterrupt (SIGINT ignored in a background job, or set by the caller) it stays as it is."""
    stops = [s for s in STOPS if ctrl_c_like(signal.getsignal(s))]
    if threading.current_thread() is not threading.main_thread() or not stops:
        return

    def exit_now(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader gone, a stream closed
                pass
        os._exit(code)

    for stop in stops:
        signal.signal(stop, exit_now)
    _QUIET_EXITS[:] = [exit_now]


def _ignore_late_interrupts() -> None:
    """The last exit handler: SIGINT (and SIGTERM, SIGHUP) ignored from here on where it ends the
    process with the command's status (`_exit_quietly_on_interrupt`), as the process then ends
    anyway. Python's shutdown puts back SIGINT's default action (death by the signal) unless it is ignored, and then
    frees its modules, for seconds with torch loaded; exit handlers and threads still running before
    this (which a Ctrl-C may need to stop) end at once with the command's status, as before."""
    for stop in STOPS:
        if _QUIET_EXITS and signal.getsignal(stop) is _QUIET_EXITS[0]:
            signal.signal(stop, signal.SIG_IGN)


atexit.register(_ignore_late_interrupts)  # as the console script imports this: before any library's, so run last
