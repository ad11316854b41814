"""runner_caches: which caches of a run folder no run of the recipe reads (selection on folders made by
hand), how their removal is said (bytes in words, a folder's files counted in it) and logged."""

from __future__ import annotations

import json
from types import SimpleNamespace

from compress.runner_caches import bytes_in_words, unread_caches
from compress.runner_kept import mark_read_by

SVD, OTHER = {"svd": {"ratio": 0.5}}, {"svd": {"ratio": 0.4}}


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
    from compress.runner_folders import check_run_folder
    from compress.runner_written import foreign_in_run_folder

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


def test_distill_checkpoints_of_a_distill_pass_the_recipe_lacks_are_stranded(tmp_path):
    """Of distill/, distill-2/, distill-3/ (the 1st, 2nd, 3rd distill pass's): with two distill passes,
    distill-3's checkpoints and those set aside (checkpoints.discarded); with none, all; empty ones never."""
    from compress.runner_caches import stranded_checkpoints

    for folder in ("distill/checkpoints", "distill-2/checkpoints.discarded", "distill-3/checkpoints",
                   "distill-3/checkpoints.discarded"):
        (tmp_path / folder / "step-00000001").mkdir(parents=True)
    (tmp_path / "distill-4" / "checkpoints").mkdir(parents=True)  # empty
    distill = SimpleNamespace(name="distill")
    assert stranded_checkpoints(tmp_path, [_svd(), distill, distill]) == [
        tmp_path / "distill-3" / "checkpoints", tmp_path / "distill-3" / "checkpoints.discarded"]
    assert stranded_checkpoints(tmp_path, [_svd()]) == sorted(
        tmp_path / f for f in ("distill/checkpoints", "distill-2/checkpoints.discarded", "distill-3/checkpoints",
                               "distill-3/checkpoints.discarded"))
