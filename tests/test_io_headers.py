"""compress.io_headers: plan checks a teacher's weights against its config from the safetensors
headers alone, refusing in run's line what run's load refuses (it planned the config's numbers)."""

import json

import pytest
from safetensors.torch import save_file

from compress.errors import UserError
from compress.io_headers import header_shapes
from compress.plan import make_plan
from compress.recipe import parse_recipe
from compress.report import param_count
from tests.bfl import flux_to_bfl
from tests.conftest import tiny_flux, tiny_pixart

RECIPE = "model: {model}\nteacher: {teacher}\ncalibration: {{source: synthetic}}\npasses:\n  - svd: {{ratio: 0.5}}\n"


def _plan(teacher, config=None, model="pixart") -> dict:
    recipe = parse_recipe(RECIPE.format(model=model, teacher=teacher), "r.yaml")
    return make_plan(recipe, teacher_config=None if config is None else str(config))


def _refused(teacher, config=None, model="pixart") -> str:
    with pytest.raises(UserError) as e:
        _plan(teacher, config, model)
    assert "\n" not in str(e.value)  # one line, no traceback
    assert str(e.value).startswith("r.yaml:2: ")  # where the recipe names the teacher
    return str(e.value).removeprefix("r.yaml:2: ")


def _single(tmp_path, model=None):
    """A tiny PixArt as a single file with its config in cfg/."""
    model = model or tiny_pixart()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "t.safetensors")
    model.save_config(tmp_path / "cfg")
    return tmp_path / "t.safetensors", tmp_path / "cfg"


def _edit_config(config, **changes):
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, **changes}))


def test_a_folder_whose_config_counts_more_blocks_than_its_weights_is_refused(tmp_path):
    """config.json says 5 layers over the 3 blocks of the file: planned 5 blocks' parameters before."""
    tiny_pixart().save_pretrained(tmp_path / "t")
    _edit_config(tmp_path / "t" / "config.json", num_layers=5)
    said = _refused(tmp_path / "t")
    assert said.startswith(f"{tmp_path / 't'}: the weights do not match config.json: missing transformer_blocks.3.")


def test_a_folder_whose_tensors_have_other_shapes_is_refused_naming_one(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "t")
    _edit_config(tmp_path / "t" / "config.json", attention_head_dim=4)
    said = _refused(tmp_path / "t")
    assert said.startswith(f"teacher {tmp_path / 't'}: its weights do not match its config.json: ")
    assert "in the weights but" in said and "PixArtTransformer2DModel" in said


@pytest.mark.parametrize("cut", [0, 1000, "half"])
def test_an_empty_or_truncated_single_file_is_refused(tmp_path, cut):
    """0 bytes ('header too small'), a cut header, a cut body: planned from --teacher-config before."""
    path, config = _single(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 if cut == "half" else cut])
    said = _refused(path, config)
    assert said.startswith(f"{path} is not a readable safetensors file (")
    assert said.endswith("it may be truncated or corrupted")


def test_a_single_file_under_a_config_of_more_blocks_is_refused(tmp_path):
    path, config = _single(tmp_path)
    _edit_config(config / "config.json", num_layers=4)
    assert _refused(path, config).startswith(f"{path}: the weights do not match {config / 'config.json'}: missing "
                                             "transformer_blocks.3.")


def test_a_sharded_folder_is_read_from_its_index_and_a_missing_shard_is_refused(tmp_path):
    model = tiny_pixart()
    model.save_pretrained(tmp_path / "t", max_shard_size="20KB")
    shards = sorted((tmp_path / "t").glob("*-of-*.safetensors"))
    assert len(shards) > 1
    assert _plan(tmp_path / "t")["params_before"] == param_count(model)
    shards[-1].unlink()
    assert "lists 1 shard(s) not in" in _refused(tmp_path / "t")


def test_good_teachers_plan_as_before(tmp_path):
    """A folder, a single file in diffusers' keys and a BFL Flux file plan the model's own count."""
    model = tiny_pixart()
    model.save_pretrained(tmp_path / "folder")
    assert _plan(tmp_path / "folder")["params_before"] == param_count(model)
    path, config = _single(tmp_path, model)
    assert _plan(path, config)["params_before"] == param_count(model)
    flux = tiny_flux()
    (tmp_path / "bfl").mkdir()
    save_file(flux_to_bfl(flux), tmp_path / "bfl" / "flux.safetensors")
    flux.save_config(tmp_path / "bfl")
    assert _plan(tmp_path / "bfl" / "flux.safetensors", model="flux")["params_before"] == param_count(flux)


def test_header_shapes_reads_names_dtypes_and_shapes(tmp_path):
    path, _ = _single(tmp_path)
    shapes = header_shapes(path)
    assert shapes["scale_shift_table"] == ("F32", tuple(tiny_pixart().scale_shift_table.shape))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="(?i)header ?too ?small"):
        header_shapes(tmp_path / "empty.safetensors")


def test_a_hub_teacher_is_checked_from_a_whole_cached_snapshot_alone(tmp_path, monkeypatch):
    """A Hub id's cached transformer whose config counts 5 blocks over 3 is refused with no request; one
    whose cache holds its config alone (the weights not downloaded yet) plans from it, unchecked."""
    import huggingface_hub
    from huggingface_hub import constants

    from tests.pipelines import hub_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_request)
    model = tiny_pixart()
    model.save_pretrained(tmp_path / "whole")
    _edit_config(tmp_path / "whole" / "config.json", num_layers=5)
    model.save_config(tmp_path / "config_only")
    hub_cache(tmp_path / "hub", "acme/whole", tmp_path / "whole")
    hub_cache(tmp_path / "hub", "acme/config-only", tmp_path / "config_only")
    assert "the weights do not match config.json: missing transformer_blocks.3." in _refused("acme/whole")
    assert _plan("acme/config-only")["params_before"] == param_count(model)


def _no_request(*args, **kwargs):
    raise AssertionError("plan asked the Hub")


def test_a_folder_of_a_config_and_no_weights_is_refused_in_runs_line(tmp_path):
    """A local folder holding config.json alone planned the config's numbers (19,944 params for the
    tiny PixArt) where run refuses it (io_errors.no_weights); a Hub id's cached config alone still
    plans (test_a_hub_teacher_is_checked_from_a_whole_cached_snapshot_alone)."""
    from compress.io import load_teacher

    tiny_pixart().save_config(tmp_path / "t")
    said = _refused(tmp_path / "t")
    assert said == (f"{tmp_path / 't'} has config.json but no weights: no diffusion_pytorch_model.safetensors, "
                    "diffusion_pytorch_model.safetensors.index.json or a variant or .bin of them (the folder holds "
                    "nothing else)")
    with pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "t"))
    assert str(e.value) == said  # run's words
