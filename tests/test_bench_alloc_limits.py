"""tools/bench_alloc_limits.py: --help before torch loads, and the arithmetic behind its printed ratios."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tools import bench_alloc_limits as tool

PATH = Path(tool.__file__)


def test_help_answers_before_torch_loads_and_bad_arguments_are_refused():
    probe = ("import runpy, sys\nsys.argv = [sys.argv[1], '--help']\ntry:\n    runpy.run_path(sys.argv[0], "
             "run_name='__main__')\nexcept SystemExit as e:\n    print('torch loaded' if 'torch' in sys.modules "
             "else 'no torch', e.code)\n")
    shown = subprocess.run([sys.executable, "-c", probe, str(PATH)], capture_output=True, text=True, timeout=120)
    assert shown.stdout.startswith("usage: bench_alloc_limits.py [-h]") and shown.stdout.endswith("no torch 0\n")
    refused = subprocess.run([sys.executable, str(PATH), "--family", "sd3"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "invalid choice: 'sd3'" in refused.stderr


def test_parts_rounds_and_wide_are_parsed():
    args = tool.parse_args(["--family", "flux", "--parts", "2", "4", "--rounds", "3", "--wide"])
    assert (args.family, args.parts, args.rounds, args.wide) == ("flux", [2, 4], 3, True)
    assert tool.parse_args([]).parts == [1, 2, 3, 4] and tool.parse_args([]).rounds == 2


def test_rank_grid_takes_every_eighth_rank_of_the_range_its_end_and_the_extra_ranks():
    assert tool.rank_grid(13, 59, [34]) == [16, 24, 32, 34, 40, 48, 56]
    assert tool.rank_grid(4, 20) == [4, 12, 20]


def test_measured_curve_meets_the_errors_at_their_ranks_and_follows_the_curve_between():
    curve = [1.0, 0.5, 0.25, 0.125, 0.0625, 0.03]
    got = tool.measured_curve(curve, {1: 0.5, 3: 0.25})  # weight 0.5 at rank 1, 0.5 at 3
    assert got[1] == pytest.approx(0.25) and got[3] == pytest.approx(0.0625)
    assert got[2] == pytest.approx(0.5 * 0.25) and got[5] == pytest.approx(0.5 * 0.03)  # flat past rank 3


def test_cancelled_share_and_predicted_ratio():
    additive, share = tool.cancelled(0.4, [0.3, 0.4])
    assert additive == pytest.approx(0.5) and share == pytest.approx(1 - 0.16 / 0.25)
    curves = {"a": [1.0, 0.5, 0.2], "b": [1.0, 0.4, 0.1]}
    assert tool.predicted_ratio(curves, {"a": 2, "b": None}, {"a": 1, "b": 1}) == pytest.approx(math.sqrt(0.2 / 0.9))
