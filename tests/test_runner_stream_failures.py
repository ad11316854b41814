"""`stream: true` runs that are stopped or whose files fail: a stop and --resume, a teacher shard truncated
or removed, a weight file removed mid run, and a Ctrl-C while the earlier stages are deleted."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from compress.errors import UserError
from compress.io import WEIGHTS
from compress.runner_stream import StreamedModels
from tests.runner_helpers import run_recipe, streamed_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_resumed_streamed_run_reports_the_fusion_of_the_uninterrupted_one(tmp_path, monkeypatch):
    """The student restored from a streamed stage has its FFN GELU fused as the stage's pass left it
    (as a resident restore does), so the next svd pass fuses nothing more: report.json credits
    each pass with its own fusion, as a run never stopped does."""
    from compress.fuse import FusedGELU
    from compress.passes.svd import SVDPass
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    whole = run_recipe(tmp_path, text, "whole")
    real, runs = SVDPass.run, iter(range(2))  # the second svd pass is stopped as it starts
    monkeypatch.setattr(SVDPass, "run", lambda self, *a: real(self, *a) if next(runs) == 0 else
                        (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tmp_path, text, "stopped")
    monkeypatch.setattr(SVDPass, "run", real)
    stage = tmp_path / "run-stopped" / "stages" / "0-svd"
    restored = StreamedModels(tmp_path / "run-check").restore(stage)
    assert any(isinstance(m, FusedGELU) for m in restored.modules())
    resumed = Runner(parse_recipe(text, str(tmp_path / "stopped.yaml")), tmp_path / "out-stopped",
                     tmp_path / "run-stopped", resume=True).run()
    fused = [[p["fused_gelu"] for p in json.loads((o / "report.json").read_text())["svd"]["passes"]]
             for o in (whole, resumed)]
    assert fused[0][0] and fused[0][1] == []
    assert fused[1] == fused[0]


@pytest.mark.parametrize("stream", ["true", "false"])
def test_a_truncated_teacher_shard_is_one_line_naming_it_before_any_compute(tmp_path, stream):
    """Streamed (its shards opened up front) or resident (whose memory check reads the shards'
    headers first): one UserError naming the shard, not SafetensorError from the headers (the
    resident load then says it in its own words)."""
    import os

    from compress.runner_memory import checkpoint_numel
    from compress.stream_files import file_map

    text = streamed_teacher(tmp_path, "pixart").format(stream=stream)
    shard = sorted((tmp_path / "teacher").glob("*.safetensors"))[-1]
    files = file_map(shard)
    os.truncate(shard, shard.stat().st_size - 10)
    words = rf"{re.escape(str(shard))} is not a readable safetensors file \(.*\); it may be truncated or corrupted"
    with pytest.raises(UserError, match=words):
        checkpoint_numel(files)
    with pytest.raises(UserError, match=words if stream == "true" else re.escape(str(shard))):
        run_recipe(tmp_path, text, "cut")
    assert not (tmp_path / "run-cut" / "calib").exists()


def test_a_teacher_shard_removed_before_the_checksum_is_one_line(tmp_path):
    import hashlib

    streamed_teacher(tmp_path, "pixart")
    models = StreamedModels(None)
    teacher = models.teacher(str(tmp_path / "teacher"), None)
    shard = sorted((tmp_path / "teacher").glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match=rf"^{re.escape(str(shard))} is gone: it changed while dit-compress"):
        models.fingerprint(teacher, hashlib.sha256())


def test_a_weight_file_removed_mid_run_is_one_line_with_what_the_run_folder_keeps(tmp_path, monkeypatch):
    """No recipe mistake: named by the pass running (not as its key's error), with --resume's note."""
    from compress.passes.svd import SVDPass
    from compress.stream_files import WeightsChanged

    text = streamed_teacher(tmp_path, "pixart").format(stream="true")
    real, runs = SVDPass.run, iter(range(2))

    def remove_then_run(self, model, ctx):
        if next(runs) == 1:  # the second pass: a shard of the stage its blocks are read from goes
            ctx.blocks.files[ctx.blocks.block_keys("blocks", 1)[0]].unlink()
        return real(self, model, ctx)

    monkeypatch.setattr(SVDPass, "run", remove_then_run)
    with pytest.raises(WeightsChanged, match=r"cut.yaml:7: pass 2/2 \(svd\): .* is gone: it changed while .*; "
                                             r".*run-cut keeps its work .*--resume continues from pass 2"):
        run_recipe(tmp_path, text, "cut")


def test_adopt_deletes_the_earlier_stages_oldest_first_each_unlisted_before_it_goes(tmp_path, monkeypatch):
    """StreamedModels.adopt deleted the other folders of stages/ in the file system's order, each with
    its state.json possibly last: a Ctrl-C in the middle could leave an earlier stage listed as complete
    (runner_resume.stage_dirs, which --resume picks from) with its weights half gone. It deletes them in
    pass order, oldest first (stages, then other folders), each one's state.json first."""
    from types import SimpleNamespace

    import compress.runner_stream as runner_stream
    from compress.runner_resume import stage_dirs

    stages = tmp_path / "stages"
    names = ["10-svd", "2-svd", "0-svd", "1-remove_blocks", ".11-svd.tmp-abcdefgh", "11-svd"]
    for name in names:
        (stages / name).mkdir(parents=True)
        (stages / name / "state.json").write_text("{}")
        (stages / name / WEIGHTS).write_bytes(b"x")
    (stages / "finished.json").write_text("{}")
    models, student = StreamedModels(tmp_path), torch.nn.Linear(1, 1)
    models.loaders[id(student)] = SimpleNamespace(point_to=lambda files: None)
    monkeypatch.setattr(runner_stream, "weight_map", lambda stage: {})
    real, deleted = shutil.rmtree, []

    def rmtree(path, ignore_errors=False):
        path = Path(path)
        deleted.append((path.name, (path / "state.json").exists()))
        if path.name == "1-remove_blocks":  # a Ctrl-C halfway through its files
            (path / WEIGHTS).unlink()
            raise KeyboardInterrupt
        real(path, ignore_errors=ignore_errors)
    monkeypatch.setattr(runner_stream.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        models.adopt(student, stages / "11-svd")
    assert deleted == [("stream", False), ("0-svd", False), ("1-remove_blocks", False)], deleted
    listed = stage_dirs(tmp_path)
    assert [i for i, _ in listed] == [2, 10, 11] and all((d / WEIGHTS).is_file() for _, d in listed), listed
    deleted.clear()
    monkeypatch.setattr(runner_stream.shutil, "rmtree", lambda path, ignore_errors=False: (
        deleted.append(Path(path).name), real(path, ignore_errors=ignore_errors)))
    models.adopt(student, stages / "11-svd")  # as --resume does after such a stop (runner_restore._finish_adopting)
    assert deleted == ["stream", "1-remove_blocks", "2-svd", "10-svd", ".11-svd.tmp-abcdefgh"], deleted
    assert sorted(p.name for p in stages.iterdir()) == ["11-svd", "finished.json"]
