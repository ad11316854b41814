"""A run that stops on an error (out of memory, a full disk) says what its run folder keeps, as a Ctrl-C does (runner.Runner._kept -> runner_resume.resume_note -> runner_kept.work_kept)."""
import json

import pytest

from compress.cli import main
from tests.runner_helpers import pixart_runner


@pytest.mark.parametrize("raised, said", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3200000000000 bytes."),
     "out of memory"),
    (OSError(28, "No space left on device", "/scratch/x.pt"), "cannot write"),
])
def test_a_stop_on_an_error_in_an_svd_pass_names_the_block_statistics_kept(tmp_path, monkeypatch, capsys,
                                                                           raised, said):
    """Out of memory or a full disk in the svd pass after it saved the statistics of its first block:
    the line said '1 of 2 passes done' only, though --resume reads those statistics back (a Ctrl-C's
    line names them)."""
    from compress.calib_stats import StatsCache

    pixart_runner(tmp_path, monkeypatch)  # r.yaml: remove_blocks, then svd
    saves, real = [], StatsCache.save

    def save(self, name, stats):
        if len(saves) == 1:
            raise raised
        saves.append(name)
        return real(self, name, stats)
    monkeypatch.setattr(StatsCache, "save", save)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dit-compress: {said}") and last.endswith(
        f"; {tmp_path / 'run'} keeps its work (1 of 2 passes done, block statistics (up to 1 file), output Fishers "
        "(up to 12 files) to read back): --resume continues from pass 2 (whose keys may change)"), last


def test_block_statistics_are_named_only_where_an_svd_pass_still_runs(tmp_path):
    """Only an svd pass reads the block statistics and Fishers back: a run stopped in a distill pass
    after its last svd pass said '2 of 3 passes done, block statistics (5 files) measured so far',
    which --resume never reads. They are named while an svd pass is to run, or the passes are not known."""
    from types import SimpleNamespace

    from compress.runner_kept import measured_so_far

    from compress.passes.svd_config import SVDConfig

    for name in ("blocks-0.pt", "blocks-1.pt", "fisher-4probes/0.pt"):
        path = tmp_path / "calib" / "fp" / "start" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    svd, distill = SimpleNamespace(name="svd", config=SVDConfig()), SimpleNamespace(name="distill", config=None)
    named = "block statistics (up to 2 files), output Fishers (up to 1 file)"
    assert measured_so_far(tmp_path, "fp", None, [svd, distill]) == named
    assert measured_so_far(tmp_path, "fp", None) == named
    assert measured_so_far(tmp_path, "fp", None, [distill]) == ""
    assert measured_so_far(tmp_path, "fp", None, []) == ""


def test_an_errors_stop_names_the_block_statistics_and_fishers_kept_as_a_ctrl_c_does(tmp_path):
    """After an out-of-memory, full-disk or lost-peer stop, resume_note said '1 of 2 passes done' (or
    nothing, before the first pass was saved), though the svd pass's block statistics and output
    Fishers under the run's fingerprint were kept and are read back; it names them as the Ctrl-C note
    (runner_folders.interrupt_note) does, in the same words."""
    from compress.recipe import parse_recipe
    from compress.runner import build_passes
    from compress.runner_folders import interrupt_note
    from compress.runner_resume import resume_note

    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - remove_blocks: {blocks: {blocks: [1]}}\n"
            "  - svd: {targets: [mlp], ratio: 0.5}\n")
    recipe = parse_recipe(text, "r.yaml")
    passes = build_passes(recipe)
    model = tmp_path / "calib" / "aaaa" / "0123456789abcdef"
    (model / "fisher-4probes").mkdir(parents=True)
    for name in ("blocks-0.pt", "blocks-1.pt", "fisher-4probes/0.pt"):
        (model / name).write_bytes(b"")
    (tmp_path / "calib" / "bbbb" / "x").mkdir(parents=True)
    (tmp_path / "calib" / "bbbb" / "x" / "blocks-0.pt").write_bytes(b"")  # another fingerprint's: not read
    measured = "block statistics (up to 2 files), output Fishers (up to 1 file)"
    rerun = ("a rerun of this recipe and teacher reads back those it needs instead of measuring them again "
             "(keep the run folder)")
    assert resume_note(tmp_path, recipe, passes, "aaaa") == f"; {tmp_path} keeps {measured}: {rerun}"
    assert resume_note(tmp_path, recipe, passes) == "" == resume_note(tmp_path, recipe, passes, "cccc")
    stage = tmp_path / "stages" / "0-remove_blocks"
    stage.mkdir(parents=True)
    (stage / "state.json").write_text(json.dumps({"recipe": recipe.raw}))
    kept = f"; {tmp_path} keeps its work (1 of 2 passes done, {measured} to read back): "
    go_on = "--resume continues from pass 2 (whose keys may change)"
    assert resume_note(tmp_path, recipe, passes, "aaaa") == kept + go_on
    assert interrupt_note(tmp_path, False, recipe.raw, passes, "aaaa") == kept + "rerun with --resume to continue"
    (tmp_path / "stages" / "1-svd").mkdir()  # every pass done: --resume only writes the output, reading none
    (tmp_path / "stages" / "1-svd" / "state.json").write_text(json.dumps({"recipe": recipe.raw}))
    assert resume_note(tmp_path, recipe, passes, "aaaa") == (f"; {tmp_path} keeps its work (2 of 2 passes done): "
                                                             "--resume only writes the output")


