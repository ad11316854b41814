"""lora_teacher for a DoRA: the teacher whose weights give its norms, given to `dit-compress lora`
(--teacher FILE --teacher-config), refused where it is a compressed output, read alone from a toy
teacher or a folder, and from the Hub only the shards holding the adapted layers."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from compress.errors import UserError
from compress.lora import merge_lora
from tests.conftest import forward, model_inputs, tiny_pixart
from tests.test_lora import _lora, _student

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_the_lora_command_takes_a_doras_teacher(tmp_path, capsys, monkeypatch):
    """`dit-compress lora ... --teacher FILE --teacher-config CONFIG` reads a DoRA's norms from a
    single-file teacher through the teacher loader (no `stream`/convert advice), as merge_lora given the
    teacher model does; a Hub teacher is announced on stderr before it downloads; errors say --teacher."""
    from safetensors.torch import save_file

    from compress.cli import main
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", use_dora=True)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(tmp_path / "teacher.safetensors"))
    base = ["lora", str(tmp_path / "out-s"), str(tmp_path / "lora")]
    capsys.readouterr()
    assert main(base + [str(tmp_path / "no-config"), "--teacher", str(tmp_path / "teacher.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "pass --teacher-config" in err and "stream" not in err and len(err.strip().splitlines()) == 1
    assert main(base + [str(tmp_path / "new"), "--teacher", str(tmp_path / "teacher.safetensors"),
                        "--teacher-config", str(tmp_path / "teacher")]) == 0
    with pytest.raises(UserError, match=r"^the given teacher has no linear 'transformer_blocks\.1\..*', which the DoRA"):
        # a PixArt of the Flux teacher's 2 blocks (a teacher of other counts is refused first, by them)
        merge_lora(copy.deepcopy(student), tmp_path / "lora", teacher=tiny_pixart(num_layers=2))
    merge_lora(student, tmp_path / "lora", teacher=teacher)
    inputs = model_inputs(student)
    torch.testing.assert_close(forward(load_transformer(tmp_path / "new"), inputs), forward(student, inputs),
                               rtol=1e-6, atol=1e-6)
    from huggingface_hub import constants

    # offline as huggingface_hub reads it (its constant, set at import: the variable alone left the Hub
    # asked, ~23 s of hf_hub_download's retries on a machine without network)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    capsys.readouterr()
    assert main(base + [str(tmp_path / "hub"), "--teacher", "nobody/no-such-teacher"]) == 2
    err = capsys.readouterr().err
    assert "a DoRA's norms need teacher nobody/no-such-teacher's weights: downloading from the Hugging Face Hub" in err
    assert "a DoRA's norms need the teacher's weights, read from nobody/no-such-teacher" in err


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_a_compressed_output_is_no_doras_teacher(tmp_path, capsys):
    """A dit-compress output (a folder, a pipeline folder holding one, a loaded model) given as a DoRA's
    teacher is one line saying that its norms need the uncompressed teacher (naming the output and the
    teacher it was compressed from), never streaming advice; a student that took LoRAs before (whose
    teacher is loaded, not read) is refused the same, not given factorized norms. A recorded teacher
    that is an output leads to the teacher that output records, whose weights the norms are then
    (lora_teacher.lora_base): the same merge as from the student recording that teacher itself."""
    import json
    import shutil

    from compress.cli import main
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", use_dora=True)
    out = tmp_path / "out-s"
    (tmp_path / "pipe").mkdir()
    index = {"transformer": ["diffusers", "FluxTransformer2DModel"]}
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    shutil.copytree(out, tmp_path / "pipe" / "transformer")
    _lora(copy.deepcopy(teacher), tmp_path / "lora-plain")
    took_one = copy.deepcopy(student)
    merge_lora(took_one, tmp_path / "lora-plain")  # its DoRA teacher is loaded, with this LoRA
    recorded = copy.deepcopy(student)  # compressed from out, removing no block more
    recorded.compression_meta.update(teacher=str(out.resolve()), block_map=None)
    wanted = (r"is a dit-compress output, its layers factorized: a DoRA's norms need the uncompressed teacher the "
              rf"DoRA was trained on \(it was compressed from {re.escape(str(tmp_path / 'teacher'))}\); pass that with "
              r"--teacher \(dit-compress lora\) or teacher= to merge_lora$")
    pipe = tmp_path / "pipe"
    for model, given, who in [(student, str(out), f"teacher {out}"), (student, str(pipe), f"teacher {pipe}"),
                              (took_one, str(out), f"teacher {out}"),
                              (student, load_transformer(out), "the given teacher")]:
        with pytest.raises(UserError, match=f"^{re.escape(who)} {wanted}"):
            merge_lora(copy.deepcopy(model), tmp_path / "lora", teacher=given)
    direct = copy.deepcopy(student)
    assert merge_lora(recorded, tmp_path / "lora")["blocks_of"] == merge_lora(direct, tmp_path / "lora")["blocks_of"]
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in recorded.state_dict().items())
    capsys.readouterr()
    assert main(["lora", str(out), str(tmp_path / "lora"), str(tmp_path / "new"), "--teacher", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "stream" not in err and "uncompressed teacher" in err
    assert not (tmp_path / "new").exists()


def test_a_doras_teacher_is_read_alone_from_a_toy_or_a_folder(tmp_path):
    """The recorded or given teacher's weights of the adapted layers, read from a toy teacher, a
    transformer folder or a pipeline folder, are the teacher's own."""
    import json

    from compress.io import load_teacher
    from compress.lora_teacher import dora_weights

    teacher = load_teacher("toy:flux")
    names = {n: n for n in ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_mlp"]}
    student = copy.deepcopy(teacher)
    student.compression_meta = {"teacher": "toy:flux"}
    teacher.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="40KB")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "x"]}))
    for given in [None, str(tmp_path / "pipe"), str(tmp_path / "pipe" / "transformer")]:
        weights = dora_weights(student, names, given)
        assert sorted(weights) == sorted(names)
        for name in names:
            assert torch.equal(weights[name], teacher.get_submodule(name).weight), (given, name)


