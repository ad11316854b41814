"""The console script of pyproject.toml: a Ctrl-C from its first call on is one line and status 130
(a SIGTERM 143, a SIGHUP 129), never a traceback (one while `compress.cli` or argparse was imported,
or the parser built, printed a traceback); and what it prints never fails to encode on stdout."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import compress

# what pip's console script of [project.scripts] does, in a terminal (a background job inherits
# SIGINT ignored); `plan later.yaml` imports torch (seconds) before it refuses the recipe's svd target,
# which matches no layer of the model (a recipe that is not there or mistyped, an unknown svd key
# among its mistakes, is refused before torch's start-up: cli, recipe.load_recipe)
CONSOLE_SCRIPT = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv[1:] = ["plan", "later.yaml"]
open("later.yaml", "w").write("model: pixart\\nteacher: toy:pixart\\npasses:\\n  - svd:\\n      targets: [bogus]\\n")
{before}
import re
from {module} import {function}
{after}
sys.exit({function}())
"""
# a SIGINT as the console script imports module `at` (before the first time it is imported)
SIGINT_AT = """\
import importlib.abc

class SigintAt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {at!r}:
            os.kill(os.getpid(), signal.SIGINT)

sys.meta_path.insert(0, SigintAt())"""
NO_SIGHUP = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="Windows has no SIGHUP")
READY = 'os.write(1, b"ready\\n")  # the console script calls its function now'


def console_script(before: str = "", after: str = "") -> str:
    """The console script of `dit-compress` as pyproject.toml names it, with code before and after its import."""
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    module, function = re.search(r'^dit-compress = "([\w.]+):(\w+)"$', text, re.M).groups()
    return CONSOLE_SCRIPT.format(before=before, after=after, module=module, function=function)


def _started(tmp_path, script: str, **more_env: str) -> subprocess.Popen:
    """`script` run in tmp_path on this `compress` (the one the tests import), its environment with `more_env`."""
    here = str(Path(compress.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])), **more_env)
    return subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_as_from_a_terminal)


