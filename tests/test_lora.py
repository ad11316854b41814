"""lora: a LoRA trained on the teacher (made here with peft, saved as diffusers saves Flux LoRAs or as a
peft adapter folder) merged exactly into the teacher and into a compressed student of it."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from compress.errors import UserError
from compress.lora import merge_lora
from compress.lowrank import LowRankLinear
from tests.conftest import forward, model_inputs, tiny_flux, tiny_pixart
from tests.runner_helpers import RECIPE, run_recipe

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ["to_q", "proj_mlp", "norm1.linear", "ff.net.0.proj"]  # low-rank, dense and fused-GELU ones
RANK, ALPHA = 4, 8


def _lora(model, folder, targets=TARGETS, how="diffusers"):
    """`model` with a random LoRA on `targets` (its outputs: the reference); the LoRA saved in `folder`."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights=False)
    model.add_adapter(config) if hasattr(model, "add_adapter") else peft.inject_adapter_in_model(config, model)
    if how == "diffusers":
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model),
                                       transformer_lora_adapter_metadata=config.to_dict())
    else:  # peft's own adapter folder
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(folder))
        save_file({f"base_model.model.{k}": v.contiguous() for k, v in get_peft_model_state_dict(model).items()},
                  str(folder / "adapter_model.safetensors"))
    return model


@pytest.mark.parametrize("family, how", [("flux", "diffusers"), ("flux", "peft"), ("pixart", "peft")])
def test_a_merged_lora_gives_the_teacher_what_peft_gives_it(tmp_path, family, how):
    """Format, scaling (alpha / r) and names as diffusers / peft read them: the merged teacher's
    prediction is the peft-wrapped teacher's."""
    teacher = tiny_flux() if family == "flux" else tiny_pixart()
    plain, inputs = copy.deepcopy(teacher), model_inputs(teacher)
    targets = TARGETS if family == "flux" else ["to_q", "ff.net.0.proj", "adaln_single.linear"]
    wrapped = _lora(teacher, tmp_path / "lora", targets, how)
    with torch.no_grad():
        want, before = forward(wrapped, inputs), forward(plain, inputs)
    report = merge_lora(plain, tmp_path / "lora")
    assert report["dropped"] == [] and report["merged"] > 0
    torch.testing.assert_close(forward(plain, inputs), want, rtol=1e-5, atol=1e-5)
    assert (want - before).abs().max() > 1e-2  # the LoRA changes the prediction


def _student(tmp_path):
    """A compressed tiny Flux student (double block 0 removed, attention + MLP at rank ≈ half) and
    the teacher it was made from."""
    from compress.io_output import load_transformer

    teacher = tiny_flux()
    teacher.save_pretrained(tmp_path / "teacher")
    run_recipe(tmp_path, RECIPE.format(family="flux", teacher=tmp_path / "teacher", group="double"), "s")
    return load_transformer(tmp_path / "out-s"), teacher


def test_a_student_takes_its_teachers_lora_exactly(tmp_path):
    """Each adapted student module computes its own output plus s·B A x (inside the fused GELU of
    ff.net.0.proj), under the student's name for the teacher's block (double 1 -> 0); the LoRA's
    weights for the removed double block 0 are dropped; factors grow by the LoRA's rank."""
    from safetensors.torch import load_file

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    before = copy.deepcopy(student)
    report = merge_lora(student, tmp_path / "lora", scale=0.5)
    weights = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    assert sorted(report["dropped"]) == sorted({k[len("transformer."):k.index(".lora_")] for k in weights
                                                if k.startswith("transformer.transformer_blocks.0.")})
    x = torch.randn(3, 5, 32)
    checked = 0
    for key in [k for k in weights if k.endswith("lora_A.weight") and ".transformer_blocks.0." not in k]:
        teacher_name = key[len("transformer."):-len(".lora_A.weight")]
        name = re.sub(r"^transformer_blocks\.1\.", "transformer_blocks.0.", teacher_name)  # double 1 -> 0
        a, b = weights[key], weights[key.replace("lora_A", "lora_B")]
        old, new = before.get_submodule(name), student.get_submodule(name)
        xi = x[..., : a.shape[1]] if a.shape[1] <= 32 else torch.randn(3, 5, a.shape[1])
        delta = 0.5 * (ALPHA / RANK) * (xi @ a.T @ b.T)
        if isinstance(old, LowRankLinear):
            assert new.rank == old.rank + RANK and report["rank_added"][name] == RANK
            pre = old.up(old.down(xi)) + delta
            want = torch.nn.functional.gelu(pre, approximate="tanh") if old.activation == "gelu_tanh" else pre
            checked += old.activation == "gelu_tanh"
        else:
            want = old(xi) + delta
        torch.testing.assert_close(new(xi), want, rtol=1e-5, atol=1e-5, msg=name)
    assert checked  # a fused-GELU layer was among them
    assert student.config.compression["ranks"]["transformer_blocks.0.attn.to_q"] == \
        before.get_submodule("transformer_blocks.0.attn.to_q").rank + RANK
    assert student.compression_meta["loras"][0]["scale"] == 0.5


