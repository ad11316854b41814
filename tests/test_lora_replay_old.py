"""eval and bench of an output whose LoRA record has no blocks_of (merged before records named a base:
the LoRA read as its teacher T's own blocks) give another teacher the LoRA in T's numbering only where
that is the teacher's own: mapped through both chains where they lead to one base, refused in one line
where the teacher's blocks are numbered otherwise (lora_replay.read_as_took); T itself, as before."""

from __future__ import annotations

import pytest

from tests.test_lora_replay_mapped import B_OF_BASE, as_base_lora, other_base_copies, refused, same

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*invalid shape")]


def old_record_chain(tmp_path):
    """(base, c, b's LoRA file, its weights): c (base -> a -> b -> c, b = base blocks 0 1 2 5) records a
    LoRA of b's blocks without blocks_of, as merges before e6e1935 did, and b's weight files."""
    from compress.io_output import load_transformer
    from compress.io_signature import teacher_signature
    from tests.test_lora_chain import _chain
    from tests.test_lora_limits import _save, _state

    base, c_folder = _chain(tmp_path, "pixart")
    weights = _state(load_transformer(tmp_path / "b"), ["to_q"])
    lora = _save(weights, tmp_path / "b-lora.safetensors")
    c = load_transformer(c_folder)
    c.compression_meta["loras"] = [{"source": str(lora.resolve()), "scale": 1.0, "modules": 1}]
    c.compression_meta["teacher_files"] = teacher_signature(str(tmp_path / "b"))  # as a run records it
    return base, c, lora, weights


@pytest.mark.parametrize("other", ["a", "base"])
def test_an_old_record_is_mapped_to_a_teacher_of_its_teachers_base(tmp_path, other):
    """Before: --teacher a gave a's block 3 (base block 4) the LoRA of b's block 3 (base block 5), and the
    base its blocks 0-3 the LoRA's, rc 0 without a word. Now each block takes the LoRA of b's block of its
    base block (none where b removed it), as the same LoRA renumbered as a LoRA of the base."""
    import copy

    from safetensors.torch import save_file

    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora

    base, c, _, weights = old_record_chain(tmp_path)
    save_file(as_base_lora(weights, B_OF_BASE), str(tmp_path / "base-lora.safetensors"))
    expected = copy.deepcopy(base) if other == "base" else load_transformer(tmp_path / other)
    merge_lora(expected, tmp_path / "base-lora.safetensors")
    assert same(load_teacher_of(c, str(tmp_path / other)), expected.state_dict())


def test_an_old_record_is_refused_on_a_teacher_numbered_otherwise_and_taken_by_its_own_teacher_moved(tmp_path):
    """An output of a copy of the base elsewhere (a3, base2: another base), or a while b is not there (its
    blocks unknown): refused in one line naming the record's teacher and what to do; b at a new place
    (its files as c recorded them) still takes the LoRA in its own blocks."""
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora

    _, c, lora, _ = old_record_chain(tmp_path)
    other_base_copies(tmp_path, "a")
    b, base, base2 = (str((tmp_path / n).resolve()) for n in ["b", "base", "base2"])

    def refusal(other, why) -> str:
        return (f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
                "compress.merge_lora) was recorded before records named the "
                f"model its blocks are of (no blocks_of in its record): they were read as blocks of the model's "
                f"teacher {b}, but the teacher to compare with, {tmp_path / other}, has its blocks numbered otherwise "
                f"({why}): its block i is not {b}'s block i; compare with the model's own teacher {b} (put it back, "
                "or give its new place with --teacher)")

    assert refused(c, str(tmp_path / "a3")) == refusal("a3", f"{b}'s descend from {base}, the teacher's from {base2}")
    (tmp_path / "b").rename(tmp_path / "b-moved")
    said = refused(c, str(tmp_path / "a"))
    assert said == refusal("a", f"{b} is not there now, or its chain of teachers cannot be followed, to map them")
    expected = load_transformer(tmp_path / "b-moved")
    merge_lora(expected, lora, own_blocks=True)
    assert same(load_teacher_of(c, str(tmp_path / "b-moved")), expected.state_dict())