def test_a_ctrl_c_in_a_later_svd_pass_names_only_the_statistics_that_pass_reads(tmp_path, monkeypatch, capsys):
    """Ctrl-C in pass 2 (svd) after it saved its first block's statistics: the line counted pass 1's
    statistics too ('block statistics (N files) measured so far'), though --resume continues from
    pass 1's stage and pass 2 reads only its own (its cache is keyed by the student pass 1 left)."""
    from compress.calib_stats import StatsCache
    from tests.runner_helpers import SIMPLE

    pixart_runner(tmp_path, monkeypatch)
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=(
        "  - svd: {targets: [mlp], ratio: 0.5, multiple: 2, fisher: none}\n"
        "  - svd: {targets: [attention], ratio: 0.5, multiple: 2, fisher: none}\n")))
    folders, real = [], StatsCache.save

    def save(self, name, stats):
        if self.directory not in folders:
            folders.append(self.directory)
        if len(folders) == 2:  # pass 2's first statistics written, then Ctrl-C
            real(self, name, stats)
            raise KeyboardInterrupt
        return real(self, name, stats)
    monkeypatch.setattr(StatsCache, "save", save)
    argv = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    first, second = (sum(1 for _ in d.glob("*.pt")) for d in folders)
    assert first > 0 and second == 1, (first, second)
    assert last.endswith(f"; {tmp_path / 'run'} keeps its work (1 of 2 passes done, block statistics (up to 1 file) "
                         "to read back): rerun with --resume to continue"), last


def test_statistics_marked_read_by_a_kept_pass_are_not_counted(tmp_path):
    """A cache marked read by a pass before `start` (one --resume keeps) is not counted; one of that
    pass or a later one is, and an unmarked one (an older run's) too where a later svd pass is to run
    (its model not made yet: which cache it reads is not known); with pass `start` the only svd pass
    ahead, marked, the unmarked one is read by none (the next test)."""
    from types import SimpleNamespace

    from compress.runner_kept import mark_read_by, measured_so_far, read_caches

    for cache, files in (("teacher", 3), ("after-1", 2), ("older", 1)):
        for n in range(files):
            (tmp_path / "calib" / "fp" / cache).mkdir(parents=True, exist_ok=True)
            (tmp_path / "calib" / "fp" / cache / f"blocks-{n}.pt").write_bytes(b"x")
    mark_read_by(tmp_path / "calib" / "fp" / "teacher", 0)
    mark_read_by(tmp_path / "calib" / "fp" / "after-1", 1)
    svd = SimpleNamespace(name="svd", config=SimpleNamespace(fisher="none"))
    assert measured_so_far(tmp_path, "fp", None, [svd, svd], 0) == "block statistics (up to 6 files)"
    assert measured_so_far(tmp_path, "fp", None, [svd], 1) == "block statistics (up to 2 files)"
    assert [c.name for c in read_caches(tmp_path, "fp", 2)] == ["older"]
    assert read_caches(tmp_path, None, 0) == []


