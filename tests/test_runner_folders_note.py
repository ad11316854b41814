"""What Ctrl-C's note and a plain rerun's refusal (runner_folders.interrupt_note, check_run_folder)
count in a run folder made by hand: the sampled inputs, block statistics and output Fishers of the
run's own fingerprint, an interrupted run of another recipe."""

import json
from pathlib import Path

import pytest

from compress.errors import UserError


def test_the_ctrl_c_note_counts_the_fishers_of_its_fingerprint(tmp_path):
    from compress.runner_folders import interrupt_note

    for fingerprint, n in (("aaaa", 2), ("bbbb", 3)):
        fishers = tmp_path / "calib" / fingerprint / "blocks" / "fisher-4probes"
        fishers.mkdir(parents=True)
        for i in range(n):
            (fishers / f"{i}.pt").write_bytes(b"")
    assert "(up to 3 files)" in interrupt_note(tmp_path, fingerprint="bbbb")
    assert interrupt_note(tmp_path).endswith("nothing was saved yet: a rerun starts over")
    assert interrupt_note(tmp_path, fingerprint="cccc").endswith("nothing was saved yet: a rerun starts over")


def _calib_files(run_dir: Path, fingerprint: str) -> Path:
    """Block statistics as an interrupted svd pass leaves them (StatsCache names of svd_walk.digest)
    under calib/<fingerprint>/<model>/, beside its output Fishers; an unfinished save's .tmp too."""
    from compress.calib_stats import StatsCache
    from compress.passes.svd_walk import digest

    start = run_dir / "calib" / fingerprint / "0123456789abcdef"
    cache = StatsCache(start)
    for name in [digest("blocks", 0, [], [], False), digest("blocks", 1, [], [], False),
                 digest("stage", "blocks", 1, [], [], False), digest("conditioning", 16, [])]:
        cache.save(name, {})
    (start / "blocks-0000000000000000.tmp").write_bytes(b"")
    (start / "fisher-4probes").mkdir()
    (start / "fisher-4probes" / "0.pt").write_bytes(b"")
    return start


def test_the_ctrl_c_note_counts_sampled_inputs_and_block_statistics_a_rerun_reads_back(tmp_path):
    """It said 'nothing was saved yet: a rerun starts over' after the pipeline's finished sampling
    calls (RUN_DIR/inputs/<teacher>/<call>.pt) and an svd pass's block statistics were saved, which a
    rerun reads back; only this run's sampling calls (of its inputs folder, whose files of other
    prompts it would not read) and fingerprint are counted, no unfinished file."""
    from compress.calib_pipeline import inputs_cache_name
    from compress.runner_folders import interrupt_note

    folder = tmp_path / "inputs" / inputs_cache_name("toy:pixart", "0" * 16)
    folder.mkdir(parents=True)
    for i in range(5):  # calls 3 and 4: of prompts an earlier run read
        (folder / f"{i:020x}.pt").write_bytes(b"")
    (folder / f"{5:020x}.tmp-1234").write_bytes(b"")  # a call being written
    inputs = [folder / f"{i:020x}.pt" for i in (0, 1, 2, 5, 6)]  # this run's calls: 5 and 6 not finished
    (tmp_path / "inputs" / "another-teacher").mkdir()
    (tmp_path / "inputs" / "another-teacher" / f"{0:020x}.pt").write_bytes(b"")
    _calib_files(tmp_path, "aaaa"), _calib_files(tmp_path, "bbbb")
    end = (": a rerun of this recipe and teacher reads back those it needs instead of "
           "measuring them again (keep the run folder)")
    assert interrupt_note(tmp_path, inputs=inputs) == f"; {tmp_path} keeps sampled inputs (3 sampling calls){end}"
    assert interrupt_note(tmp_path, fingerprint="aaaa", inputs=inputs) == (
        f"; {tmp_path} keeps sampled inputs (3 sampling calls), block statistics (up to 4 files), output Fishers "
        f"(up to 1 file){end}")
    assert interrupt_note(tmp_path, fingerprint="cccc") == "; nothing was saved yet: a rerun starts over"


def test_a_rerun_of_another_recipe_refused_names_what_the_interrupted_run_measured(tmp_path):
    """The refusal of a plain rerun of another recipe named only the passes saved ('1 of 3 passes
    done'), where that of the same recipe names the block statistics, output Fishers and teacher
    samples kept too: it names them as that one does (those under the fingerprint the run recorded,
    which the passes after those --resume keeps read back), and how to go on; so does Ctrl-C's note."""
    from compress.recipe import parse_recipe
    from compress.runner import build_passes
    from compress.runner_folders import check_run_folder, interrupt_note

    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - remove_blocks: {blocks: {blocks: [1]}}\n"
            "  - svd: {targets: [mlp], ratio: 0.5}\n"
            "  - distill: {data: teacher_samples, num_samples: 64, sample_steps: 4, batch_size: 4}\n")
    before, now = parse_recipe(text, "r.yaml"), parse_recipe(text, "r.yaml", ["passes.1.svd.ratio=0.25"])
    for stage in ("0-remove_blocks", "1-svd"):  # interrupted in its distill pass
        (tmp_path / "stages" / stage).mkdir(parents=True)
        (tmp_path / "stages" / stage / "state.json").write_text(json.dumps({"recipe": before.raw}))
    (tmp_path / "stages" / "run.json").write_text(json.dumps({"fingerprint": "aaaa"}))
    model = tmp_path / "calib" / "aaaa" / "0123456789abcdef"
    (model / "fisher-4probes").mkdir(parents=True)
    for name in ("blocks-0.pt", "blocks-1.pt", "fisher-4probes/0.pt"):
        (model / name).write_bytes(b"")
    cache = tmp_path / "distill" / "teacher_samples" / "k1"
    cache.mkdir(parents=True)
    (cache / "about.json").write_text(json.dumps({"fingerprint": "aaaa", "num_samples": 64, "sample_steps": 4,
                                                  "batch_size": 4, "guidance_scale": 1.0, "shards": 16}))
    for i in range(3):
        (cache / f"shard-{i:05d}.safetensors").write_bytes(b"")
    held = (f"{tmp_path} holds an interrupted run of another recipe (it differs in passes.1.svd.ratio; 2 of 3 passes "
            "done, block statistics (up to 2 files), output Fishers (up to 1 file), teacher samples (3 of 16 shards) to read "
            "back): --resume keeps its first 1 pass (with the same teacher) and runs the rest; ")
    with pytest.raises(UserError) as e:
        check_run_folder(tmp_path, now.raw, build_passes(now))
    assert str(e.value) == held + "add --restart to discard it and start over, or choose another --run-dir"
    assert interrupt_note(tmp_path, False, now.raw, build_passes(now)) == (
        f"; {held}a rerun needs --restart to discard it, or another --run-dir")
