"""compress/__main__.py: `python -m compress` is the `dit-compress` console script (F2 stop 54: there was no
__main__, so it said 'No module named compress.__main__; 'compress' is a package and cannot be directly
executed'), naming itself dit-compress as the console script does; and the version it says is the one the
wheel's metadata and report.json carry (pyproject takes it from compress.__version__)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import compress

ROOT = Path(__file__).resolve().parent.parent


def _python_m_compress(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    """`python -m compress ARGV` in tmp_path, on this compress (the one the tests import)."""
    here = str(Path(compress.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "compress", *argv], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300)


def test_python_m_compress_help_is_dit_compress_s(tmp_path):
    done = _python_m_compress(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: dit-compress [-h] [--version] COMMAND ...\n")
    assert "exit status: 0 done" in " ".join(done.stdout.split()) and done.stderr == ""


def test_python_m_compress_version(tmp_path):
    done = _python_m_compress(tmp_path, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"dit-compress {compress.__version__}\n", "")


def test_python_m_compress_says_a_user_error_in_one_line(tmp_path):
    """A recipe not there: status 2 and the command's one line, as `dit-compress plan` says it (no traceback)."""
    done = _python_m_compress(tmp_path, "plan", "nope.yaml")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "dit-compress plan: error: no such recipe nope.yaml\n"
    done = _python_m_compress(tmp_path, "runn", "r.yaml")  # argparse's own
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith(
        "dit-compress: error: argument COMMAND: invalid choice: 'runn'")



def test_the_wheel_s_version_is_compress_s():
    """pyproject's version is compress.__version__ (dynamic), which --version says and report.json records
    (runner_export.output_report): the three were two literals kept equal by hand."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "compress.__version__"}
    read_attr = pytest.importorskip("setuptools.config.expand").read_attr  # as the build reads it (setuptools 61+)
    assert read_attr("compress.__version__", root_dir=ROOT) == compress.__version__
