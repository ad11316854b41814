"""Executes a recipe pass by pass: stage checkpoints for --resume, atomic output.

run folder (survives interruption):  calib/<fingerprint>/...   stages/<i>-<pass>/ (student after pass i)
output folder (written last, atomically): the DESIGN.md layout.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import compress
from compress.errors import NumericError, UserError
from compress.io_atomic import CLI_OVERWRITE, OutputBusy
from compress.io_source import check_teacher_options
from compress.recipe_teacher_config import config_by, teacher_config_of
from compress.passes import build_passes
from compress.passes.base import predictions
from compress.passes.svd_checks import stamp_factorized
from compress.output_names import rerun_needs_overwrite
from compress.recipe import Recipe
from compress.report import console, param_count, results
from compress.report_teacher import blocks_before
from compress.runner_caches import clock_ns, finished_run, remove_unread_caches, unread_files
from compress.runner_checks import removal_note, warn_ran_notes
from compress.runner_folders import check_clear_of_teacher, interrupt_note
from compress.runner_export import mark_finished, output_files, output_report, recorded_teacher
from compress.runner_answers import (PREPARED, answer, check_followers, check_same_run, ended, follower_ended,
                                     following, wait_for_followers)
from compress.runner_stop_words import (AGAIN, EXPORT, RUN_AGAIN, disk_full, doing_words, kept_note, out_of_memory,
                                        peer_lost)
from compress.runner_prepare import prepare
from compress.runner_ranks import (PeerLost, announce, hand_off, is_follower, is_main_process, leading,
                                   several_processes, wait_for_hand_off)
from compress.runner_ranks import peer_lost as peer_lost_in
from compress.runner_setup import DTYPES, check_reference, locate, resolve_device, sigterm_as_interrupt
from compress.runner_heldout import check_kept, check_stage
from compress.runner_read_back import say_read_back
from compress.runner_restore import restore
from compress.runner_stages import drop_checked, drop_refused, handed_over, save_stage, stage_dir
from compress.runner_failures import HELDOUT, disk_full_words, is_out_of_memory
from compress.runner_memory import spill_short
from compress.runner_stream import models_for, tidy_scratch
from compress.stream_files import WeightsChanged
from compress.calib_store import Vanished


class Runner:
    def __init__(self, recipe: Recipe, out: Path, run_dir: Path, teacher: str | None = None,
                 teacher_config: str | None = None, resume: bool = False, overwrite: bool = False,
                 restart: bool = False):
        check_teacher_options(teacher, teacher_config)  # the CLI's too: before anything loads
        if resume and restart:
            raise UserError("--resume continues an interrupted run and --restart discards it: pass one of them")
        self.recipe, self.out, self.run_dir = recipe, Path(out).expanduser(), Path(run_dir).expanduser()
        # --teacher-config, else the recipe's teacher_config: (there: a UserError at its line otherwise)
        self.teacher_arg, self.teacher_config = teacher, teacher_config_of(recipe, teacher_config, teacher)
        self.config_by = config_by(recipe, teacher_config)  # how a refusal names it: the flag, or the key's line
        self.resume, self.overwrite, self.restart = resume, overwrite, restart
        self.run_dir_was = self.run_dir.is_dir()  # before the locks make it: --resume into no folder is said so
        self.doing = None  # what runs now (a phase in words, or a pass index), for an out-of-memory error
        self.followed = None  # a follower: the token of the rank 0 it follows (runner_ranks.wait_for_main)
        self.started_over = False  # the run folder's earlier stages and checkpoints discarded (runner_restore.restore)
        self.written = None  # the output folder, once complete (export): a Ctrl-C after it stops nothing
        self.device = resolve_device(recipe)
        # resident or streamed weights, in the recipe's compute dtype, on its device
        self.models = models_for(recipe.stream, self.run_dir, DTYPES[recipe.compute_dtype], self.device)
        # what every process of a launch must share (runner_answers.check_same_run): the recipe as
        # resolved (--set; the export aside: rank 0 alone writes it) and the options that change a result
        self.about = {"recipe": {k: v for k, v in recipe.raw.items() if k != "export"}, "--teacher": teacher,
                      "--teacher-config": teacher_config, "--resume": resume, "version": compress.__version__}

    # -- setup ------------------------------------------------------------------------------------
    def prepare(self):
        """Everything before the passes (runner_prepare): checks, the teacher loaded, the RunContext."""
        prepare(self)

    # -- run --------------------------------------------------------------------------------------
    def run(self) -> Path:
        """The passes, then the output (its folder returned); a Ctrl-C once the output is complete
        stops nothing (`_interrupted_after_output`)."""
        try:
            return self._held_run()
        except KeyboardInterrupt:
            if self.written is None:
                raise
            return self._interrupted_after_output()
        except BrokenPipeError:  # `run R | head -0`: stdout's reader gone as 'wrote OUT' is said; the output is complete
            if self.written is not None:
                mark_finished(self.run_dir, self.written)
            raise

    def _interrupted_after_output(self) -> Path:
        """A Ctrl-C (or SIGTERM) once the output was complete: only the run's last steps were left (its
        finished mark, releasing its locks), so it ends as a finished run, marked so (a rerun is not
        told to --resume it) and said in one line; `run` returns (status 0): the output is there."""
        from compress.report import note

        mark_finished(self.run_dir, self.written)
        note(f"interrupted after the output was written: {self.written} is complete")
        return self.written

    def _held_run(self) -> Path:
        from compress.runner_lock import hold_run, nested

        # an output or run folder in the teacher's refused before the locks make anything there, or clear
        # what killed runs left (.OUT.old-* put back), as the CLI refuses it (check_folders says it again)
        check_clear_of_teacher(self.out, self.teacher_arg or self.recipe.teacher, self.teacher_config, self.run_dir,
                               self.config_by)
        # the run and output folders held by this run alone (a second run refused before any check
        # or load), from the first step to the export's rename
        with sigterm_as_interrupt(), hold_run(self.run_dir, self.out), self._leading(nested):
            try:
                out = self._run()
            except Exception as e:
                if isinstance(e, WeightsChanged):  # the work so far is kept: say so, as for a full disk
                    raise WeightsChanged(f"{self._doing_words()}: {e}{self._kept()}") from None
                if isinstance(e, Vanished):  # a file of the run folder removed meanwhile: what is left
                    raise Vanished(f"{self._doing_words()}: {e}{self._kept(RUN_AGAIN)}") from None
                if is_out_of_memory(e):
                    raise out_of_memory(e, self.recipe, getattr(self, "passes", []), self.doing, self._kept(),
                                        spill_short(getattr(self, "activation_bytes", None), self.run_dir)) from None
                if isinstance(e, OutputBusy):  # a mount point as --out: the passes are saved, another --out takes them
                    raise OutputBusy(f"{e}{self._kept(elsewhere=e.inside)}", e.inside) from None
                if disk_full_words(e) is not None:
                    raise disk_full(e, self.recipe, self.doing, self.out, self.run_dir, self._kept()) from None
                if several_processes() and peer_lost_in(e):
                    lost = ended(self.run_dir, self.followed)
                    raise peer_lost(lost, self.recipe, self.doing, is_follower(), self._kept(AGAIN)) from None
                raise
            except KeyboardInterrupt:  # a stop signal: the launcher's, where a follower ended first?
                lost = self._follower_ended()
                if lost is not None:
                    raise lost from None
                raise
            finally:  # under the locks: no other run spills there yet
                if getattr(self, "ctx", None) is not None and is_main_process():  # the run folder is this run's
                    tidy_scratch(self.run_dir)
            mark_finished(self.run_dir, out)
            return out

    def _leading(self, nested):
        """Rank 0 of a launch: its hand-off file says it runs, and what (runner_ranks.leading); where
        --out and --run-dir nest, nothing is written before check_folders refuses them."""
        if several_processes() and not is_follower() and not nested(self.out, self.run_dir):
            return leading(self.run_dir, self.about)  # the other ranks wait for its hand-offs
        return nullcontext()

    def _prepared_about(self) -> dict:
        """What the processes of a launch must share once prepared: the teacher and calibration
        inputs read (the same recipe on another node may read other files) and the fingerprint that
        keys the calibration and teacher-sample caches."""
        return {"teacher": self.identity, "inputs": self.inputs_id, "fingerprint": self.ctx.fingerprint}

    def _run(self) -> Path:
        if is_follower():
            return self._follow()
        self.prepare()
        if several_processes():  # the followers compare theirs before they compute
            self.about.update(self._prepared_about())
            announce(self.run_dir, self.about)
        self.doing = "making the student (a copy of the teacher, or the last saved pass's)"
        # an interrupted run's caches are its saved work too: kept unless --restart (restore unmarks the folder)
        # (what it measured under another fingerprint: refused in prepare, by check_measured_for_another)
        self.keeps_caches = not self.restart and not finished_run(self.run_dir)
        start, student = restore(self)
        self._remove_unread_caches(start)  # what it keeps decided: what no run of this recipe reads goes
        self.passes_from_ns, self.stats_read = clock_ns(self.run_dir), {}  # its file system's now; _note_read
        self.removed_by = []  # recipe lines of passes (this session) that removed blocks
        self.ctx.blocks = self.models.blocks  # streamed: the student's block loader
        self.doing = HELDOUT
        heldout = self.ctx.eval_inputs()
        with self.models.forwards(self.teacher):
            reference = predictions(self.teacher, self.adapter, heldout)
            check_reference(reference, self.recipe.compute_dtype,
                            lambda b: locate(self.teacher, self.adapter, heldout[b]))
        teacher_params = param_count(self.teacher)
        self._checked(check_kept, start, student, reference, heldout, teacher_params)
        drop_checked(self, self.student_stage)  # streamed: the stages before the one resumed from
        for i in range(start, len(self.passes)):
            self.doing = i
            if several_processes():  # a follower that refused: said before this pass computes
                check_followers(self.run_dir)
            if several_processes() and self.passes[i].data_parallel:  # the other ranks join it
                wait_for_followers(self.run_dir)  # all ready: none refused (one that did would leave it waiting)
                hand_off(self.run_dir, i, self.student_stage, self.about)
            student = self._stage(i, student, reference, heldout, teacher_params)
            self.student_stage = stage_dir(self, i)
        if several_processes():
            hand_off(self.run_dir, None, None, self.about)  # nothing more for the other ranks
        self._remove_unread_caches(len(self.passes), self.stats_read)  # each svd pass's model made: those of none go
        self.doing = EXPORT
        self.held_out = heldout, reference  # the exported weights' error is measured on them (runner_export)
        return self.export(student, teacher_params)

    def _remove_unread_caches(self, start: int, read: dict | None = None) -> None:
        """Rank 0: the run folder's caches that neither this run, from pass `start` on, nor a --resume of
        its recipe reads, deleted with a note (runner_caches; another teacher's or calibration's only with
        --restart, else named in a note at the first call); `read`: once every pass has run, the
        statistics its svd passes read in each stats cache folder (`_note_read`), the others there go. None
        where the run folder's last run before this one did not finish and this run is no --restart
        (`keeps_caches`): what it measured is kept for a rerun of its recipe, as its stop said."""
        if not is_main_process() or self.keeps_caches:
            return
        also = [f for cache, names in (read or {}).items() for f in unread_files(cache, names, self.passes_from_ns)]
        inputs = [self.inputs_cache] if self.inputs_cache is not None else []  # the sampled inputs it reads
        calls = getattr(self, "sampled_calls", None)  # their calls (None without sampling)
        remove_unread_caches(self.run_dir, self.ctx.fingerprint, self.recipe.raw["passes"], self.passes, start, also,
                             self.restart, read is None, inputs, calls() if calls else None)

    def _note_read(self, p) -> None:
        """The stats cache folder of the pass `p` that ran (an svd pass's StatsCache: its folder and the
        names it read back), added to `stats_read`."""
        cache = getattr(p, "cache", None)
        folder = getattr(cache, "directory", None)
        if folder is not None:
            self.stats_read.setdefault(Path(folder), set()).update(getattr(cache, "hits", ()))

    def _follow(self) -> Path:
        """A rank other than 0 of a distributed launch (runner_ranks): only the data-parallel passes,
        each from the student rank 0 hands over; nothing at all for a recipe without one. Refused
        before it computes when it would not run what rank 0 runs (runner_answers.check_same_run)."""
        with following(self.run_dir):  # rank 0 hears when it stops
            self.followed = main = check_same_run(self.run_dir, self.about, "recipe")  # its rank 0 from now on
            self.passes = build_passes(self.recipe)
            if any(p.data_parallel for p in self.passes):
                self._follow_passes(main)
            # its part done: its process gone from now on is no follower killed to rank 0 (runner_answers._gone)
            answer(self.run_dir, main, done=True)
            return self.out

    def _follow_passes(self, main: str) -> None:
        """A follower of the rank 0 whose token is `main`: prepared as it is, each data-parallel pass
        it hands over, until it hands over none."""
        self.prepare()
        check_same_run(self.run_dir, self._prepared_about(), PREPARED, main=main)
        self.removed_by, self.ctx.blocks, last = [], self.models.blocks, -1
        while (got := wait_for_hand_off(self.run_dir, last, main=main))["pass"] is not None:
            self.doing = last = got["pass"]
            self._run_pass(last, handed_over(self, got["stage"]))

    def interrupt_note(self) -> str:
        """What follows 'interrupted' after a Ctrl-C in `run` (runner_folders.interrupt_note): saved
        work in the run folder that --restart was about to discard is not offered to --resume, nor is
        another recipe's (it would be refused)."""
        passes = getattr(self, "passes", None) or build_passes(self.recipe)
        fingerprint = getattr(getattr(self, "ctx", None), "fingerprint", None)  # None before prepare
        calls = getattr(self, "sampled_calls", None)  # None before prepare, or without sampling
        return interrupt_note(self.run_dir, self.restart and not self.started_over, self.recipe.raw, passes,
                              fingerprint, calls() if calls else None, self.recipe,
                              getattr(self, "source", None) or self.teacher_arg or self.recipe.teacher,
                              self.teacher_config, self.config_by)

    def _follower_ended(self) -> UserError | None:
        """Rank 0 of a launch stopped by a signal: where a follower stopped on its error or was killed
        first (the launcher then stops the others), that follower, what ran and what the run folder
        keeps, in place of 'interrupted' (`runner_answers.follower_ended`); None otherwise (a Ctrl-C)."""
        if not several_processes() or is_follower():
            return None
        lost = follower_ended(self.run_dir)
        if lost is None:
            return None
        return PeerLost(f"{self._doing_words()}: {lost}{rerun_needs_overwrite(self.out, self.interrupt_note())}")

    def _doing_words(self) -> str:
        """The recipe line and pass running now ('r.yaml:12: pass 2/3 (svd)'), or the phase."""
        return doing_words(self.recipe, self.doing)

    def _kept(self, none_kept: str = "", elsewhere: Path | None = None) -> str:
        """'; RUN_DIR keeps its work (...): rerun with --resume' where this run's work is there, else
        `none_kept` (a lost peer's AGAIN); where the output folder is there (an earlier output this run's
        --overwrite had not replaced yet), that the rerun needs --overwrite too, as Ctrl-C's note says
        (output_names.rerun_needs_overwrite); for a rerun that names the output folder `elsewhere`
        instead, that folder ('... --resume only writes the output (with --out DIR/NAME)')."""
        note = kept_note(self.run_dir, self.recipe, getattr(self, "passes", []), self.doing, self.resume,
                         is_main_process(), getattr(getattr(self, "ctx", None), "fingerprint", None),
                         getattr(self, "sampled_calls", None))  # as interrupt_note: what a rerun reads back
        if elsewhere is not None:
            return f"{note} (with --out {elsewhere})" if note else none_kept
        return rerun_needs_overwrite(self.out, note or none_kept)

    def _stage(self, i: int, student, reference, heldout, teacher_params: int):
        """Pass i, its stage checkpoint, then its held-out error (printed and reported, and written to
        the stage): a run stopped during that check (minutes on a big model) keeps the pass, and
        --resume measures the error (runner_heldout.check_kept); a NaN/Inf there deletes the stage
        (runner_stages.drop_refused: --resume runs the pass again from the one before, kept till then)."""
        p, t0 = self.passes[i], time.perf_counter()
        console.print(f"[bold cyan]pass {i + 1}/{len(self.passes)}: {p.name}[/]")
        say_read_back(self, i, student)  # an svd pass: what an earlier run measured for it, read back
        student = self._run_pass(i, student)
        self._note_read(p)
        record = {"pass": p.name, "seconds": round(time.perf_counter() - t0, 3), "params": param_count(student),
                  "relative_error": None}  # None in the stage until measured
        if (base := p.against_base()) is not None:  # its own error against the chain's base (kd_teacher: base)
            record["kd_teacher"] = base
        self.ctx.report.setdefault("stages", []).append(record)
        save_stage(self, i, student, older=False)
        if is_main_process():
            p.stage_saved()
        self._checked(check_stage, student, record, reference, heldout, teacher_params)
        drop_checked(self, stage_dir(self, i))  # streamed: the stage before it, kept until now
        return student

    def _checked(self, check, *args) -> None:
        """runner_heldout's `check` of the stage of pass `self.doing`; where it refuses a student whose
        held-out prediction holds NaN/Inf ('...; change its settings and rerun with --resume'), that stage
        is deleted (runner_stages.drop_refused): --resume runs the pass again (from the stage before it),
        not measures the same NaN again."""
        try:
            check(self, *args)
        except NumericError:
            drop_refused(self, self.doing)
            raise

    def _run_pass(self, i: int, student):
        """Pass i; a UserError it raises names its recipe line, and when it is about blocks earlier
        passes removed (`removal_note`) says so (the model it sees is renumbered from 0); after a saved
        pass (i > 0), what the run folder keeps for --resume once the recipe is mended (`_kept`)."""
        spec, before = self.recipe.passes[i], self.adapter.block_counts(student)
        # from the recipe, not a counter: the same after --resume
        self.ctx.student_version = sum(p.changes_weights for p in self.passes[:i])
        try:
            student = self.passes[i].run(student, self.ctx)
        except UserError as e:
            if e.exit_code == UserError.exit_code and not isinstance(e, WeightsChanged):  # a mistake: say where
                path = self.recipe.path
                where = "" if str(e).startswith(f"{path}:") else f"{path}:{spec.line}: "
                note = removal_note(e, before, self.adapter.block_counts(self.teacher), self.removed_by)
                e.args = (f"{where}{e}{note}{self._kept() if i > 0 else ''}",)
            raise
        stamp_factorized(student, spec.loc.override or f"line {spec.line}")  # a later pass's refusal names it
        warn_ran_notes(self.passes[i], spec)  # what its run found likely not meant, at its recipe line
        if self.adapter.block_counts(student) != before:
            self.removed_by.append(spec.line)
        return student

    def export(self, student, teacher_params: int) -> Path:
        from compress.report_card import wrote_words

        if not is_main_process():  # rank 0 writes the output (the other ranks of a launch never get here)
            return self.out
        recorded = recorded_teacher(self)
        report = output_report(self, student, teacher_params, recorded)
        extra = {**recorded, "block_map": self.ctx.block_map}
        if self.ctx.block_map and (before := blocks_before(report)):  # the block map says only "at least"
            extra["teacher_blocks"] = before
        words = wrote_words(report, self.source)
        return self.models.save(student, self.out, dtype=DTYPES[self.recipe.export.dtype],
                                extra=extra, files=output_files(self, student, report), overwrite=self.overwrite,
                                overwrite_flag=CLI_OVERWRITE, on_written=lambda out: self._wrote(out, words))

    def _wrote(self, out: Path, words: str) -> None:
        """The output `out` complete, in place: recorded (`written`: a Ctrl-C from now on stops nothing)
        and said once, in one step with its rename (io_atomic.atomic_folder holds a Ctrl-C, SIGTERM, over
        the three: one that lands there is raised once the line is said)."""
        self.written = out
        # the run's result, on stdout (`run ... > log` keeps it); its progress and notes are on stderr
        results.print(f"[bold green]wrote[/] {out}  ({words})")