@pytest.mark.parametrize("options", [{}, {"max_shard_size": "40KB"}], ids=["one-file", "sharded"])
def test_a_doras_teacher_of_bin_weights_is_read_whole(tmp_path, options, capsys):
    """A transformer or pipeline folder whose weights are .bin (save_pretrained(safe_serialization=False),
    which run, eval and bench load) gives a DoRA's norms as the teacher's own, recorded or given: read
    whole, as a single file is, not refused with 'no diffusers weights ... convert ... stream'."""
    import json

    from compress.io import load_teacher
    from compress.lora_teacher import dora_weights

    teacher = load_teacher("toy:flux")
    names = {n: n for n in ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_mlp"]}
    folder = tmp_path / "pipe" / "transformer"
    teacher.save_pretrained(folder, safe_serialization=False, **options)
    assert not list(folder.glob("*.safetensors*"))
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "x"]}))
    student = copy.deepcopy(teacher)
    student.compression_meta = {"teacher": str(folder)}
    for given in [None, str(tmp_path / "pipe"), str(folder)]:
        weights = dora_weights(student, names, given)
        assert sorted(weights) == sorted(names)
        for name in names:
            assert torch.equal(weights[name], teacher.get_submodule(name).weight), (given, name)
    assert "convert" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*invalid shape")
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "one-file"])
def test_a_hub_doras_teacher_downloads_only_the_shards_it_reads(tmp_path, monkeypatch, capsys, sharded):
    """A Hub id as a DoRA's teacher (the hub's downloads faked from a local repo): its transformer/
    config and index first, then only the shards holding the adapted layers (a teacher in one weight
    file: that file); the merged student is the one the same teacher's local folder gives."""
    import json

    import huggingface_hub
    from safetensors.torch import load_file

    from compress.io import INDEX
    from tests.test_io_hub import hub_info

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", use_dora=True)
    repo = tmp_path / "repo"
    teacher.save_pretrained(repo / "transformer", **({"max_shard_size": "40KB"} if sharded else {}))
    (repo / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "FluxTransformer2DModel"]}))
    files, fetched = sorted(str(f.relative_to(repo)) for f in repo.rglob("*") if f.is_file()), []

    def hf_hub_download(repo_id, filename, subfolder=None, **kw):
        assert repo_id == "owner/teacher"
        fetched.append(f"{subfolder}/{filename}" if subfolder else filename)
        return str(repo / fetched[-1])

    def model_info(api, repo_id, timeout=None, **kw):
        assert repo_id == "owner/teacher" and timeout  # bounded: list_repo_files / snapshot_download wait forever
        return hub_info(files)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("snapshot_download"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr("compress.io_hub.hub_head", lambda repo, name: (None, None))  # the Hub answers
    local = copy.deepcopy(student)
    merge_lora(local, tmp_path / "lora")  # the teacher the student records: the local folder
    capsys.readouterr()
    merge_lora(student, tmp_path / "lora", teacher="owner/teacher")
    assert "downloading from the Hugging Face Hub (unless cached) its transformer's config and index, then the " \
        "weight files holding the" in capsys.readouterr().err
    inputs = model_inputs(student)
    assert torch.equal(forward(student, inputs), forward(local, inputs))
    weights = {name for name in fetched if name.endswith(".safetensors")}
    if not sharded:
        assert weights == {"transformer/diffusion_pytorch_model.safetensors"}
        return
    lora = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    adapted = {k[len("transformer."):k.index(".lora_A")] for k in lora
               if ".lora_A." in k and not k.startswith("transformer.transformer_blocks.0.")}  # block 0: removed
    shards = json.loads((repo / "transformer" / INDEX).read_text())["weight_map"]
    assert weights == {f"transformer/{shards[f'{name}.weight']}" for name in adapted}
    assert len(weights) < len(set(shards.values()))  # not the whole folder
