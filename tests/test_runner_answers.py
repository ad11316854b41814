"""The followers' answers to rank 0 in a run of several processes: whether a follower runs what rank
0 runs, that it is ready, stopped or was interrupted, and who a failed collective lost
(compress/runner_answers.py)."""

from __future__ import annotations

import json
import threading

import pytest

from compress.errors import UserError
from compress.runner_answers import (ANSWER, PREPARED, answer, check_followers, check_same_run, ended,
                                     follower_ended, following, wait_for_followers)
from compress.runner_ranks import (TOKEN, MainStopped, PeerLost, announce, hand_off, peer_lost,
                                   wait_for_hand_off)
from tests.ranks_helpers import RECIPE, SVD_ONLY, dead_pid, handed, launch_env, runners


@pytest.fixture
def launch(monkeypatch):
    return launch_env(monkeypatch)


@pytest.mark.parametrize("sets, said", [
    (["calibration.seed=7"], "calibration.seed is 0 on rank 0, 7 here"),
    (["passes.1.distill.lr=0.002"], "passes.1.distill.lr is 0.0005 on rank 0, 0.002 here"),
    (["passes.1.distill.steps=6"], "passes.1.distill.steps is 2 on rank 0, 6 here"),
])
def test_a_follower_that_reads_the_recipe_otherwise_refuses_before_it_computes_and_rank_0_stops(
        tmp_path, launch, monkeypatch, sets, said):
    """Before, a follower run with another --set (seed, lr, steps) joined rank 0 silently: its teacher
    samples went under another cache key (rank 0 trained on half of them), or it trained another
    student (the output's recipe.yaml said rank 0's lr), or rank 0 hung after its last step."""
    main, follower = runners(tmp_path, monkeypatch, sets)
    announce(tmp_path / "run", main.about)  # rank 0, as Runner.run starts (runner_ranks.leading)
    with pytest.raises(UserError, match=f"rank 1 does not run what rank 0 runs \\({said}\\): every process"):
        follower.run()
    monkeypatch.setenv("RANK", "0")  # rank 0 reads the answer
    with pytest.raises(UserError, match=f"rank 1 of this launch stopped: rank 1 does "
                                        f"not run what rank 0 runs \\({said}\\)"):
        wait_for_followers(tmp_path / "run", poll=0.01, limit_s=5)  # not waiting for a process group


def test_a_follower_that_reads_other_teacher_or_prompt_files_refuses(tmp_path, launch):
    """The same recipe on another node may read another prompt file or teacher: compared once both
    are prepared (the fingerprint keys the caches)."""
    prepared = {"teacher": {"source": "/p", "config": None, "checksum": "a"},
                "inputs": {"prompts": "p1", "pipeline": {"vae/x": "1"}}, "fingerprint": "f1"}
    announce(tmp_path, dict(prepared, version="1"))  # rank 0's records carry its version from the first on
    check_same_run(tmp_path, prepared, PREPARED, poll=0.01)
    assert json.loads((tmp_path / f"{ANSWER}-0").read_text())["ready"] == PREPARED
    for change, said in ((dict(inputs={"prompts": "p2", "pipeline": {"vae/x": "1"}}), "calibration prompts read"),
                         (dict(inputs={"prompts": "p1", "pipeline": {"vae/x": "2"}}), "pipeline's vae/x differ"),
                         (dict(teacher={"source": "/q", "config": None, "checksum": "a"}), "teacher is /p on rank 0"),
                         (dict(fingerprint="f2"), "fingerprint differs")):
        with pytest.raises(UserError, match=said):
            check_same_run(tmp_path, dict(prepared, **change), PREPARED, poll=0.01)


