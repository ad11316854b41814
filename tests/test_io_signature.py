"""The teacher's weight files a run records (io_signature.teacher_signature), and eval / bench warning
where the recorded teacher's files were replaced since (report_teacher.warn_if_teacher_changed)."""

import json
import os
import shutil

import pytest

from compress.cli import main
from compress.io_signature import (CHUNK, CHUNKS, file_signature, pipeline_signature, signature_change,
                                   teacher_signature, weight_files)
from tests.conftest import tiny_flux
from tests.test_commands import RECIPE


def _safetensors(path, data: bytes, header: bytes = b'{"x":{}}') -> None:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def test_the_signature_is_of_the_content_and_reads_little():
    """Size, header and CHUNKS evenly spaced pieces: a change in a piece read or in the header is
    seen; the file's mtime is not part of it, and a large file costs CHUNKS reads of CHUNK bytes."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    data = bytearray(os.urandom(CHUNKS * CHUNK * 4))
    f = folder / "t.safetensors"
    _safetensors(f, bytes(data))
    first = file_signature(f)
    assert first["bytes"] == len(data) + 16
    os.utime(f, (1, 1))  # touched: the same content
    assert file_signature(f) == first
    data[-1] ^= 1  # the last byte lies in the last piece read
    _safetensors(f, bytes(data))
    assert file_signature(f)["sha256"] != first["sha256"]
    data[-1] ^= 1
    _safetensors(f, bytes(data), b'{"y":{}}')  # another header, the same length and data
    assert file_signature(f)["sha256"] != first["sha256"]
    small = folder / "s.bin"
    small.write_bytes(b"abc")
    before = file_signature(small)
    small.write_bytes(b"abd")  # smaller than the pieces: all of it is read
    assert file_signature(small) != before and file_signature(small)["bytes"] == 3
    shutil.rmtree(folder)


def test_the_weight_files_are_those_the_loader_reads(tmp_path):
    """A folder's diffusion_pytorch_model files (shards too; under transformer/ of a pipeline folder;
    a variant's where it holds only those), a single file itself; nothing for a toy teacher, a Hub
    id or a path not there."""
    tiny_flux().save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="40KB")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "pipe" / "transformer" / "notes.safetensors").write_bytes(b"")  # not a weight file diffusers reads
    names = list(weight_files(str(tmp_path / "pipe")))
    assert len(names) > 1 and all(n.startswith("transformer/diffusion_pytorch_model-0") for n in names)
    tiny_flux().save_pretrained(tmp_path / "fp16", variant="fp16")
    assert list(weight_files(str(tmp_path / "fp16"))) == ["diffusion_pytorch_model.fp16.safetensors"]
    one = tmp_path / "pipe" / "transformer" / names[0].split("/")[1]
    assert list(weight_files(str(one))) == [one.name]
    assert weight_files("toy:flux") == weight_files("owner/name") == weight_files(str(tmp_path / "gone")) == {}
    assert teacher_signature("toy:flux") is None


def test_a_change_names_the_first_file_that_differs(tmp_path):
    tiny_flux().save_pretrained(tmp_path / "t", max_shard_size="40KB")
    recorded = teacher_signature(str(tmp_path / "t"))
    assert signature_change(recorded, str(tmp_path / "t")) is None
    shards = sorted(recorded["files"])
    (tmp_path / "t" / shards[1]).unlink()
    assert signature_change(recorded, str(tmp_path / "t")) == f"{shards[1]} is gone"
    shutil.rmtree(tmp_path / "t")
    tiny_flux(seed=1).save_pretrained(tmp_path / "t")  # one file now, other weights
    change = signature_change(recorded, str(tmp_path / "t"))
    assert change.startswith("diffusion_pytorch_model-00001-of-") and change.endswith("more)")
    for other in (None, {"method": "another", "files": {}}, {"files": "x"}):  # older or newer outputs
        assert signature_change(other, str(tmp_path / "t")) is None


@pytest.fixture
def output(tmp_path, capsys):
    """(output folder, teacher folder) of a run of the tiny Flux teacher."""
    tiny_flux().save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher=tmp_path / "teacher"))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    return out, tmp_path / "teacher"


def _eval(argv, capsys) -> str:
    assert main(argv) == 0, argv
    return " ".join(capsys.readouterr().err.split())


def test_eval_and_bench_warn_when_the_recorded_teachers_files_were_replaced(output, tmp_path, capsys):
    """A fine-tune saved over the teacher's folder: eval and bench still measure (it may be what the
    user means) but say, in one line, which file differs; with --teacher naming another teacher
    they do not (the user chose it), naming the recorded one they do (it is that teacher)."""
    out, teacher = output
    report = json.loads((out / "report.json").read_text())
    assert list(report["teacher_files"]["files"]) == ["diffusion_pytorch_model.safetensors"]
    config = json.loads((out / "config.json").read_text())["compression"]
    assert config["teacher_files"] == report["teacher_files"]  # eval finds it without report.json too
    quiet = ["eval", str(out), "--json"]
    assert "warning" not in _eval(quiet, capsys)
    tiny_flux(seed=1).save_pretrained(teacher)  # saved over it
    warned = f"warning: teacher {teacher} changed since {out} was compressed from it: " \
             "diffusion_pytorch_model.safetensors holds other bytes; eval measures against it as it is now"
    err = _eval(quiet, capsys)
    assert warned in err and err.count("changed since") == 1  # (and, measured against other weights, its error above 1)
    assert warned.replace("eval measures", "bench measures") in \
        _eval(["bench", str(out), "--json", "--repeats", "1", "--device", "cpu"], capsys)
    assert warned in _eval(quiet + ["--teacher", str(teacher)], capsys)
    shutil.copytree(teacher, tmp_path / "finetuned")
    assert "changed since" not in _eval(quiet + ["--teacher", str(tmp_path / "finetuned")], capsys)
    (out / "report.json").unlink()  # config.json's record then
    assert warned in _eval(quiet, capsys)


def test_outputs_without_the_record_are_measured_without_a_warning(output, capsys):
    """Outputs written before runs recorded the teacher's files."""
    out, teacher = output
    report = json.loads((out / "report.json").read_text())
    del report["teacher_files"]
    (out / "report.json").write_text(json.dumps(report))
    config = json.loads((out / "config.json").read_text())
    del config["compression"]["teacher_files"]
    (out / "config.json").write_text(json.dumps(config))
    tiny_flux(seed=1).save_pretrained(teacher)
    assert "changed since" not in _eval(["eval", str(out), "--json"], capsys)  # (its error above 1 is said)