def _as_from_a_terminal() -> None:
    """The child's stop signals as a terminal's command has them (default actions), whatever the
    tests were started under: nohup ignores SIGHUP, a background job SIGINT and a launcher may ignore
    SIGTERM, which children inherit, and the tests that want one ignored ignore it in their script."""
    for name in ("SIGINT", "SIGHUP", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


@pytest.mark.parametrize("at", ["compress.cli", "argparse", "compress.errors"])
def test_a_ctrl_c_while_the_cli_is_imported_is_one_line(tmp_path, at):
    done = _started(tmp_path, console_script(before=SIGINT_AT.format(at=at)))
    out, err = done.communicate(timeout=300)
    assert (done.returncode, err.strip()) == (130, "dit-compress: interrupted")


@pytest.mark.parametrize("delay", [0, 0.002, 0.005, 0.01])
def test_a_ctrl_c_soon_after_the_console_script_starts_is_one_line(tmp_path, delay):
    """SIGINT at a few delays from the console script's call of its function (while the CLI is
    imported, the parser built, or the command's imports made): an interrupt, whenever it lands."""
    landed, tries = 0, 0
    while landed < 2 and tries < 10:
        tries += 1
        done = _started(tmp_path, console_script(after=READY))
        assert done.stdout.readline() == "ready\n"
        time.sleep(delay)
        done.send_signal(signal.SIGINT)
        out, err = done.communicate(timeout=300)
        if _in_the_script_itself(err):  # a loaded machine: it landed before the function was called
            continue
        assert "Traceback" not in err
        assert (done.returncode, err.strip()) == (130, "dit-compress: interrupted")
        landed += 1
    assert landed == 2, f"every SIGINT of {tries} landed in the stand-in console script before its call"


def _in_the_script_itself(err: str) -> bool:
    """A SIGINT that interrupted the stand-in console script at its READY line, between writing
    'ready' and calling the function (its traceback's one frame is that line): pip's script has no
    such line, and no code of dit-compress ran yet to handle it."""
    ready = console_script(after=READY).splitlines().index(READY) + 1
    frames = re.findall(r'File "([^"]+)", line (\d+)', err)
    return frames == [("<string>", str(ready))] and err.rstrip().endswith("KeyboardInterrupt")


def test_import_compress_does_not_import_the_cli_nor_touch_sigint(tmp_path):
    """Library users: `import compress` stays cheap and leaves Ctrl-C as it was."""
    script = ("import signal, sys\nimport compress\n"
              "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
              "sorted(m for m in sys.modules if m.startswith('compress.') or m == 'argparse'))")
    done = _started(tmp_path, script)
    out, err = done.communicate(timeout=300)
    assert (done.returncode, out.strip()) == (0, "True []"), err


# a command that ended (its one line said), then a second SIGINT as the process exits: `timeout -s INT`
# signals the command and then its process group
SECOND_SIGINT = """\
import os, signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)
import compress.cli
compress.cli.main = lambda: {code}
threading.Thread(target=lambda: __import__("time").sleep(1)).start()  # joined at shutdown
from compress.cli_entry import main
code = main()
print("done", flush=True)
os.kill(os.getpid(), signal.SIGINT)
sys.exit(code)
"""


@pytest.mark.parametrize("code", [130, 0, 2])
def test_a_second_ctrl_c_as_the_process_exits_says_nothing_more(tmp_path, code):
    done = _started(tmp_path, SECOND_SIGINT.format(code=code))
    out, err = done.communicate(timeout=300)
    assert (done.returncode, out, err) == (code, "done\n", "")


# a command that ended (a run whose output was written), then a SIGINT as the interpreter frees its
# modules after its exit handlers (seconds with torch loaded): Python has put SIGINT's default action
# back by then, and the process died of the signal (status 130, nothing said) though its work was done
LATE_SIGINT = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import compress.cli
compress.cli.main = lambda: {code}


class FreedLate:
    def __del__(self):  # as __main__ is freed: after the exit handlers
        os.kill(os.getpid(), signal.SIGINT)
        os.write(1, b"freed\\n")


freed_late = FreedLate()
from compress.cli_entry import main
sys.exit(main())
"""


@pytest.mark.parametrize("code", [0, 2])
def test_a_ctrl_c_as_the_interpreter_frees_its_modules_keeps_the_commands_status(tmp_path, code):
    done = _started(tmp_path, LATE_SIGINT.format(code=code))
    out, err = done.communicate(timeout=300)
    assert (done.returncode, out, err) == (code, "freed\n", "")


@pytest.mark.parametrize("stop, status", [("SIGTERM", 143), pytest.param("SIGHUP", 129, marks=NO_SIGHUP)])
@pytest.mark.parametrize("at", ["compress.cli", "torch"])
def test_a_sigterm_while_the_cli_or_a_command_imports_is_one_line_as_a_ctrl_c(tmp_path, at, stop, status):
    """SIGTERM (kill, timeout, a job scheduler) while the CLI or the command's imports (torch's
    start-up) load killed the process without a word, where a run's passes and convert take it as a
    Ctrl-C: now it is one from the console script's first line on, held over the imports as a Ctrl-C
    is (interrupts_held). So is SIGHUP (a terminal closed, an SSH session dropped), which killed the
    process without a word anywhere. The status is the signal's, 128 + its number, as a shell gives
    a process the signal killed (both were 130, a Ctrl-C's)."""
    stop_at = SIGINT_AT.format(at=at).replace("signal.SIGINT", f"signal.{stop}")
    done = _started(tmp_path, console_script(before=stop_at))
    out, err = done.communicate(timeout=300)
    assert (done.returncode, err.strip()) == (status, "dit-compress: interrupted")


@pytest.mark.parametrize("stop", ["SIGTERM", pytest.param("SIGHUP", marks=NO_SIGHUP)])
def test_a_sigterm_the_caller_ignores_stays_ignored(tmp_path, stop):
    """A caller that ignores SIGTERM (SIG_IGN), or SIGHUP (nohup), keeps it ignored, as a background
    job's SIGINT."""
    ignored = f"signal.signal(signal.{stop}, signal.SIG_IGN)\n" + SIGINT_AT.format(at="torch").replace(
        "signal.SIGINT", f"signal.{stop}")
    done = _started(tmp_path, console_script(before=ignored))
    out, err = done.communicate(timeout=300)
    assert done.returncode == 2 and "later.yaml:5: svd.targets: pattern 'bogus' matches no linear layer" in err and "interrupted" not in err


# `python -m compress.cli plan later.yaml` (what docs/PASSES.md's `accelerate launch ... -m compress.cli` runs),
# a stop signal sent as the command imports torch
AS_MODULE = """\
import os, runpy, signal, sys
sys.argv[1:] = ["plan", "later.yaml"]
open("later.yaml", "w").write("model: pixart\\nteacher: toy:pixart\\npasses:\\n  - svd:\\n      targets: [bogus]\\n")
{stop_at}
runpy.run_module("compress.cli", run_name="__main__", alter_sys=True)  # as python -m does
"""


@pytest.mark.parametrize("stop, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_python_m_compress_cli_stops_as_the_console_script_does(tmp_path, stop, status):
    """`python -m compress.cli` skipped the console script's entry (cli_entry.main): a SIGTERM killed eval,
    bench, importance or lora without a word (status -15, lora's temp folder left), and a Ctrl-C after
    'wrote OUT' ended a finished run with 130. It goes through that entry now."""
    stop_at = SIGINT_AT.format(at="torch").replace("signal.SIGINT", f"signal.{stop}")
    done = _started(tmp_path, AS_MODULE.format(stop_at=stop_at))
    out, err = done.communicate(timeout=300)
    assert (done.returncode, err.strip()) == (status, "dit-compress: interrupted")


# a command whose Ctrl-C lands in a finalizer (the garbage collector runs them anywhere: regex's
# Group.__del__ in a run's held-out check after its last distill step), then goes on to end with 0
IN_A_FINALIZER = """\
import gc, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import compress.cli


class Freed:
    def __del__(self):
        os.kill(os.getpid(), signal.{stop})
        for _ in range(10 ** 5):  # the handler runs here, in the finalizer
            pass


def command():
    Freed()  # freed at once
    for _ in range(50):
        time.sleep(0.01)
    print("wrote out", flush=True)
    return 0


compress.cli.main = command
from compress.cli_entry import main
sys.exit(main())
"""


@pytest.mark.parametrize("stop, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_ctrl_c_that_lands_in_a_finalizer_still_stops_the_command(tmp_path, stop, status):
    """A Ctrl-C 0.3-0.8 s after a run's last distill step printed 'Exception ignored in: <function Group.__del__
    ...> KeyboardInterrupt' and the run went on, wrote its output and ended with 0 (T2: 6 of 9 tries):
    Python swallows an exception a finalizer raises. The stop is raised again in the main thread."""
    done = _started(tmp_path, IN_A_FINALIZER.format(stop=stop))
    out, err = done.communicate(timeout=300)
    assert (done.returncode, out, err.strip()) == (status, "", "dit-compress: interrupted")


# stdout ASCII, the locale C without UTF-8 mode (a Latin-1 locale fails alike on the project's … × λ Δ → − – Σ)
ASCII_STDOUT = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}
AS_PYTHON_M_COMPRESS = """\
import runpy, sys
sys.argv[1:] = {argv!r}
runpy.run_module("compress", run_name="__main__", alter_sys=True)  # as python -m does
"""
LAST_LINE = """\
import sys
import compress.cli
from compress.report import results


def command():
    results.print("wrote out/sortie \\xe9 (0.889\\xd7 the teacher)")
    return 0


compress.cli.main = command
from compress.cli_entry import main
sys.exit(main())
"""


@pytest.mark.parametrize("argv", [["plan", "toy-pixart"], ["--help"], ["convert", "--help"]])
def test_what_a_command_prints_never_fails_to_encode_on_an_ascii_stdout(tmp_path, argv):
    """plan (its svd line's …) and the --help pages (PixArt-\u03a3) ended with a UnicodeEncodeError traceback
    (status 1) where stdout could not encode them; a character it cannot is a backslash escape now."""
    done = _started(tmp_path, AS_PYTHON_M_COMPRESS.format(argv=argv), **ASCII_STDOUT)
    out, err = done.communicate(timeout=300)
    assert (done.returncode, "Traceback" in err) == (0, False), err
    assert out.isascii() and "\\u" in out  # the project's characters were there, escaped


def test_a_finished_runs_last_line_that_stdout_cannot_encode_is_no_failure(tmp_path):
    """'wrote out/sortie \u00e9' on an ASCII stdout: a traceback and status 1 for an output that was complete."""
    done = _started(tmp_path, LAST_LINE, **ASCII_STDOUT)
    out, err = done.communicate(timeout=300)
    assert (done.returncode, out, err) == (0, "wrote out/sortie \\xe9 (0.889\\xd7 the teacher)\n", "")
