import pytest

from compress.lowrank import LowRankLinear


def test_layer_rows_count_parameters_as_the_saved_weights_do(tmp_path):
    """Each row's params are the numel of the layer's tensors in the safetensors file (bias included),
    dense_params those of the nn.Linear it replaced."""
    import math

    from safetensors import safe_open

    from compress.io import WEIGHTS
    from compress.io_export import save_compressed
    from compress.io_output import load_transformer
    from compress.report import layer_rows
    from tests.conftest import factorize, tiny_flux

    names = ["transformer_blocks.0.ff.net.2", "single_transformer_blocks.0.proj_out"]
    out = save_compressed(factorize(tiny_flux(), names, rank=2), tmp_path / "out")
    with safe_open(str(out / WEIGHTS), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    rows = layer_rows(load_transformer(out))
    for r in rows:
        on_disk = sum(math.prod(s) for k, s in shapes.items() if k.startswith(r["name"] + "."))
        assert r["params"] == on_disk, r["name"]
    r = next(r for r in rows if r["name"] == names[0])  # ff.net.2: 64 -> 16, rank 2, bias 16
    assert (r["params"], r["dense_params"]) == (2 * (16 + 64) + 16, 16 * 64 + 16)


def test_to_json_writes_non_finite_numbers_as_null():
    """eval's psnr_vs_teacher of a model equal to its teacher is inf: --json stays strict JSON."""
    import json

    from compress.report import to_json

    text = to_json({"psnr_vs_teacher": float("inf"), "rows": [float("nan"), 1.5], "shape": (2, 3)})
    assert json.loads(text, parse_constant=lambda c: 1 / 0) == {"psnr_vs_teacher": None,
                                                                "rows": [None, 1.5], "shape": [2, 3]}


def test_layer_rows_take_the_objectives_energy_kept_and_read_older_reports():
    """energy_kept (inspect's "energy") is the record's own, the objective's; rel_output_error is the
    layer's plain output error and no longer gives it, except in reports written before energy_kept."""
    from compress.report import layer_rows
    from tests.conftest import tiny_pixart

    a, b = "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k"
    report = {"svd": {"layers": {a: {"rank": 4, "energy_kept": 0.99, "rel_output_error": 0.3},
                                 b: {"rank": 4, "rel_output_error": 0.3}}}}
    model = tiny_pixart()
    for name in (a, b):  # factorized at the records' rank
        dense = model.get_submodule(name)
        model.set_submodule(name, LowRankLinear(dense.in_features, dense.out_features, 4))
    rows = {r["name"]: r for r in layer_rows(model, report)}
    assert rows[a]["energy_kept"] == 0.99 and rows[a]["rel_output_error"] == 0.3
    assert rows[b]["energy_kept"] == pytest.approx(1 - 0.3 ** 2)


def test_layer_rows_of_a_layer_densified_since_keep_only_its_time_and_spectrum():
    """A layer the svd pass factorized (an int rank in its record) that is dense now (a LoRA grew it
    past break-even) shows none of that factorization's loss, ratio, energy or output error."""
    from compress.report import layer_rows
    from tests.conftest import tiny_pixart

    a = "transformer_blocks.0.attn1.to_q"
    record = {"rank": 4, "loss": 1.0, "optimal_loss": 1.0, "loss_ratio": 1.0, "fit_gap": 0.0, "energy_kept": 0.99,
              "rel_output_error": 0.3, "time_s": 0.5, "spectrum": [1.0, 0.5]}
    row = {r["name"]: r for r in layer_rows(tiny_pixart(), {"svd": {"layers": {a: record}}})}[a]
    assert row["rank"] is None and row["time_s"] == 0.5 and row["spectrum"] == [1.0, 0.5]
    assert not {"loss", "optimal_loss", "loss_ratio", "fit_gap", "energy_kept", "rel_output_error"} & set(row)


def test_long_lines_stay_whole_off_a_terminal():
    """A log (stderr or stdout redirected) keeps a long note or result line as one line, for grep: rich
    would break it at 80 columns."""
    import subprocess
    import sys

    code = ("from compress.report import console, results; "
            "console.print('note ' * 40); results.print('result ' * 40)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert [line.rstrip() for line in proc.stderr.splitlines()] == [("note " * 40).rstrip()]
    assert [line.rstrip() for line in proc.stdout.splitlines()] == [("result " * 40).rstrip()]


@pytest.mark.parametrize("report, words", [
    ({"teacher": 5}, "teacher is 5, not text (a path or a Hugging Face id)"),
    ({"teacher": ["a"]}, 'teacher is ["a"], not text (a path or a Hugging Face id)'),
    ({"teacher": "toy:pixart", "teacher_config": 5}, "teacher_config is 5, not text (a path)"),
    ({"inputs_cache": {"a": 1}}, 'inputs_cache is {"a": 1}, not text (a path)'),
    ({"svd": "x"}, 'svd is "x", not a mapping'),
    ({"svd": {"layers": [1]}}, "svd.layers is [1], not a mapping"),
    ({"svd": {"layers": {"proj_out": 3}}}, "svd.layers.proj_out is 3, not a mapping"),
    ({"svd": {"layers": {"proj_out": {"spectrum": "x"}}}}, 'svd.layers.proj_out.spectrum is "x", not a list of numbers'),
    ({"svd": {"compensation": {"block 0": {"step": 1, "calibration_error": 0.1}}}},
     "svd.compensation.block 0.uncompensated_error is null, not a number"),
])
def test_a_damaged_report_names_the_field_it_cannot_use(tmp_path, report, words):
    import json

    from compress.errors import UserError
    from compress.report import read_report

    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(UserError) as e:
        read_report(tmp_path)
    assert str(e.value) == f"{tmp_path}/report.json: {words}; the output is damaged (rerun the recipe)"


def test_output_file_refuses_an_existing_folder_even_for_a_figure(tmp_path):
    """`--png DIR` wrote DIR.png beside the folder (the suffix was added first); it is a folder."""
    from compress.errors import UserError
    from compress.report import output_file

    (tmp_path / "plots").mkdir()
    with pytest.raises(UserError, match="is a folder; give a file name"):
        output_file(str(tmp_path / "plots"), "--png", figure=True)
    assert output_file(str(tmp_path / "heat"), "--png", figure=True) == tmp_path / "heat.png"


def test_the_notes_of_a_distributed_run_come_from_rank_zero_only(monkeypatch, capsys):
    """Under torchrun every rank printed 'pass 5/5: distill' and the rest: twice with two processes."""
    from compress.cli import main
    from compress.report import console

    monkeypatch.setattr(console, "quiet", False)  # restored after the test
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "no-such-recipe.yaml"]) == 2  # the notes set up before the recipe loads
    console.print("a note")
    said = capsys.readouterr().err
    assert "a note" not in said and "no-such-recipe.yaml" in said  # errors still print
    monkeypatch.setenv("RANK", "0")
    main(["run", "no-such-recipe.yaml"])
    console.print("a note")
    assert "a note" in capsys.readouterr().err