def test_eval_of_a_streamed_output_warns_too(tmp_path, capsys):
    """A stream: true output is evaluated block by block (eval_errors.teacher_relative_streamed): the
    same check, naming the shard that differs."""
    from tests.runner_helpers import run_recipe, streamed_teacher

    out = run_recipe(tmp_path, streamed_teacher(tmp_path, "flux").format(stream="true"), "s")
    capsys.readouterr()
    assert "warning" not in _eval(["eval", str(out), "--json"], capsys)
    tiny_flux(seed=1).save_pretrained(tmp_path / "teacher", max_shard_size="40KB")
    assert f"changed since {out} was compressed from it: diffusion_pytorch_model-00001-of-" in \
        _eval(["eval", str(out), "--json"], capsys)


def test_a_fine_tune_of_one_tensor_anywhere_is_seen(tmp_path):
    """Evenly spaced pieces alone missed a tensor between two of them (a reviewer's 40-tensor file:
    one block fine-tuned went unseen for 20 of the 40): each tensor's ends are read too."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {f"blocks.{i}.weight": np.random.default_rng(i).standard_normal(1 << 16, dtype=np.float32)
               for i in range(40)}  # 256 KiB each
    f = tmp_path / "t.safetensors"
    save_file(tensors, f)
    before = file_signature(f)
    for i in range(40):
        tuned = dict(tensors, **{f"blocks.{i}.weight": tensors[f"blocks.{i}.weight"] + 0.01})
        save_file(tuned, f)
        assert file_signature(f)["sha256"] != before["sha256"], i


def test_a_variants_shards_and_not_a_bin_the_loader_skips(tmp_path):
    """diffusers names a variant's shards diffusion_pytorch_model.fp16-00001-of-0000N.safetensors
    (nothing was recorded for them), and reads the .safetensors where a .bin sits beside it (the
    .bin was recorded, so removing it warned)."""
    from compress.io_signature import is_weight_file

    tiny_flux().save_pretrained(tmp_path / "v", variant="fp16", max_shard_size="40KB")
    names = list(weight_files(str(tmp_path / "v")))
    assert len(names) > 1 and all(n.startswith("diffusion_pytorch_model.fp16-0") for n in names)
    assert is_weight_file("diffusion_pytorch_model-00001-of-00002.fp16.safetensors", "fp16")
    assert not is_weight_file("diffusion_pytorch_model.fp16-00001-of-00002.safetensors", None)
    tiny_flux().save_pretrained(tmp_path / "both")
    (tmp_path / "both" / "diffusion_pytorch_model.bin").write_bytes(b"old")
    assert list(weight_files(str(tmp_path / "both"))) == ["diffusion_pytorch_model.safetensors"]
    recorded = teacher_signature(str(tmp_path / "both"))
    (tmp_path / "both" / "diffusion_pytorch_model.bin").unlink()
    assert signature_change(recorded, str(tmp_path / "both")) is None


@pytest.mark.parametrize("offsets", [["a", "b"], [0, 4, 8], [0, 10 ** 30], [8, 4], None])
def test_a_damaged_header_is_hashed_not_a_traceback(tmp_path, offsets):
    """Offsets that are not two integers within the file made file_signature seek to them (eval's
    traceback: ValueError); they are hashed as the header's bytes, and the rest sampled."""
    from compress.io_signature import lora_signature

    f = tmp_path / "t.safetensors"
    _safetensors(f, b"x" * 64, json.dumps({"w": {"dtype": "F32", "shape": [16], "data_offsets": offsets}}).encode())
    assert file_signature(f)["bytes"] == f.stat().st_size
    assert lora_signature(str(f)) == {"": file_signature(f)}


