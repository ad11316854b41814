"""`dit-compress inspect` of a layer whose calibration Gram is zero (its inputs all zero): no ratio or
energy share of 0/0 shown as perfect, and the targets whose data rank is below their rank said, as the
run warned them."""

import pytest
import torch

from compress.cli import main
from compress.report import results
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE

pytestmark = pytest.mark.usefixtures("one_thread")
ZEROED = "transformer_blocks.1.ff.net.2"  # its input, ff.net.0.proj's output through GELU, is all zero


def test_a_zero_gram_shows_no_ratio_and_is_said(tmp_path, capsys, monkeypatch):
    """inspect showed the zero-input ff.net.2 as 'energy 1.0000, loss 0, loss/opt 1.000000' and the
    run said nothing of it (report.json: data_rank 0, clamped: true)."""
    teacher = tiny_pixart()
    with torch.no_grad():
        teacher.transformer_blocks[1].ff.net[0].proj.weight.zero_()
        teacher.transformer_blocks[1].ff.net[0].proj.bias.zero_()
    teacher.save_pretrained(tmp_path / "teacher")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SIMPLE.format(teacher=tmp_path / "teacher",
                                    passes="  - svd: {targets: [mlp], ratio: 0.5, multiple: 2}\n"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]) == 0
    said = (f"1 target saw a zero or rank-deficient calibration Gram (its data rank under half its rank: {ZEROED} 0 < 6):"
            " the factors past the directions the data spans come from the weight alone, unmeasured")
    assert f"warning: svd: {said}" in " ".join(capsys.readouterr().err.split())
    monkeypatch.setattr(results, "_width", 400)
    assert main(["inspect", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert said in printed
    block1 = printed[printed.index("│ transformer_blocks.1 ", printed.index("loss/opt")):]
    cells = [c.strip() for c in block1[block1.index("│   ff.net.2 "):].splitlines()[0].strip("│").split("│")]
    headers = [c.strip() for c in printed[printed.index("┃", printed.index("loss/opt") - 200):].splitlines()[0]
               .strip("┃").split("┃")]
    row = dict(zip(headers, cells))
    assert row["energy"] == "-" and row["loss/opt"] == "-" and row["loss"] == "0.00e+00", row
