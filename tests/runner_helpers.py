"""Shared by the runner tests: their recipes, one named run, a sharded teacher for streamed runs and
a tiny PixArt teacher with a Runner factory, folders taken for mount points."""

from __future__ import annotations

from compress.recipe import parse_recipe
from compress.runner import Runner
from tests.conftest import tiny_flux, tiny_pixart

RECIPE = """\
model: {family}
teacher: {teacher}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - remove_blocks: {{blocks: {{{group}: [0]}}}}
  - svd: {{targets: [attention, mlp], ratio: 0.5, multiple: 2}}
"""
SIMPLE = """\
model: pixart
teacher: {teacher}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
{passes}"""
STREAM_RECIPE = """\
model: {family}
teacher: {teacher}
stream: {stream}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - svd: {{targets: [attention, mlp], fisher: block, ratio: 0.5, multiple: 2}}
  - svd: {{targets: [modulation], fisher: none, ranks: {{modulation: 4}}}}
"""


def one_svd(key: str, targets: str = "attention") -> str:
    """SIMPLE with the top-level line `key` after teacher: and one svd pass of `targets` (ratio 0.5,
    multiple 2); {teacher} and the fields of `key` left to format."""
    svd = "  - svd: {{targets: [" + targets + "], ratio: 0.5, multiple: 2}}\n"
    return SIMPLE.replace("teacher: {teacher}\n", f"teacher: {{teacher}}\n{key}\n").replace("{passes}", svd)


def run_recipe(tmp_path, text, name, **kw):
    """Run `text` (parsed as tmp_path/<name>.yaml) into tmp_path/out-<name>, run dir tmp_path/run-<name>."""
    recipe = parse_recipe(text, str(tmp_path / f"{name}.yaml"))
    return Runner(recipe, tmp_path / f"out-{name}", tmp_path / f"run-{name}", **kw).run()


def streamed_teacher(tmp_path, family):
    """A tiny `family` teacher saved sharded in tmp_path/teacher -> STREAM_RECIPE naming it ({stream} left)."""
    model = tiny_pixart() if family == "pixart" else tiny_flux()
    model.save_pretrained(tmp_path / "teacher", max_shard_size="40KB")  # sharded, as big models are
    return STREAM_RECIPE.replace("{teacher}", str(tmp_path / "teacher")).replace("{family}", family)


def pixart_runner(tmp_path, monkeypatch):
    """(tmp_path, a Runner factory, teacher loads) for the tiny PixArt teacher saved in tmp_path/teacher
    with RECIPE in tmp_path/r.yaml; `loads` counts teacher loads."""
    import compress.runner_setup as runner_setup

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    text = RECIPE.format(family="pixart", teacher=tmp_path / "teacher", group="blocks")
    (tmp_path / "r.yaml").write_text(text)
    loads = []
    real = runner_setup.load_teacher
    monkeypatch.setattr(runner_setup, "load_teacher", lambda *a, **k: (loads.append(a), real(*a, **k))[1])

    def make(out, run_dir=None, **kw):
        recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
        return Runner(recipe, out, run_dir or tmp_path / "run", **kw)
    return tmp_path, make, loads


MOUNT_REFUSAL = ("output folder {out} is a mount point, which an output cannot replace (it is written beside its "
                 "folder, then renamed onto it); name a folder inside it, e.g. {out}/NAME")  # io_atomic.mount_point's


def mount_points(tmp_path, monkeypatch):
    """(mnt, bound): two empty folders in tmp_path taken for mount points, `mnt` by os.path.ismount (a Docker
    volume), `bound` by io_atomic.MOUNTINFO's listing alone (a bind mount on the same file system)."""
    import os

    import compress.io_atomic as io_atomic

    mnt, bound = tmp_path / "mnt", tmp_path / "bound"
    mnt.mkdir(), bound.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(mnt) or real(p))
    listed = str(bound.resolve()).encode()
    (tmp_path / "mountinfo").write_bytes(b"40 22 8:1 /src " + listed + b" rw - ext4 /dev/sda1 rw\n")
    monkeypatch.setattr(io_atomic, "MOUNTINFO", tmp_path / "mountinfo")
    return mnt, bound