def test_a_follower_given_rank_0s_teacher_config_by_another_name_runs(tmp_path, launch, monkeypatch):
    """--teacher-config (as given, and in the teacher identity) was compared with rank 0's as a string:
    a follower given cfg/config.json where rank 0 was given cfg (or a link to it) refused, as
    'another --teacher-config'; the same file is the same config (runner_ranks_words.same_as_rank_0),
    as --resume compares it. Another config file still refuses."""
    monkeypatch.chdir(tmp_path)
    for folder, held in (("cfg", "{}"), ("other", '{"norm_eps": 1e-05}')):  # (a copy is the same config)
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(held)
    (tmp_path / "link").symlink_to(tmp_path / "cfg")

    def about(config):
        named = str((tmp_path / config).resolve())  # runner_teacher_id.named_teacher's
        return {"--teacher-config": config, "teacher": {"source": "/p", "config": named, "checksum": "a"}}

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    announce(run_dir, dict(about("cfg"), version="1"))
    for given in ("cfg/config.json", "link"):
        check_same_run(run_dir, about(given), PREPARED, poll=0.01)
    with pytest.raises(UserError, match=r"\(--teacher-config is 'cfg' on rank 0, 'other' here\)"):
        check_same_run(run_dir, about("other"), PREPARED, poll=0.01)
    with pytest.raises(UserError, match=f"--teacher-config is {tmp_path / 'cfg'} on rank 0, {tmp_path / 'other'} here"):
        check_same_run(run_dir, {"teacher": about("other")["teacher"]}, PREPARED, poll=0.01)


def test_rank_0_waits_for_its_followers_answers_only(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    answer(tmp_path, TOKEN, ready=PREPARED)
    monkeypatch.setenv("RANK", "2")
    answer(tmp_path, "an earlier rank 0", ready=PREPARED)  # not to this rank 0
    with pytest.raises(UserError, match=r"rank 2 of this launch did not answer in .* in 0 min: every node must"):
        wait_for_followers(tmp_path, poll=0.01, limit_s=0.1)
    answer(tmp_path, TOKEN, ready="recipe")
    threading.Timer(0.2, answer, (tmp_path, TOKEN), {"ready": PREPARED}).start()
    wait_for_followers(tmp_path, poll=0.01, limit_s=5)
    with pytest.raises(RuntimeError):
        with following(tmp_path):
            raise RuntimeError("no space left")
    with pytest.raises(UserError, match="rank 2 of this launch stopped: no space left"):
        wait_for_followers(tmp_path, poll=0.01, limit_s=5)


def test_a_follower_says_in_one_line_where_only_one_side_samples_a_pipeline():
    from compress.runner_ranks_words import WORDS

    assert WORDS["inputs"](None, {"prompts": "a", "pipeline": {}}) == (
        "the calibration samples a pipeline here, not on rank 0 (the teacher folder holds other files)")
    assert "on rank 0, not here" in WORDS["inputs"]({"prompts": "a"}, None)


def test_a_follower_of_a_rank_0_of_an_older_version_refuses_at_once(tmp_path, launch):
    """A rank 0 of an older dit-compress writes no `version` (nor a recipe): the follower waited for a
    record that never came and said, after STALE_S, that rank 0 had stopped."""
    handed(tmp_path, **{"pass": -1})
    with pytest.raises(UserError, match="runs dit-compress 9 and rank 0 an older one"):
        check_same_run(tmp_path, {"recipe": {}, "version": "9"}, "recipe", poll=0.01)
    assert "older one" in json.loads((tmp_path / f"{ANSWER}-0").read_text())["stopped"]


@pytest.mark.parametrize("follower, who", [
    ("killed here", "rank 1 of this launch ended without a word (killed?)"),
    ("unknown", "a follower of this launch ended without a word (killed?)"),
    ("interrupted", "rank 1 of this launch was interrupted (a Ctrl-C or a stop signal)"),
])
def test_rank_0_says_in_one_line_which_follower_a_failed_collective_lost(tmp_path, monkeypatch, capsys, follower,
                                                                          who):
    """A follower killed (kill -9) in distill gave rank 0 forty lines of gloo's 'Connection closed by
    peer' traceback: one line naming the rank (its answer's pid is gone on this host; 'a follower'
    when it cannot tell) and what the run folder keeps for --resume. One Ctrl-C'd (or sent a stop
    signal alone: its answer says interrupted) was said to have 'ended without a word (killed?)'."""
    from compress.cli import main
    from compress.passes import svd
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dir = tmp_path / "run"

    def peer_gone(self, model, ctx):
        if follower != "unknown":
            monkeypatch.setenv("RANK", "1")
            answer(run_dir, TOKEN, **({"interrupted": True} if follower == "interrupted" else {"ready": PREPARED}))
            monkeypatch.setenv("RANK", "0")
            record = json.loads((run_dir / f"{ANSWER}-1").read_text())
            (run_dir / f"{ANSWER}-1").write_text(json.dumps(dict(record, pid=dead_pid())))
        raise RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:21182. This is typically caused by a remote worker crashing.")

    monkeypatch.setattr(svd.SVDPass, "run", peer_gone)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"dit-compress run: error: {tmp_path / 'r.yaml'}:6: pass 2/2 (svd): {who}; "
        f"{run_dir} keeps its work (1 of 2 passes done): --resume continues from pass 2 (whose keys may change)")


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), MainStopped("rank 0 of this launch stopped: see its message")])
def test_a_follower_stopped_on_request_is_not_named_as_the_launchs_failure(tmp_path, monkeypatch, stop):
    """A Ctrl-C of the whole torchrun: rank 0 said 'interrupted; rank 1 of this launch stopped:
    KeyboardInterrupt', as if rank 1 had failed. A requested stop is answered as one: rank 0 names
    no follower for it, but does not wait before a data-parallel pass for one that will not come."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    answer(tmp_path, TOKEN, ready=PREPARED)
    with pytest.raises(type(stop)):
        with following(tmp_path):
            raise stop
    monkeypatch.setenv("RANK", "0")
    assert "stopped" not in json.loads((tmp_path / f"{ANSWER}-1").read_text())
    assert check_followers(tmp_path)[1]["interrupted"] is True
    with pytest.raises(UserError, match="rank 1 of this launch was interrupted .* with --resume"):
        wait_for_followers(tmp_path, poll=0.01, limit_s=5)


def test_a_follower_names_rank_0_where_a_collective_lost_it_here(tmp_path, launch, monkeypatch):
    """A follower whose collective failed says rank 0 ended where its pid is gone on this host, and
    does not answer the failure as its own reason (rank 0 would name the wrong rank)."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    handed(tmp_path, pid=dead_pid())
    assert str(ended(tmp_path)).startswith("rank 0 of this launch (pid ")
    handed(tmp_path)  # rank 0 alive: another follower ended
    assert str(ended(tmp_path)) == ("another process of this launch ended without a word (killed?); start the launch "
                                   "again with --resume")
    answer(tmp_path, TOKEN, ready=PREPARED)
    lost = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:21182")
    assert peer_lost(lost) and not peer_lost(RuntimeError("CUDA error: an illegal memory access"))
    with pytest.raises(RuntimeError):
        with following(tmp_path):
            raise lost
    assert json.loads((tmp_path / f"{ANSWER}-2").read_text())["ready"] == PREPARED


