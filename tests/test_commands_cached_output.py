"""eval, bench and inspect given a Hub id whose output the Hugging Face cache holds: bench named the
cache's snapshot folder in its first line and the id in its 'which X records' line, eval the snapshot
in its own, inspect in its table's title; all now name the id the user gave, and say once, in a note,
that they read the cache's copy."""

from __future__ import annotations

import json

import pytest

from compress.cli import main
from tests.runner_helpers import SIMPLE


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """The Hugging Face cache at tmp_path/hub holding acme/out, an output (with its recipe.yaml, which
    eval reads) of the tiny teacher at tmp_path/teacher -> the cache's snapshot folder of acme/out."""
    from huggingface_hub import constants

    from compress import save_compressed
    from tests.conftest import factorize, tiny_pixart
    from tests.pipelines import hub_cache

    teacher = tiny_pixart()
    teacher.save_pretrained(tmp_path / "teacher")
    out = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], rank=2), tmp_path / "out",
                          extra={"teacher": str(tmp_path / "teacher")})
    (out / "recipe.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes="  - svd: {ratio: 0.5}\n"))
    hub_cache(tmp_path / "hub", "acme/out", out)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "hub" / "models--acme--out" / "snapshots" / ("0" * 40)


@pytest.mark.parametrize("command, extra, records", [
    ("eval", [], "measured against the teacher {teacher}, which acme/out records"),
    ("bench", ["--repeats", "1", "--device", "cpu"],
     "acme/out: timed against the teacher {teacher}, which acme/out records"),
    ("inspect", [], "acme/out: rank budget"),  # its table's title
])
def test_a_cached_hub_output_is_named_by_its_id_and_read_from_the_cache_once(cached, capsys, command, extra,
                                                                             records):
    assert main([command, "acme/out", *extra]) == 0
    said = capsys.readouterr()
    assert records.format(teacher=cached.parents[3] / "teacher") in [line.strip() for line in said.out.splitlines()]
    assert f"note: acme/out: reading the Hugging Face cache's copy of it, {cached}" in said.err.splitlines()
    assert (said.out + said.err).count(str(cached)) == 1  # the note alone names the snapshot
    if command == "bench":
        assert "bench: timing acme/out against the teacher" in said.err  # its first line, off a terminal


@pytest.mark.parametrize("command, extra, said", [
    ("inspect", [], "warning: "),  # inspect shows a damaged output, with a warning
    ("eval", [], "dit-compress eval: numeric error: "),
    ("bench", ["--repeats", "1", "--device", "cpu"], "dit-compress bench: numeric error: "),
])
def test_a_damaged_cached_hub_output_is_named_by_its_id_in_load_transformers_words(cached, capsys, command, extra,
                                                                                   said):
    """load_transformer's words of a weight file of a cached Hub output (a NaN in it) named the file in the
    cache's snapshot (a link to its blob there, as the cache holds it), where the command's other lines
    name the id: they name 'acme/out's FILE' (the note above names the snapshot once)."""
    from safetensors.torch import load_file, save_file

    from compress.io import WEIGHTS

    weights = load_file(cached / WEIGHTS)
    weights["transformer_blocks.0.ff.net.2.up.weight"][0, 0] = float("nan")
    blob = cached.parents[1] / "blobs" / "0123abcd"
    blob.parent.mkdir()
    save_file(weights, blob, metadata={"format": "pt"})
    (cached / WEIGHTS).unlink()
    (cached / WEIGHTS).symlink_to(blob)
    assert main([command, "acme/out", *extra]) == (0 if command == "inspect" else 3)
    err = capsys.readouterr().err
    assert (f"{said}acme/out's {WEIGHTS}: weight transformer_blocks.0.ff.net.2.up.weight has 1 NaN/Inf values; "
            "the output is damaged") in " ".join(err.split()), err
    assert err.count(str(cached)) == 1 and "blobs" not in err  # the note alone names the snapshot



@pytest.mark.parametrize("command", ["inspect", "eval", "bench"])
def test_a_local_path_not_there_is_no_hub_id_to_download(tmp_path, capsys, monkeypatch, command):
    """`inspect out/toy-pixart` (`out/` not made yet: nothing run here), `eval out/nothing`, `bench
    ./out/nothing` told the user to `hf download out/toy-pixart`, the tool's own default output folder
    taken for a Hub id. A path under out/ or runs/, or starting ./ ../ / ~, or whose first part is a
    folder here, is a local folder not there: said so, with the name its folder holds that is close, or
    for a run folder runs/NAME, the output out/NAME of that run; a Hub id (acme/none) keeps the cache's words."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    usage = ("(eval takes a dit-compress output folder or a teacher)" if command == "eval"
             else f"(dit-compress {command} OUT, OUT written by run)")
    nothing_run = {"out/toy-pixart": "no such folder out/toy-pixart, and no out/ here either",
                   "./out/nothing": "no such folder ./out/nothing, and no out/ here either",
                   "runs/tiny": "no such folder runs/tiny, and no runs/ here either",
                   "./elsewhere/x": "no such folder ./elsewhere/x"}
    for given, words in nothing_run.items():
        assert main([command, given]) == 2
        assert capsys.readouterr().err == f"dit-compress {command}: error: {words} {usage}\n"
    (tmp_path / "out" / "toy-pixart2").mkdir(parents=True)
    (tmp_path / "out" / "tiny").mkdir()
    (tmp_path / "out" / "tiny" / "config.json").write_text('{"compression": {}}')  # an output, as is_output reads
    (tmp_path / "runs").mkdir()
    run_before = {"out/toy-pixart": "no such folder out/toy-pixart; did you mean 'out/toy-pixart2'?",
                  "out/zzzzzzzz": "no such folder out/zzzzzzzz",
                  "runs/tiny": "no such folder runs/tiny; the output of that run is out/tiny"}
    for given, words in run_before.items():
        assert main([command, given]) == 2
        assert capsys.readouterr().err == f"dit-compress {command}: error: {words} {usage}\n"
    (tmp_path / "runs" / "tiny").mkdir()  # a run folder, there
    assert main([command, "runs/tiny"]) == 2
    assert capsys.readouterr().err == (f"dit-compress {command}: error: runs/tiny is a run folder (a run's caches and "
                                       "checkpoints), not an output; the output of that run is out/tiny: "
                                       f"dit-compress {command} out/tiny\n")
    assert main([command, "acme/none"]) == 2  # a Hub id: the cache's words
    assert "holds no copy of it" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["inspect", "eval", "bench"])
def test_a_run_folder_names_its_output_whatever_its_name_and_wherever_the_output_went(tmp_path, capsys,
                                                                                      monkeypatch, command):
    """runs/NAME named its output out/NAME only where NAME was one folder below runs/ (runs/exp/a, whose
    output is out/exp/a, said no more than 'no such folder'), and a run folder whose run wrote its output
    elsewhere (--out out/b, or a --run-dir not under runs/) named none. Now the output the finished run
    recorded (stages/finished.json), else out/NAME for any NAME below runs/; none where it is no output."""
    monkeypatch.chdir(tmp_path)
    usage = ("(eval takes a dit-compress output folder or a teacher)" if command == "eval"
             else f"(dit-compress {command} OUT, OUT written by run)")
    for name in ("exp/a", "b"):
        (tmp_path / "out" / name).mkdir(parents=True)
        (tmp_path / "out" / name / "config.json").write_text('{"compression": {}}')  # an output, as is_output reads
    (tmp_path / "out" / "plain").mkdir()  # there, no output
    for run_dir, out in (("runs/r2", "out/b"), ("work/r3", "out/b"), ("runs/r4", "out/gone")):
        (tmp_path / run_dir / "stages").mkdir(parents=True)
        (tmp_path / run_dir / "stages" / "finished.json").write_text(json.dumps({"out": str(tmp_path / out)}))
    missing = {"runs/exp/a": "no such folder runs/exp/a; the output of that run is out/exp/a",
               "runs/plain": "no such folder runs/plain", "runs/none/x": "no such folder runs/none/x"}
    for given, words in missing.items():
        assert main([command, given]) == 2
        assert capsys.readouterr().err == f"dit-compress {command}: error: {words} {usage}\n"
    for given in ("runs/r2", "work/r3"):
        assert main([command, given]) == 2
        assert capsys.readouterr().err == (f"dit-compress {command}: error: {given} is a run folder (a run's caches and "
                                           "checkpoints), not an output; the output of that run is out/b: "
                                           f"dit-compress {command} out/b\n")
    assert main([command, "runs/r4"]) == 2
    assert "the output of that run" not in capsys.readouterr().err


@pytest.mark.parametrize("command, extra", [("inspect", []), ("eval", []),
                                            ("bench", ["--repeats", "1", "--device", "cpu"])])
def test_a_cached_hub_id_whose_owner_is_a_folder_here_is_read_from_the_cache(cached, capsys, command, extra):
    """With an ./acme/ folder here, `inspect acme/out` (the cache holds it) was refused 'no such folder
    acme/out': its first part a folder here, it was taken for a local path and the cache never looked in.
    The cache's copy is read; an id the cache does not hold keeps the local words."""
    (cached.parents[3] / "acme").mkdir()
    assert main([command, "acme/out", *extra]) == 0
    assert f"note: acme/out: reading the Hugging Face cache's copy of it, {cached}" in capsys.readouterr().err
    assert main([command, "acme/none", *extra]) == 2
    assert capsys.readouterr().err.startswith(f"dit-compress {command}: error: no such folder acme/none (")


@pytest.mark.parametrize("command", ["inspect", "eval", "bench"])
def test_the_folder_of_a_run_not_finished_says_so_and_how_to_finish_it(tmp_path, capsys, monkeypatch, command):
    """`inspect runs/r3` of an interrupted run (no output yet) said 'runs/r3 is not a dit-compress output
    folder (needs config.json and ...)', where a finished run's folder names its output. Now it is the run
    folder of a run that has not finished, what it saved, and how to finish it (--resume; --run-dir where
    the folder is not a runs/NAME); a folder that holds nothing a run writes keeps its words."""
    monkeypatch.chdir(tmp_path)
    state = json.dumps({"recipe": {"passes": [{"svd": {}}, {"svd": {}}]}})
    for run_dir in ("runs/r3", "work/r5"):
        (tmp_path / run_dir / "stages" / "0-svd").mkdir(parents=True)
        (tmp_path / run_dir / "stages" / "0-svd" / "state.json").write_text(state)
    (tmp_path / "runs" / "r4" / "calib").mkdir(parents=True)  # stopped while calibrating: no pass saved
    (tmp_path / "plain" / "x").mkdir(parents=True)
    said = {"runs/r3": ("1 of 2 passes done", ""), "work/r5": ("1 of 2 passes done", " --run-dir work/r5"),
            "runs/r4": ("no pass saved yet", "")}
    for given, (saved, run_dir) in said.items():
        assert main([command, given]) == 2
        rerun = ("rerun its recipe to start it over (dit-compress run RECIPE" if saved == "no pass saved yet"
                 else "rerun its recipe with --resume to continue it (dit-compress run RECIPE --resume")
        assert capsys.readouterr().err == (
            f"dit-compress {command}: error: {given} is the run folder of a run that has not finished ({saved}): it wrote no "
            f"output yet; {rerun}{run_dir}), then dit-compress {command} its output\n")
    assert main([command, "plain/x"]) == 2
    assert "run folder" not in capsys.readouterr().err


@pytest.mark.parametrize("out, run_dir, flags", [("o", "d", " --out o --run-dir d"), ("out/r", "runs/r", ""),
                                                  ("out/r", "d", " --out out/r --run-dir d")])
def test_the_folder_of_a_run_stopped_before_it_saved_a_pass_says_the_rerun_that_finishes_it(
        tmp_path, capsys, monkeypatch, out, run_dir, flags):
    """T2 stop 52 #3: after `run R --out o --run-dir d` stopped by a Ctrl-C before any pass saved,
    `inspect d` said '... rerun its recipe with --resume to continue it (dit-compress run RECIPE --resume
    --run-dir d)': following it wrote out/r (stages/run.json recorded no output), and it offered --resume
    where the Ctrl-C had said 'nothing was saved yet: a rerun starts over'. Now run.json records the
    output from the start: the rerun named is a plain one, with --out where it is not run's default
    out/NAME; following it writes the output there."""
    from compress.runner import Runner
    from tests.conftest import tiny_pixart

    monkeypatch.chdir(tmp_path)
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    svd = "  - svd: {targets: [attention], ratio: 0.5, multiple: 2}\n"
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=svd))

    def ctrl_c(self, i, student):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(Runner, "_run_pass", ctrl_c)
        assert main(["run", "r.yaml", "--out", out, "--run-dir", run_dir]) == 130
    assert capsys.readouterr().err.strip().endswith("nothing was saved yet: a rerun starts over")
    assert main(["inspect", run_dir]) == 2
    assert capsys.readouterr().err == (
        f"dit-compress inspect: error: {run_dir} is the run folder of a run that has not finished (no pass saved yet): it wrote no "
        f"output yet; rerun its recipe to start it over (dit-compress run RECIPE{flags}), then dit-compress "
        "inspect its output\n")
    assert main(["run", "r.yaml", *flags.split()]) == 0
    assert (tmp_path / out / "config.json").is_file()
    assert out == "out/r" or not (tmp_path / "out").exists()  # not run's default out/r


