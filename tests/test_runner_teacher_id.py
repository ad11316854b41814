"""Which teacher a run read, as --resume and a plain rerun compare it (compress/runner_teacher_id.py):
a --teacher-config by what it holds, else by the file it names, and the difference in words."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from compress.cli import main
from compress.runner_config_sum import CONFIG_SUM, config_read
from compress.runner_teacher_id import (FILES, as_compared, named_teacher, older_checksum, other_weights, same_teacher,
                                        teacher_change)
from tests.conftest import tiny_pixart
from tests.test_runner_folders_teacher import _ctrl_c_at_first_stats_save, _interrupted
from tests import test_runner_measured


interrupted = test_runner_measured.interrupted  # a fixture: a run stopped before it saved a pass


def test_a_recorded_teacher_config_is_compared_where_the_teacher_reads_one(tmp_path):
    """as_compared drops a recorded --teacher-config of a toy or folder teacher only; teacher_change
    says a --teacher-config not given in words."""
    (tmp_path / "t.safetensors").write_bytes(b"")
    for source, kept in (("toy:pixart", False), (str(tmp_path), False), (str(tmp_path / "t.safetensors"), True),
                         ("acme/pix", True), ("cfg", True)):
        teacher = {"source": source, "config": "/c/config.json", "checksum": "1"}
        assert as_compared(teacher) == (teacher if kept else {**teacher, "config": None})
    was = {"source": "a.safetensors", "config": None}
    assert teacher_change(was, {**was, "config": "cfg"}) == "--teacher-config was not given, now cfg"
    assert teacher_change({**was, "config": "cfg"}, was) == "--teacher-config was cfg, now not given"

def test_a_teacher_config_is_compared_by_the_file_it_names(tmp_path):
    """same_teacher: a --teacher-config given as a folder, the config.json it holds, a pipeline folder
    or its transformer/, or through a symlink, names one config (teacher_change and older_checksum agree);
    another file, one gone since (as written), or none given, is another."""
    for folder in ("a", "b", "pipe/transformer"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    was = {"source": "/t.safetensors", "config": str(tmp_path / "a" / "config.json"), "checksum": "1"}
    for same in ("a", "link", "link/config.json"):
        assert same_teacher(was, {**was, "config": str(tmp_path / same)})
    pipe = {**was, "config": str(tmp_path / "pipe")}
    assert same_teacher(pipe, {**was, "config": str(tmp_path / "pipe" / "transformer")})
    for other in ("b", "b/config.json", "gone", None):
        now = {**was, "config": other and str(tmp_path / other)}
        assert not same_teacher(was, now)
        assert teacher_change(was, now).startswith("--teacher-config was ")
    assert not same_teacher(was, {**was, "config": str(tmp_path / "a"), "checksum": "2"})
    assert teacher_change(was, {**was, "config": str(tmp_path / "a")}) == "/t.safetensors holds other weights or config"
    assert not same_teacher(was, {**was, "source": "/u.safetensors"})
    gone = {**was, "config": "/gone/config.json"}
    assert same_teacher(gone, dict(gone)) and not same_teacher(gone, {**gone, "config": "/gone"})
    assert older_checksum({**was, "checksum_of": "old"}, {**was, "config": str(tmp_path / "a"), "checksum_of": "new"})


def test_a_teacher_config_is_compared_by_what_it_holds_where_both_record_it(tmp_path):
    """named_teacher records CONFIG_SUM, a checksum of what the config file the teacher reads holds (its
    --teacher-config's, a folder's own, the one beside a single file; a toy's or a Hub id's: none), keys
    starting with '_', order and spacing aside. same_teacher compares it in the place of the path where
    both hold it: a copy elsewhere is the same config, one changed in place is not (teacher_change says
    so); an older record without it is compared by the file it names."""
    for folder, held in (("a", '{"norm_eps": 1e-06, "_diffusers_version": "0.30"}'),
                         ("copy", '{"_diffusers_version": "0.31",\n  "norm_eps": 1e-06}'), ("b", '{"norm_eps": 1e-05}')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(held)
    (tmp_path / "t.safetensors").write_bytes(b"x")
    a, copy, b = (named_teacher(str(tmp_path / "t.safetensors"), str(tmp_path / c)) for c in ("a", "copy", "b"))
    assert a[CONFIG_SUM] == copy[CONFIG_SUM] != b[CONFIG_SUM]
    assert same_teacher(a, copy) and not same_teacher(a, b)
    assert teacher_change(a, b) == f"--teacher-config was {tmp_path / 'a'}, now {tmp_path / 'b'}"
    assert teacher_change(a, dict(a, **{CONFIG_SUM: "0"})) == (
        f"--teacher-config {tmp_path / 'a'} changed since the run (its contents differ)")
    older = {k: v for k, v in a.items() if k != CONFIG_SUM}
    assert same_teacher(older, dict(a, **{CONFIG_SUM: "0"})) and not same_teacher(older, copy)
    assert config_read(str(tmp_path / "a"), None) == tmp_path / "a" / "config.json"  # a folder teacher's own
    assert config_read(str(tmp_path / "a" / "w.safetensors"), None) is None  # (not there)
    (tmp_path / "a" / "w.safetensors").write_bytes(b"x")
    assert config_read(str(tmp_path / "a" / "w.safetensors"), None) == tmp_path / "a" / "config.json"
    assert CONFIG_SUM not in named_teacher("toy:pixart", None) and CONFIG_SUM not in named_teacher("acme/t", None)
    folder = named_teacher(str(tmp_path / "a"), None)
    assert teacher_change(folder, dict(folder, **{CONFIG_SUM: "0"})) == (
        f"{tmp_path / 'a' / 'config.json'} changed since the run (its contents differ)")


def test_the_advice_fits_a_config_edited_in_place_or_another_teacher(tmp_path):
    """A config edited in place (the same file named, what it holds changed) was advised 'rerun with that
    teacher and --resume', which names nothing to change back: the advice is to undo the change to that
    file (named) and --resume, or --restart. Another teacher or --teacher-config named keeps its advice."""
    from compress.runner_teacher_id import edited_config, resume_advice

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(f'{{"norm_eps": {1e-06 if folder == "a" else 1e-05}}}')
    (tmp_path / "t.safetensors").write_bytes(b"x")
    a, b = (named_teacher(str(tmp_path / "t.safetensors"), str(tmp_path / c)) for c in ("a", "b"))
    edited = dict(a, **{CONFIG_SUM: "0"})
    file = tmp_path / "a" / "config.json"
    assert edited_config(edited, a) == str(file)
    assert resume_advice(edited, a, resume=False) == (
        f"undo the change to {file} and add --resume to continue, or add --restart to start over")
    assert resume_advice(edited, a, resume=True) == (
        f"undo the change to {file} and rerun with --resume, or rerun with --restart to start over")
    folder = named_teacher(str(tmp_path / "a"), None)  # a folder teacher's own config.json
    assert edited_config(dict(folder, **{CONFIG_SUM: "0"}), folder) == str(file)
    for other in (b, dict(a, source="/u.safetensors"), a):  # another --teacher-config, source; the same
        assert edited_config(a, other) is None
    assert resume_advice(a, b, resume=False) == (
        "add --restart to start over, or rerun with that teacher and --resume to continue")
    assert resume_advice(a, b, resume=True) == "rerun with --restart to start over"


def _copied(before: dict, **now) -> bool:
    return same_teacher(before, {**before, "source": "/b", **now})


def test_a_loaded_teacher_elsewhere_is_the_same_where_its_config_and_weights_are():
    """Once loaded: a teacher at another path is the same where the config file it reads holds the same and
    the checksum of its config and every byte of its weights is the same (no signature needed)."""
    at_a = {"source": "/a", "config": None, CONFIG_SUM: "c", "checksum": "w", "checksum_of": "every byte"}
    assert _copied(at_a) and not _copied(at_a, checksum="x") and not _copied(at_a, **{CONFIG_SUM: "d"})
    assert not _copied({**at_a, CONFIG_SUM: None}, **{CONFIG_SUM: None})  # a Hub id or toy: by its name


def test_an_outputs_refusal_of_plain_diffusers_is_no_part_of_its_identity(tmp_path):
    """A teacher that is an output (a chain) loads with quantization_config in its config (io_live); a run
    recorded before outputs carried it holds the checksum of its config without it: --resume takes it."""
    from diffusers.configuration_utils import FrozenDict

    from compress import load_transformer, save_compressed
    from compress.runner_teacher_id import teacher_identity
    from tests.conftest import factorize

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], rank=4), tmp_path / "out")
    model = load_transformer(out)
    now = teacher_identity(str(out), None, model, "w")
    model._internal_dict = FrozenDict({k: v for k, v in model.config.items() if k != "quantization_config"})
    assert teacher_identity(str(out), None, model, "w") == now


def test_a_byte_identical_copy_of_the_teacher_is_that_teacher(interrupted, capsys):
    """The tester's run: the teacher folder copied elsewhere, byte for byte, and named with --teacher over a
    run that saved no pass: refused as 'another teacher (was A, now B)', folders being compared by path. Now
    the same teacher (its config's checksum, the signature of its weight files before it loads, the checksum
    of every byte once loaded): a note says it moved, and what the run measured is read back."""
    run, args, loads = interrupted
    copy = run.parent / "copy"
    shutil.copytree(run.parent / "teacher", copy)
    assert main([*args, "--teacher", str(copy), "--resume"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert (f"note: the teacher moved from {run.parent / 'teacher'} to {copy} (its config and weights the same) "
            f"since {run} was written") in said, said
    assert "pass 1 (svd) finds block statistics (1 file) that an earlier run measured: it reads back" in said, said
    assert "another teacher" not in said


def test_a_copy_holding_other_weights_is_another_teacher(interrupted, capsys):
    """A folder of the same config (byte for byte) but other weights: still refused before it loads, saying
    so (it said only 'was A, now B', as for another teacher altogether)."""
    run, args, loads = interrupted
    other = run.parent / "other"
    tiny_pixart(seed=1).save_pretrained(other)
    assert (other / "config.json").read_bytes() == (run.parent / "teacher" / "config.json").read_bytes()
    assert main([*args, "--teacher", str(other)]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"measured with another teacher (was {run.parent / 'teacher'}, now {other} (the same config, other weights);" \
        in said, said
    assert loads == []


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_a_resharded_copy_of_the_teacher_is_that_teacher_and_other_tensors_are_not(interrupted, monkeypatch, capsys,
                                                                                     safe):
    """The teacher folder moved and re-saved in shards, every tensor the same: --resume refused it before it
    loaded ('measured with another teacher (was A, now B (the same config, other weights))'), its files'
    signatures (by file) differing. Now the tensors' digest (io_signature.tensors_digest, of .bin files too)
    tells it is that teacher: a note says it moved and what the run measured is read back. Shards of other
    tensors are still another teacher."""
    run, args, loads = interrupted
    if not safe:  # the run's teacher one .bin file, interrupted alike; moved, resharded as .bin
        shutil.rmtree(run.parent / "teacher")
        tiny_pixart().save_pretrained(run.parent / "teacher", safe_serialization=False)
        from compress.calib_stats import StatsCache

        real = StatsCache.save

        def stopped(self, name, stats):  # as `interrupted`'s: the first block statistics saved, then Ctrl-C
            real(self, name, stats)
            raise KeyboardInterrupt
        with monkeypatch.context() as m:
            m.setattr(StatsCache, "save", stopped)
            assert main([*args, "--restart"]) == 130
        capsys.readouterr()
    other = run.parent / "other"
    tiny_pixart(seed=1).save_pretrained(other, max_shard_size="30KB", safe_serialization=safe)
    said = _refused([*args, "--teacher", str(other), "--resume"], capsys)
    assert "another teacher" in said and "(the same config, other weights)" in said, said
    moved = run.parent / "moved"
    tiny_pixart().save_pretrained(moved, max_shard_size="30KB", safe_serialization=safe)
    assert len(list(moved.glob("*-of-*"))) > 1
    assert main([*args, "--teacher", str(moved), "--resume"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"note: the teacher moved from {run.parent / 'teacher'} to {moved} (its config and weights the same)" \
        in said, said
    assert re.search(r"pass 1 \(svd\) finds block statistics \(\d files?\) that an earlier run measured: it reads "
                     "back", said), said
    assert "another teacher" not in said


def _refused(args, capsys) -> str:
    assert main(args) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_copy_of_the_teacher_resumes_its_saved_passes(pixart, monkeypatch, capsys):
    """Over a saved pass: a plain rerun naming a byte-identical copy said 'for another teacher ... add
    --restart', and --resume refused it ('the teacher changed since'). Now it is offered --resume, which
    continues from the saved pass, keyed as the run was (a second copy too: the key is recorded)."""
    tmp_path, run, args = _interrupted(pixart, monkeypatch, capsys)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "teacher", copy)
    assert main([*args, "--teacher", str(copy)]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"dit-compress run: error: {run} holds an interrupted run of this recipe (1 of 2 passes done"), said
    assert said.endswith("add --resume to continue, or --restart to start over"), said
    fingerprint = json.loads((run / "stages" / "run.json").read_text())["fingerprint"]
    shutil.copytree(tmp_path / "teacher", tmp_path / "copy2")
    with monkeypatch.context() as m:
        _ctrl_c_at_first_stats_save(m)
        assert main([*args, "--teacher", str(copy), "--resume"]) == 130  # resumed, stopped again
        assert "the teacher moved from" in capsys.readouterr().err
        assert main([*args, "--teacher", str(tmp_path / "copy2"), "--resume"]) == 130
    assert json.loads((run / "stages" / "run.json").read_text())["fingerprint"] == fingerprint
    assert main([*args, "--teacher", str(tmp_path / "copy2"), "--resume"]) == 0
    assert "resum" in capsys.readouterr().err


def test_a_copy_elsewhere_of_the_same_config_and_other_weights_is_said_to_be_one():
    """teacher_change of two sources: '(the same config, other weights)' where the config files hold the same
    and the weights differ (once loaded: the checksum of every byte); not where the config differs, where the
    weights are the same, nor where they cannot be compared (an older checksum, no signature recorded)."""
    at_a = {"source": "/a", "config": None, CONFIG_SUM: "c", "checksum": "w", "checksum_of": "every byte"}
    at_b = {**at_a, "source": "/b", "checksum": "x"}
    assert teacher_change(at_a, at_b) == "was /a, now /b (the same config, other weights)"
    assert teacher_change(at_a, {**at_b, CONFIG_SUM: "d"}) == "was /a, now /b"
    assert not other_weights(at_a, {**at_b, "checksum": "w"})
    assert not other_weights({**at_a, "checksum_of": "a few values"}, at_b)
    named = {"source": "/b", "config": None, CONFIG_SUM: "c"}  # before it loads: no signature recorded
    assert teacher_change({**at_a, FILES: None}, named) == "was /a, now /b"


def test_teacher_change_names_the_recipes_teacher_config_where_it_gave_the_config(tmp_path):
    """Where the recipe's teacher_config (not --teacher-config) gave the config read now, the change names
    the key at its file:line; it said '--teacher-config was A, now B', a flag the user never gave."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(f'{{"x": "{name}"}}')
    was = named_teacher("/t.safetensors", str(tmp_path / "a"))
    now = named_teacher("/t.safetensors", str(tmp_path / "b"))
    key = ("teacher_config", " (r.yaml:3)")
    assert teacher_change(was, now, key) == f"teacher_config (r.yaml:3) was {tmp_path / 'a'}, now {tmp_path / 'b'}"
    assert teacher_change(was, now) == f"--teacher-config was {tmp_path / 'a'}, now {tmp_path / 'b'}"
    (tmp_path / "a" / "config.json").write_text('{"x": "edited"}')
    edited = named_teacher("/t.safetensors", str(tmp_path / "a"))
    assert teacher_change(was, edited, key) == \
        f"teacher_config {tmp_path / 'a'} (r.yaml:3) changed since the run (its contents differ)"