def test_a_ctrl_c_counts_only_the_output_fishers_of_the_fisher_probes_ahead(tmp_path):
    """measured_so_far ('output Fishers (N files) measured so far') counted every fisher-*/ folder of a
    cache read back, also the Fishers of another fisher_probes, which the svd passes still to run never
    read (another estimate: measured anew); it counts those of their fisher_probes (runner_kept.fisher_folder,
    as the runner's line as a pass starts counts them), every folder where the passes are not known."""
    from types import SimpleNamespace

    from compress.passes.svd_config import SVDConfig
    from compress.runner_kept import measured_so_far

    cache = tmp_path / "calib" / "fp" / "start"
    for folder, files in (("fisher-4probes", 3), ("fisher-8probes", 2)):
        (cache / folder).mkdir(parents=True)
        for n in range(files):
            (cache / folder / f"{n}.pt").write_bytes(b"x")

    def svd(**keys):
        return SimpleNamespace(name="svd", config=SVDConfig(**keys))

    assert measured_so_far(tmp_path, "fp", None, [svd()]) == "output Fishers (up to 3 files)"  # fisher_probes 4
    assert measured_so_far(tmp_path, "fp", None, [svd(fisher_probes=8)]) == "output Fishers (up to 2 files)"
    assert measured_so_far(tmp_path, "fp", None, [svd(fisher_probes=2)]) == ""
    assert measured_so_far(tmp_path, "fp", None, [svd(fisher="block")]) == ""  # keeps none in its cache
    assert measured_so_far(tmp_path, "fp", None, [svd(), svd(fisher_probes=8)]) == "output Fishers (up to 5 files)"
    assert measured_so_far(tmp_path, "fp", None) == "output Fishers (up to 5 files)"  # passes not known: all


def test_a_ctrl_c_in_the_last_svd_pass_does_not_count_a_cache_none_marks(tmp_path):
    """The tester's run folder: calib/<fp>/ held the cache the svd pass marked read (read-by.json, 6
    files) and one none marks (6 files): Ctrl-C said 'keeps block statistics (12 files) measured so far:
    a rerun ... reads back those', where a rerun reads 6. The svd pass ahead (the only one) reads the
    cache it marked: the other is not counted. Where another svd pass is still to run, or the passes
    are not known, which cache it reads is not: counted, as before."""
    from types import SimpleNamespace

    from compress.passes.svd_config import SVDConfig
    from compress.runner_kept import mark_read_by, work_kept

    for cache in ("marked", "unmarked"):
        (tmp_path / "calib" / "fp" / cache).mkdir(parents=True)
        for n in range(6):
            (tmp_path / "calib" / "fp" / cache / f"blocks-{n}.pt").write_bytes(b"x")
    mark_read_by(tmp_path / "calib" / "fp" / "marked", 0, [])
    svd = SimpleNamespace(name="svd", config=SVDConfig(fisher="none"))
    distill = SimpleNamespace(name="distill", config=SimpleNamespace(data="toy"))
    said = work_kept(tmp_path, None, "", "fp", None, [svd, distill])
    assert said.startswith(f"; {tmp_path} keeps block statistics (up to 6 files): a rerun"), said
    assert "(up to 12 files)" in work_kept(tmp_path, None, "", "fp", None, [svd, svd])  # pass 2's cache: not known
    assert "(up to 12 files)" in work_kept(tmp_path, None, "", "fp", None)  # the passes not known
    (tmp_path / "calib" / "fp" / "marked" / "read-by.json").unlink()  # none marked: an older run's, counted
    assert "(up to 12 files)" in work_kept(tmp_path, None, "", "fp", None, [svd, distill])


@pytest.mark.parametrize("done, total, step, words", [
    (1, 1, None, "the one pass done"),
    (0, 1, 275, "the one pass not done, a distill checkpoint at step 275"),
    (1, 2, None, "1 of 2 passes done"),
    (0, 2, None, "0 of 2 passes done"),
    (1, None, None, "1 pass done"),
    (2, None, None, "2 passes done"),
])
def test_the_passes_saved_are_said_in_good_grammar(done, total, step, words):
    """A recipe of one pass interrupted after it was '(1 of 1 passes done)'; as the other refusals say
    'whose one pass is done', it is 'the one pass done'."""
    from compress.runner_kept import saved_in_words

    assert saved_in_words({"done": done, "total": total, "step": step}) == words