def test_a_pipelines_signature_is_of_its_parts_but_the_transformer(tmp_path):
    """model_index.json and the component folders it names, but the transformer (the teacher's
    weights are checksummed apart): an edited scheduler config or text encoder shows; None where
    there is no pipeline folder of its own to read (toy, Hub id, a transformer folder)."""
    pipe = tmp_path / "pipe"
    index = {"_class_name": "PixArtSigmaPipeline", "scheduler": ["diffusers", "X"],
             "text_encoder": ["transformers", "T5EncoderModel"], "transformer": ["diffusers", "Y"]}
    for part in ("scheduler", "text_encoder", "transformer", "notes"):
        (pipe / part).mkdir(parents=True)
        (pipe / part / "config.json").write_text("{}")
    (pipe / "model_index.json").write_text(json.dumps(index))
    before = pipeline_signature(str(pipe))
    assert sorted(before) == ["model_index.json", "scheduler/config.json", "text_encoder/config.json"]
    (pipe / "transformer" / "config.json").write_text('{"a": 1}')
    (pipe / "notes" / "config.json").write_text('{"a": 1}')
    assert pipeline_signature(str(pipe)) == before
    (pipe / "scheduler" / "config.json").write_text('{"use_karras_sigmas": true}')
    assert pipeline_signature(str(pipe)) != before
    assert pipeline_signature("toy:pixart") is None and pipeline_signature("org/model") is None
    assert pipeline_signature(str(pipe / "transformer")) is None


def test_only_records_of_this_method_naming_their_files_compare():
    from compress.io_signature import SIGNATURE, comparable

    this = {"method": SIGNATURE, "files": {}}
    assert comparable(this, this) and not comparable(this, None)
    assert not comparable(this, {"method": "an older dit-compress's", "files": {}})
    assert not comparable({"method": SIGNATURE, "files": None})