def test_a_copy_whose_files_pass_for_the_teachers_is_still_refused_once_loaded(interrupted, monkeypatch, capsys):
    """The files' signature and tensors digest are samples, read before the teacher loads: where they
    miss a change (a byte flipped where neither reads: io_signature's test of it), --resume still
    compares the checksum of every byte of the teacher loaded (teacher_identity's), and refuses it:
    same_files saying the same of other weights costs a load, never a resume from them."""
    import compress.runner_teacher_id as runner_teacher_id

    run, args, loads = interrupted
    other = run.parent / "other"
    tiny_pixart(seed=1).save_pretrained(other)
    monkeypatch.setattr(runner_teacher_id, "same_files", lambda recorded, source: True)  # a miss before it loads
    said = _refused([*args, "--teacher", str(other), "--resume"], capsys)
    assert "another teacher" in said and "(the same config, other weights)" in said, said
    assert len(loads) == 1  # refused once loaded, by the checksum


def _resaved(teacher, copy, **metadata) -> None:
    """`teacher` (a folder of one safetensors file) copied to `copy`, its file re-saved under its name with
    other safetensors metadata: other bytes, the same tensors."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(teacher, copy)
    weights = copy / "diffusion_pytorch_model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt", **metadata})


def test_a_copy_resaved_under_the_same_name_is_that_teacher_once_loaded(interrupted, capsys):
    """R2 (stop 50): the teacher copied elsewhere and its file re-saved under its name (other metadata, the
    same tensors): the tensors digests equal, a file of one name holding other bytes, and since b249b92
    --resume refused it before it loaded as 'another teacher'. Now only the loaded checksum can tell
    (runner_teacher_id.files_say's UNTOLD): it loads once, and the checksum of every byte says it moved."""
    run, args, loads = interrupted
    copy = run.parent / "copy"
    _resaved(run.parent / "teacher", copy, saved_by="another tool")
    assert main([*args, "--teacher", str(copy), "--resume"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"note: the teacher moved from {run.parent / 'teacher'} to {copy} (its config and weights the same)" \
        in said, said
    assert "another teacher" not in said and len(loads) == 1


def test_a_plain_rerun_over_saved_passes_offers_resume_to_a_resaved_copy(pixart, monkeypatch, capsys):
    """A plain rerun naming that re-saved copy over a saved pass said 'for another teacher ... add --restart'
    (other_teacher, before it loads); now it offers --resume, which resumes once the checksum says the same."""
    from compress.runner_folders import other_teacher

    tmp_path, run, args = _interrupted(pixart, monkeypatch, capsys)
    copy = tmp_path / "copy"
    _resaved(tmp_path / "teacher", copy, saved_by="another tool")
    assert other_teacher(run, named_teacher(str(copy), None)) is None
    said = _refused([*args, "--teacher", str(copy)], capsys)
    assert said.endswith("add --resume to continue, or --restart to start over"), said
    assert main([*args, "--teacher", str(copy), "--resume"]) == 0
    assert "the teacher moved from" in capsys.readouterr().err


def test_only_a_copy_elsewhere_whose_files_cannot_tell_is_left_to_the_loaded_checksum(tmp_path):
    """same_before_loading passes on (to the check once loaded) only a copy at another path of the same config
    whose files say UNTOLD: not one of another config, nor the source named in place, nor other tensors."""
    from compress.io_signature import teacher_signature
    from compress.runner_teacher_id import files_say, same_before_loading, same_files, untold_before_loading

    tiny_pixart().save_pretrained(tmp_path / "a")
    _resaved(tmp_path / "a", tmp_path / "b", saved_by="another tool")
    tiny_pixart(seed=1).save_pretrained(tmp_path / "other")
    before = {**named_teacher(str(tmp_path / "a"), None), FILES: teacher_signature(str(tmp_path / "a"))}
    copy, other = named_teacher(str(tmp_path / "b"), None), named_teacher(str(tmp_path / "other"), None)
    assert files_say(before[FILES], copy["source"]) == "untold before it loads"
    assert same_files(before[FILES], copy["source"]) is None  # never "the same"
    assert not same_teacher(before, copy) and same_before_loading(before, copy)
    assert not same_before_loading(before, other) and same_files(before[FILES], other["source"]) is False
    assert not untold_before_loading(before, {**copy, CONFIG_SUM: "another config"})
    assert not untold_before_loading({**before, "checksum": "w"}, {**copy, "checksum": "x"})  # loaded: by checksum
