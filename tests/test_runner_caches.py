"""runner_caches: which caches of a run folder no run of the recipe reads (selection on folders), and
real runs that remove them (another calibration, another svd setting) or leave them (a refused run)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from compress.errors import UserError
from compress.runner_caches import bytes_in_words, unread_caches
from compress.runner_kept import mark_read_by
from tests.conftest import tiny_pixart
from tests.runner_helpers import STREAM_RECIPE, run_recipe

SVD, OTHER = {"svd": {"ratio": 0.5}}, {"svd": {"ratio": 0.4}}
# pipeline calibration (toy:pixart) of the prompts '{p} 1' to '{p} 3', one held out; {teacher}
PIPELINE = ("model: pixart\nteacher: {teacher}\n"
            "calibration: {{source: pipeline, pipeline: 'toy:pixart', prompts: [{p} 1, {p} 2, {p} 3], sample_steps: 2, "
            "timesteps: 2, batch_size: 4, heldout: 1}}\n"
            "passes:\n  - svd: {{targets: [attention], fisher: block, ratio: 0.5, multiple: 8, progress: false}}\n")


def _svd():
    return SimpleNamespace(name="svd", config=None, result_free=(), changes_weights=True)


def _cache(run_dir, fp, name, reader=None):
    folder = run_dir / "calib" / fp / name
    folder.mkdir(parents=True)
    (folder / "blocks-0.pt").write_bytes(b"x" * 10)
    if reader is not None:
        mark_read_by(folder, *reader)
    return folder


def test_caches_of_another_fingerprint_and_of_a_model_no_pass_makes_are_unread(tmp_path):
    """calib/<other fingerprint>/ goes whole; under this one, a cache whose every reader's earlier
    passes differ from the recipe's goes, one read by a pass whose earlier passes match stays, and
    one without readers (an older dit-compress's) stays while not known (below: once every pass ran,
    each svd pass the reader of another, it goes: test_a_cache_with_no_readers_...)."""
    passes, specs = [_svd(), _svd()], [SVD, SVD]
    old = _cache(tmp_path, "old", "a", (0, []))
    first = _cache(tmp_path, "fp", "first", (0, []))
    second = _cache(tmp_path, "fp", "second", (1, [SVD]))
    stale = _cache(tmp_path, "fp", "stale", (1, [OTHER]))
    older = _cache(tmp_path, "fp", "older")
    assert unread_caches(tmp_path, "fp", specs, passes, 0) == [old.parent]
    assert unread_caches(tmp_path, "fp", specs, passes, 2) == [old.parent, older, stale]
    mark_read_by(stale, 1, [SVD])  # this recipe's pass 2 read it too (the same model): kept
    assert unread_caches(tmp_path, "fp", specs, passes, 2) == [old.parent, older]
    assert first.is_dir() and second.is_dir()


def test_a_cache_with_no_readers_goes_once_every_svd_pass_of_the_recipe_is_known_to_read_another(tmp_path):
    """A cache an older dit-compress wrote (no read-by.json, or one without readers) was kept for good.
    Once every pass has run (start = their count) and each svd pass of the recipe is recorded as the
    reader of a cache, no pass of the recipe reads it: it goes. Kept while a pass runs again (start
    before it), while an svd pass's cache is not known (its reader recorded for other passes before it,
    or not at all), and under another fingerprint's rules (calib/<other>/: whole, --restart)."""
    passes, specs = [_svd(), _svd()], [SVD, SVD]
    older = _cache(tmp_path, "fp", "older")
    (_cache(tmp_path, "fp", "marked-early") / "read-by.json").write_text('{"pass": 0}\n')  # before readers
    _cache(tmp_path, "fp", "first", (0, []))
    assert unread_caches(tmp_path, "fp", specs, passes, 2) == []  # pass 2's cache not known
    second = _cache(tmp_path, "fp", "second", (1, [OTHER]))
    assert unread_caches(tmp_path, "fp", specs, passes, 2) == [second]  # pass 2 read it after another pass 1
    mark_read_by(second, 1, [SVD])
    assert unread_caches(tmp_path, "fp", specs, passes, 1) == []
    assert unread_caches(tmp_path, "fp", specs, passes, 2) == [tmp_path / "calib/fp/marked-early", older]
    distill = SimpleNamespace(name="distill", config=SimpleNamespace(data="toy"), result_free=())
    assert unread_caches(tmp_path, "fp", [{"distill": {}}], [distill], 1) == \
        [tmp_path / "calib/fp/first", tmp_path / "calib/fp/marked-early", older, second]  # no svd pass: none read