@pytest.mark.parametrize("left, error, said", [
    (dict(stopped=True), MainStopped, "rank 0 of this launch stopped: see its message"),
    (dict(token="relaunched"), PeerLost, r"rank 0 of this launch \(.*\) ended: another process \(pid \d+\) now writes"),
    ("killed", PeerLost, r"rank 0 of this launch \(pid \d+\) ended without a word \(killed\?\): start the launch"),
])
def test_a_follower_whose_collective_failed_says_of_its_rank_0_what_its_wait_says(tmp_path, launch, monkeypatch,
                                                                                    left, error, said):
    """A follower whose collective failed read only whether rank 0's pid was gone on this host: a
    rank 0 that stopped on its error (its file marked stopped; it says why) was 'rank 0 ... ended
    without a word (killed?)', and a relaunch's rank 0 now writing the file 'another process of this
    launch ended'. It says what its wait for a hand-off says of the same file (`main_gone`)."""
    from compress.runner import Runner

    main, follower = runners(tmp_path, monkeypatch, [])
    run_dir = tmp_path / "run"
    announce(run_dir, main.about)  # rank 0 (this process, as in the other tests), as Runner.run starts

    def collective_fails(self):  # the follower, on its way: rank 0's file changes, then a collective fails
        handed(run_dir, **(dict(pid=dead_pid()) if left == "killed" else left))
        raise RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:21182")

    monkeypatch.setattr(Runner, "prepare", collective_fails)
    with pytest.raises(error, match=said) as lost:
        follower.run()
    with pytest.raises(error) as waited:
        wait_for_hand_off(run_dir, -1, poll=0.01, find_main_s=5, main=TOKEN)
    assert str(lost.value).endswith(str(waited.value))  # (the runner's line names what it was doing first)
    assert json.loads((run_dir / f"{ANSWER}-1").read_text())["ready"] == "recipe"  # no failure of its own


