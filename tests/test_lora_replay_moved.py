"""compress.lora_replay_moved: why a teacher cannot be shown to be the model a LoRA was read as blocks
of (moved away), said as it is: no record of its files, a record of another dit-compress version, or
no local files of the teacher given."""

from __future__ import annotations

import pytest

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