def test_a_merged_student_saves_and_loads_back(tmp_path):
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    merge_lora(student, tmp_path / "lora")
    student.save_pretrained(tmp_path / "merged")
    again = load_transformer(tmp_path / "merged")
    inputs = model_inputs(student)
    assert torch.equal(forward(again, inputs), forward(student, inputs))


def test_lora_mistakes_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="no LoRA there"):
        merge_lora(tiny_flux(), tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="not a LoRA diffusers reads"):
        merge_lora(tiny_flux(), tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="Hugging Face Hub"):
        merge_lora(tiny_flux(), "nobody/no-such-lora")
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_config.json").write_text("{")
    with pytest.raises(UserError, match="not a readable peft LoRA adapter"):
        merge_lora(tiny_flux(), tmp_path / "peft")
    _lora(tiny_flux(), tmp_path / "flux-lora")
    with pytest.raises(UserError, match="no LoRA loader for PixArtTransformer2DModel"):
        merge_lora(tiny_pixart(), tmp_path / "flux-lora")


def test_without_peft_the_error_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'dit-compress\[lora\]'"):
        merge_lora(tiny_flux(), tmp_path / "lora.safetensors")


def test_the_lora_command_writes_a_new_output(tmp_path, capsys):
    """`dit-compress lora OUT LORA NEW --scale s`: NEW loads as the student merged in Python does,
    keeps the output's files and records the merge; an existing NEW is refused."""
    from compress.cli import main
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    merge_lora(student, tmp_path / "lora", scale=0.5)
    args = ["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new"), "--scale", "0.5"]
    assert main(args) == 0
    assert "layers took the LoRA at scale 0.5" in capsys.readouterr().out
    new = load_transformer(tmp_path / "new")
    inputs = model_inputs(student)
    assert torch.equal(forward(new, inputs), forward(student, inputs))
    assert (tmp_path / "new" / "block_map.json").is_file() and new.compression_meta["loras"][0]["scale"] == 0.5
    assert main(["inspect", str(tmp_path / "new")]) == 0
    assert main(args) == 2 and "exists" in capsys.readouterr().err


def test_eval_gives_the_teacher_the_students_lora(tmp_path, monkeypatch):
    """A LoRA output stands for its teacher with the LoRA: load_teacher_of (eval, bench) merges what
    the student recorded (its absolute path, its scale) into the teacher, which then predicts what
    the peft-wrapped teacher does; a LoRA merged from a state dict cannot be replayed: an error."""
    from compress.cli import main
    from compress.io import load_teacher_of
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    wrapped = _lora(copy.deepcopy(teacher), tmp_path / "lora")
    monkeypatch.chdir(tmp_path)
    assert main(["lora", "out-s", "lora", "new", "--scale", "0.5"]) == 0  # relative paths
    monkeypatch.chdir("/")
    new = load_transformer(tmp_path / "new")
    assert new.compression_meta["loras"][0]["source"] == str((tmp_path / "lora").resolve())
    ref = load_teacher_of(new, str(tmp_path / "teacher"))
    wrapped.set_adapters("default", 0.5)  # the LoRA at the student's scale
    inputs = model_inputs(teacher)
    torch.testing.assert_close(forward(ref, inputs), forward(wrapped, inputs), rtol=1e-5, atol=1e-5)
    from safetensors.torch import load_file

    merge_lora(student, load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors")))
    with pytest.raises(UserError, match="merged from a state dict"):
        load_teacher_of(student, str(tmp_path / "teacher"))
