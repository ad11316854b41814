"""What `stream: true` cannot run, said at once (runner_stream.check_streaming, stream_refusals): every
pass's refusal in one error, each at its recipe line, a default named as the default, and the key as
--set takes it."""

import re
from pathlib import Path

import pytest

from compress.errors import UserError
from compress.passes.svd import SVDConfig, SVDPass
from compress.recipe import load_recipe, parse_recipe
from compress.runner import build_passes
from compress.runner_stream import check_streaming

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _refusal(recipe) -> str:
    with pytest.raises(UserError) as e:
        check_streaming(build_passes(recipe), recipe.passes, recipe.path)
    return str(e.value)


def test_every_pass_that_cannot_stream_is_named_in_one_error():
    """`--set stream=true` on the toy PixArt recipe took five tries, one refusal each: learned removal,
    the first svd pass's Fisher and then its sensitivities, the second's Fisher, distill."""
    path = RECIPES / "toy-pixart.yaml"
    said = _refusal(load_recipe(str(path), ["stream=true"]))
    lines = said.splitlines()
    assert lines[0].startswith(f"5 things in {path} need the whole model in memory")
    at = [re.match(rf"  {re.escape(str(path))}:(\d+) \(with --set stream=true\): (.*)", line) for line in lines[1:]]
    assert all(at) and [int(m.group(1)) for m in at] == [17, 18, 18, 23, 26]  # passes 1, 2, 2, 3, 4
    words = [m.group(2) for m in at]
    assert words[0].startswith("remove_blocks.criterion: learned trains through the whole model") and \
        words[0].endswith("set passes.1.remove_blocks.criterion to scan or proxy")
    assert words[1].startswith("svd.fisher (default all) needs the whole model") and \
        words[1].endswith("set passes.2.svd.fisher to block (each block's own output Fisher) or none")
    assert words[2].startswith("svd.sensitivity (default on with allocation: global) needs the whole model") and \
        words[2].endswith("set passes.2.svd.sensitivity to false")
    assert "passes.3.svd.fisher" in words[3] and words[4].startswith("the distill pass needs the whole model")


def test_a_key_the_recipe_gives_is_named_at_its_line_with_its_value(tmp_path):
    text = ("model: pixart\nteacher: toy:pixart\nstream: true\npasses:\n  - svd:\n      fisher: modulation\n"
            "      allocation: global\n      sensitivity: true\n")
    said = _refusal(parse_recipe(text, str(tmp_path / "r.yaml")))
    assert said.splitlines()[1:] == [
        f"  {tmp_path / 'r.yaml'}:6: svd.fisher: modulation needs the whole model in memory (one forward and "
        "backward per probe); with stream: true set passes.0.svd.fisher to block (each block's own output Fisher) "
        "or none",
        f"  {tmp_path / 'r.yaml'}:8: svd.sensitivity: true needs the whole model in memory (one forward per layer); "
        "with stream: true set passes.0.svd.sensitivity to false"]


def test_the_svd_pass_says_fisher_and_sensitivity_together():
    with pytest.raises(UserError) as e:
        SVDPass(SVDConfig(allocation="global")).check_streaming()
    assert "svd.fisher: all needs" in str(e.value) and "svd.sensitivity: on with allocation: global needs" in str(e.value)
    SVDPass(SVDConfig(allocation="global", fisher="block", sensitivity=False)).check_streaming()


def test_the_cli_prints_every_refusal_without_a_traceback(capsys):
    from compress.cli import main

    assert main(["plan", str(RECIPES / "toy-flux.yaml"), "--set", "stream=true"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "4 things in" in err
    assert "passes.2.svd.fisher" in err and "passes.3.svd.fisher" in err and "distill" in err


def test_a_guided_objective_is_refused_with_its_fisher_and_branches_offered():
    """`plan recipes/toy-pixart-stream.yaml --set passes.1.svd.objective=guided` said to set fisher: all or
    modulation, and with it stream: true refused the Fisher: no streamed value of either was offered. Now
    the objective is refused with the Fisher, with branches offered, and the recipe-load words offer it too."""
    with pytest.raises(UserError) as e:
        SVDPass(SVDConfig(fisher="modulation", objective="guided")).check_streaming()
    assert "svd.fisher: modulation needs" in str(e.value)
    assert ("svd.objective: guided weighs by the prediction's Fisher, which needs the whole model in memory; with "
            "stream: true set svd.objective to branches (each calibration row's own prediction)") in str(e.value)
    path = RECIPES / "toy-pixart-stream.yaml"
    with pytest.raises(UserError, match=r"fisher: block, where it would do nothing: set svd.fisher: all or "
                                       r"modulation, or svd.objective: branches$"):
        load_recipe(str(path), ["passes.1.svd.objective=guided"])
    said = _refusal(load_recipe(str(path), ["passes.1.svd.objective=guided", "passes.1.svd.fisher=modulation"]))
    assert "set passes.1.svd.objective to branches" in said and "set passes.1.svd.fisher to block" in said
