"""lora on an output whose teacher (itself an output) moved away: the LoRA's blocks are read as that
teacher's, a note says so and how to have them read as the base's, and an error of a LoRA past its
blocks names the moved teacher, the note said once. Chains of outputs: test_lora_chain.py."""

from __future__ import annotations

import copy
import json
import re

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.lora import merge_lora
from tests.conftest import tiny_flux
from tests.test_lora_chain import _base_lora, _chain, _reported_chain, _save_output

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*invalid shape")]


def test_a_student_whose_own_teacher_moved_says_its_blocks_are_read_as_that_teachers(tmp_path, capsys):
    """b's teacher a (itself an output) moved away: nothing left says a was an output, so the LoRA's
    blocks are read as a's, which was silent (blocks_of a, a LoRA of the base mapped one link short);
    a note now says so and how to have them read as the base's."""
    from compress.io_output import load_transformer

    base, _ = _chain(tmp_path, "pixart")
    lora, _ = _base_lora(base, tmp_path)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    student = load_transformer(tmp_path / "b")
    try:
        merge_lora(student, lora)
    except UserError:
        pass  # the base's blocks past a's count: refused or merged, the note comes first
    said = " ".join(capsys.readouterr().err.split())
    assert f"note: the teacher {(tmp_path / 'a').resolve()} the model records is not there now: the LoRA's " \
           "blocks are read as its blocks; if it was itself a dit-compress output, put it back" in said


