from rich.console import Console

from compress.report import layer_table


def _rows():
    return [{"name": f"single_transformer_blocks.{i}.attn.to_q", "role": "attention", "shape": [3072, 3072],
             "rank": 512, "kept": 1 / 3, "energy_kept": 0.99871, "loss_ratio": 1.0000002} for i in range(3)]


def _render(width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(layer_table(_rows()))
    return console.export_text()


def test_layer_table_never_cuts_a_cell():
    """A narrow terminal folds the layer name over lines; the numbers stay whole."""
    narrow = _render(80)
    assert "…" not in narrow
    for cell in ("3072×3072", "512", "33%", "0.9987", "1.000000"):
        assert cell in narrow
    wide = _render(160)
    assert all(f"single_transformer_blocks.{i}.attn.to_q" in wide for i in range(3))
