"""A teacher that is junk (a text file named .safetensors, tensors of no transformer, weights of other
shapes than its config's, a teacher config that is no JSON) or a Hub id mistyped offline: one line,
said where the user gave it, before what a good teacher would be told about its calibration."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compress.errors import UserError
from compress.io_source_config import typos_of
from compress.io_source_recipe import checked_sources
from compress.plan import make_plan
from compress.recipe import parse_recipe
from tests.conftest import tiny_pixart
from tests.test_io_source import _recipe

SYNTHETIC = ("model: pixart\nteacher: {teacher}\n{config}calibration: {{source: synthetic}}\n"
             "passes:\n  - svd: {{ratio: 0.5}}\n")


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as e:
        call(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_an_offline_hub_typo_is_placed_once_and_told_the_known_id(tmp_path, monkeypatch):
    """'r.yaml:2: r.yaml:2: cannot find a config ...' before, and no word of the shipped id it lists."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    recipe = _recipe(tmp_path / "r", teacher="PixArt-alpha/PixArt-Sigma-XL-2-1024-MSS")
    said = _refused(checked_sources, recipe, hub=False)
    assert said.startswith(f"{recipe.path}:2: cannot find a config for teacher "
                           "'PixArt-alpha/PixArt-Sigma-XL-2-1024-MSS'")
    assert said.count("r.yaml:2") == 1
    assert said.endswith("config.json; did you mean 'PixArt-alpha/PixArt-Sigma-XL-2-1024-MS'?")
    other = _refused(checked_sources, _recipe(tmp_path / "s", teacher="black-forest-labs/FLUX.1-schnell"), hub=False)
    assert "did you mean" not in other  # another model, not a typo of FLUX.1-dev


def test_typos_of_are_a_few_letters_case_aside():
    known = ["PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "black-forest-labs/FLUX.1-dev"]
    assert typos_of("pixart-alpha/pixart-sigma-xl-2-1024-ms", known) == known[:1]
    assert typos_of("black-forest-labs/FLUX1-dev", known) == known[1:]
    assert typos_of("black-forest-labs/FLUX.1-Fill-dev", known) == []
    assert typos_of("PixArt-alpha/PixArt-XL-2-1024-MS", known) == []


def test_a_teacher_config_that_is_no_json_is_named_where_given(tmp_path, monkeypatch):
    """'cannot read cfg.txt: Expecting value: line 1 column 1 (char 0)' before: no line, decoder words."""
    monkeypatch.chdir(tmp_path)
    model = tiny_pixart()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "t.safetensors")
    (tmp_path / "cfg.txt").write_text("my notes\n")
    recipe = parse_recipe(SYNTHETIC.format(teacher="t.safetensors", config="teacher_config: cfg.txt\n"), "r.yaml")
    assert _refused(make_plan, recipe) == ("r.yaml:3: teacher_config cfg.txt is not a JSON config (line 1, column 1: "
                                           "Expecting value); give the diffusers config of the transformer (its "
                                           "config.json, or the folder holding it)")
    recipe = parse_recipe(SYNTHETIC.format(teacher="t.safetensors", config=""), "r.yaml")
    assert _refused(make_plan, recipe, teacher_config="cfg.txt").startswith(
        "--teacher-config cfg.txt is not a JSON config (line 1, column 1: Expecting value); ")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_bytes(b'{"a": "\xff"}')
    assert _refused(make_plan, recipe, teacher_config="d").startswith(
        "--teacher-config d: d/config.json is not a JSON config (not UTF-8 text); ")


def _wrong_shapes(folder):
    tiny_pixart().save_pretrained(folder)
    config = folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "attention_head_dim": 4}))
    return folder


def test_weights_of_other_shapes_are_said_where_given_before_the_calibration(tmp_path):
    """Refused over calibration.source 'pipeline' first before (a transformer folder samples in no
    pipeline), then, with source: synthetic, without the recipe's place."""
    teacher = _wrong_shapes(tmp_path / "t")
    recipe = _recipe(tmp_path / "r", teacher=str(teacher))
    assert _refused(checked_sources, recipe).startswith(
        f"{recipe.path}:2: teacher {teacher}: its weights do not match its config.json: ")
    assert _refused(checked_sources, _recipe(tmp_path / "s"), teacher=str(teacher)).startswith(
        f"--teacher: teacher {teacher}: its weights do not match its config.json: ")


@pytest.mark.parametrize("junk, words", [
    (lambda p: p.write_text("hello, I am text pretending\n"), " is not a readable safetensors file (Error while "
                                                             "deserializing header: header too large)"),
    (lambda p: save_file({"foo.weight": torch.zeros(2)}, p),
     ": cannot tell the model family from the checkpoint keys (first: ['foo.weight'])"),
])
def test_a_junk_safetensors_teacher_is_said_junk_before_its_calibration_or_config(tmp_path, junk, words):
    """Told to set calibration.pipeline, then to add a config.json, before it was said junk."""
    junk(tmp_path / "t.safetensors")
    recipe = _recipe(tmp_path / "r", teacher=str(tmp_path / "t.safetensors"))
    assert _refused(checked_sources, recipe).startswith(f"{recipe.path}:2: {tmp_path}/t.safetensors{words}")


def test_a_single_file_teacher_whose_names_do_not_tell_its_family_is_planned_by_its_config(tmp_path, monkeypatch):
    """A toy Flux of no single blocks (its tensor names say no family) with its config.json beside it
    was refused 'cannot tell the model family from the checkpoint keys'; its config tells (R2's f0)."""
    from safetensors.torch import load_file

    from compress.toy.weights import toy_files

    monkeypatch.chdir(tmp_path)
    config, weights = toy_files("flux")
    config = {**json.loads(Path(config).read_text()), "num_single_layers": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("single_transformer_blocks.")},
              "t.safetensors")
    recipe = parse_recipe("model: flux\nteacher: t.safetensors\ncalibration: {source: synthetic, num_prompts: 2}\n"
                          "passes:\n  - svd: {targets: [mlp], ratio: 0.5}\n", "r.yaml")
    assert make_plan(recipe)["passes"]