def test_pass_specs_compare_as_json_writes_them(tmp_path):
    """A spec whose mapping has a number for a key (JSON writes it as text) is the same spec read back."""
    specs = [{"remove_blocks": {"blocks": {0: [1]}}}, SVD]
    remove = SimpleNamespace(name="remove_blocks", config=None, result_free=())
    _cache(tmp_path, "fp", "after", (1, specs[:1]))
    _cache(tmp_path, "fp", "again", (1, specs[:1]))
    mark_read_by(tmp_path / "calib" / "fp" / "again", 1, specs[:1])  # the same reader: recorded once
    readers = json.loads((tmp_path / "calib" / "fp" / "again" / "read-by.json").read_text())["readers"]
    assert len(readers) == 1
    assert unread_caches(tmp_path, "fp", specs, [remove, _svd()], 2) == []


def test_a_cache_behind_a_pass_that_runs_again_is_kept_until_it_has_run(tmp_path):
    """A reader whose passes differ only from `start` on (they run again, and may make the same model)
    keeps its cache; once every pass has run (start = their count), it does not."""
    stale = _cache(tmp_path, "fp", "stale", (1, [OTHER]))
    assert unread_caches(tmp_path, "fp", [SVD, SVD], [_svd(), _svd()], 0) == []
    assert unread_caches(tmp_path, "fp", [SVD, SVD], [_svd(), _svd()], 2) == [stale]


def test_a_cache_read_at_a_pass_that_is_no_svd_pass_now_is_unread(tmp_path):
    stale = _cache(tmp_path, "fp", "stale", (1, [SVD]))
    distill = SimpleNamespace(name="distill", config=SimpleNamespace(data="toy"), result_free=())
    assert unread_caches(tmp_path, "fp", [SVD, {"distill": {}}], [_svd(), distill], 2) == [stale]
    assert unread_caches(tmp_path, "fp", [SVD], [_svd()], 1) == [stale]  # no pass 2 at all


def test_output_fishers_of_other_probes_are_unread(tmp_path):
    """In a cache this recipe's svd pass reads: the fisher-<N>probes/ of its fisher_probes stays (an
    interrupted pass's, read back), those of other probes go, and all go where it measures none there
    (fisher: block); a reader whose settings are not known keeps them all."""
    def svd(fisher, probes):
        return SimpleNamespace(name="svd", config=SimpleNamespace(fisher=fisher, fisher_probes=probes),
                               result_free=(), changes_weights=True)
    cache = _cache(tmp_path, "fp", "teacher", (0, []))
    for probes in (2, 4):
        (cache / f"fisher-{probes}probes").mkdir()
        (cache / f"fisher-{probes}probes" / "blocks.0.attn1.to_q.pt").write_bytes(b"x")
    assert unread_caches(tmp_path, "fp", [SVD], [svd("all", 4)], 0) == [cache / "fisher-2probes"]
    assert unread_caches(tmp_path, "fp", [SVD], [svd("modulation", 2)], 1) == [cache / "fisher-4probes"]
    assert unread_caches(tmp_path, "fp", [SVD], [svd("block", 4)], 1) == \
        [cache / "fisher-2probes", cache / "fisher-4probes"]
    assert unread_caches(tmp_path, "fp", [SVD], [_svd()], 1) == []
    assert unread_caches(tmp_path, "fp", [OTHER], [svd("all", 4)], 1) == [cache / "fisher-2probes"]  # its own keys: any


def _samples(run_dir, key, about):
    folder = run_dir / "distill" / "teacher_samples" / key
    folder.mkdir(parents=True)
    if about is not None:
        (folder / "about.json").write_text(json.dumps(about))
    return folder


def test_teacher_samples_of_another_fingerprint_or_settings_are_unread(tmp_path):
    keys = {"num_samples": 64, "sample_steps": 4, "batch_size": 8, "guidance_scale": 1.0}
    distill = SimpleNamespace(name="distill", config=SimpleNamespace(data="teacher_samples", **keys),
                              result_free=())
    _samples(tmp_path, "kept", {"fingerprint": "fp", **keys, "shards": 8})
    other = _samples(tmp_path, "other", {"fingerprint": "old", **keys, "shards": 8})
    fewer = _samples(tmp_path, "fewer", {"fingerprint": "fp", **keys, "num_samples": 32, "shards": 4})
    _samples(tmp_path, "older", None)  # no about.json: not known
    assert unread_caches(tmp_path, "fp", [{"distill": {}}], [distill], 0) == [fewer, other]
    assert unread_caches(tmp_path, "fp", [], [], 0) == [fewer, fewer.parent / "kept", other]  # no distill pass


