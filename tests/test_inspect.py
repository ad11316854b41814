"""`dit-compress inspect`: its table by block counts every parameter, so its rows add up to what the
output's weight files hold."""

import pytest
from safetensors.torch import load_file

from compress.cli import main
from compress.io_export import save_compressed
from tests.conftest import factorize, tiny_flux, tiny_pixart


def _table_rows(printed: str, title: str) -> dict[str, list[str]]:
    """label -> cells of the rows of the table `title` in inspect's printed output."""
    lines = printed[printed.index(title):].splitlines()
    rows = {}
    for line in lines[1:]:
        if rows and not line.startswith(("│", "┏", "┃", "┡")):
            break
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("family, model, layer", [("pixart", tiny_pixart, "transformer_blocks.0.attn1.to_q"),
                                                  ("flux", tiny_flux, "transformer_blocks.0.attn.to_q")])
def test_the_table_by_block_adds_up_to_what_the_weight_files_hold(tmp_path, capsys, family, model, layer):
    """The rows counted the linears only: each PixArt block was short its scale_shift_table, each
    Flux block its norms, the top level its patch embedding and norms."""
    out = save_compressed(factorize(model(), [layer], rank=2), tmp_path / "out")
    held = sum(t.numel() for t in load_file(str(out / "diffusion_pytorch_model.safetensors")).values())
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _table_rows(printed, "by block")
    assert "top level" in rows and len(rows) > 3
    assert sum(int(cells[1].replace(",", "")) for cells in rows.values()) == held
    assert "by block (all parameters)" in printed
    first = next(label for label in rows if label != "top level")
    assert rows[first][0] == "1" and rows[first][2] != "100.0%"  # the factorized to_q, of the whole block
