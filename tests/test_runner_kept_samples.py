"""What a stopped run's note says of the teacher samples its distill pass kept (runner_kept.teacher_samples_kept,
through work_kept: the Ctrl-C note and an error's resume_note)."""

import json
import os

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.runner import build_passes
from compress.runner_folders import check_run_folder, interrupt_note
from compress.runner_resume import resume_note


def test_the_teacher_samples_kept_are_named_where_a_distill_pass_still_to_run_reads_them(tmp_path):
    """The stop notes named no teacher-sample shards, though --resume reads them back: they name
    those of a cache of this fingerprint and of a distill pass still to run's settings (its
    about.json), not another fingerprint's or another num_samples', nor any once that pass is saved."""
    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - remove_blocks: {blocks: {blocks: [1]}}\n"
            "  - distill: {data: teacher_samples, num_samples: 64, sample_steps: 4, batch_size: 4}\n"
            "  - svd: {targets: [mlp], ratio: 0.5}\n")
    recipe = parse_recipe(text, "r.yaml")
    passes = build_passes(recipe)
    about = {"fingerprint": "aaaa", "num_samples": 64, "sample_steps": 4, "batch_size": 4, "guidance_scale": 1.0,
             "shards": 16}
    for key, shards, edit in (("k1", 3, {}), ("k2", 5, {"fingerprint": "bbbb"}), ("k3", 7, {"num_samples": 32}),
                              ("k4", 9, None)):
        cache = tmp_path / "distill" / "teacher_samples" / key
        cache.mkdir(parents=True)
        for i in range(shards):
            (cache / f"shard-{i:05d}.safetensors").write_bytes(b"")
        (cache / "shard-00099.tmp").write_bytes(b"")  # one being written: not counted
        if edit is not None:  # k4: an older dit-compress's cache, with no about.json
            (cache / "about.json").write_text(json.dumps({**about, **edit}))
    kept = "teacher samples (3 of 16 shards)"
    assert resume_note(tmp_path, recipe, passes, "aaaa").startswith(f"; {tmp_path} keeps {kept}: a rerun")
    assert resume_note(tmp_path, recipe, passes, "cccc") == ""
    stage = tmp_path / "stages" / "0-remove_blocks"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": recipe.raw}))
    assert interrupt_note(tmp_path, False, recipe.raw, passes, "aaaa") == (
        f"; {tmp_path} keeps its work (1 of 3 passes done, {kept} to read back): rerun with --resume to continue")
    (tmp_path / "stages" / "1-distill").mkdir()  # the distill pass saved: --resume samples nothing more
    (tmp_path / "stages" / "1-distill" / "state.json").write_text(json.dumps({"recipe": recipe.raw}))
    assert resume_note(tmp_path, recipe, passes, "aaaa") == (
        f"; {tmp_path} keeps its work (2 of 3 passes done): --resume continues from pass 3 (whose keys may change)")


def test_a_refused_rerun_names_the_samples_of_the_fingerprint_written_last(tmp_path):
    """A rerun without --resume, refused before the teacher loads (no fingerprint of its own), names
    the teacher samples of the cache the interrupted run wrote last (the newest file's fingerprint,
    here an svd cache's: calib/<fingerprint>/), not an older teacher's cache of the same settings."""
    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [mlp], ratio: 0.5}\n"
            "  - distill: {data: teacher_samples, num_samples: 64, sample_steps: 4, batch_size: 4}\n")
    recipe = parse_recipe(text, "r.yaml")
    about = {"num_samples": 64, "sample_steps": 4, "batch_size": 4, "guidance_scale": 1.0, "shards": 16}
    for key, fp, shards, when in (("k1", "aaaa", 3, 1000), ("k2", "bbbb", 5, 2000)):
        cache = tmp_path / "distill" / "teacher_samples" / key
        cache.mkdir(parents=True)
        (cache / "about.json").write_text(json.dumps({**about, "fingerprint": fp}))
        for i in range(shards):
            (cache / f"shard-{i:05d}.safetensors").write_bytes(b"")
        for f in cache.iterdir():
            os.utime(f, (when, when))
    stats = tmp_path / "calib" / "aaaa" / "digest" / "blocks-0.pt"
    stats.parent.mkdir(parents=True)
    stats.write_bytes(b"")
    os.utime(stats, (3000, 3000))  # the svd pass of the teacher whose samples are "aaaa" ran last
    from compress.calib_stats import STATS_VERSION

    stage = tmp_path / "stages" / "0-svd"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": recipe.raw, "statistics": STATS_VERSION}))
    with pytest.raises(UserError) as e:
        check_run_folder(tmp_path, recipe.raw, build_passes(recipe))
    assert str(e.value) == (f"{tmp_path} holds an interrupted run of this recipe (1 of 2 passes done, teacher samples "
                            "(3 of 16 shards) to read back): add --resume to continue, or --restart to start over")


def test_the_one_shard_of_an_interrupted_distill_is_the_one_shard(tmp_path, monkeypatch):
    """A distill pass whose teacher samples fill one shard (num_samples 2, shards of 4), stopped once it
    was written: the note said 'teacher samples (1 of 1 shard)'; 'the one shard' now, as 'the one pass
    done' (saved_in_words). Other counts as they were ('2 of 4 shards')."""
    from types import SimpleNamespace

    import compress.distill_data as distill_data
    from compress.distill_data import teacher_sample_cache
    from tests.conftest import model_inputs, tiny_pixart
    from tests.passes.distill_helpers import context

    teacher = tiny_pixart()
    ctx = context(teacher, tmp_path, calibration_inputs=lambda: [model_inputs(teacher, batch=2, seed=1)],
                  train_batch=None, fingerprint="aaaa")
    one = SimpleNamespace(process_index=0, num_processes=1, is_main_process=True, device="cpu",
                          wait_for_everyone=lambda: None)
    write = distill_data.write_shard

    def then_stopped(*args):
        write(*args)
        raise KeyboardInterrupt  # Ctrl-C once the shard is written
    monkeypatch.setattr(distill_data, "write_shard", then_stopped)
    with pytest.raises(KeyboardInterrupt):
        teacher_sample_cache(ctx, 2, 2, 4, one)
    (folder,) = (tmp_path / "distill" / "teacher_samples").iterdir()
    assert json.loads((folder / "about.json").read_text())["shards"] == 1
    recipe = parse_recipe("model: pixart\nteacher: toy:pixart\npasses:\n  - distill: {data: teacher_samples, "
                          "num_samples: 2, sample_steps: 2, batch_size: 4}\n", "r.yaml")
    kept = f"; {tmp_path} keeps teacher samples (the one shard): a rerun"
    assert interrupt_note(tmp_path, False, recipe.raw, build_passes(recipe), "aaaa").startswith(kept)
    assert resume_note(tmp_path, recipe, build_passes(recipe), "aaaa").startswith(kept)
