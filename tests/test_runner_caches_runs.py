"""runner_caches in real runs: those that remove the caches no run of their recipe reads (another
calibration, another svd setting, another teacher or prompts, an older dit-compress's cache, an
interrupted pass's output Fishers of other probes) or leave them (a refused run, a rerun over an
interrupted one, a file system whose clock is behind)."""

from __future__ import annotations

import json
import re

import pytest

from compress.errors import UserError
from tests.conftest import tiny_pixart
from tests.runner_helpers import STREAM_RECIPE, run_recipe


# pipeline calibration (toy:pixart) of the prompts '{p} 1' to '{p} 3', one held out; {teacher}
PIPELINE = ("model: pixart\nteacher: {teacher}\n"
            "calibration: {{source: pipeline, pipeline: 'toy:pixart', prompts: [{p} 1, {p} 2, {p} 3], sample_steps: 2, "
            "timesteps: 2, batch_size: 4, heldout: 1}}\n"
            "passes:\n  - svd: {{targets: [attention], fisher: block, ratio: 0.5, multiple: 8, progress: false}}\n")


@pytest.fixture
def two_svd(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    return STREAM_RECIPE.format(family="pixart", teacher=tmp_path / "teacher", stream="false")


def _caches(run_dir):
    return sorted(str(p.relative_to(run_dir / "calib")) for p in (run_dir / "calib").glob("*/*"))


def test_a_run_removes_the_caches_no_run_of_its_recipe_reads(tmp_path, two_svd, capsys):
    """Real runs in one run folder: --restart with another calibration seed removes the first run's
    calib/<fingerprint>/ (a note names it and the bytes freed); --restart with another ratio in pass 1
    keeps pass 1's statistics (of the teacher: its model is the same) and removes pass 2's (of a
    student no pass makes now) once the run has made its own."""
    run_dir = tmp_path / "run-r"
    run_recipe(tmp_path, two_svd, "r")
    first = _caches(run_dir)
    assert len(first) == 2, first
    capsys.readouterr()
    reseeded = two_svd.replace("heldout: 4}", "heldout: 4, seed: 3}")
    run_recipe(tmp_path, reseeded, "r", restart=True, overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    now = _caches(run_dir)
    assert not set(first) & set(now) and len(now) == 2, now
    old = first[0].split("/")[0]
    assert f"removed caches in {run_dir} that no run of this recipe reads (calib/{old})" in said, said
    assert " freed" in said
    teacher = [c for c in now if json.loads((run_dir / "calib" / c / "read-by.json").read_text())["pass"] == 0]
    before = {p.name for p in (run_dir / "calib" / teacher[0]).glob("*.pt")}
    rerated = reseeded.replace("ratio: 0.5", "ratio: 0.25")  # other ranks: pass 2 reads another model
    run_recipe(tmp_path, rerated, "r", restart=True, overwrite=True)
    last = _caches(run_dir)
    assert len(last) == 2 and teacher[0] in last and not (set(now) - set(teacher)) & set(last), (now, last)
    # the teacher's statistics of the blocks after a compensated one that the 0.5 run wrote: read by no
    # pass now (their inputs change with the ranks before them), and gone; a rerun reads back all the rest
    after = {p.name for p in (run_dir / "calib" / teacher[0]).glob("*.pt")}
    assert before - after, (before, after)
    capsys.readouterr()
    run_recipe(tmp_path, rerated, "r", restart=True, overwrite=True)
    assert {p.name for p in (run_dir / "calib" / teacher[0]).glob("*.pt")} == after
    assert "removed caches" not in capsys.readouterr().err


def test_a_refused_run_removes_nothing(tmp_path, two_svd):
    """A run refused because the run folder holds an interrupted run of another recipe (another seed)
    leaves its caches, which the refusal names, as they are."""
    run_dir = tmp_path / "run-r"
    run_recipe(tmp_path, two_svd, "r")
    (run_dir / "stages" / "finished.json").unlink()  # as if stopped before its output
    first = _caches(run_dir)
    with pytest.raises(UserError, match="interrupted run of another recipe"):
        run_recipe(tmp_path, two_svd.replace("heldout: 4}", "heldout: 4, seed: 3}"), "r", overwrite=True)
    assert _caches(run_dir) == first


def test_a_rerun_over_an_interrupted_run_removes_none_of_its_caches(tmp_path, two_svd, monkeypatch, capsys):
    """Ctrl-C in pass 1 (its statistics measured, no pass saved), then a plain rerun with another
    calibration seed: it removed the interrupted run's calib/<fingerprint>/ ('removed caches ... freed'),
    though the stop said a rerun reads them back. Refused now, as over saved passes; kept by a --resume,
    and once the folder's last run finished kept by a plain run too, named in one note; --restart
    removes them."""
    from compress.calib_stats import StatsCache

    run_dir = tmp_path / "run-r"
    real = StatsCache.save

    def stopped(self, name, stats):
        real(self, name, stats)
        raise KeyboardInterrupt  # pass 1's first block statistics saved
    monkeypatch.setattr(StatsCache, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tmp_path, two_svd, "r")
    monkeypatch.setattr(StatsCache, "save", real)
    first = _caches(run_dir)
    assert first and sum(1 for c in first for _ in (run_dir / "calib" / c).glob("*.pt")) == 1, first
    capsys.readouterr()
    reseeded = two_svd.replace("heldout: 4}", "heldout: 4, seed: 3}")
    with pytest.raises(UserError) as e:  # refused, as over saved passes: nothing removed
        run_recipe(tmp_path, reseeded, "r")
    assert str(e.value).startswith(f"{run_dir} holds what was measured with this teacher and another "
                                   "calibration (calibration.seed was 0, now 3; block statistics ("), e.value
    assert str(e.value).endswith("add --restart to discard it, or choose another --run-dir"), e.value
    assert "removed caches" not in capsys.readouterr().err
    assert _caches(run_dir) == first
    run_recipe(tmp_path, two_svd, "r", resume=True)  # its own recipe: read back, nothing removed
    assert "removed caches" not in capsys.readouterr().err
    assert set(first) <= set(_caches(run_dir))
    run_recipe(tmp_path, reseeded, "r", overwrite=True)  # the folder's last run finished: named, kept
    said = " ".join(capsys.readouterr().err.split())
    assert "removed caches" not in said and set(first) <= set(_caches(run_dir))
    old = first[0].split("/")[0]
    assert said.count(f"note: {run_dir} holds ") == 1, said
    assert f" of caches of another teacher or calibration (calib/{old}); --restart removes them" in said, said
    run_recipe(tmp_path, reseeded, "r", overwrite=True, restart=True)  # --restart: removed
    assert f"that no run of this recipe reads (calib/{old})" in capsys.readouterr().err
    assert not set(first) & set(_caches(run_dir))


def test_a_first_run_on_a_file_system_whose_clock_is_behind_removes_nothing_it_wrote(tmp_path, two_svd,
                                                                                       monkeypatch, capsys):
    """A network file system whose clock is behind this host's (faked: this host's 300 s ahead): the
    statistics a --restart run wrote in its own passes counted as older than them, unread, and went
    ('removed caches ... freed'). The run folder's own clock dates its passes now."""
    import time
    from types import SimpleNamespace

    import compress.runner as runner

    real = time.time_ns
    monkeypatch.setattr(runner, "time", SimpleNamespace(time_ns=lambda: real() + 300 * 10**9,
                                                        perf_counter=time.perf_counter))
    run_recipe(tmp_path, two_svd, "r", restart=True)
    assert "removed caches" not in capsys.readouterr().err
    monkeypatch.undo()
    wrote = {c: {p.name for p in (tmp_path / "run-r" / "calib" / c).glob("*.pt")} for c in _caches(tmp_path / "run-r")}
    run_recipe(tmp_path, two_svd, "r", restart=True, overwrite=True)  # the same recipe: reads back all it wrote
    assert "removed caches" not in capsys.readouterr().err
    assert all(wrote.values()) and wrote == \
        {c: {p.name for p in (tmp_path / "run-r" / "calib" / c).glob("*.pt")} for c in _caches(tmp_path / "run-r")}


def test_a_run_removes_the_output_fishers_an_interrupted_pass_of_other_probes_left(tmp_path, monkeypatch, capsys):
    """Ctrl-C in an svd pass after its output Fishers (fisher: all, 2 probes) were measured leaves them in its
    stats cache for a rerun; a plain rerun with fisher_probes: 3 keeps them (the folder's last run did not
    finish) and, finished, deletes its own; the next run of that recipe removes the 2 probes' (no pass of it
    reads them), with the note and the log line. Before, they stayed for good."""
    from compress.passes.svd import SVDPass
    from compress.runner_caches import REMOVED_LOG

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    text = (f"model: pixart\nteacher: {tmp_path / 'teacher'}\n"
            "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}\n"
            "passes:\n  - svd: {targets: [attention], fisher: all, fisher_probes: 2, ratio: 0.5, multiple: 2}\n")
    real = SVDPass._compress

    def stopped(*a, **k):
        raise KeyboardInterrupt  # the Fishers measured, none of the targets factorized
    monkeypatch.setattr(SVDPass, "_compress", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tmp_path, text, "r")
    monkeypatch.setattr(SVDPass, "_compress", real)
    run_dir = tmp_path / "run-r"
    [kept] = (run_dir / "calib").glob("*/*/fisher-2probes")
    assert any(kept.glob("*.pt"))
    more = text.replace("fisher_probes: 2", "fisher_probes: 3")
    run_recipe(tmp_path, more, "r")
    assert kept.is_dir() and not any((run_dir / "calib").glob("*/*/fisher-3probes"))
    capsys.readouterr()
    run_recipe(tmp_path, more, "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    assert f"that no run of this recipe reads ({kept.relative_to(run_dir)}): " in said, said
    assert not kept.exists()
    assert (run_dir / REMOVED_LOG).read_text().split("\t")[1] == str(kept.relative_to(run_dir))


def test_a_finished_run_removes_a_cache_an_older_dit_compress_wrote(tmp_path, two_svd, capsys):
    """A stats cache with no readers recorded (an older dit-compress's: no read-by.json) beside those a
    run's two svd passes read stayed for good; a rerun of the recipe that runs every pass, each svd pass
    recorded as the reader of its own cache, removes it (a note, the log) and keeps its own."""
    run_dir = tmp_path / "run-r"
    run_recipe(tmp_path, two_svd, "r")
    own = _caches(run_dir)
    older = run_dir / "calib" / own[0].split("/")[0] / "0123456789abcdef"
    older.mkdir()
    (older / "blocks-0.pt").write_bytes(b"x" * 100)
    capsys.readouterr()
    run_recipe(tmp_path, two_svd, "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    assert f"that no run of this recipe reads ({older.relative_to(run_dir)}): 100 bytes freed" in said, said
    assert not older.exists() and _caches(run_dir) == own


def test_a_restart_with_another_teacher_removes_the_sampled_inputs_of_the_first(tmp_path, capsys):
    """Pipeline calibration samples into inputs/<name>/ (named by the teacher). A run of another teacher
    (the toy's weights from a folder) never reads the first teacher's: a plain run names it (kept,
    '--restart removes them'), --restart removes it with the first teacher's statistics; its own stays."""
    from compress.toy import load_toy_teacher

    load_toy_teacher("pixart").save_pretrained(tmp_path / "teacher")
    text = PIPELINE.replace("{p}", "a")
    run_dir = tmp_path / "run-r"
    run_recipe(tmp_path, text.format(teacher="toy:pixart"), "r")
    [first] = (run_dir / "inputs").iterdir()
    assert any(first.glob("*.pt"))
    capsys.readouterr()
    other = text.format(teacher=tmp_path / "teacher")
    run_recipe(tmp_path, other, "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    assert "of caches of another teacher or calibration (calib/" in said and f"inputs/{first.name}" in said, said
    assert first.is_dir() and len(list((run_dir / "inputs").iterdir())) == 2
    run_recipe(tmp_path, other, "r", overwrite=True, restart=True)
    said = " ".join(capsys.readouterr().err.split())
    assert f"inputs/{first.name}" in said.split("that no run of this recipe reads (")[1], said
    [kept] = (run_dir / "inputs").iterdir()
    assert kept != first and any(kept.glob("*.pt"))


@pytest.mark.parametrize("relative", [False, True])
def test_a_restart_with_other_prompts_removes_the_calls_of_the_first(tmp_path, capsys, monkeypatch, relative):
    """Pipeline calibration samples each call into inputs/<name>/ (named by the teacher), its file named by
    the call's prompts and settings. A run of other prompts (same teacher: the same folder) never reads the
    first prompts' calls: a plain run names them (kept, '--restart removes them'), --restart removes them
    and keeps its own, which it reads back (nothing sampled again: every file it keeps is one it wrote).
    A relative --run-dir (the inputs folder named absolute) broke both notes with a ValueError traceback."""
    from pathlib import Path

    text = PIPELINE.replace("{teacher}", "toy:pixart")
    run_dir = tmp_path / "run-r"
    monkeypatch.chdir(tmp_path)
    base = Path(".") if relative else tmp_path  # run_recipe's run folder: base / run-r
    run_recipe(base, text.format(p="a"), "r")
    [folder] = (run_dir / "inputs").iterdir()
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    assert len(first) == 3  # 2 calibration calls, 1 held out
    capsys.readouterr()
    run_recipe(base, text.format(p="b"), "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    assert "of caches of another teacher or calibration (calib/" in said, said
    assert re.search(rf"another teacher or calibration \(calib/[0-9a-f]{{16}}, 3 files in inputs/{folder.name}\); "
                     "--restart removes them", said), said  # the 3 calls counted in their folder
    [again] = (run_dir / "inputs").iterdir()
    both = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    assert again == folder and len(both) == 6 and first.items() <= both.items()
    run_recipe(base, text.format(p="b"), "r", overwrite=True, restart=True)
    said = " ".join(capsys.readouterr().err.split())
    removed = said.split("that no run of this recipe reads (")[1]
    assert re.match(rf"calib/[0-9a-f]{{16}}, 3 files in inputs/{folder.name}\): ", removed), said
    assert " freed; the full list in " in removed, said  # the calls one by one there
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    assert kept == {name: t for name, t in both.items() if name not in first}
    logged = (run_dir / "removed-caches.log").read_text()
    assert all(f"\tinputs/{folder.name}/{name}\t" in logged for name in first), logged


def test_a_note_names_caches_of_another_statistics_version_so(tmp_path, monkeypatch, capsys):
    """After STATS_VERSION changed (a new dit-compress), a rerun of a finished run said its run folder 'holds
    … of caches of another teacher or calibration (calib/…); --restart removes them', of the same teacher
    and calibration: now 'of caches measured with other statistics (dit-compress's statistics 3, now 4:
    calib/…)', also for an earlier calibration's caches, whose run recorded its version too. A cache whose
    version nothing records keeps the words it had; an older dit-compress's record holds its own
    fingerprint's version in its calibration (`measured_under` reads it there)."""
    import compress.calib_stats as calib_stats
    from tests.runner_helpers import SIMPLE

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    text = SIMPLE.format(teacher=tmp_path / "teacher", passes="  - svd: {targets: [attention], ratio: 0.5, multiple: 2}\n")
    run_dir = tmp_path / "run-r"
    run_recipe(tmp_path, text, "r")
    (first,) = _caches_by_fingerprint(run_dir)
    reseeded = text.replace("heldout: 4}", "heldout: 4, seed: 3}")
    run_recipe(tmp_path, reseeded, "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    assert f" of caches of another teacher or calibration (calib/{first}); --restart removes them" in said, said
    (second,) = set(_caches_by_fingerprint(run_dir)) - {first}
    was = calib_stats.STATS_VERSION
    monkeypatch.setattr(calib_stats, "STATS_VERSION", was + 1)
    run_recipe(tmp_path, reseeded, "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    both = ", ".join(sorted([f"calib/{first}", f"calib/{second}"]))
    assert re.search(rf"holds [0-9.]+ KiB of caches measured with other statistics \(dit-compress's statistics {was}, "
                     rf"now {was + 1}: {both}\); --restart removes them", said), said

    from compress.runner_caches_keyed import MEASURED_UNDER, measured_under

    (third,) = set(_caches_by_fingerprint(run_dir)) - {first, second}
    record = run_dir / "stages" / "run.json"
    assert json.loads(record.read_text())[MEASURED_UNDER] == {first: was, second: was, third: was + 1}
    older = {k: v for k, v in json.loads(record.read_text()).items() if k != MEASURED_UNDER}
    record.write_text(json.dumps(older))  # as an older dit-compress wrote it: its own version in its calibration
    assert measured_under(run_dir) == {third: was + 1}
    unknown = run_dir / "calib" / "0123456789abcdef"  # of a fingerprint no record names
    unknown.mkdir()
    (unknown / "x.pt").write_bytes(b"0" * 10)
    monkeypatch.setattr(calib_stats, "STATS_VERSION", was + 2)
    run_recipe(tmp_path, reseeded, "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    rest = ", ".join(sorted([f"calib/{first}", f"calib/{second}", "calib/0123456789abcdef"]))
    assert re.search(rf"holds [0-9.]+ KiB of caches measured with other statistics \(dit-compress's statistics "
                     rf"{was + 1}, now {was + 2}: calib/{third}\) and [0-9.]+ KiB of caches of another teacher or "
                     rf"calibration \({rest}\); --restart removes them", said), said


def _caches_by_fingerprint(run_dir):
    """The names of a run folder's calib/<fingerprint>/ folders."""
    return sorted(p.name for p in (run_dir / "calib").iterdir())