def test_a_pickles_record_says_what_was_hashed_of_it_and_an_older_record_still_compares(tmp_path):
    """A .pth teacher has no safetensors header nor tensor ends to hash: its record's method words say
    the size and 16 chunks were (T7 F4: they named the header and each tensor's 4 KiB ends); a
    .safetensors file's as before; a .pth record of an older run (the safetensors words, or stop 49's
    'no header or tensors read': the same hashing) still compares, a change in it found."""
    from compress.io_signature import SIGNATURE

    pth, st = tmp_path / "t.pth", tmp_path / "t.safetensors"
    pth.write_bytes(os.urandom(3 * CHUNK))
    _safetensors(st, os.urandom(3 * CHUNK))
    pickled = teacher_signature(str(pth))
    assert pickled["method"] == ("size, sha256 of 16 evenly spaced 64 KiB chunks (not a safetensors file: no "
                                 "header or tensor ends hashed; its tensors, mapped, make the tensors digest where "
                                 "there is one)")
    assert teacher_signature(str(st))["method"] == SIGNATURE
    older = dict(pickled, method=SIGNATURE)
    stop_49 = dict(pickled, method="size, sha256 of 16 evenly spaced 64 KiB chunks (not a safetensors file: no "
                                   "header or tensors read)")
    for record in (older, pickled, stop_49):
        assert signature_change(record, str(pth)) is None
    pth.write_bytes(os.urandom(3 * CHUNK))
    for record in (older, stop_49):
        assert signature_change(record, str(pth)) == "t.pth holds other bytes"


def test_a_bins_record_does_not_say_its_tensors_were_not_read(tmp_path):
    """Stop 49's tensors digest reads a pickle's tensors (mapped: each one's ends and 16 pieces), and a
    .bin teacher's record said beside it 'not a safetensors file: no header or tensors read'. Its words
    now say its tensors make the digest."""
    from tests.conftest import tiny_pixart

    tiny_pixart().save_pretrained(tmp_path / "bin", safe_serialization=False)
    record = teacher_signature(str(tmp_path / "bin"))
    assert record["tensors"] is not None and "tensors read" not in record["method"]
    assert "its tensors, mapped, make the tensors digest" in record["method"]


def test_a_teacher_resaved_sharded_with_the_same_tensors_is_not_said_changed(output, capsys):
    """The teacher's folder re-saved in shards, every tensor the same: eval warned 'teacher … changed
    since … : diffusion_pytorch_model-00001-of-00003.safetensors is new (and 3 more)'. The record now
    holds the tensors' digest (tensors_digest) too, which is the same: no warning. Shards of other
    weights are still said changed."""
    out, teacher = output
    quiet = ["eval", str(out), "--json"]
    shutil.rmtree(teacher)
    tiny_flux().save_pretrained(teacher, max_shard_size="40KB")
    assert len(list(teacher.glob("*-of-*"))) > 1
    assert "warning" not in _eval(quiet, capsys)
    assert signature_change(json.loads((out / "report.json").read_text())["teacher_files"], str(teacher)) is None
    shutil.rmtree(teacher)
    tiny_flux(seed=1).save_pretrained(teacher, max_shard_size="40KB")
    assert "changed since" in _eval(quiet, capsys)