@pytest.mark.parametrize("command", ["inspect", "eval", "bench"])
def test_the_folder_of_a_finished_run_whose_output_is_gone_says_so_and_how_to_write_it_again(tmp_path, capsys,
                                                                                             monkeypatch, command):
    """`inspect runs/r` of a finished run whose output out/r was deleted said 'runs/r is not a dit-compress
    output folder (needs config.json and ...)'. Now it names the output that is gone and how to get it
    back: --resume of the recipe writes it again from the stages the run kept (checked: 'its only pass
    (svd) was done: writing the output again', the same weights), with --out and --run-dir where the run
    had them; a run that kept no stage is to be rerun."""
    monkeypatch.chdir(tmp_path)
    for run_dir, out, stage in (("runs/r1", "out/r1", True), ("work/r5", "elsewhere/x", True),
                                ("runs/r6", "out/r6", False), ("runs/r7", "out/plain", True)):
        (tmp_path / run_dir / "stages").mkdir(parents=True)
        (tmp_path / run_dir / "stages" / "finished.json").write_text(json.dumps({"out": str(tmp_path / out)}))
        if stage:
            (tmp_path / run_dir / "stages" / "0-svd").mkdir()
            (tmp_path / run_dir / "stages" / "0-svd" / "state.json").write_text("{}")
    (tmp_path / "out" / "plain").mkdir(parents=True)  # there, no output
    resume = "rerun its recipe, unchanged, with --resume to write it again from the stages the run kept"
    said = {"runs/r1": f"its output out/r1 is gone: {resume} (dit-compress run RECIPE --resume), then "
                       f"dit-compress {command} out/r1",
            "work/r5": f"its output elsewhere/x is gone: {resume} (dit-compress run RECIPE --resume --out elsewhere/x "
                       f"--run-dir work/r5), then dit-compress {command} elsewhere/x",
            "runs/r6": "its output out/r6 is gone and the run kept no stage: rerun its recipe to make it again "
                       f"(dit-compress run RECIPE), then dit-compress {command} out/r6",
            "runs/r7": f"its output folder out/plain holds no output now: {resume} (dit-compress run RECIPE --resume "
                       f"--out out/plain), then dit-compress {command} out/plain"}
    for given, words in said.items():
        assert main([command, given]) == 2
        assert capsys.readouterr().err == f"dit-compress {command}: error: {given} is the run folder of a finished run, but " \
                                          f"{words}\n"


