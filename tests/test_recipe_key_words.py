"""One way to name a recipe key in an error: `FILE:LINE: PASS.KEY ...`, as the choice keys
(errors.not_one_of), the type errors (recipe_convert), svd's and calibration's checks say it.
distill's, remove_blocks' and importance's value checks said 'distill: lr must be > 0'."""

import re

import pytest

from compress.errors import UserError
from compress.recipe import parse_recipe
from tests.test_runner_checks import _check

RECIPE = """\
model: flux
teacher: toy:flux
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2}}
passes:
  - {name}:
{options}"""


def _refusal(name: str, options: str) -> str:
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE.format(name=name, options=options), "r.yaml")
    return str(e.value)


@pytest.mark.parametrize("name, options, said", [
    ("distill", "      lr: -1\n", "r.yaml:6: distill.lr must be > 0, got -1.0"),
    ("distill", "      warmup_steps: -1\n", "r.yaml:6: distill.warmup_steps must be ≥ 0, got -1"),
    ("distill", "      data: folder\n", "r.yaml:6: distill.data: folder needs latents_dir"),
    ("distill", "      data: teacher_samples\n      num_samples: 0\n",
     "r.yaml:7: distill.num_samples must be ≥ 1, got 0"),
    ("distill", "      num_samples: 64\n",
     "r.yaml:6: distill.num_samples is used only with data: teacher_samples (data is 'toy')"),
    ("distill", "      guidance_scale: 0.5\n", "r.yaml:6: distill.guidance_scale (0.5) is the teacher sampler's: "
                                               "≥ 1, and only with data: teacher_samples"),
    ("distill", "      latents_dir: x\n", "r.yaml:6: distill.latents_dir is read only with data: folder (data is 'toy')"),
    ("distill", "      lambda_feat: 0\n      mask_massive: 3\n",
     "r.yaml:7: distill.mask_massive masks the feature loss, which lambda_feat: 0 leaves out"),
    ("distill", "      lambda_task: 0\n      lambda_out: 0\n      lambda_feat: 0\n",
     "r.yaml:6: distill.lambda_task, lambda_out and lambda_feat must not all be 0"),
    ("remove_blocks", "      count: 1\n      window: 0\n      criterion: learned\n",
     "r.yaml:7: remove_blocks.window must be an integer ≥ 1, got 0"),
    ("remove_blocks", "      count: 1\n      learn_lr: 0.1\n",
     "r.yaml:7: remove_blocks.learn_lr applies to criterion: learned (this pass ranks by scan)"),
    ("remove_blocks", "      count: 1\n      criterion: learned\n      iterative: true\n",
     "r.yaml:8: remove_blocks.iterative applies to scan and proxy; criterion learned chooses all blocks at once"),
    ("remove_blocks", "      blocks: {single: [1]}\n      criterion: learned\n",
     "r.yaml:7: remove_blocks.criterion: learned chooses blocks for a count or fraction; blocks lists the blocks "
     "to remove"),
    ("remove_blocks", "      blocks: {single: [1]}\n      iterative: true\n",
     "r.yaml:7: remove_blocks.iterative applies to a count or fraction chosen by importance; blocks lists the "
     "blocks to remove"),
    ("remove_blocks", "      count: 1\n      buckets: 0\n", "r.yaml:7: remove_blocks.buckets must be an integer ≥ 1, got 0"),
    ("importance", "      buckets: 0\n", "r.yaml:6: importance.buckets must be an integer ≥ 1, got 0"),
])
def test_a_value_check_names_its_key_as_pass_dot_key(name, options, said):
    assert _refusal(name, options).startswith(said), _refusal(name, options)


@pytest.mark.parametrize("options, said", [
    ("      count: -1\n", "r.yaml:6: remove_blocks.count must be a non-negative integer, got -1"),
    ("      count: {single: -1}\n", "r.yaml:6: remove_blocks.count.single must be a non-negative integer, got -1"),
    ("      fraction: {double: 1.5}\n", "r.yaml:6: remove_blocks.fraction.double must be a number in [0, 1), got 1.5"),
    ("      count: 2\n      criterion: learned\n",
     "r.yaml:7: remove_blocks.criterion: learned takes a budget per group (count: {double: 1, single: 1})"),
    ("      blocks:\n        single:\n          - 1\n          - 1\n",
     "r.yaml:9: remove_blocks.blocks.single lists block 1 twice"),
    ("      count: {}\n", "r.yaml:6: remove_blocks.count names no block group, so this pass would remove nothing"),
])
def test_a_model_check_names_its_key_as_pass_dot_key(options, said):
    """remove_blocks' budget checks (against the model's groups): 'remove_blocks: count for group
    'single' must be ...' named no key at all."""
    with pytest.raises(UserError) as e:
        _check("  - remove_blocks:\n" + options)
    assert str(e.value).startswith(said), str(e.value)


@pytest.mark.parametrize("there", ["missing", "empty", "a file"])
def test_a_latents_folder_check_names_its_key_as_pass_dot_key(tmp_path, there):
    """distill's latents_dir checks said 'r.yaml:7: distill: latents_dir X is not a folder (...)' and
    '... has no .safetensors or .pt files'."""
    folder = tmp_path / there
    if there == "empty":
        folder.mkdir()
    elif there == "a file":
        folder.write_text("")
    with pytest.raises(UserError) as e:
        _check(f"  - distill:\n      data: folder\n      latents_dir: '{folder}'\n")
    said = {"empty": f"distill.latents_dir {folder} has no .safetensors or .pt files"}.get(
        there, f"distill.latents_dir {folder} is not a folder (there is {'a file' if there == 'a file' else 'none'} at")
    assert str(e.value).startswith(f"r.yaml:7: {said}"), str(e.value)


def test_every_pass_names_a_key_alike():
    """The choice keys, the type errors and the value checks of each pass: one form."""
    said = [_refusal("distill", "      mixed_precision: fp32\n"), _refusal("distill", "      lr: x\n"),
            _refusal("distill", "      lr: 0\n"), _refusal("remove_blocks", "      count: 1\n      criterion: scann\n"),
            _refusal("remove_blocks", "      count: 1\n      criterion: learned\n      learn_steps: 0\n"),
            _refusal("importance", "      buckets: -2\n"), _refusal("svd", "      ratio: 2\n")]
    for words in said:
        assert re.match(r"r\.yaml:\d+: (distill|remove_blocks|importance|svd)\.[a-z_]+ ", words), words
