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
Nothing else is imported here, and `import compress` does not import this module."""

import atexit
import os
import signal
import sys
import threading

_QUIET_EXITS = []  # the SIGINT handler _exit_quietly_on_interrupt installed, while it is installed


def main() -> int:
    try:
        from compress.cli import main as cli_main

        code = cli_main()
    except KeyboardInterrupt:  # before cli.main handles it (imports, argument parsing), or in its handling
        print("dit-compress: interrupted", file=sys.stderr)
        code = 130
    _exit_quietly_on_interrupt(code)
    return code


def _exit_quietly_on_interrupt(code: int) -> None:
    """From now on (the command ended with status `code`), a SIGINT flushes what was printed and
    ends the process with `code`; where SIGINT is not Python's default handler (ignored in a
    background job, or set by the caller) it stays as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        return

    def exit_now(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader gone, a stream closed
                pass
        os._exit(code)

    signal.signal(signal.SIGINT, exit_now)
    _QUIET_EXITS[:] = [exit_now]


def _ignore_late_interrupts() -> None:
    """The last exit handler: SIGINT ignored from here on where it ends the process with the command's
    status (`_exit_quietly_on_interrupt`), as the process then ends anyway. Python's shutdown puts back
    SIGINT's default action (death by the signal) unless it is ignored, and then frees its modules, for
    seconds with torch loaded; exit handlers and threads still running before this (which a Ctrl-C
    may need to stop) end at once with the command's status, as before."""
    if _QUIET_EXITS and signal.getsignal(signal.SIGINT) is _QUIET_EXITS[0]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


atexit.register(_ignore_late_interrupts)  # as the console script imports this: before any library's, so run last