@pytest.mark.parametrize("command", ["inspect", "eval", "bench"])
def test_a_finished_run_whose_recorded_output_is_gone_does_not_name_an_older_output_out_name(tmp_path, capsys,
                                                                                            monkeypatch, command):
    """T3 stop 51: `run recipes/toy-pixart.yaml --out out/tp4 --resume ...`, `rm -rf out/tp4`, then `inspect
    runs/toy-pixart` said 'the output of that run is out/toy-pixart: dit-compress inspect out/toy-pixart', an
    older run's output (run_output fell back to out/NAME whenever the recorded one was missing), never that
    out/tp4 is gone. Where finished.json records an output, only that one is the run's; out/NAME is named
    only where it records none, or beside, as there, where it records one gone (R3 stop 51: a project moved
    or copied elsewhere, its finished.json's absolute path gone, has its output at out/NAME)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "toy-pixart").mkdir(parents=True)  # an earlier run's output, as is_output reads
    (tmp_path / "out" / "toy-pixart" / "config.json").write_text('{"compression": {}}')
    folder = tmp_path / "runs" / "toy-pixart"
    (folder / "stages" / "0-svd").mkdir(parents=True)
    (folder / "stages" / "0-svd" / "state.json").write_text("{}")
    (folder / "stages" / "finished.json").write_text(json.dumps({"out": str(tmp_path / "out" / "tp4")}))
    assert main([command, "runs/toy-pixart"]) == 2
    assert capsys.readouterr().err == (
        f"dit-compress {command}: error: runs/toy-pixart is the run folder of a finished run, but its output out/tp4 is gone "
        f"(out/toy-pixart is there: an older run's output, or this one's moved: dit-compress {command} out/toy-pixart): "
        "rerun its recipe, unchanged, with --resume to write it again from the stages the run kept (dit-compress run "
        f"RECIPE --resume --out out/tp4), then dit-compress {command} out/tp4\n")
    (folder / "stages" / "finished.json").write_text("{}")  # records none: out/NAME, as before
    assert main([command, "runs/toy-pixart"]) == 2
    assert "the output of that run is out/toy-pixart: " in capsys.readouterr().err
