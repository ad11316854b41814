"""Shared by the tools/ benchmarks: run one measuring stage of a script in a fresh process (its own
peak-memory counter and import state) and return the JSON line it prints last."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def measured(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{Path(script).name} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured_in_temp(script: str, *args: str) -> dict:
    """`measured` with a fresh temp folder passed as `--work` (removed afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        return measured(script, *args, "--work", tmp)
