"""The checkpoint folders of distill passes (passes/distill_checkpoint_folders.py): what an older swap left
filed as sets, no more than KEPT_ASIDE sets kept aside (never the one being taken back), and a saved stage
removing the checkpoints while keeping the sets aside once."""

from __future__ import annotations

from pathlib import Path

import pytest



def _fake_set(folder: Path, fingerprint: str, step: int, trained_at: float) -> Path:
    """A set of checkpoints as _save writes them: step-N/meta.json recording `fingerprint` and `step`, written at
    `trained_at` (seconds since the epoch)."""
    import json
    import os

    meta = folder / f"step-{step:08d}" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"fingerprint": fingerprint, "step": step, "processes": 1}))
    os.utime(meta, (trained_at, trained_at))
    return folder


@pytest.mark.parametrize("stopped", ["after the first rename", "after the second"])
def test_what_an_older_swap_left_is_filed_as_sets_by_their_fingerprints(tmp_path, stopped):
    """An older dit-compress swapped checkpoints and checkpoints.discarded (one set, step-N inside) through
    checkpoints.swapping; stopped between its renames it left one set there. Now finish_swap files each set
    into checkpoints.discarded/<fingerprint> (the swap's own set of the pass's settings is taken back from
    there by its --resume), none lost; an empty leftover is removed."""
    from compress.passes.distill_checkpoint_folders import finish_swap

    root, aside = tmp_path / "checkpoints", tmp_path / "checkpoints.discarded"
    between = _fake_set(tmp_path / "checkpoints.swapping", "b" * 16, 2, 2e9)  # the old root, on its way aside
    if stopped == "after the first rename":  # (the set being taken back still in the old layout's aside)
        _fake_set(aside, "a" * 16, 4, 1e9)
    else:  # (taken back: in root)
        _fake_set(root, "a" * 16, 4, 1e9)
    (tmp_path / "checkpoints.swapping-1").mkdir()  # (an empty one: removed)
    finish_swap(root, aside)
    filed = {p.name: sorted(q.name for q in p.iterdir()) for p in aside.iterdir()}
    expected = {"b" * 16: ["step-00000002"]}
    if stopped == "after the first rename":
        expected["a" * 16] = ["step-00000004"]
    assert filed == expected and not between.exists() and not (tmp_path / "checkpoints.swapping-1").exists()
    assert root.exists() == (stopped == "after the second")
    finish_swap(root, aside)  # (nothing left to do)
    assert {p.name for p in aside.iterdir()} == set(expected)


def test_no_more_than_three_sets_are_kept_aside_the_oldest_removed_with_a_line(tmp_path, capsys):
    """Sets aside are kept by fingerprint: past KEPT_ASIDE (3), the one trained longest ago is removed, said
    in a line; the one set aside now never."""
    from compress.passes.distill_checkpoint_folders import set_aside

    aside = tmp_path / "checkpoints.discarded"
    for n, fingerprint in enumerate(("1" * 16, "2" * 16, "3" * 16)):
        _fake_set(aside / fingerprint, fingerprint, n + 1, 1e9 + n)
    moved = set_aside(_fake_set(tmp_path / "checkpoints", "0" * 16, 7, 5e8), aside)  # trained before them all
    assert moved == aside / ("0" * 16)
    assert sorted(p.name for p in aside.iterdir()) == ["0" * 16, "2" * 16, "3" * 16]
    said = " ".join(capsys.readouterr().err.split())
    assert (f"distill: removed {aside / ('1' * 16)} (step 1), the oldest of the checkpoints set aside: 3 sets are "
            "kept") in said, said


def test_the_set_being_taken_back_is_never_the_oldest_removed(tmp_path, capsys):
    """A take-back sets the pass's checkpoints aside with `spare` the set it takes back: where that set is the
    oldest of KEPT_ASIDE (3), another goes, never it (R1 stop 50: dropping spare= passed every test, and the
    take-back's rename would then fail, that training lost)."""
    from compress.passes.distill_checkpoint_folders import set_aside

    aside = tmp_path / "checkpoints.discarded"
    for n, fingerprint in enumerate(("1" * 16, "2" * 16, "3" * 16)):
        _fake_set(aside / fingerprint, fingerprint, n + 1, 1e9 + n)
    back = aside / ("1" * 16)  # trained longest ago
    set_aside(_fake_set(tmp_path / "checkpoints", "0" * 16, 7, 2e9), aside, spare=back)
    assert back.is_dir() and (back / "step-00000001").is_dir()
    assert sorted(p.name for p in aside.iterdir()) == ["0" * 16, "1" * 16, "3" * 16]
    said = " ".join(capsys.readouterr().err.split())
    assert f"distill: removed {aside / ('2' * 16)} (step 2)" in said, said


def test_the_stage_saved_removes_the_checkpoints_and_keeps_the_sets_aside_once(tmp_path, capsys):
    """DistillPass.stage_saved removed checkpoints and checkpoints.discarded but not checkpoints.swapping, a
    set an older dit-compress's stopped swap left (several times the model): it goes too, filed as a set. Once
    removed with the checkpoints, the sets aside are now kept past the first stage saved (the mistaken run's: a
    --resume that undoes the mistake takes them back), marked with its fingerprint, said with their size, and
    removed by the next stage saved with another (the same one again keeps them)."""
    from types import SimpleNamespace

    from compress.passes.distill import DistillPass
    from compress.passes.distill_checkpoint_folders import kept_past

    folder = tmp_path / "distill"
    for name in ("checkpoints", "checkpoints.discarded/" + "a" * 16, "checkpoints.swapping", "checkpoints.swapping-7"):
        _fake_set(folder / name, "a" * 16, 1, 1e9)
    DistillPass.stage_saved(SimpleNamespace(dir=folder, fingerprint="b" * 16))
    aside = folder / "checkpoints.discarded"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints.discarded"]
    sets = sorted(aside.iterdir())
    assert [p.name for p in sets] == ["a" * 16, "a" * 16 + "-2", "a" * 16 + "-3"]
    assert [kept_past(p) for p in sets] == ["b" * 16] * 3
    said = " ".join(capsys.readouterr().err.split())
    assert said.startswith("distill: keeps the checkpoints set aside (") and all(str(p) in said for p in sets), said
    assert " bytes) past this saved stage: a --resume that undoes the change" in said, said
    DistillPass.stage_saved(SimpleNamespace(dir=folder, fingerprint="b" * 16))  # the same training's stage again
    assert sorted(aside.iterdir()) == sets
    DistillPass.stage_saved(SimpleNamespace(dir=folder, fingerprint="c" * 16))
    assert list(folder.iterdir()) == []
