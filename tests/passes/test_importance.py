import copy
import json
import math

import pytest
import torch

from compress.arch import get_adapter
from compress.errors import UserError
from compress.passes.base import RunContext
from compress.passes.importance import (ImportanceConfig, ImportancePass, bucket_of, load_json, scan,
                                        scan_cost, write_atomically)
from compress.passes.importance_report import plot_heatmap, render_table
from compress.replay import Replay
from tests.conftest import model_inputs, tiny_flux, tiny_pixart


def batches_for(model, n=2, batch=3):
    return [model_inputs(model, batch=batch, seed=s) for s in range(n)]


def used_prediction(model, kwargs):
    out = model(**kwargs).sample
    c = model.config.in_channels
    return out[:, :c] if type(model).__name__.startswith("PixArt") and out.shape[1] == 2 * c else out


def removal_error(model, group, index, batches):
    """Brute force: really delete the block and compare predictions."""
    pruned = copy.deepcopy(model)
    get_adapter(model).remove_blocks(pruned, {group: [index]})
    num = den = 0.0
    with torch.no_grad():
        for kw in batches:
            ref, out = used_prediction(model, kw).double(), used_prediction(pruned, kw).double()
            num, den = num + (out - ref).pow(2).sum(), den + ref.pow(2).sum()
    return float((num / den).sqrt())


def test_scan_equals_removing_the_block(tiny_model):
    adapter, batches = get_adapter(tiny_model), batches_for(tiny_model)
    result = scan(tiny_model, adapter, batches, progress=False)
    assert [(b.group, b.index) for b in result.blocks] == [(g, i) for g, i, _ in
                                                           adapter.iter_blocks(tiny_model)]
    for b in result.blocks:
        assert b.scan == pytest.approx(removal_error(tiny_model, b.group, b.index, batches), rel=1e-6)
        assert 0 <= b.proxy <= 2 and len(b.scan_by_bucket) == len(b.proxy_by_bucket) == 3
    assert -1 <= result.spearman <= 1
    names = [b.name for b in result.ranked()]
    assert names == [b.name for b in sorted(result.blocks, key=lambda b: b.scan)]