@pytest.mark.parametrize("follower", ["killed", "not reaped", "refused", "interrupted", "finished", "unknown"])
def test_rank_0_stopped_by_the_launcher_after_a_follower_ended_names_it_not_an_interrupt(
        tmp_path, monkeypatch, capsys, follower):
    """A follower killed (or refusing another --set) while rank 0 ran svd: the launcher SIGTERMed rank
    0, which said 'interrupted; ...' (exit 130), or 'interrupted; rank 1 of this launch stopped: ...',
    as if the launch had been Ctrl-C'd. It names the follower and what the run folder keeps; a Ctrl-C
    of the whole launch (the followers answer interrupted), or one it cannot tell, stays 'interrupted'.
    So does one after a follower finished its part and exited (an svd-only recipe; rank 0's export):
    it was said to have 'ended without a word (killed?)', exit 1."""
    from compress.cli import main
    from compress.passes import svd
    from tests.ranks_helpers import zombie
    from tests.runner_helpers import pixart_runner

    pixart_runner(tmp_path, monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dir = tmp_path / "run"
    refusal = "rank 1 does not run what rank 0 runs (calibration.seed is 0 on rank 0, 7 here): every process"
    how = {"killed": {"ready": PREPARED}, "not reaped": {"ready": PREPARED}, "refused": {"stopped": refusal},
           "interrupted": {"interrupted": True}, "finished": {"done": True}}

    def signalled(self, model, ctx):
        if follower in how:
            monkeypatch.setenv("RANK", "1")
            answer(run_dir, TOKEN, **how[follower])
            monkeypatch.setenv("RANK", "0")
        if follower in ("killed", "not reaped", "finished"):  # its process gone, or not reaped by its launcher yet
            record = json.loads((run_dir / f"{ANSWER}-1").read_text())
            (run_dir / f"{ANSWER}-1").write_text(json.dumps(dict(record, pid=gone)))
        raise KeyboardInterrupt("signal 15")  # runner_setup.sigterm_as_interrupt: the launcher's SIGTERM

    monkeypatch.setattr(svd.SVDPass, "run", signalled)
    capsys.readouterr()
    with zombie() as pid:
        gone = pid if follower == "not reaped" else dead_pid()
        status = main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    kept = f"; {run_dir} keeps its work (1 of 2 passes done): rerun with --resume to continue"
    said = {"killed": "rank 1 of this launch ended without a word (killed?)",
            "not reaped": "rank 1 of this launch ended without a word (killed?)",
            "refused": f"rank 1 of this launch stopped: {refusal}"}
    if follower in said:
        assert (status, err) == (1, f"dit-compress run: error: {tmp_path / 'r.yaml'}:6: pass 2/2 (svd): "
                                    f"{said[follower]}{kept}")
    else:
        assert (status, err) == (130, f"dit-compress: interrupted{kept}")


@pytest.mark.parametrize("recipe", [SVD_ONLY, RECIPE], ids=["no data-parallel pass", "after the last hand-off"])
def test_a_follower_that_finished_its_part_answers_done_and_rank_0_names_no_one_for_its_end(
        tmp_path, launch, monkeypatch, recipe):
    """A follower ends as soon as its part is done (no data-parallel pass: once it checked the run;
    else once rank 0 handed over none, before rank 0's export). Its last answer said 'ready' and its
    process was gone: a Ctrl-C of the launch then had rank 0 name it 'ended without a word (killed?)'
    and exit 1. It answers done as it ends, and rank 0 names no follower for that."""
    from types import SimpleNamespace

    from compress.runner import Runner

    main, follower = runners(tmp_path, monkeypatch, [], recipe=recipe)
    run_dir = tmp_path / "run"
    if recipe == RECIPE:  # prepared as rank 0 (not loaded: the test is about its end), which hands over no pass
        prepared = {"teacher": {"source": "/p", "config": None, "checksum": "a"}, "inputs": None, "fingerprint": "f"}
        monkeypatch.setattr(Runner, "prepare", lambda self: setattr(self, "ctx", SimpleNamespace()))
        monkeypatch.setattr(Runner, "_prepared_about", lambda self: prepared)
        hand_off(run_dir, None, None, dict(main.about, **prepared))
    else:
        announce(run_dir, main.about)  # rank 0, as Runner.run starts (the follower never loads: runners)
    assert follower.run() == tmp_path / "out"
    record = json.loads((run_dir / f"{ANSWER}-1").read_text())
    assert (record["done"], record["main"], record["rank"]) == (True, TOKEN, 1)
    monkeypatch.setenv("RANK", "0")
    (run_dir / f"{ANSWER}-1").write_text(json.dumps(dict(record, pid=dead_pid())))  # its process gone since
    assert follower_ended(run_dir) is None
    assert str(ended(run_dir)) == "a follower of this launch ended without a word (killed?)"  # not rank 1


@pytest.mark.parametrize("follower", ["done", "done late", "ready", "no answer"])
def test_rank_0_removes_the_hand_off_and_answers_as_its_run_finishes_once_every_follower_is_done(
        tmp_path, monkeypatch, follower):
    """A finished run of two processes left RUN/.dit-compress.handoff and RUN/.dit-compress.rank-1, which
    nothing reads after it (a later launch writes its own; its processes take none of this one's). Rank
    0 removes them as its run ends, under the run folder's lock, once every follower answered done
    (after its last read of the hand-off file; a done a moment later is waited for); a follower not
    done, or that has not answered (it may still read the hand-off file), leaves them."""
    import os
    import socket

    import compress.runner_answers as runner_answers
    from compress.passes import svd
    from compress.runner_ranks import HANDOFF
    from tests.runner_helpers import pixart_runner

    _, make, _ = pixart_runner(tmp_path, monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(runner_answers, "DONE_S", 1.0)
    run_dir, real_run, remove_when_done = tmp_path / "run", svd.SVDPass.run, runner_answers.remove_when_done

    def answered(**how):  # rank 1's answer to this rank 0, as its process writes it
        record = {"main": TOKEN, "token": "rank-1", "rank": 1, "host": socket.gethostname(), "pid": os.getpid()}
        (run_dir / f"{ANSWER}-1").write_text(json.dumps(dict(record, **how)))

    def run(self, model, ctx):  # while rank 0 runs its passes
        if follower != "no answer":
            answered(**({"done": True} if follower == "done" else {"ready": PREPARED}))
        return real_run(self, model, ctx)

    def late(run_dir_, **kwargs):  # rank 0 waits: its follower's done comes a moment later
        threading.Timer(0.3, lambda: answered(done=True)).start()
        return remove_when_done(run_dir_, **kwargs)

    monkeypatch.setattr(svd.SVDPass, "run", run)
    if follower == "done late":
        monkeypatch.setattr(runner_answers, "remove_when_done", late)
    assert make(tmp_path / "out").run() == tmp_path / "out"
    left = sorted(p.name for p in run_dir.iterdir() if p.name in (HANDOFF, f"{ANSWER}-1"))
    assert left == {"done": [], "done late": [], "ready": sorted([f"{ANSWER}-1", HANDOFF]),
                    "no answer": [HANDOFF]}[follower]



@pytest.mark.parametrize("follower", ["done", "ready"])
def test_rank_0_removes_the_answers_an_earlier_larger_launch_left_once_its_followers_are_done(
        tmp_path, monkeypatch, follower):
    """R2: a launch of 4 processes killed left RUN/.dit-compress.rank-2 and -3; a later launch of 2
    removed only rank 1's answer as it finished, so those stayed for good. Now rank 0 removes the answers
    of ranks at or past its world size too (nothing reads them: its followers read their own, it reads
    theirs, a later rank 0 only those to it), where it removes its own; a file being written (.tmp-PID)
    and anything else are left, and nothing is removed where a follower is not done."""
    import os
    import socket

    from compress.runner_answers import remove_when_done
    from compress.runner_ranks import HANDOFF

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = {"main": TOKEN, "token": "rank-1", "rank": 1, "host": socket.gethostname(), "pid": os.getpid()}
    (run_dir / f"{ANSWER}-1").write_text(json.dumps(dict(record, **{follower: True})))
    stale = [f"{ANSWER}-2", f"{ANSWER}-3", f"{ANSWER}-12"]  # the killed launch's, to its rank 0
    for name in stale:
        (run_dir / name).write_text(json.dumps(dict(record, main="an-earlier-rank-0", done=True)))
    kept = [f"{ANSWER}-3.tmp-123", f"{ANSWER}-x", "stages"]
    for name in [HANDOFF, *kept]:
        (run_dir / name).write_text("{}")
    remove_when_done(run_dir, poll=0.01, limit_s=0.05)
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == sorted(kept if follower == "done" else [*kept, *stale, f"{ANSWER}-1", HANDOFF])