def test_sampled_inputs_of_another_teacher_go_only_with_restart(tmp_path, capsys):
    """inputs/<name>/ (a pipeline calibration's sampling calls, named by the teacher) other than the one
    the run reads: of another teacher, never read by this run; kept and named by a plain run (their bytes,
    '--restart removes them'), removed by --restart, with the log. Where the run's inputs are not known
    (None), none is named; a run that samples none ([]: a toy or synthetic source) reads none of them."""
    from compress.runner_caches import REMOVED_LOG, of_another, remove_unread_caches

    mine, other = tmp_path / "inputs" / "mine", tmp_path / "inputs" / "other"
    for folder in (mine, other):
        folder.mkdir(parents=True)
        (folder / "0123.pt").write_bytes(b"x" * 2048)
    assert unread_caches(tmp_path, "fp", [], [], 0) == [] and of_another(tmp_path, "fp") == []
    assert unread_caches(tmp_path, "fp", [], [], 0, [mine]) == [other] == of_another(tmp_path, "fp", [mine])
    assert unread_caches(tmp_path, "fp", [], [], 0, []) == [mine, other]
    remove_unread_caches(tmp_path, "fp", [], [], 0, inputs=[mine])
    said = " ".join(capsys.readouterr().err.split())
    assert said == (f"note: {tmp_path} holds 2.0 KiB of caches of another teacher or calibration (inputs/other); "
                    "--restart removes them"), said
    assert other.is_dir()
    remove_unread_caches(tmp_path, "fp", [], [], 0, restart=True, inputs=[tmp_path / "x" / ".." / "inputs" / "mine"])
    said = " ".join(capsys.readouterr().err.split())
    assert said.endswith("that no run of this recipe reads (inputs/other): 2.0 KiB freed"), said
    assert mine.is_dir() and not other.exists()
    assert (tmp_path / REMOVED_LOG).read_text().endswith("\tinputs/other\t2048\n")


def test_calls_of_other_prompts_in_the_runs_own_inputs_go_only_with_restart(tmp_path, capsys):
    """In the run's own inputs/<name>/, the files of sampling calls it does not make (other prompts, seed,
    steps, heldout: another calibration's inputs) were kept for good: named by a plain run among the
    caches of another teacher or calibration, removed by --restart with the log; its own calls and an
    unfinished call (.tmp-PID) stay. Where its calls are not known (None), none is named."""
    from compress.runner_caches import REMOVED_LOG, of_another, other_calls, remove_unread_caches

    mine = tmp_path / "inputs" / "mine"
    mine.mkdir(parents=True)
    for name in ("call-a.pt", "call-b.pt", "old-a.pt", "old-b.tmp-42"):
        (mine / name).write_bytes(b"x" * 1024)
    calls = [mine / "call-a.pt", mine / "call-b.pt", mine / "call-c.pt"]  # call-c: not sampled yet
    assert other_calls([mine], None) == [] == other_calls([], calls)
    assert other_calls([mine], calls) == [mine / "old-a.pt"] == of_another(tmp_path, "fp", [mine], calls)
    assert unread_caches(tmp_path, "fp", [], [], 0, [mine], calls) == [mine / "old-a.pt"]
    assert unread_caches(tmp_path, "fp", [], [], 0, [mine]) == []
    remove_unread_caches(tmp_path, "fp", [], [], 0, inputs=[mine], calls=calls)
    said = " ".join(capsys.readouterr().err.split())
    assert said == (f"note: {tmp_path} holds 1.0 KiB of caches of another teacher or calibration "
                    "(inputs/mine/old-a.pt); --restart removes them"), said
    assert (mine / "old-a.pt").is_file()
    remove_unread_caches(tmp_path, "fp", [], [], 0, restart=True, inputs=[mine], calls=calls)
    said = " ".join(capsys.readouterr().err.split())
    assert said.endswith("that no run of this recipe reads (inputs/mine/old-a.pt): 1.0 KiB freed"), said
    assert sorted(p.name for p in mine.iterdir()) == ["call-a.pt", "call-b.pt", "old-b.tmp-42"]
    assert (tmp_path / REMOVED_LOG).read_text().endswith("\tinputs/mine/old-a.pt\t1024\n")


def test_statistics_a_run_neither_read_nor_wrote_are_unread(tmp_path):
    """In a stats cache this run's svd passes read: the files they read back (their names) and wrote
    (newer than the run's passes) stay, the others (an earlier ratio's) go."""
    import os
    import time

    from compress.runner_caches import unread_files

    cache = _cache(tmp_path, "fp", "teacher", (0, []))
    for name in ("read", "other"):
        (cache / f"{name}.pt").write_bytes(b"x")
    old = time.time_ns() - 10**9
    for path in cache.glob("*.pt"):
        os.utime(path, ns=(old, old))
    since = time.time_ns()
    (cache / "written.pt").write_bytes(b"x")
    assert unread_files(cache, {"read"}, since) == [cache / "blocks-0.pt", cache / "other.pt"]
    assert unread_files(cache, {"read"}, old) == []  # all written since