def test_the_tensors_digest_is_of_the_tensors_whatever_files_hold_them(tmp_path):
    """Other files, another order in them: the same digest. A byte changed in a piece it reads (one
    across two tensors too), another dtype or name: another digest. A pickle: none."""
    import numpy as np
    from safetensors.numpy import save_file

    from compress.io_signature import tensors_digest

    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal(100_003 + i, dtype=np.float32) for i in range(6)}  # 2.4 MB: pieces
    save_file(tensors, tmp_path / "one.safetensors")
    save_file({k: tensors[k] for k in ("t5", "t0", "t3")}, tmp_path / "a.safetensors")
    save_file({k: tensors[k] for k in ("t2", "t4", "t1")}, tmp_path / "b.safetensors")
    digest = tensors_digest([tmp_path / "one.safetensors"])
    assert digest == tensors_digest([tmp_path / "b.safetensors", tmp_path / "a.safetensors"]) is not None
    total = sum(t.nbytes for t in tensors.values())
    ends = np.cumsum([tensors[f"t{i}"].nbytes for i in range(6)])
    middle = (CHUNKS // 2) * (total - CHUNK) // (CHUNKS - 1)  # a piece's start, past the tensors' ends read
    crossing = next(i * (total - CHUNK) // (CHUNKS - 1) for i in range(CHUNKS)
                    if any(0 < e - i * (total - CHUNK) // (CHUNKS - 1) < CHUNK for e in ends))
    for at in (middle, crossing + CHUNK - 1):
        i = int(np.searchsorted(ends, at, side="right"))
        changed = {k: v.copy() for k, v in tensors.items()}
        changed[f"t{i}"].view(np.uint8)[at - (ends[i - 1] if i else 0)] ^= 1
        save_file(changed, tmp_path / "c.safetensors")
        assert tensors_digest([tmp_path / "c.safetensors"]) != digest, at
    save_file(dict(tensors, t0=tensors["t0"].astype(np.float64)), tmp_path / "d.safetensors")
    save_file(dict(tensors, t6=tensors.pop("t0")), tmp_path / "e.safetensors")
    assert digest not in {tensors_digest([tmp_path / "d.safetensors"]), tensors_digest([tmp_path / "e.safetensors"])}
    (tmp_path / "t.pth").write_bytes(b"")
    assert tensors_digest([tmp_path / "a.safetensors", tmp_path / "t.pth"]) is None


def test_a_record_without_the_tensors_digest_says_resharded_files_may_hold_the_same_tensors(output, capsys):
    """An output recorded before the tensors' digest, its teacher re-saved sharded with the same weights:
    'teacher … changed since …: diffusion_pytorch_model-00001-of-00003.safetensors is new (and 3 more); eval
    measures against it as it is now' said nothing of the files being only re-written. Now it says so."""
    from compress.io_signature import REWRITTEN

    out, teacher = output
    for name, place in (("report.json", ()), ("config.json", ("compression",))):
        data = json.loads((out / name).read_text())
        record = data
        for key in place:
            record = record[key]
        del record["teacher_files"]["tensors"]
        (out / name).write_text(json.dumps(data))
    shutil.rmtree(teacher)
    tiny_flux().save_pretrained(teacher, max_shard_size="40KB")
    err = _eval(["eval", str(out), "--json"], capsys)
    assert "was compressed from it: diffusion_pytorch_model-00001-of-" in err and " ".join(REWRITTEN.split()) in err
    shutil.rmtree(teacher)
    tiny_flux(seed=1).save_pretrained(teacher)  # the file it read, other bytes: not re-written elsewhere
    err = _eval(["eval", str(out), "--json"], capsys)
    assert "diffusion_pytorch_model.safetensors holds other bytes; eval" in err and "re-written" not in err


def test_a_pickles_tensors_digest_is_that_of_the_same_tensors_in_any_files(tmp_path):
    """A .bin teacher's record held no tensors digest (safetensors only), so its folder re-saved sharded, or
    written again as safetensors (convert), was 'diffusion_pytorch_model.bin is gone (and 3 more)'. Now a
    pickle's tensors (torch.save's zip, mapped) digest as the same tensors do in safetensors files: one .bin,
    .bin shards and safetensors agree, other weights do not; torch.save's legacy format (which cannot be
    mapped) has none."""
    import torch

    from tests.conftest import tiny_pixart

    model = tiny_pixart()
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    model.save_pretrained(tmp_path / "shards", safe_serialization=False, max_shard_size="30KB")
    model.save_pretrained(tmp_path / "st", max_shard_size="30KB")
    tiny_pixart(seed=1).save_pretrained(tmp_path / "other", safe_serialization=False, max_shard_size="30KB")
    assert len(list((tmp_path / "shards").glob("*.bin"))) > 1
    record = teacher_signature(str(tmp_path / "bin"))
    assert record["tensors"] is not None
    assert teacher_signature(str(tmp_path / "shards"))["tensors"] == record["tensors"]
    assert teacher_signature(str(tmp_path / "st"))["tensors"] == record["tensors"]
    assert teacher_signature(str(tmp_path / "other"))["tensors"] != record["tensors"]
    assert signature_change(record, str(tmp_path / "shards")) is None
    assert signature_change(record, str(tmp_path / "other")).startswith("diffusion_pytorch_model-0000")
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {"w": torch.ones(3)}, "step": 3}, tmp_path / "zip.pth")
    assert "tensors" not in teacher_signature(str(tmp_path / "legacy.pth"))
    assert teacher_signature(str(tmp_path / "zip.pth"))["tensors"] is not None


def test_the_tensors_digest_is_read_only_where_the_files_signatures_differ(tmp_path, monkeypatch):
    """--resume's check of a teacher named at another path (runner_teacher_id.same_files) and eval's
    (signature_change) read the tensors digest again where the files' signatures already said the same
    (measured in tools/bench_signature.py): now only where they differ, where it tells a resharded teacher
    (the same) from other tensors (not)."""
    import compress.io_signature as io_signature
    from compress.runner_teacher_id import same_files
    from tests.conftest import tiny_pixart

    tiny_pixart().save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    tiny_pixart().save_pretrained(tmp_path / "shards", max_shard_size="30KB")
    tiny_pixart(seed=1).save_pretrained(tmp_path / "other", max_shard_size="30KB")
    record = teacher_signature(str(tmp_path / "a"))
    read, digest = [], io_signature.tensors_digest
    monkeypatch.setattr(io_signature, "tensors_digest", lambda paths: (read.append(paths), digest(paths))[1])
    assert same_files(record, str(tmp_path / "copy")) is True and signature_change(record, str(tmp_path / "a")) is None
    assert read == []
    assert same_files(record, str(tmp_path / "shards")) is True and len(read) == 1
    assert same_files(record, str(tmp_path / "other")) is False and len(read) == 2
    assert teacher_signature(str(tmp_path / "a"))["tensors"] == record["tensors"]  # the run's record: whole


def test_a_byte_changed_where_the_files_signature_reads_and_the_digest_does_not_is_a_change(tmp_path):
    """R1 (stop 49): the tensors digest samples the tensors laid end to end in name order, the file's
    signature each file; a byte of a shard changed where the file's signature reads and the digest does
    not: the signature differed, the digest was equal, and signature_change (eval and bench's 'files
    replaced' note) and runner_teacher_id.same_files (--resume before the teacher loads) took the
    digest's word: None, True. The digest now excuses only files that differ by name (resharded,
    renamed): 'NAME holds other bytes', False; the same tensors resharded are still the same."""
    import numpy as np
    from safetensors.numpy import save_file

    from compress.io_signature import END, tensors_digest
    from compress.runner_teacher_id import same_files

    n = 1 << 18  # float32s: 1 MiB a tensor, four of them in two shards
    tensors = {f"t{i}": np.random.default_rng(i).standard_normal(n, dtype=np.float32) for i in range(4)}
    teacher = tmp_path / "t"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    shards = [teacher / f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    save_file({k: tensors[k] for k in ("t0", "t1")}, shards[0])
    save_file({k: tensors[k] for k in ("t2", "t3")}, shards[1])
    recorded = teacher_signature(str(teacher))
    total, rest = 4 * 4 * n, 2 * 4 * n  # the digest's bytes (all tensors), the second shard's data

    def digest_reads(at: int) -> bool:  # `at`: an offset into the tensors laid end to end
        pieces = [i * (total - CHUNK) // (CHUNKS - 1) for i in range(CHUNKS)]
        return any(p <= at < p + CHUNK for p in pieces) or at % (4 * n) < END or at % (4 * n) >= 4 * n - END

    middles = [rest + i * (rest - CHUNK) // (CHUNKS - 1) + CHUNK // 2 for i in range(CHUNKS)]  # of shard 2's pieces
    at = next(m for m in middles if not digest_reads(m))
    name = f"t{at // (4 * n)}"
    changed = dict(tensors, **{name: tensors[name].copy()})
    changed[name].view(np.uint8)[at % (4 * n)] ^= 1
    copy = tmp_path / "copy"  # a copy elsewhere, as --resume --teacher COPY names it
    shutil.copytree(teacher, copy)
    for folder in (teacher, copy):
        save_file({k: changed[k] for k in ("t2", "t3")}, folder / shards[1].name)
    assert file_signature(shards[1]) != recorded["files"][shards[1].name]
    assert tensors_digest(shards) == recorded["tensors"]  # what the digest reads: the same
    assert signature_change(recorded, str(teacher)) == f"{shards[1].name} holds other bytes"
    assert same_files(recorded, str(copy)) is None  # never the same: only the loaded checksum can tell (R2)
    resharded = tmp_path / "resharded"  # the tensors recorded, in one file: the same
    resharded.mkdir()
    (resharded / "config.json").write_text("{}")
    save_file(tensors, resharded / "diffusion_pytorch_model.safetensors")
    assert same_files(recorded, str(resharded)) is True


def _resaved_copy(tmp_path):
    """(record of folder a, folder b): b holds a's tensors in a file of a's name re-saved with other
    safetensors metadata (other bytes, the same tensors: the tensors digests equal)."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {f"w{i}": np.random.default_rng(i).standard_normal((64, 64), dtype=np.float32) for i in range(4)}
    for name, meta in (("a", {"format": "pt"}), ("b", {"format": "pt", "saved_by": "another tool"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        save_file(tensors, tmp_path / name / "diffusion_pytorch_model.safetensors", metadata=meta)
    return teacher_signature(str(tmp_path / "a")), tmp_path / "b"


def test_eval_does_not_read_the_digest_where_a_file_of_one_name_holds_other_bytes(tmp_path, monkeypatch):
    """signature_change (eval, bench) says a file of one name holding other bytes whatever the tensors
    digest says, so it does not read the digest there (signature_against's `renamed` guard: a guard, passes
    on b249b92, fails without it)."""
    import compress.io_signature as io_signature

    record, copy = _resaved_copy(tmp_path)
    read, digest = [], io_signature.tensors_digest
    monkeypatch.setattr(io_signature, "tensors_digest", lambda paths: (read.append(paths), digest(paths))[1])
    assert signature_change(record, str(copy)).startswith("diffusion_pytorch_model.safetensors is ")
    assert read == []


def test_resume_reads_the_digest_where_a_file_of_one_name_holds_other_bytes(tmp_path, monkeypatch):
    """--resume's check before the teacher loads (runner_teacher_id.same_files) reads it there: equal digests
    leave it to the loaded checksum (None, R2 of stop 50: was False, 'another teacher')."""
    import compress.io_signature as io_signature
    from compress.runner_teacher_id import same_files

    record, copy = _resaved_copy(tmp_path)
    read, digest = [], io_signature.tensors_digest
    monkeypatch.setattr(io_signature, "tensors_digest", lambda paths: (read.append(paths), digest(paths))[1])
    assert same_files(record, str(copy)) is None and len(read) == 1


def test_the_digest_read_already_does_not_excuse_a_file_of_one_name_holding_other_bytes(tmp_path):
    """tensors_say_same's `renamed` guard: given a signature whose tensors digest was read (the run's whole
    teacher_signature), equal to the record's, a file of one name holding other bytes is still said
    (eval) and is not 'the same tensors' (a guard: passes on b249b92, fails without it)."""
    from compress.io_signature import tensors_say_same

    record, copy = _resaved_copy(tmp_path)
    whole = teacher_signature(str(copy))
    assert whole["tensors"] == record["tensors"] and not tensors_say_same(whole, record)
    assert signature_change(record, str(copy), whole).startswith("diffusion_pytorch_model.safetensors is ")
