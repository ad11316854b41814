"""compress.runner_checks.check_data: distill's `data: toy` against the calibration source that gives
its batches, found by the checks before any pass runs (plan's and run's), not when distill starts."""

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.plan import make_plan
from compress.recipe import parse_recipe
from compress.runner import build_passes
from compress.runner_checks import check_passes
from tests.conftest import tiny_pixart

RECIPE = """\
model: pixart
teacher: {teacher}
calibration: {calibration}
passes:
  - remove_blocks: {{blocks: {{blocks: [1]}}}}
  - distill:
      steps: 1{data}
"""
WORDS = ("distill.data: toy trains on the toy data, and this run calibrates through a pipeline: "
         "set distill.data to 'teacher_samples' or 'folder'")
# an output of a toy samples in the toy's pipeline (its own folder, no model_index.json, is refused)
SAMPLED = "{source: pipeline, pipeline: 'toy:pixart', prompts: [a, b]}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(a plain diffusers folder of a tiny PixArt, an output recording toy:pixart as its teacher)."""
    from compress.io_export import save_compressed
    from compress.toy import load_toy_teacher

    tmp = tmp_path_factory.mktemp("data")
    tiny_pixart().save_pretrained(tmp / "plain")
    chained = save_compressed(load_toy_teacher("pixart"), tmp / "a", extra={"teacher": "toy:pixart"})
    return tmp / "plain", chained


def _recipe(teacher, calibration: str, data: str = "") -> object:
    return parse_recipe(RECIPE.format(teacher=teacher, calibration=calibration, data=data), "rec/j.yaml")


@pytest.mark.parametrize("which, calibration", [(0, "{pipeline: 'toy:pixart', prompts: [a, b]}"),
                                                (1, SAMPLED)])
def test_plan_refuses_toy_data_on_a_pipeline_calibrated_teacher(folders, which, calibration):
    """A converted toy (calibration.pipeline toy:pixart) or an output of one calibrated through its
    pipeline: distill's default data: toy was refused only when the distill pass started, after
    the passes before it ran (hours on a real model); plan showed data: toy and said nothing."""
    with pytest.raises(UserError) as e:
        make_plan(_recipe(folders[which], calibration))
    assert str(e.value) == f"rec/j.yaml:6: {WORDS}"  # the distill pass's line: data is its default


def test_the_refusal_names_the_data_key_s_line(folders):
    with pytest.raises(UserError, match=r"^rec/j\.yaml:8: distill\.data: toy trains on the toy data"):
        make_plan(_recipe(folders[1], SAMPLED, "\n      data: toy"))


def test_the_checks_before_any_pass_refuse_it_given_the_source(folders):
    """What a run goes through before its first pass (check_passes), told the calibration source."""
    recipe = _recipe(folders[0], "{pipeline: 'toy:pixart', prompts: [a, b]}")
    teacher = tiny_pixart()
    with pytest.raises(UserError, match=r"^rec/j\.yaml:6: distill\.data: toy trains on the toy data"):
        check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher), "pipeline")
    check_passes(build_passes(recipe), recipe.passes, teacher, get_adapter(teacher), "toy")


def test_teacher_samples_on_a_pipeline_calibrated_teacher_plans(folders):
    data = "\n      data: teacher_samples\n      num_samples: 4"
    assert make_plan(_recipe(folders[1], SAMPLED, data))["passes"][1]["pass"] == "distill"


def test_toy_data_on_a_toy_calibrated_output_plans_without_a_word(folders, capsys):
    make_plan(_recipe(folders[1], "{source: auto}"))
    assert "data: toy" not in capsys.readouterr().err


def test_toy_data_with_synthetic_inputs_is_said(folders, capsys):
    """source: synthetic gives distill's data: toy its random latents and text embeddings (the
    runner's train_batch is the source's): a smoke test, not the toy's digits the key's docs promise;
    it ran without a word."""
    make_plan(_recipe(folders[0], "{source: synthetic}"))
    err = " ".join(capsys.readouterr().err.split())
    assert ("rec/j.yaml:6: distill.data: toy with calibration.source synthetic trains on that source's "
            "random latents and text embeddings, not on the toy's digits nor on images") in err


def test_a_run_refuses_it_before_its_first_pass(folders, tmp_path, monkeypatch):
    """The run's own checks (runner.py, before any pass) are given the calibration source: the svd or
    removal before distill no longer runs first (hours on a real model) to be refused after."""
    from compress.passes.remove_blocks import RemoveBlocksPass
    from compress.runner import Runner

    monkeypatch.setattr(RemoveBlocksPass, "run", lambda *a, **k: pytest.fail("a pass ran before the refusal"))
    recipe = _recipe(folders[0], "{pipeline: 'toy:pixart', prompts: [a, b]}")
    with pytest.raises(UserError, match=r"^rec/j\.yaml:6: distill\.data: toy trains on the toy data"):
        Runner(recipe, tmp_path / "out", tmp_path / "run").run()
