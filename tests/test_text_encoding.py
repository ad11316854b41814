"""The product's own text files (an output's README.md, its records, recipes it reads back) are UTF-8
whatever the locale: written and read with encoding="utf-8", never the locale's encoding (ASCII under
`LC_ALL=C PYTHONUTF8=0`, Latin-1 under an ISO-8859-1 locale, cp1252 on Windows)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import compress

PACKAGE = Path(compress.__file__).parent
ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0"}  # the C locale without Python's UTF-8 mode: ASCII files
CARD = "guided error: uncond + s · (cond − uncond), rank λ → √‖Δ‖"
NOT_PROJECT_FILES = ("/proc/", "/sys/")  # the kernel's ASCII numbers, read as the locale reads them


def locale_env(**more) -> dict:
    """os.environ under an ASCII locale, with this `compress` (the one the tests import) on PYTHONPATH."""
    here = str(PACKAGE.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_CTYPE", "PYTHONIOENCODING")}
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
                **ASCII_LOCALE, **more)


def test_an_outputs_readme_is_written_as_utf8_under_an_ascii_locale(tmp_path):
    """A run did every pass, then died with a traceback writing README.md (its model card's − and ·)."""
    script = ("import sys; from pathlib import Path; from compress.io_export import write_texts; "
              f"write_texts(Path(sys.argv[1]), {{'compression': {{}}}}, {{'README.md': {ascii(CARD)}}})")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=locale_env(),
                          capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "README.md").read_bytes() == CARD.encode("utf-8")


def _unnamed_encodings(path: Path) -> list[str]:
    """The calls of `path` that open a file as text (open, Path.read_text / write_text) naming no encoding."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        is_open = isinstance(node.func, ast.Name) and name == "open"
        if not is_open and name not in ("read_text", "write_text"):
            continue
        mode = node.args[1] if is_open and len(node.args) > 1 else next(
            (k.value for k in node.keywords if k.arg == "mode"), None)
        text = ast.unparse(node)
        if isinstance(mode, ast.Constant) and "b" in str(mode.value) or any(p in text for p in NOT_PROJECT_FILES):
            continue
        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {text[:80]}")
    return found


def test_every_text_file_the_package_opens_names_its_encoding():
    unnamed = [line for path in sorted(PACKAGE.rglob("*.py")) for line in _unnamed_encodings(path)]
    assert unnamed == []