def test_removed_caches_are_logged_and_a_cut_note_names_the_log(tmp_path, capsys):
    """The note names three caches 'and N more': the full list (time, path, bytes) is appended to
    RUN/removed-caches.log, which the note names only where it was cut; a run folder holding the log
    is no saved work (check_run_folder, foreign_in_run_folder)."""
    from compress.runner_caches import REMOVED_LOG, remove_unread_caches
    from compress.runner_folders import check_run_folder, foreign_in_run_folder

    passes, specs = [_svd(), _svd()], [SVD, SVD]
    for i in range(5):
        _cache(tmp_path, f"old{i}", "a")
    remove_unread_caches(tmp_path, "fp", specs, passes, 2, restart=True)
    said = " ".join(capsys.readouterr().err.split())
    assert "(calib/old0, calib/old1, calib/old2 and 2 more): 50 bytes freed; the full list in " in said
    assert said.replace(" ", "").endswith(f"{REMOVED_LOG}")
    lines = [line.split("\t") for line in (tmp_path / REMOVED_LOG).read_text().splitlines()]
    assert [(path, size) for _, path, size in lines] == [(f"calib/old{i}", "10") for i in range(5)]
    assert all(when.endswith("Z") and when[:2] == "20" for when, _, _ in lines)
    _cache(tmp_path, "old5", "a")
    remove_unread_caches(tmp_path, "fp", specs, passes, 2, restart=True)  # one: not cut, the log not named
    said = " ".join(capsys.readouterr().err.split())
    assert said.endswith("(calib/old5): 10 bytes freed") and REMOVED_LOG not in said
    assert (tmp_path / REMOVED_LOG).read_text().splitlines()[5].endswith("\tcalib/old5\t10")
    assert foreign_in_run_folder(tmp_path) is None
    check_run_folder(tmp_path, {"passes": specs}, passes)  # nothing saved: no refusal


def test_bytes_in_words():
    assert [bytes_in_words(n) for n in (1, 512, 2048, 3 * 2**20 + 2**19, 2**31)] == \
        ["1 byte", "512 bytes", "2.0 KiB", "3.5 MiB", "2.0 GiB"]


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
    assert str(e.value).startswith(f"{run_dir} holds what an interrupted run of this teacher measured with another "
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


def test_files_of_one_folder_are_counted_in_it_and_logged_one_by_one(tmp_path, capsys):
    """The note listed removed files one by one ('inputs/x/03f8....pt, ... and 6 more'): a folder's files,
    where more than one goes, are 'N files in FOLDER' in the place of its first (sampled calls, statistics
    files alike), a folder or a lone file named as before; the log keeps a line per path."""
    from compress.runner_caches import REMOVED_LOG, names_of, remove_unread_caches

    calls, stats = tmp_path / "inputs" / "x", tmp_path / "calib" / "fp" / "m"
    calls.mkdir(parents=True), stats.mkdir(parents=True)
    for p in [calls / f"{i:02d}.pt" for i in range(7)] + [stats / "blocks-0.pt", stats / "blocks-1.pt"]:
        p.write_bytes(b"12345")
    (tmp_path / "calib" / "other").mkdir()
    (tmp_path / "inputs" / "lone").mkdir()
    (tmp_path / "inputs" / "lone" / "a.pt").write_bytes(b"1")
    found = [tmp_path / "calib" / "other", *sorted(calls.glob("*.pt")), tmp_path / "inputs" / "lone" / "a.pt"]
    assert names_of(found, tmp_path) == "calib/other, 7 files in inputs/x, inputs/lone/a.pt"
    assert names_of(found + [stats / "blocks-0.pt", stats / "blocks-1.pt"], tmp_path) == \
        "calib/other, 7 files in inputs/x, inputs/lone/a.pt and 1 more"
    remove_unread_caches(tmp_path, "fp", [SVD], [_svd()], 0, also=sorted(stats.glob("*.pt")))  # m: no readers, kept
    said = " ".join(capsys.readouterr().err.split())
    assert "reads (2 files in calib/fp/m): 10 bytes freed; the full list in " in said, said
    logged = [line.split("\t")[1:] for line in (tmp_path / REMOVED_LOG).read_text().splitlines()]
    assert logged == [["calib/fp/m/blocks-0.pt", "5"], ["calib/fp/m/blocks-1.pt", "5"]]


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