def test_an_old_record_whose_teacher_is_an_output_with_a_chain_not_followed_is_refused_saying_so(tmp_path):
    """b there, its teacher's teacher (the base) moved away: b's chain cannot be followed, and b was read
    as a base of its own blocks: --teacher a (renumbered) was refused '(b's descend from b, the teacher's
    from base)', and x (base blocks 0-4, none renumbered) took the LoRA in b's numbering, rc 0 without a
    word (x's block 3, base block 3, took b's block 3's, base block 5's). Both now refused saying that
    b's chain cannot be followed; b itself still takes it."""
    import copy

    from compress.arch import get_adapter
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_chain import _save_output

    base, c, lora, _ = old_record_chain(tmp_path)
    x = copy.deepcopy(base)
    _save_output(x, tmp_path / "x", tmp_path / "base", get_adapter(x).remove_blocks(x, {"blocks": [5]}))
    (tmp_path / "base").rename(tmp_path / "base-away")
    b = str((tmp_path / "b").resolve())
    for other in ["a", "x"]:
        said = refused(c, str(tmp_path / other))
        assert said == (f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
                        "compress.merge_lora) was recorded before "
                        f"records named the model its blocks are of (no blocks_of in its record): they were "
                        f"read as blocks of the model's teacher {b}, but the teacher to compare with, "
                        f"{tmp_path / other}, may have its blocks numbered otherwise ({b} is a dit-compress "
                        "output whose chain of teachers cannot be followed now, to map them): compare with "
                        f"the model's own teacher {b}, or put back the teachers of its chain")
    expected = load_transformer(tmp_path / "b")
    merge_lora(expected, lora, own_blocks=True)
    assert same(load_teacher_of(c, str(tmp_path / "b")), expected.state_dict())


def test_an_old_record_on_a_teacher_whose_own_chain_is_not_followed_is_refused_saying_so(tmp_path):
    """x (base2 blocks 1 3 4 5; base2 a copy of the base) through y, both outputs: refused while base2 is
    there (another base); with base2 moved away x's chain cannot be followed, and x took the LoRA in b's
    numbering, rc 0 without a word (x's block 0, base block 1, took b's block 0's, base block 0's). Now
    refused saying that the teacher's chain cannot be followed."""
    import copy
    import shutil

    from compress.arch import get_adapter
    from tests.test_lora_chain import _save_output

    base, c, lora, _ = old_record_chain(tmp_path)
    shutil.copytree(tmp_path / "base", tmp_path / "base2")
    y = copy.deepcopy(base)
    _save_output(y, tmp_path / "y", tmp_path / "base2", get_adapter(y).remove_blocks(y, {"blocks": [0]}))
    x = copy.deepcopy(y)
    _save_output(x, tmp_path / "x", tmp_path / "y", get_adapter(x).remove_blocks(x, {"blocks": [1]}))
    (tmp_path / "base2").rename(tmp_path / "base2-away")
    b = str((tmp_path / "b").resolve())
    said = refused(c, str(tmp_path / "x"))
    assert said == (f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
                    "compress.merge_lora) was recorded before "
                    f"records named the model its blocks are of (no blocks_of in its record): they were "
                    f"read as blocks of the model's teacher {b}, but the teacher to compare with, "
                    f"{tmp_path / 'x'}, may have its blocks numbered otherwise ({tmp_path / 'x'} is a "
                    "dit-compress output whose chain of teachers cannot be followed now, to map them): "
                    f"compare with the model's own teacher {b}, or put back the teachers of the teacher's chain")


def test_an_old_record_is_mapped_to_a_teacher_through_one_moved_teacher_of_both_chains(tmp_path):
    """b2, an output of a removing its block 0, takes the LoRA mapped through a while a is there. With a
    moved away, both chains stop at a, both block maps read against it: b2 was refused '(b's descend from
    a, the teacher's from a)', a reason saying one path twice; now it takes the LoRA mapped as before."""
    from compress.arch import get_adapter
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from tests.test_lora_chain import _save_output

    _, c, _, _ = old_record_chain(tmp_path)
    b2 = load_transformer(tmp_path / "a")
    _save_output(b2, tmp_path / "b2", tmp_path / "a", get_adapter(b2).remove_blocks(b2, {"blocks": [0]}))
    expected = load_teacher_of(c, str(tmp_path / "b2")).state_dict()
    (tmp_path / "a").rename(tmp_path / "a-away")
    assert same(load_teacher_of(c, str(tmp_path / "b2")), expected)