def _modulation_stopped_after_attention(tmp_path, monkeypatch, capsys):
    """A finished run of an attention pass, then in the same run folder a pass of the top-level modulation
    alone stopped by Ctrl-C as it factorizes: (run(name, *more) -> exit status, the statistics files the first
    run left, the lines the stopped run printed; the Ctrl-C note last)."""
    from compress.passes.svd import SVDPass
    from tests.conftest import tiny_pixart
    from tests.runner_helpers import SIMPLE

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    recipes = {"attention": "  - svd: {targets: [attention], allocation: global, ratio: 0.5, multiple: 2}\n",
               "modulation": "  - svd: {targets: [modulation], fisher: none, ranks: {modulation: 4}}\n"}
    for name, passes in recipes.items():
        (tmp_path / f"{name}.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=passes))
    run = lambda name, *more: main(["run", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / "out"),  # noqa: E731
                                    "--run-dir", str(tmp_path / "run"), "--overwrite", *more])
    assert run("attention") == 0
    found = len(list((tmp_path / "run" / "calib").glob("*/*/*.pt")))

    def compress(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(SVDPass, "_compress", compress)
    capsys.readouterr()
    assert run("modulation") == 130
    said = capsys.readouterr()
    monkeypatch.undo()
    return run, found, (said.out + said.err).strip().splitlines()


def test_a_ctrl_c_counts_the_statistics_found_as_up_to_what_a_rerun_reads_back(tmp_path, monkeypatch, capsys):
    """Which block statistics an svd pass reads back is known only as it runs (their names hash its blocks'
    inputs, targets and ranks): a Ctrl-C in a pass of the top-level modulation alone, after a finished run of
    an attention pass in the same run folder, said 'keeps block statistics (N files) measured so far: a rerun
    ... reads back those', and --resume then read back none of them (its end line says so): now 'up to N'."""
    import re

    run, found, lines = _modulation_stopped_after_attention(tmp_path, monkeypatch, capsys)
    kept = re.search(r"keeps block statistics \(up to (\d+) files\): a rerun", lines[-1])
    assert kept and int(kept[1]) >= found > 0, lines[-1]
    assert run("modulation", "--resume") == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "read back " in line]
    assert said == [f"  pass 1 (svd) read back none of the {kept[1]} files an earlier run measured: they are not of "
                    "its targets, blocks, inputs and ranks as they are now"], said


def test_what_a_ctrl_c_finds_is_not_said_to_be_what_its_run_measured(tmp_path, monkeypatch, capsys):
    """The block statistics in that run folder are the attention run's: the modulation pass's Ctrl-C said
    '; RUN keeps block statistics (up to N files) measured so far: a rerun of this recipe and teacher reads
    back those it measured instead of measuring them again', though it measured none of them, and a rerun
    reads those it needs; the pass's start line said it 'reads back those of its blocks and inputs
    unchanged since', though its blocks and inputs were unchanged and it read none (another target's).
    Now whose run measured them is not said, and the start line names what its end line does."""
    run, found, lines = _modulation_stopped_after_attention(tmp_path, monkeypatch, capsys)
    start = (f"  pass 1 (svd) finds block statistics ({found} files) that an earlier run measured: it reads back "
             "those of its targets, blocks, inputs and ranks as they are now, and says how many when it ends")
    assert start in lines, lines
    assert lines[-1].startswith(f"dit-compress: interrupted; {tmp_path / 'run'} keeps block statistics (up to "), lines
    assert "files): a rerun of this recipe and teacher reads back those it needs instead of measuring them again " \
           "(keep the run folder)" in lines[-1], lines[-1]
    assert "measured so far" not in lines[-1] and "those it measured" not in lines[-1], lines[-1]
    assert run("modulation", "--resume") == 0
    said = capsys.readouterr()
    assert start in (said.out + said.err).splitlines()


def test_who_measured_the_files_an_svd_pass_finds():
    """Files an svd pass finds in its student's stats cache: an earlier run's, or the block statistics an
    earlier pass of this run of the same student (one that changed nothing) measured, new since that pass
    found the others. Output Fishers are an earlier run's: each pass reads only its own fisher-<N>probes/,
    and deletes it once it finishes (they were credited to the previous pass: 'an earlier run and pass 1')."""
    from compress.runner_kept import measured_by, measured_by_in_words

    a, b, c, d = (("s", name) for name in "abcd")
    first = measured_by(None, {a, b})
    assert first == {a: None, b: None} and measured_by_in_words(first) == "an earlier run"
    second = measured_by((3, first), {a, c})  # pass index 3 (pass 4) measured c
    assert second == {a: None, c: 4}
    assert measured_by_in_words(second) == "an earlier run and pass 4 of this run"
    third = measured_by((4, {c: 4}), {c, d})
    assert measured_by_in_words(third) == "passes 4 and 5 of this run"
    assert measured_by_in_words(measured_by((5, {("s", "x"): 2}), {("s", n) for n in "xyz"})) == \
        "passes 2 and 6 of this run"
    # pass 1 fisher: block, pass 2 fisher: all, beside the Fishers of an interrupted earlier run
    fishers = measured_by((0, {a: None, b: None}), {a, b, ("f", "x"), ("f", "y")})
    assert fishers == {a: None, b: None, ("f", "x"): None, ("f", "y"): None}
    assert measured_by_in_words(fishers) == "an earlier run"
    assert measured_by((0, {a: None}), {a, b, ("f", "x")}) == {a: None, b: 1, ("f", "x"): None}
