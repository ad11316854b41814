"""One way to name a recipe key in an error: `FILE:LINE: PASS.KEY ...`, as the choice keys
(errors.not_one_of), the type errors (recipe_convert), svd's and calibration's checks say it.
distill's, remove_blocks' and importance's value checks said 'distill: lr must be > 0'."""

import re

import pytest
import torch

from compress.errors import UserError
from compress.recipe import parse_recipe
from tests.recipe_helpers import refusal
from tests.test_runner_checks import _check

RECIPE = """\
model: flux
teacher: toy:flux
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2}}
passes:
  - {name}:
{options}"""


def _refusal(name: str, options: str) -> str:
    return refusal(RECIPE.format(name=name, options=options))


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


FLUX_PLAN = RECIPE.split("passes:")[0].replace("{{", "{").replace("}}", "}") + "passes:\n"


@pytest.mark.parametrize("passes, said", [
    ("  - remove_blocks: {count: 1, buckets: 5}\n", "remove_blocks.buckets 5 changes nothing: "),
    ("  - remove_blocks: {count: 0}\n", "remove_blocks.count removes no block, so this pass changes nothing"),
    ("  - remove_blocks: {blocks: {single: []}}\n", "remove_blocks.blocks removes no block"),
    ("  - remove_blocks: {fraction: 0.1}\n", "remove_blocks.fraction 0.1 of 6 blocks rounds down to no block"),
    ("  - remove_blocks: {count: {single: 1}, criterion: learned, learn_lr: 0, estimator: gumbel}\n",
     "remove_blocks.estimator: gumbel with learn_lr: 0 learns the logits alone"),
    ("  - importance: {buckets: 40}\n", "importance.buckets 40 is more than the "),
    ("  - distill: {steps: 5, warmup_steps: 20}\n", "distill.warmup_steps (20) is not below steps (5): "),
    ("  - distill: {steps: 50}\n", "distill.data: toy with calibration.source synthetic trains on "),
    ("  - svd: {targets: [attention], ratio: 1.0, fisher: none}\n", "svd.ratio 1.0 keeps every parameter, so "),
])
def test_a_warning_names_its_key_as_pass_dot_key(capsys, passes, said):
    """A warning about one key names it as its errors do: 'r.yaml:6: remove_blocks.buckets 5 changes
    nothing ...', where it said 'remove_blocks: buckets 5 ...' ('svd: svd.ratio 1.0 keeps ...'). No
    warning of plan starts 'PASS: KEY' or 'PASS: PASS.KEY' for a key of that pass."""
    import dataclasses

    from compress.passes import PASSES, pass_class
    from compress.plan import make_plan

    make_plan(parse_recipe(FLUX_PLAN + passes, "r.yaml"))
    warned = [line.split(": ", 2)[2] for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert said in [w[:len(said)] for w in warned], warned
    keys = {name: "|".join(f.name for f in dataclasses.fields(pass_class(name).config_cls)) for name in PASSES}
    for words in warned:
        assert not any(re.match(rf"{name}: ({name}\.)?({key})\b", words) for name, key in keys.items()), words


def test_a_latents_file_error_names_its_key_as_pass_dot_key(tmp_path):
    """A file of latents_dir that breaks the format is named 'distill.latents_dir file PATH', at the
    key's line in the checks and in the pass's reader alike; it said 'r.yaml:7: distill: PATH has no
    'latents' tensor ...', 'distill: cannot read latents file PATH: ...'. A file of the teacher-sample
    cache (no recipe key) is named 'distill: teacher sample file PATH'."""
    from safetensors.torch import save_file

    from compress.distill_folder import SAMPLE_FILE, FolderSource

    cases = {"no latents": ({"x": torch.zeros(2, 4)}, " has no 'latents' tensor (keys: x)"),
             "nan": ({"latents": torch.full((2, 4, 8), float("nan"))}, ": 'latents' holds non-finite values"),
             "torn": (b"not a safetensors file", " cannot be read: ")}
    for name, (data, words) in cases.items():
        path = tmp_path / name / "a.safetensors"
        path.parent.mkdir()
        path.write_bytes(data) if isinstance(data, bytes) else save_file(data, str(path))
        said = f"distill.latents_dir file {path}{words}"
        with pytest.raises(UserError) as e:
            _check(f"  - distill:\n      data: folder\n      latents_dir: '{path.parent}'\n")
        assert str(e.value).startswith(f"r.yaml:7: {said}"), str(e.value)
        with pytest.raises(UserError) as e:
            FolderSource(path.parent)
        assert str(e.value).startswith(said), str(e.value)
        with pytest.raises(UserError) as e:
            FolderSource(path.parent, SAMPLE_FILE)
        assert str(e.value).startswith(f"distill: teacher sample file {path}{words}"), str(e.value)