def test_scan_runs_the_stated_number_of_block_evaluations(tiny_model):
    adapter, batches = get_adapter(tiny_model), batches_for(tiny_model)
    calls = []
    hooks = [blk.register_forward_hook(lambda *a: calls.append(1)) for _, _, blk in adapter.iter_blocks(tiny_model)]
    result = scan(tiny_model, adapter, batches, progress=False)
    for h in hooks:
        h.remove()
    n = len(result.blocks)
    assert len(calls) == result.block_evaluations == 2 * (n + n * (n - 1) // 2)
    assert result.naive_block_evaluations == 2 * n * n
    assert scan_cost(n, 2, skips=False)["block_evaluations"] == 2 * n
    # blocks were restored after the replays
    assert not any(isinstance(b, Replay) for _, _, b in adapter.iter_blocks(tiny_model))


def test_buckets_put_high_noise_first():
    pixart, flux = get_adapter("pixart"), get_adapter("flux")
    assert bucket_of(pixart.noise_level(torch.tensor([999, 500, 10])), 3).tolist() == [0, 1, 2]
    assert bucket_of(flux.noise_level(torch.tensor([1.0, 0.5, 0.01])), 3).tolist() == [0, 1, 2]
    model = tiny_pixart()  # timesteps 10, 500, 900
    result = scan(model, get_adapter(model), batches_for(model, n=1), progress=False)
    assert result.buckets == ["early", "middle", "late"] and result.samples_per_bucket == [1, 1, 1]
    assert result.bucket_ranges[0][0] == 1.0
    one = scan(model, get_adapter(model), batches_for(model, n=1), buckets=1, progress=False)
    assert one.buckets == ["all"] and one.blocks[0].scan_by_bucket[0] == pytest.approx(one.blocks[0].scan)


def test_buckets_no_input_falls_in_are_said_before_the_scan(capsys):
    model = tiny_pixart()  # timesteps 10, 500, 900: 3 of 10 buckets hold one
    result = scan(model, get_adapter(model), batches_for(model, n=1), buckets=10, progress=False)
    assert sum(c > 0 for c in result.samples_per_bucket) == 3
    said = " ".join("".join(capsys.readouterr()).split())
    assert "importance: 7 of the 10 timestep buckets hold no calibration input (3 distinct timesteps)" in said
    scan(model, get_adapter(model), batches_for(model, n=1), buckets=3, progress=False)
    assert "buckets hold no" not in "".join(capsys.readouterr())


def test_proxy_only_needs_one_forward_per_batch():
    model = tiny_flux()
    adapter, batches = get_adapter(model), batches_for(model)
    full = scan(model, adapter, batches, progress=False)
    proxy = scan(model, adapter, batches, progress=False, skips=False)
    assert proxy.block_evaluations == 2 * len(proxy.blocks)
    assert all(math.isnan(b.scan) for b in proxy.blocks) and math.isnan(proxy.spearman)
    assert [b.proxy for b in proxy.blocks] == pytest.approx([b.proxy for b in full.blocks])


def test_block_map_gives_teacher_indices():
    model = tiny_flux()
    result = scan(model, get_adapter(model), batches_for(model, n=1), progress=False,
                  block_map={"double": [1, 2], "single": [0, 4, 5]})
    assert [(b.name, b.teacher_index) for b in result.blocks][-2:] == [("single.1", 4), ("single.2", 5)]


def test_pass_records_report_json_and_heatmap(tmp_path):
    model = tiny_flux()
    adapter, batches = get_adapter(model), batches_for(model)
    ctx = RunContext(adapter=adapter, family="flux", teacher=model, run_dir=tmp_path / "run",
                     calibration_inputs=lambda: batches)
    step = ImportancePass(ImportanceConfig(progress=False))
    step.check(model, adapter)
    assert step.plan(model, adapter)["per_batch"]["block_evaluations"] == 5 + 10
    assert step.run(model, ctx) is model
    record = ctx.report["importance"]
    json.dumps(record, allow_nan=False)  # JSON-able, no NaN
    png = (tmp_path / "run" / "importance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    loaded = load_json(tmp_path / "run" / "importance.json")
    assert [b.scan for b in loaded.blocks] == [b["scan"] for b in record["blocks"]]
    table = render_table(loaded)
    assert table.row_count == 5 and len(table.columns) == 3 + 3 + 1


def test_the_record_holds_no_always_empty_extra_and_an_older_one_with_it_still_reads():
    """report.json's importance (and importance.json, importance --json) held `extra: {}` in every run:
    nothing ever filled or read it. It is gone; a record written before, with it, reads as before."""
    from compress.passes.importance import ImportanceResult

    model = tiny_pixart()
    result = scan(model, get_adapter(model), batches_for(model, n=1), progress=False, skips=False)
    record = result.to_dict()
    assert "extra" not in record
    older = ImportanceResult.from_dict(dict(record, extra={}))
    assert older.to_dict() == record


def test_heatmap_with_empty_bucket_and_bad_config(tmp_path):
    model = tiny_pixart()
    result = scan(model, get_adapter(model), [model_inputs(model, batch=1)], buckets=4, progress=False)
    assert result.samples_per_bucket == [0, 0, 0, 1]  # t = 10: late
    assert plot_heatmap(result, tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(UserError, match="buckets"):
        ImportancePass(ImportanceConfig(buckets=0)).check(model, get_adapter(model))
    with pytest.raises(UserError, match="no calibration inputs"):
        scan(model, get_adapter(model), [], progress=False)


def test_a_write_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    """`--json FILE` / `--png FILE` naming a symlink: the file it points to (in another folder, by a
    relative link) gets the new content; the link is not replaced by a regular file."""
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target, link = tmp_path / "real" / "scan.json", tmp_path / "links" / "scan.json"
    target.write_text("old\n")
    link.symlink_to("../real/scan.json")
    assert write_atomically(link, lambda tmp: tmp.write_text("new\n")) == link
    assert link.is_symlink() and target.read_text() == "new\n"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["scan.json"]  # no temp file left
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == ["scan.json"]


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_proxy_only_scan_gives_the_full_scans_proxy(make):
    """proxy_only keeps two blocks' activations at a time (proxy_pass) and scores exactly what the
    full scan's clean pass scores."""
    model = make()
    adapter = get_adapter(model)
    batches = [model_inputs(model, seed=s) for s in range(2)]
    full = scan(model, adapter, batches, buckets=2, progress=False)
    light = scan(model, adapter, batches, buckets=2, progress=False, skips=False)
    assert [b.proxy_by_bucket for b in light.blocks] == [b.proxy_by_bucket for b in full.blocks]
    assert all(math.isnan(b.scan) for b in light.blocks)


def test_table_and_heatmap_name_blocks_by_teacher_index(tmp_path, monkeypatch):
    """After a removal the scanned model's blocks are renumbered; the table and the heatmap name them
    by teacher index, the numbering remove_blocks' explicit `blocks` take (and the JSON's)."""
    import matplotlib.pyplot as plt

    model = tiny_flux()
    result = scan(model, get_adapter(model), batches_for(model, n=1), progress=False,
                  block_map={"double": [1, 2], "single": [0, 4, 5]})
    table = render_table(result)
    cells = table.columns[1]._cells
    assert sorted(cells) == ["double.1", "double.2", "single.0", "single.4", "single.5"]
    assert "teacher" in str(table.columns[1].header)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_heatmap(result, tmp_path / "h.png")
    ticks = [t.get_text() for t in figures[0].axes[1].get_xticklabels()]  # the proxy row's axis
    assert ticks == ["1", "2", "0", "4", "5"]


def test_off_a_terminal_the_scan_says_its_cost_then_a_line_per_tenth(capsys):
    model = tiny_pixart()
    scan(model, get_adapter(model), batches_for(model, n=2), progress=True)
    out, err = capsys.readouterr()
    n = len(list(get_adapter(model).iter_blocks(model)))
    lines = err.splitlines()
    assert out == "" and lines[0].startswith(f"importance scan of {n} pixart blocks: ")
    total = 2 * (1 + n)  # a clean pass and a pass per skipped block, per batch
    assert [line.split()[1] for line in lines[1:]][-1] == f"{total}/{total}"
    assert all(line.startswith("importance ") and line.endswith(")") for line in lines[1:])


def test_a_follower_of_a_launch_says_nothing_of_the_scan(capsys, monkeypatch):
    """The scan printed through a console of its own: every process of a torchrun launch said its cost and
    logged its lines, where the notes come from rank 0 alone (report.notes_from_rank_zero)."""
    from compress.report import console, notes_from_rank_zero

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(console, "quiet", console.quiet)  # restored after the test
    notes_from_rank_zero()
    model = tiny_pixart()
    scan(model, get_adapter(model), batches_for(model, n=1), progress=True)
    assert capsys.readouterr() == ("", "")


def test_more_buckets_than_the_calibration_holds_noise_levels_is_said_at_the_key():
    """`dit-compress importance --buckets 40` refuses more buckets than the noise levels the calibration
    inputs hold; the same importance.buckets in a recipe was planned silently, and the run only noted
    the empty buckets as the scan began. A pass's `calibration_notes` say it, for plan and run to warn."""
    from compress.recipe import CalibrationConfig

    def said(buckets, kind="toy", **calib):
        return ImportancePass(ImportanceConfig(buckets=buckets)).calibration_notes(CalibrationConfig(**calib), kind)

    assert said(40, num_prompts=2, timesteps=4) == [("buckets", (
        "importance.buckets 40 is more than the 8 noise levels the calibration inputs hold (calibration.num_prompts"
        " × timesteps: 2 × 4 inputs): at least 32 of its buckets hold no input, their columns of the table and "
        "heatmap empty; set buckets to 8 or fewer, or draw more calibration inputs"),
        ("calibration.source", "calibration.num_prompts", "calibration.timesteps"))]  # the keys it read
    assert said(8, num_prompts=2, timesteps=4) == said(8, "synthetic", num_prompts=8, timesteps=1) == []
    (key, words, reads), = said(3, "pipeline", num_prompts=50, timesteps=8, sample_steps=2)
    assert reads == ("calibration.source", "calibration.timesteps", "calibration.sample_steps")
    assert key == "buckets" and words.startswith("importance.buckets 3 is more than the 2 noise levels the "
                                                 "calibration inputs hold (calibration.timesteps 8 of a 2-step sampler)")
    assert said(2, "pipeline", timesteps=8, sample_steps=2) == []


def test_plan_and_run_warn_of_more_buckets_than_noise_levels_once_at_the_key(tmp_path, capsys):
    """importance.buckets 40 of 2 × 4 toy inputs: plan said nothing and the run only noted '33 of the 40
    timestep buckets hold no calibration input' as the scan began. Both warn at the key's line first, as
    the importance command refuses --buckets 40; buckets the inputs can fill say nothing."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    text = ("model: pixart\nteacher: toy:pixart\ncalibration: {num_prompts: 2, timesteps: 4, heldout: 4}\n"
            "passes:\n  - importance:\n      buckets: B\n")
    recipe = parse_recipe(text.replace("B", "40"), str(tmp_path / "r.yaml"))
    capsys.readouterr()
    make_plan(recipe)
    warning = f"warning: {tmp_path / 'r.yaml'}:6: importance.buckets 40 is more than the 8 noise levels"
    assert " ".join(capsys.readouterr().err.split()).count(warning) == 1
    Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    assert " ".join(capsys.readouterr().err.split()).count(warning) == 1
    make_plan(parse_recipe(text.replace("B", "8"), str(tmp_path / "r.yaml")))
    assert "buckets" not in capsys.readouterr().err


def test_one_empty_bucket_or_noise_level_is_said_in_the_singular(capsys):
    """'1 of the 4 timestep buckets hold no calibration input ...; their columns stay empty' and
    'at least 1 of its buckets hold no input' (a tester's finding): the verb and the column agree
    with a count of 1, as do the distinct timesteps and noise levels."""
    from compress.recipe import CalibrationConfig

    model = tiny_pixart()  # timesteps 10, 500, 900: 3 of 4 buckets hold one
    scan(model, get_adapter(model), batches_for(model, n=1), buckets=4, progress=False)
    said = " ".join("".join(capsys.readouterr()).split())
    assert ("importance: 1 of the 4 timestep buckets holds no calibration input (3 distinct timesteps); "
            "its column stays empty") in said
    (key, words, _), = ImportancePass(ImportanceConfig(buckets=2)).calibration_notes(
        CalibrationConfig(num_prompts=1, timesteps=1), "toy")
    assert words == ("importance.buckets 2 is more than the 1 noise level the calibration inputs hold "
                     "(calibration.num_prompts × timesteps: 1 × 1 inputs): at least 1 of its buckets holds no "
                     "input, its column of the table and heatmap empty; set buckets to 1, or draw more "
                     "calibration inputs")
