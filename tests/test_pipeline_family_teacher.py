"""A teacher whose config.json names diffusers' generic Transformer2DModel (older PixArt Hub repos:
norm_type ada_norm_single, caption_channels, and Transformer2DModel-only keys) is read as the
PixArtTransformer2DModel diffusers builds of it (pipeline_family.built_class) by plan, run and
load_transformer of the output: a folder, a pipeline folder's transformer/, a cached Hub snapshot, a
single file with --teacher-config. A generic config of another norm_type (a DiT's) is refused in one line
naming what is supported."""

import json

import pytest
from safetensors.torch import save_file

from compress import load_transformer
from compress.cli import main
from compress.errors import UserError
from compress.plan import make_plan
from compress.recipe import parse_recipe
from tests.conftest import diffusers_log, tiny_pixart
from tests.runner_helpers import RECIPE, run_recipe
from tests.test_pipeline_folder import _cached_offline

pytestmark = pytest.mark.usefixtures("one_thread")

# what an older PixArt repo's transformer/config.json holds beside PixArt's keys (PixArt-XL-2-1024-MS's)
LEGACY = {"double_self_attention": False, "num_vector_embeds": None, "only_cross_attention": False,
          "use_linear_projection": False}


def _generic(config_json, **changes) -> None:
    """Rewrite a saved tiny PixArt's config.json as an older PixArt repo's: _class_name Transformer2DModel."""
    data = json.loads(config_json.read_text())
    data.pop("interpolation_scale", None)  # older repos do not write it; its default is the same
    config_json.write_text(json.dumps({**data, **LEGACY, "_class_name": "Transformer2DModel", **changes}))


def _plan(teacher, config=None):
    recipe = parse_recipe(RECIPE.format(family="pixart", teacher=teacher, group="blocks"), "r.yaml")
    return make_plan(recipe, teacher_config=None if config is None else str(config))


def _teacher(tmp_path, **changes):
    folder = tmp_path / "teacher"
    tiny_pixart().save_pretrained(folder)
    _generic(folder / "config.json", **changes)
    return folder


def test_a_generic_pixart_teacher_folder_plans_runs_and_its_output_loads_as_pixart(tmp_path, capsys):
    """Refused before: "unsupported model class 'Transformer2DModel'; supported: ...". The output's
    config names PixArtTransformer2DModel, without the keys diffusers ignores (loaded without its warning)."""
    teacher = _teacher(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE.format(family="pixart", teacher=teacher, group="blocks"))
    assert main(["plan", str(tmp_path / "r.yaml")]) == 0
    assert f"teacher {teacher} (pixart)" in capsys.readouterr().out
    text = RECIPE.format(family="pixart", teacher=teacher, group="blocks")
    run_recipe(tmp_path, text, "g")
    with diffusers_log() as logged:
        model = load_transformer(tmp_path / "out-g")
    assert type(model).__name__ == "PixArtTransformer2DModel"
    assert model.config.num_layers == 2
    config = json.loads((tmp_path / "out-g" / "config.json").read_text())
    assert config["_class_name"] == "PixArtTransformer2DModel" and not LEGACY.keys() & config.keys()
    assert not [line for line in logged if "not expected" in line]
    assert main(["eval", str(tmp_path / "out-g")]) == 0  # measured against the generic teacher


def test_a_generic_pixart_teacher_plans_from_a_pipeline_folder_a_cached_snapshot_and_a_single_file(
        tmp_path, monkeypatch):
    pipeline = tmp_path / "pipe"
    tiny_pixart().save_pretrained(pipeline / "transformer")
    _generic(pipeline / "transformer" / "config.json")
    (pipeline / "model_index.json").write_text(json.dumps(
        {"_class_name": "PixArtAlphaPipeline", "transformer": ["diffusers", "Transformer2DModel"]}))
    expected = _plan(tiny_pixart_folder(tmp_path))["params_before"]
    assert _plan(pipeline)["params_before"] == expected
    save_file({k: v.contiguous() for k, v in tiny_pixart().state_dict().items()}, tmp_path / "t.safetensors")
    assert _plan(tmp_path / "t.safetensors", pipeline / "transformer" / "config.json")["params_before"] == expected
    _cached_offline(tmp_path, monkeypatch, pipeline, "acme/pixold")
    assert _plan("acme/pixold")["params_before"] == expected


def tiny_pixart_folder(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "plain")
    return tmp_path / "plain"


@pytest.mark.parametrize("norm", ["ada_norm_zero", None])
def test_a_generic_config_of_no_pixart_is_refused_naming_what_is_supported(tmp_path, norm):
    """A DiT's Transformer2DModel (norm_type ada_norm_zero) or one without norm_type: no PixArt."""
    teacher = _teacher(tmp_path, norm_type=norm)
    save_file({k: v.contiguous() for k, v in tiny_pixart().state_dict().items()}, tmp_path / "t.safetensors")
    for args in ((teacher,), (tmp_path / "t.safetensors", teacher / "config.json")):
        with pytest.raises(UserError) as e:
            _plan(*args)
        said = str(e.value)
        assert "\n" not in said
        assert f"'Transformer2DModel' with norm_type {norm!r}" in said or "describes Transformer2DModel" in said
    with pytest.raises(UserError) as e:
        _plan(teacher)
    built = "DiTTransformer2DModel" if norm else "Transformer2DModel"
    assert f"unsupported model class 'Transformer2DModel' with norm_type {norm!r} (diffusers builds a {built} " \
           "of it); supported: FluxTransformer2DModel, PixArtTransformer2DModel, and Transformer2DModel with " \
           "norm_type 'ada_norm_single'" in str(e.value)


def test_a_generic_config_with_null_pixart_keys_tells_no_family():
    """diffusers writes every argument of Transformer2DModel: a plain one's config (norm_type layer_norm)
    holds caption_channels: null, which config_class took for a PixArt key."""
    from diffusers import Transformer2DModel

    from compress.pipeline_family import config_class

    plain = dict(Transformer2DModel(in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                    norm_num_groups=2).config)
    assert plain["caption_channels"] is None and plain["norm_type"] == "layer_norm"
    assert config_class({**plain, "_class_name": "Transformer2DModel"}) is None
