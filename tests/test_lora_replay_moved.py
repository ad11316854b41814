"""compress.lora_replay_moved: why a teacher cannot be shown to be the model a LoRA was read as blocks
of (moved away), said as it is: no record of its files, a record of another dit-compress version, or
no local files of the teacher given."""

from __future__ import annotations

import pytest
import torch

from compress.io_signature import SIGNATURE

pytest.importorskip("peft")

FILES = {"diffusion_pytorch_model.safetensors": {"bytes": 1, "sha256": "0"}}


@pytest.mark.parametrize("recorded, now, why", [
    (None, {"method": SIGNATURE, "files": FILES}, "the model records no weight files of it to compare"),
    ({"method": "an older dit-compress's", "files": FILES}, {"method": SIGNATURE, "files": FILES},
     "the weight files the model records of it were recorded by another dit-compress version, which this one "
     "cannot compare"),
    ({"method": SIGNATURE, "files": FILES}, None,
     "the teacher given has no local weight files that can be read to compare"),
])
def test_files_that_do_not_compare_are_said_as_they_are(recorded, now, why):
    """A record of another version's files said 'the model records no weight files of it'."""
    from compress.lora_replay_moved import not_compared

    assert not_compared(recorded, now) == why


def test_a_teacher_without_local_files_is_not_said_to_lack_a_record(tmp_path):
    """c records b's files (this version's), b is away, the teacher given is a Hub id of 6 blocks (b had
    4): refused, saying the teacher given has no files to read, not that c records none of b's."""
    from compress.io_signature import teacher_signature
    from compress.lora_replay_moved import moved_away, took_counts
    from tests.test_lora_replay_mapped import moved_chain

    base, c, lora, _ = moved_chain(tmp_path)
    files = teacher_signature(str(tmp_path / "b"))
    (tmp_path / "b").rename(tmp_path / "b-away")
    meta = c.compression_meta
    refusal = moved_away(base, meta["loras"][0], meta["teacher"], "acme/pix", files, None, took_counts(c))
    assert "cannot be shown to be it (the teacher given has no local weight files that can be read to compare), " \
           "while its blocks may be numbered otherwise (it has 6 transformer_blocks, the model's teacher 4)" \
           in str(refusal), refusal


@pytest.mark.parametrize("kind, targets", [("dora", ["proj_out"]), ("plain", ["proj_out"]),
                                           ("plain", ["proj_out", "to_q"])], ids=["dora", "plain", "and-in-blocks"])
def test_a_replayed_lora_of_no_block_is_not_refused_a_teacher_numbered_otherwise(tmp_path, kind, targets):
    """base (6 blocks) -> a (5) -> b; a moved away; b took a LoRA of a on proj_out alone (a DoRA with
    --teacher base, as 80e2af6 merges it; a plain one without). eval's and bench's replay on base refused it
    ('... cannot be shown to be it ... (it has 6 transformer_blocks, the model's teacher 5): put <a> back, or
    give its new place with --teacher'), though the LoRA is given no block. Now the teacher takes it, its
    proj_out bit-equal to the new output's (b kept base's proj_out). A LoRA of a block module too is refused
    as before (lora_keys.in_blocks, merge_lora's rule)."""
    from compress.cli import main
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from tests.test_lora_limits import _state
    from tests.test_lora_replay_mapped import _dora, refused
    from tests.test_lora_teacher_counts import _moved_chain

    make = _dora if kind == "dora" else _state
    lora = _moved_chain(tmp_path, lambda model, _: make(model, targets))
    (tmp_path / "a").rename(tmp_path / "a-moved")
    base = str((tmp_path / "base").resolve())
    given = ["--teacher", base] if kind == "dora" else []
    assert main(["lora", str(tmp_path / "b"), str(lora), str(tmp_path / "new")] + given) == 0
    new = load_transformer(tmp_path / "new")
    if targets != ["proj_out"]:
        assert "(it has 6 transformer_blocks, the model's teacher 5)" in refused(new, base)
        return
    teacher = load_teacher_of(new, base)
    assert torch.equal(teacher.proj_out.weight, new.proj_out.weight)