def test_a_lora_past_a_moved_teachers_blocks_names_the_moved_teacher_in_the_error(tmp_path, capsys):
    """a removes the base's single block 3, b (no block removed) records a; a moved away: the base's
    LoRA is read against b's 3 single blocks, and its block 3 was refused as a LoRA of a deeper model
    alone. The one-line error now also names the moved teacher and says to put it back, pointing to
    the note just above it (it repeated the note word for word)."""
    from compress.cli import main
    from compress.io_output import load_transformer

    base = tiny_flux(num_layers=1, num_single_layers=4)
    base.save_pretrained(tmp_path / "base")
    a = copy.deepcopy(base)
    _save_output(a, tmp_path / "a", tmp_path / "base", get_adapter(a).remove_blocks(a, {"single": [3]}))
    _save_output(load_transformer(tmp_path / "a"), tmp_path / "b", tmp_path / "a", None)
    lora, _ = _base_lora(base, tmp_path)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    moved = (tmp_path / "a").resolve()
    with pytest.raises(UserError, match=rf"single_transformer_blocks\.3, but the base model {re.escape(str(moved))} "
                                        r"has 3 .*\(deeper\) model\? Or the teacher "
                                        rf"{re.escape(str(moved))}, not there now, was itself a dit-compress output: "
                                        r"put it back \(the note above\)$"):
        merge_lora(load_transformer(tmp_path / "b"), lora)
    capsys.readouterr()
    assert main(["lora", str(tmp_path / "b"), str(lora), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"Or the teacher {moved}, not there now, was itself" in err[-1]
    assert len([line for line in err if line.startswith("dit-compress lora: error")]) == 1
    _said_once(err, moved)


def _said_once(err: list[str], moved) -> None:
    """The moved teacher's words (lora_teacher.moved_teacher) come once in `err`, in the note."""
    said = " ".join(" ".join(err).split())
    assert said.count("the model records is not there now") == 1, said
    assert f"note: the teacher {moved} the model records is not there now" in said


def test_a_lora_past_a_moved_teachers_count_in_its_report_names_the_moved_teacher_in_the_error(tmp_path, capsys):
    """a removes the base's block 5, b a's last block 4 (its report.json: a had 5); a moved away. The
    base's LoRA, read against a's blocks, has block 4 (removed: dropped) and block 5, past a's count
    in b's report: refused as a LoRA of a deeper model alone (the CLI's report check), where the other
    path (merge_lora's) also named the moved teacher. It now does too, and says to put it back (the
    note above it says why: said once)."""
    from compress.cli import main

    base, moved = _reported_chain(tmp_path, 4), (tmp_path / "a").resolve()
    lora, _ = _base_lora(base, tmp_path)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    capsys.readouterr()
    assert main(["lora", str(tmp_path / "b"), str(lora), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("dit-compress lora: error")]
    assert len(errors) == 1 and not (tmp_path / "new").exists()
    assert re.search(rf"transformer_blocks\.5, but the base model {re.escape(str(moved))} has 5 .*\(deeper\) "
                     rf"model\? Or the teacher {re.escape(str(moved))}, not there now, was itself a dit-compress "
                     r"output: put it back \(the note above\)$", errors[0]), errors[0]
    _said_once(err, moved)


@pytest.mark.parametrize("family, counts", [("pixart", ("6 transformer_blocks", 4)), ("flux", ("3 transformer_blocks", 2))])
def test_a_dora_read_as_a_moved_teachers_blocks_is_refused_a_given_teacher_numbered_otherwise(tmp_path, capsys,
                                                                                              family, counts):
    """c (base -> a -> b -> c) takes a DoRA of b's blocks with b moved away, --teacher base: the LoRA's
    blocks are read as b's (whose chain to the base cannot be followed now) and the norms of b's block j
    from the base's block j (b's block 3 is base block 5). Before: rc 0 without a word (the given teacher,
    no output, kept the moved-teacher note back) and c's block 3 to_q 0.18 off the DoRA's (attn2 0.25),
    which eval then counts as error. Now refused in one line naming both counts, nothing written; the
    base given as a model likewise. A plain LoRA (no norms read) is merged as before."""
    from compress.cli import main
    from compress.io_output import load_transformer
    from tests.test_lora_limits import _save, _state
    from tests.test_lora_replay_mapped import _dora

    base_model, c = _chain(tmp_path, family)
    b = load_transformer(tmp_path / "b")
    dora = _save(_dora(b, ["to_q"]), tmp_path / "b-dora.safetensors")
    plain = _save(_state(load_transformer(tmp_path / "b"), ["to_q"]), tmp_path / "b-lora.safetensors")
    (tmp_path / "b").rename(tmp_path / "b-moved")
    moved, base = (tmp_path / "b").resolve(), str((tmp_path / "base").resolve())
    capsys.readouterr()
    assert main(["lora", str(c), str(dora), str(tmp_path / "new"), "--teacher", base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dit-compress lora: error: the teacher given, {base}, has {counts[0]}, but the DoRA's blocks are "
                   f"numbered as {moved}'s, the model's teacher, not there now ({counts[1]}): its norms would come "
                   f"from other blocks; put {moved} back (an output's chain is then followed), or give its new place "
                   "(were it an output: a plain model of the base blocks it kept) with --teacher (teacher= to "
                   "merge_lora)"], err
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match=rf"^the teacher given has {counts[0]}, but .*not there now \({counts[1]}\): "
                                        r".* with --teacher \(teacher= to merge_lora\)$"):
        merge_lora(load_transformer(c), dora, teacher=base_model)
    assert main(["lora", str(c), str(plain), str(tmp_path / "new"), "--teacher", base]) == 0


def test_a_dora_read_as_a_moved_teachers_blocks_takes_a_given_teacher_numbered_as_it(tmp_path):
    """The same with --teacher b-copy, the base's blocks b kept saved as no output (4 blocks, as c records
    b): merged as before, exactly as c takes the same DoRA of the base renumbered with b there (b's block
    3's norms those of base block 5)."""
    from compress.cli import main
    from compress.io_output import load_transformer
    from tests.test_lora_limits import _save
    from tests.test_lora_replay_mapped import B_OF_BASE, _dora, as_base_lora, b_copy, same

    base, c = _chain(tmp_path, "pixart")
    weights = _dora(load_transformer(tmp_path / "b"), ["to_q"])
    dora = _save(weights, tmp_path / "b-dora.safetensors")
    (tmp_path / "b").rename(tmp_path / "b-moved")
    assert main(["lora", str(c), str(dora), str(tmp_path / "new"), "--teacher", b_copy(base, tmp_path)]) == 0
    (tmp_path / "b-moved").rename(tmp_path / "b")
    expected = load_transformer(c)
    merge_lora(expected, _save(as_base_lora(weights, B_OF_BASE), tmp_path / "base-dora.safetensors"))
    assert same(load_transformer(tmp_path / "new"), expected.state_dict())


@pytest.mark.parametrize("family, deeper, counts", [("pixart", dict(num_layers=8), ("8 transformer_blocks", 6)),
                                                    ("flux", dict(num_layers=4, num_single_layers=4),
                                                     ("4 transformer_blocks", 3))])
@pytest.mark.parametrize("which", ["c", "a"])
def test_a_dora_read_as_a_present_bases_blocks_is_refused_a_given_teacher_numbered_otherwise(tmp_path, capsys, family,
                                                                                             deeper, counts, which):
    """c (base -> a -> b -> c, all there), or a (of the base), takes a DoRA of the base's blocks with
    --teacher deeper, a model of more blocks than the base: the LoRA's blocks are read as the base's and
    each one's norms from deeper's block of that index, while deeper's counts were checked against
    nothing (the base's, as the chain records it or its config says, only bound the LoRA's blocks; a,
    compressed from the base, records the base's counts only as its block map's at least 6 / 3).
    Before: rc 0 without a word. Now refused in one line naming both counts, nothing written; deeper
    given as a model likewise. The base given, and a plain LoRA, are merged as before."""
    from compress.cli import main
    from compress.io_output import load_transformer
    from tests.conftest import tiny_pixart
    from tests.test_lora_limits import _save, _state
    from tests.test_lora_replay_mapped import _dora

    base_model, c = _chain(tmp_path, family)
    out = str(c if which == "c" else tmp_path / "a")
    before = get_adapter(base_model).block_counts(base_model)  # a's report, as a run's: c's chain records them
    (tmp_path / "a" / "report.json").write_text(json.dumps({"remove_blocks": {"blocks_before": before}}))
    deep = (tiny_pixart if family == "pixart" else tiny_flux)(**deeper)
    deep.save_pretrained(tmp_path / "deeper")
    dora = _save(_dora(copy.deepcopy(base_model), ["to_q"]), tmp_path / "base-dora.safetensors")
    plain = _save(_state(copy.deepcopy(base_model), ["to_q"]), tmp_path / "base-lora.safetensors")
    given, base = str((tmp_path / "deeper").resolve()), str((tmp_path / "base").resolve())
    of = "the base of the model's chain" if which == "c" else "the model's teacher"
    capsys.readouterr()
    assert main(["lora", out, str(dora), str(tmp_path / "new"), "--teacher", given]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dit-compress lora: error: the teacher given, {given}, has {counts[0]}, but the DoRA's blocks are "
                   f"numbered as {base}'s, {of} ({counts[1]}): its norms would come from other blocks; give no "
                   f"teacher ({base} is read) or one with its blocks, with --teacher (teacher= to merge_lora)"], err
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match=rf"^the teacher given has {counts[0]}, but .*, {of} \({counts[1]}\)"):
        merge_lora(load_transformer(out), dora, teacher=deep)
    assert main(["lora", out, str(dora), str(tmp_path / "new"), "--teacher", base]) == 0
    assert main(["lora", out, str(plain), str(tmp_path / "new2"), "--teacher", given]) == 0


def test_a_dora_read_as_a_moved_teachers_blocks_is_refused_a_given_teacher_of_other_counts_than_its_report_says(
        tmp_path, capsys):
    """base (6 blocks) -> a (base blocks 0 2 3 4 5) -> b (a's blocks 0-3: a's last removed), b's report.json
    recording a's 5 blocks; a moved away, b takes a DoRA of a's blocks with --teacher base. b's block map
    says only that a had at least 4 blocks, which the base's 6 passed: rc 0 without a word, b's block j
    (j >= 1) taking base block j's norms, not those of base block j + 1, a's block j. Now the report's
    count reaches the check: refused in one line (6 vs 5), nothing written; merge_lora of the output as
    load_transformer loads it likewise. a-copy (a's blocks saved as no output: 5) is merged as before, exactly as
    b takes the same DoRA of the base renumbered with a there."""
    from compress.cli import main
    from compress.io_output import load_transformer
    from tests.test_lora_limits import _save
    from tests.test_lora_replay_mapped import _dora, as_base_lora, same

    a_copy = copy.deepcopy(_reported_chain(tmp_path, 4, a_removes=1))
    get_adapter(a_copy).remove_blocks(a_copy, {"blocks": [1]})
    a_copy.save_pretrained(tmp_path / "a-copy")
    weights = _dora(load_transformer(tmp_path / "a"), ["to_q"])
    dora = _save(weights, tmp_path / "a-dora.safetensors")
    (tmp_path / "a").rename(tmp_path / "a-moved")
    moved, base = (tmp_path / "a").resolve(), str((tmp_path / "base").resolve())
    capsys.readouterr()
    assert main(["lora", str(tmp_path / "b"), str(dora), str(tmp_path / "new"), "--teacher", base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dit-compress lora: error: the teacher given, {base}, has 6 transformer_blocks, but the DoRA's blocks "
                   f"are numbered as {moved}'s, the model's teacher, not there now (5): its norms would come from "
                   f"other blocks; put {moved} back (an output's chain is then followed), or give its new place (were "
                   "it an output: a plain model of the base blocks it kept) with --teacher (teacher= to merge_lora)"], err
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match=r"has 6 transformer_blocks, but .*, not there now \(5\)"):
        merge_lora(load_transformer(tmp_path / "b"), dora, teacher=base)  # the count as load_transformer reads it
    assert main(["lora", str(tmp_path / "b"), str(dora), str(tmp_path / "new"), "--teacher",
                 str(tmp_path / "a-copy")]) == 0
    (tmp_path / "a-moved").rename(tmp_path / "a")
    expected = load_transformer(tmp_path / "b")
    merge_lora(expected, _save(as_base_lora(weights, [0, 2, 3, 4, 5]), tmp_path / "base-dora.safetensors"))
    assert same(load_transformer(tmp_path / "new"), expected.state_dict())
