"""`dit-compress inspect --plot`: a folder it cannot write or an empty --plot is one line, and the
spectrum of a layer a LoRA grew marks the svd's cut, in its title and legend (moved from
tests/test_inspect.py)."""

from pathlib import Path

from compress.cli import main
from compress.io_export import save_compressed
from tests.conftest import factorize, tiny_pixart


def test_inspect_plot_into_a_folder_it_cannot_write_or_empty_is_one_line(tmp_path, capsys, monkeypatch):
    """A PNG --plot could not write (a folder of its name, a full disk) came as a traceback after the
    tables, and a half-written one could stay under its name; an empty --plot wrote nothing, said
    nothing and exited 0."""
    import matplotlib.figure

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], rank=2), tmp_path / "out")
    capsys.readouterr()
    assert main(["inspect", str(out), "--plot", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--plot is empty: give the folder to write the PNGs into (. for the current one), "
                        "or leave --plot out") and err.count("\n") == 0
    (tmp_path / "d" / "ranks.png").mkdir(parents=True)
    assert main(["inspect", str(out), "--plot", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--plot: cannot write {tmp_path / 'd' / 'ranks.png'} (Is a directory)")
    assert err.count("\n") == 0 and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["ranks.png"]

    def cut_off(fig, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_off)
    assert main(["inspect", str(out), "--plot", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--plot: cannot write {tmp_path / 'full' / 'ranks.png'} (No space left on device)")
    assert list((tmp_path / "full").iterdir()) == []  # no cut-off ranks.png, nor its temp file
    monkeypatch.undo()
    assert main(["inspect", str(out), "--plot", str(tmp_path / "full")]) == 0
    assert f"wrote {tmp_path / 'full' / 'ranks.png'}" in capsys.readouterr().err  # the console's, beside the tables
    assert (tmp_path / "full" / "ranks.png").read_bytes()[:4] == b"\x89PNG"


def test_inspect_plot_marks_the_svds_cut_of_a_layer_a_lora_grew(tmp_path, monkeypatch):
    """--plot marked 'rank 12' on the svd's spectrum of a layer the svd cut at rank 8 and a LoRA grew
    by 4, and chose the most and least compressed layers by the grown ranks: the svd's cut is marked,
    the title says '+ LoRA 4', and the layers are chosen by the svd's ranks."""
    import compress.inspect_plots as inspect_plots

    def row(name, rank):
        return {"name": name, "rank": rank, "shape": [64, 64], "dense_params": 64 * 64 + 64,
                "kept": (rank * 128 + 64) / (64 * 64 + 64)}

    rows = [row("grown", 12), row("a", 10), row("b", 11), row("c", 20), row("d", 30)]
    svd_ranks = {"grown": 8, "a": 10, "b": 11, "c": 20, "d": 30}
    report = {"svd": {"layers": {n: {"rank": k, "spectrum": [3.0, 2.0, 1.0]} for n, k in svd_ranks.items()}}}
    drawn = {}
    monkeypatch.setattr(inspect_plots, "plot_ranks", lambda rows, path: path)
    monkeypatch.setattr(inspect_plots, "plot_spectrum", lambda name, energies, rank, path, **kw: drawn.setdefault(name, rank) and path)
    inspect_plots.write_plots(rows, report, tmp_path)
    assert drawn == {"grown (svd's cut; + LoRA 4: rank 12 now)": 8, "a": 10, "c": 20, "d": 30}


def test_inspect_plot_legend_of_a_layer_a_lora_grew_says_the_lora_as_its_title_does(tmp_path, monkeypatch):
    """The spectrum's legend said 'rank 8' where its title said '+ LoRA 4: rank 12 now' (plot_spectrum's
    label was fixed): it now says 'rank 8 + LoRA 4' (a layer stored dense: '+ LoRA (stored dense now)'),
    and 'rank R' alone for a layer no LoRA grew; read off each figure's legend as it is saved."""
    import compress.inspect_plots as inspect_plots
    import compress.report as report

    def row(name, rank):
        return {"name": name, "rank": rank, "shape": [64, 64], "dense_params": 64 * 64 + 64}

    rows = [row("grown", 12), row("dense", None), row("kept", 20)]
    svd = {"svd": {"layers": {n: {"rank": k, "spectrum": [3.0, 2.0, 1.0]} for n, k in
                              {"grown": 8, "dense": 10, "kept": 20}.items()}}}
    legends = {}

    def saved(fig, path, dpi=110):
        import matplotlib.pyplot as plt

        ax = fig.axes[0]
        legends[ax.get_title()] = [t.get_text() for t in ax.get_legend().get_texts()]
        plt.close(fig)
        return path

    monkeypatch.setattr(inspect_plots, "plot_ranks", lambda rows, path: path)
    monkeypatch.setattr(report, "save_figure", saved)
    inspect_plots.write_plots(rows, svd, tmp_path)
    assert legends == {"grown (svd's cut; + LoRA 4: rank 12 now)": ["rank 8 + LoRA 4"],
                       "dense (svd's cut; + LoRA: stored dense now)": ["rank 10 + LoRA (stored dense now)"],
                       "kept": ["rank 20"]}
