"""The toys' PNG grids (compress/toy/grid.py)."""

import pytest
import torch
from PIL import Image

from compress.toy.grid import write_grid


@pytest.mark.parametrize("earlier", [False, True])
def test_a_grid_interrupted_while_written_leaves_no_cut_off_png(tmp_path, monkeypatch, earlier):
    """`eval --grid PNG` stopped (Ctrl-C, SIGTERM, kill) while PIL wrote the file left a broken PNG under
    its name (33 bytes: the signature and part of the header; PIL: 'cannot identify image file'): it is
    written to a temp file beside it and renamed, so the earlier grid (or none) stays, and no temp file."""
    path = tmp_path / "ev" / "grid.png"
    images = torch.rand(20, 1, 8, 8)
    if earlier:
        write_grid(images, path, rows=10)
    before = path.read_bytes() if earlier else None
    real = Image.Image.save

    def cut_off(self, fp, *a, **k):
        real(self, fp, *a, **k)
        with open(fp, "r+b") as f:
            f.truncate(33)  # as far as it got
        raise KeyboardInterrupt
    monkeypatch.setattr(Image.Image, "save", cut_off)
    with pytest.raises(KeyboardInterrupt):
        write_grid(torch.rand(20, 1, 8, 8), path, rows=10)
    assert (path.read_bytes() if path.exists() else None) == before
    assert sorted(p.name for p in path.parent.iterdir()) == (["grid.png"] if earlier else [])
    monkeypatch.undo()
    assert write_grid(images, path, rows=10) == path and Image.open(path).size == (2 * 26 + 2, 10 * 26 + 2)