def test_the_rank_plots_legend_covers_no_bar(tmp_path, monkeypatch):
    """The legend of inspect --plot's ranks.png sat inside the axes, over the bars of dense layers
    (kept 1.0) at the top: it lies outside the axes, inside the figure."""
    import matplotlib.pyplot as plt

    from compress.report import plot_ranks

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))
    rows = [{"role": role, "block": f"single.{i}", "kept": 1.0 if i % 2 else 0.3}
            for i in range(12) for role in ("attention", "mlp", "modulation")]
    plot_ranks(rows, tmp_path / "ranks.png")
    fig = kept[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert not legend.overlaps(axes)
    whole = fig.bbox
    assert whole.x0 <= legend.x0 and legend.x1 <= whole.x1 and whole.y0 <= legend.y0 and legend.y1 <= whole.y1
    assert (tmp_path / "ranks.png").is_file()


def test_output_file_makes_the_folder_a_link_points_into_and_names_a_link_loop(tmp_path):
    """write_atomically writes through a link, so the folder made and checked before the work is
    that of the link's target: a link into a missing folder failed after the whole scan (traceback)."""
    from compress.errors import UserError
    from compress.report import output_file

    (tmp_path / "out.json").symlink_to(tmp_path / "missing" / "x.json")
    assert output_file(str(tmp_path / "out.json"), "--json") == tmp_path / "missing" / "x.json"
    assert (tmp_path / "missing").is_dir()
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    with pytest.raises(UserError, match=r"--json .*loop\.json: a link that cannot be followed"):
        output_file(str(tmp_path / "loop.json"), "--json")


def test_is_number_and_other_params_are_reports_own():
    """report_teacher and report_card imported report's private _is_number; plan's table by block
    imported other_params from inspect, a command. Both are report's public helpers now: a JSON number
    is an int or float but no bool; the rows outside the linears (one per block, the top level as "-")
    add up, with the linears', to the model's parameter count."""
    from compress.report import is_number, layer_rows, other_params, param_count
    from tests.conftest import tiny_pixart

    assert [is_number(v) for v in (1, 0.5, float("nan"), True, "1", None)] == [True, True, True, False, False, False]
    model = tiny_pixart()
    rows = layer_rows(model)
    others = other_params(model, rows)
    assert sum(r["params"] for r in rows + others) == param_count(model)
    assert {r["block"] for r in others} == {"-"} | {r["block"] for r in rows if r["block"] != "-"}
    assert all(r["rank"] is None and r["params"] == r["dense_params"] for r in others)


@pytest.mark.parametrize("json_form", [False, True])
def test_a_table_read_by_a_reader_gone_exits_as_the_json_form_does(tmp_path, json_form):
    """T2 stop 52 #2: `dit-compress inspect OUT | head -1` (plan's, eval's and bench's tables too) exited 1
    and said nothing: rich's Console.on_broken_pipe raised SystemExit(1) before cli.main's BrokenPipeError
    answer, which the --json forms reach (status 0). Now the results console raises BrokenPipeError: both
    forms exit 0 with nothing on stderr (here stdout is a pipe whose reader is already gone)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import compress

    recipe = Path(compress.__file__).parent.parent / "recipes" / "toy-pixart.yaml"
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; from compress.cli import main; sys.exit(main())",
                               "plan", str(recipe), *(["--json"] if json_form else [])],
                              stdout=write, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=600)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")
