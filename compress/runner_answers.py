"""The followers' answers to rank 0 in a run of several processes (runner_ranks: rank 0 runs the
passes and hands the data-parallel ones over): each follower says in its own file of the run folder
(`ANSWER`-N) to the rank 0 it follows whether it runs what rank 0 runs (`check_same_run`), the step
it is ready for, that it stopped (why) or was interrupted, or that it finished its part (`done`: its
process may be gone from then on); rank 0 reads them before each pass and
waits for them before a data-parallel one, and names the follower a failed collective lost (`ended`).
Imports no torch."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from compress.errors import UserError
from compress.runner_ranks import (HANDOFF, TOKEN, PeerLost, alive, is_follower, launch_key, main_gone, peer_lost,
                                   rank, read_json, wait_for_main, world_size)
from compress.runner_ranks_words import WORDS, same_as_rank_0, short as _short

ANSWER = ".dit-compress.rank"  # + "-N": in the run folder, follower N's answer to rank 0
PREPARED = "prepared"  # the step of a follower ready to run the data-parallel passes
FIND_FOLLOWERS_S = 1800.0  # how long rank 0 waits for the followers' answers (a process group's own wait)
DONE_S = 10.0  # how long rank 0, its run finished, waits for a follower's done before it leaves the files be
# in rank 0's records under --resume (runner_prepare): the index of the last pass whose saved stage it continues
# from, None where it runs them all; a follower's checks ask nothing of the passes done (`resumes_after`)
RESUMES_AFTER = "resumes after"


def check_same_run(run_dir: Path, about: dict, step: str, poll: float = 0.5, main: str | None = None) -> str:
    """A follower, before it computes: waits for a record of rank 0 that carries every key of
    `about` and refuses, in one line naming the first difference, when rank 0's differs. Either way
    it answers rank 0 (`answer`: ready for `step`, or stopped and why): rank 0 waits for that before
    a data-parallel pass, since it could not tell a refusing follower from a slow one there. The
    token of that rank 0 (the one to follow: `main`, once known)."""
    # a rank 0 of an older dit-compress writes no `version`: said at once, not after STALE_S
    got = wait_for_main(run_dir, lambda record: all(k in record for k in about) or "version" not in record, poll,
                        main=main)
    if "version" not in got:
        refusal = (f"rank {rank()} runs dit-compress {about.get('version', '')} and rank 0 an older one: every "
                   "process of a launch must run the same version").replace("  ", " ")
        answer(run_dir, got["token"], stopped=refusal)
        raise UserError(refusal)
    for k, mine in about.items():
        theirs, mine = got[k], json.loads(json.dumps(mine, default=str))  # as rank 0's went through the file
        if not same_as_rank_0(k, theirs, mine):  # a --teacher-config as the file it names
            said = WORDS[k](theirs, mine) if k in WORDS else f"{k} is {_short(theirs)} on rank 0, {_short(mine)} here"
            refusal = (f"rank {rank()} does not run what rank 0 runs ({said}): every process of a launch must "
                       "run the same recipe with the same --set, --teacher, --teacher-config and --resume, and "
                       "see the same teacher and calibration files")
            answer(run_dir, got["token"], stopped=refusal)
            raise UserError(refusal)
    answer(run_dir, got["token"], ready=step)
    return got["token"]


def resumes_after(run_dir: Path, main: str | None, poll: float = 0.5) -> int | None:
    """A follower under --resume: the index of the last pass rank 0 (token `main`) continues after, None
    where it runs every pass, as rank 0's record says once it has read the run folder (RESUMES_AFTER):
    a follower reads no saved stage itself, and rank 0 alone knows which it keeps."""
    return wait_for_main(run_dir, lambda record: RESUMES_AFTER in record, poll, main=main)[RESUMES_AFTER]


def answer(run_dir: Path, main: str, **how) -> None:
    """A follower to rank 0 (whose token is `main`: never an earlier launch's rank 0): `ready` (the
    step it reached), `stopped` (why, in one line), `interrupted`, or `done` (its part finished, as it
    ends: Runner._follow). A run folder it cannot write leaves rank 0 to wait FIND_FOLLOWERS_S, and
    say so."""
    record = {"main": main, "token": TOKEN, "rank": rank(), "host": socket.gethostname(), "pid": os.getpid(), **how}
    path = Path(run_dir) / f"{ANSWER}-{rank()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


@contextmanager
def following(run_dir: Path):
    """A follower while it runs: when it ends on an exception after answering rank 0, its answer
    says it stopped and why, so rank 0 stops instead of waiting for it; on a requested stop (a Ctrl-C,
    a stop signal: the whole launch gets it; rank 0's stop) that it was interrupted, which is no
    failure of this rank to report; nothing where a collective lost another process (`ended` names it)."""
    try:
        yield
    except BaseException as e:
        record = read_json(Path(run_dir) / f"{ANSWER}-{rank()}")
        # (a collective that lost another process: that one's end, not this one's)
        if record is not None and record.get("token") == TOKEN and not record.get("stopped") and not peer_lost(e):
            if _requested(e):
                answer(run_dir, record["main"], interrupted=True)
            else:
                answer(run_dir, record["main"], stopped=next((line for line in str(e).splitlines() if line.strip()),
                                                             type(e).__name__))
        raise


def _requested(e: BaseException) -> bool:
    """A stop asked for (a Ctrl-C, a stop signal, max_steps_this_run, rank 0's stop: UserErrors
    without a label), not an error."""
    return isinstance(e, KeyboardInterrupt) or (isinstance(e, UserError) and e.label == "")


def wait_for_followers(run_dir: Path, poll: float = 0.5, limit_s: float | None = None) -> None:
    """Rank 0, before it hands off a data-parallel pass: every follower answered that it is ready
    (`PREPARED`); a one-line UserError when one stopped (`check_followers`) or when some have not
    answered within `limit_s` (default FIND_FOLLOWERS_S: a node whose --run-dir is another folder)."""
    limit_s = FIND_FOLLOWERS_S if limit_s is None else limit_s
    start = time.monotonic()
    while True:
        got = check_followers(run_dir)
        if said := _interrupted(got):
            raise UserError(f"{said} before a data-parallel pass: start the launch again with --resume")
        waiting = [r for r in _followers() if got.get(r, {}).get("ready") != PREPARED]
        if not waiting:
            return
        if time.monotonic() - start > limit_s:
            raise UserError(f"rank {', '.join(map(str, waiting))} of this launch did not answer in {run_dir} in "
                            f"{limit_s / 60:.0f} min: every node must see the same --run-dir (see their messages)")
        time.sleep(poll)


def check_followers(run_dir: Path) -> dict:
    """Rank 0, without waiting: the followers' answers to it so far {rank: answer}; a one-line
    UserError when one stopped (a refusal says why), so rank 0 stops before it computes more."""
    got = {r: read_json(Path(run_dir) / f"{ANSWER}-{r}") for r in _followers()}
    got = {r: a for r, a in got.items() if a is not None and a.get("main") == TOKEN}  # to this process
    for r, a in sorted(got.items()):
        if a.get("stopped"):
            raise UserError(f"rank {r} of this launch stopped: {a['stopped']}")
    return got


def _interrupted(answers: dict) -> str | None:
    """'rank N of this launch was interrupted (...)' for the first follower whose answer says so
    (`following`: a Ctrl-C or a stop signal, no failure of its own), else None."""
    gone = [r for r, a in sorted(answers.items()) if a.get("interrupted")]
    return f"rank {gone[0]} of this launch was interrupted (a Ctrl-C or a stop signal)" if gone else None


def ended(run_dir: Path, main: str | None = None) -> UserError:
    """Who of the launch ended, as the error to raise where a collective failed (`peer_lost`). A
    follower: what rank 0's hand-off file says of the rank 0 it follows (token `main`; `main_gone`,
    the words `wait_for_main` raises for the same file), else that another process ended. Rank 0: a
    follower that said why it stopped (`check_followers`), that was interrupted, or whose process is
    gone on this host, else 'a follower'; its words leave out what to do (its run folder says that)."""
    if is_follower():
        record = read_json(Path(run_dir) / HANDOFF)
        ours = record is not None and record.get("launch") == launch_key()
        lost = main_gone(record, main or record.get("token")) if ours else None
        return lost or PeerLost("another process of this launch ended without a word (killed?); start the launch "
                                "again with --resume")
    answers, lost = _gone(run_dir)  # (an interrupted one's answer, next: on any host)
    return lost or PeerLost(_interrupted(answers) or "a follower of this launch ended without a word (killed?)")


def follower_ended(run_dir: Path) -> UserError | None:
    """Rank 0, where a stop signal reached it (a launcher stops the other processes when one ends): the
    follower that stopped on its error (its answer says why) or whose process is gone on this host
    without a word (killed), as the error to say in place of 'interrupted'; None where none did (a
    Ctrl-C of the whole launch: the followers answer interrupted, or done where they had finished)."""
    return _gone(run_dir)[1]


def _gone(run_dir: Path) -> tuple[dict, UserError | None]:
    """(the followers' answers to this rank 0, the first that stopped or whose process is gone here
    without an answer saying interrupted or done, as an error; None where none)."""
    try:
        answers = check_followers(run_dir)
    except UserError as e:  # one that said why it stopped
        return {}, e
    here = socket.gethostname()
    dead = [r for r, a in sorted(answers.items())
            if a.get("host") == here and not (a.get("interrupted") or a.get("done")) and not alive(a.get("pid"))]
    return answers, PeerLost(f"rank {dead[0]} of this launch ended without a word (killed?)") if dead else None


def _followers() -> range:
    return range(1, world_size())


def remove_when_done(run_dir: Path, poll: float = 0.2, limit_s: float | None = None) -> None:
    """Rank 0, its run finished (under the run folder's lock, its heartbeat stopped): the hand-off file
    and the followers' answers removed once every follower answered done (`answer`: after its last read
    of the hand-off file), which nothing reads after a finished run (a later launch writes its own, and
    its processes take none of this one's). Waits up to `limit_s` (DONE_S) for a follower that answered
    but is not done yet (its last pass ending, or reading the last hand-off); left where one has not
    answered at all (it may still look for rank 0's record), stopped, was interrupted or is not done. With
    them the answers of ranks this launch has none of (`_beyond_world`: an earlier larger launch's)."""
    limit_s = DONE_S if limit_s is None else limit_s
    run_dir, start = Path(run_dir), time.monotonic()
    while True:
        try:
            got = check_followers(run_dir)
        except UserError:  # one stopped: its answer says why
            return
        if any(r not in got or got[r].get("stopped") or got[r].get("interrupted") for r in _followers()):
            return
        if all(got[r].get("done") for r in _followers()):
            break
        if time.monotonic() - start > limit_s:
            return
        time.sleep(poll)
    for name in [*(f"{ANSWER}-{r}" for r in _followers()), HANDOFF, *_beyond_world(run_dir)]:
        try:
            (run_dir / name).unlink()
        except OSError:  # gone, or a folder it cannot write: left as it is
            pass


def _beyond_world(run_dir: Path) -> list[str]:
    """The answer files in `run_dir` of ranks at or past this launch's world size: an earlier launch's of
    more processes (one killed before its rank 0 removed them), which nothing reads: this rank 0 reads
    its followers' (`_followers`), a follower only its own (`following`), and a later launch's rank 0
    only those to it (`check_followers`: their `main` its token); no other launch's follower writes here
    while this rank 0 holds the run folder (each answers only the rank 0 of its launch)."""
    try:
        names = [p.name for p in Path(run_dir).iterdir()]
    except OSError:
        return []
    ranks = [re.fullmatch(rf"{re.escape(ANSWER)}-(\d+)", name) for name in names]
    return sorted(m.group(0) for m in ranks if m and int(m.group(1)) >= world_size())
