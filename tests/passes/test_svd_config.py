"""compress.passes.svd_config: the notes on keys a recipe wrote that its svd pass does not use
(`unused_notes`), in plan and run alike (runner_checks.check_passes), at the key's line or --set."""

import re

import pytest

from compress.arch import get_adapter
from compress.recipe import parse_recipe
from compress.recipe_dump import dump_recipe
from compress.runner import build_passes
from compress.runner_checks import check_passes
from tests.conftest import tiny_flux

FLUX = """\
model: flux
teacher: toy:flux
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - svd:
{options}"""


def _notes(capsys, options: str, overrides=(), text=None) -> list[str]:
    """The 'is not used' and 'twice' warnings the checks print for an svd pass of `options` (line 6 on)."""
    recipe = parse_recipe(text or FLUX.format(options=options), "r.yaml", list(overrides))
    teacher = tiny_flux()
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher))
    said = " ".join(capsys.readouterr().err.split())
    found = [w.strip() for w in re.findall(r"warning: .*?(?= warning: |$)", said)]
    return [w for w in found if " is not used " in w or " twice " in w]


@pytest.mark.parametrize("options, words", [
    ("      alpha: 0.7\n",
     ["r.yaml:6: svd.alpha is not used with method: whitened (it is asvd's scaling exponent)"]),
    ("      asymmetric: false\n      asymmetric_damping: 0.1\n",
     ["r.yaml:7: svd.asymmetric_damping is not used with asymmetric: false"]),
    ("      fisher: none\n      compensate_batches: 2\n      compensate_toward: input\n      compensate_search: ladder\n",
     [f"r.yaml:{n}: svd.{k} is not used with fisher: none (compensation needs the prediction's Fisher: all or "
      "modulation)" for n, k in ((7, "compensate_batches"), (8, "compensate_toward"), (9, "compensate_search"))]),
    ("      fisher: none\n      fisher_probes: 8\n      fisher_damping: 0.01\n      fisher_memory_gb: 4\n",
     [f"r.yaml:{n}: svd.{k} is not used with fisher: none"
      for n, k in ((9, "fisher_memory_gb"), (7, "fisher_probes"), (8, "fisher_damping"))]),
    ("      fisher: none\n      gradient_checkpointing: true\n",
     ["r.yaml:7: svd.gradient_checkpointing is not used with fisher: none (no backward through the whole model)"]),
    ("      targets: [attention]\n      modulation_grid: 32\n",
     ["r.yaml:7: svd.modulation_grid is not used here: no target of this pass is a modulation linear (it sets "
      "the timesteps of their Grams)"]),
    ("      allocation: global\n      sensitivity: false\n      sensitivity_batches: 3\n      multiple: 1\n",
     ["r.yaml:8: svd.sensitivity_batches is not used with sensitivity: false"]),
    ("      targets: [mlp]\n      ranks: {mlp: 4}\n      ratio: 0.3\n      multiple: 8\n",
     [f"r.yaml:{n}: svd.{k} is not used here: svd.ranks gives every target of this pass its rank"
      for n, k in ((8, "ratio"), (9, "multiple"))]),
    ("      targets: [mlp, attention, mlp]\n",
     ["r.yaml:6: svd.targets lists 'mlp' twice (targets.0 and targets.2): the second changes nothing; list each "
      "pattern once, or write the one meant"]),
])
def test_a_key_the_pass_does_not_use_is_warned_at_its_line(options, words, capsys):
    """svd.alpha under method: whitened, asymmetric_damping with asymmetric: false, compensation's,
    the output Fisher's keys and gradient_checkpointing with fisher: none, modulation_grid without
    modulation targets, sensitivity_batches with sensitivity: false, ratio and multiple where ranks
    cover every target, a pattern listed twice: plan and run said nothing, exit 0."""
    assert _notes(capsys, options) == [f"warning: {w}" for w in words]


@pytest.mark.parametrize("options", [
    "      method: asvd\n      alpha: 0.7\n",
    "      asymmetric: true\n      fisher: none\n      asymmetric_damping: 0.1\n",
    "      compensate_batches: 2\n      fisher_probes: 8\n      gradient_checkpointing: true\n",
    "      targets: [modulation]\n      modulation_grid: 32\n",
    "      allocation: global\n      sensitivity_batches: 3\n      multiple: 1\n",
    "      targets: [mlp, attention]\n      ranks: {mlp: 4}\n      ratio: 0.3\n      multiple: 8\n",
    "      ratio: 0.3\n",
])
def test_keys_the_pass_uses_and_defaults_are_not_warned_of(options, capsys):
    assert _notes(capsys, options) == []


def test_a_set_key_is_named_by_its_set_and_a_saved_recipes_defaults_are_not_warned_of(capsys):
    """Only keys the user wrote: a --set names itself; an output's recipe.yaml, every default filled
    in (marked '# default'), warns of the keys written alone."""
    assert _notes(capsys, "      fisher: none\n", ["passes.0.svd.alpha=0.3"]) == [
        "warning: r.yaml (--set passes.0.svd.alpha=0.3): svd.alpha is not used with method: whitened (it is asvd's "
        "scaling exponent)"]
    recipe = parse_recipe(FLUX.format(options="      fisher: none\n      alpha: 0.7\n"), "r.yaml")
    saved = dump_recipe(recipe)
    said = _notes(capsys, "", text=saved)
    assert len(said) == 1 and "svd.alpha is not used with method: whitened" in said[0], said
