"""compress.passes.svd_checks on saved recipes: a key the pass's allocation does not read is judged by what
the recipe wrote, so an output's recipe.yaml (every key written, defaults marked '# default') and its dump
load again, and are refused exactly where the recipe they came from is."""

import re

import pytest

from compress.arch import get_adapter
from compress.errors import UserError
from compress.passes.svd import SVDConfig, SVDPass
from compress.passes.svd_values import check_values
from tests.conftest import tiny_flux

pytestmark = pytest.mark.usefixtures("one_thread")


def _written(keys, **cfg) -> SVDConfig:
    """An SVDConfig as the recipe loader makes it: `_given` holds the keys the recipe wrote."""
    c = SVDConfig(**cfg)
    c.__dict__["_given"] = set(keys) | set(cfg)
    return c


@pytest.mark.parametrize("cfg, message", [
    ({"allocation": "energy", "ratio": 0.5}, "svd.ratio is only read by allocation: uniform or global (this pass has "
                                             "allocation: energy); remove it or set allocation: uniform or global"),
    ({"allocation": "energy", "trust_region": 2.0}, "svd.trust_region is only read by allocation: global"),
    ({"allocation": "uniform", "sensitivity_batches": 2}, "svd.sensitivity_batches is only read by allocation: global"),
    ({"allocation": "global", "energy": 0.99}, "svd.energy is only read by allocation: energy"),
    ({"allocation": "per_role", "ratios": {"attention": 0.5, "mlp": 0.5}, "ratio": 0.5}, "svd.ratio is only read"),
])
def test_a_key_the_recipe_writes_that_its_allocation_does_not_read_is_refused_at_its_default(cfg, message):
    """allocation: energy with ratio: 0.5 written (the default) was accepted and ignored: only a value
    other than the default was refused."""
    with pytest.raises(UserError, match=re.escape(message)) as e:
        check_values(_written((), **cfg))
    assert e.value.key == next(k for k in cfg if k not in ("allocation", "ratios"))


def test_the_same_values_left_to_their_defaults_stay_allowed():
    check_values(_written((), allocation="energy"))
    check_values(_written((), allocation="energy", sensitivity=None, ratios=None))  # null: as left out (--set K=null)
    check_values(SVDConfig(allocation="energy", ratio=0.5, trust_region=2.0))  # made otherwise: values tell


def test_a_saved_recipe_writing_every_key_is_read_by_its_values():
    """An output's recipe.yaml writes every key, defaults filled in (recipe.to_plain): its ratio: 0.5
    under energy is no key the user wrote, so it is refused only at another value."""
    import dataclasses

    every = [f.name for f in dataclasses.fields(SVDConfig)]
    check_values(_written(every, allocation="energy", energy=0.9))
    with pytest.raises(UserError, match="svd.ratio is only read by allocation: uniform or global"):
        check_values(_written(every, allocation="energy", ratio=0.4))


def test_a_saved_recipe_loads_again():
    """The dump of a resolved energy recipe (an output's recipe.yaml: every key, ratio: 0.5 among them)
    loads again, with a --set too, and its svd pass checks."""
    from compress.recipe import parse_recipe
    from compress.recipe_dump import dump_recipe

    text = "model: flux\nteacher: toy:flux\npasses:\n  - svd: {allocation: energy, energy: 0.9}\n"
    saved = dump_recipe(parse_recipe(text, "r.yaml"))
    assert "ratio: 0.5" in saved and "trust_region: 2.0" in saved
    recipe = parse_recipe(saved, "out/recipe.yaml", ["passes.0.svd.multiple=8"])
    model = tiny_flux()
    SVDPass(recipe.passes[0].config).check(model, get_adapter(model))


ENERGY_EDIT = ("model: flux\nteacher: toy:flux\npasses:\n  - svd: {allocation: uniform, %s}\n")


def _saved_then_energy(written: str, marks: bool = True) -> str:
    """An output's recipe.yaml of a uniform svd pass writing `written`, edited to allocation: energy;
    without `marks`, as an output saved before the default marks (no header, no '# default')."""
    from compress.recipe import parse_recipe
    from compress.recipe_dump import dump_recipe

    saved = dump_recipe(parse_recipe(ENERGY_EDIT % written, "r.yaml"))
    if not marks:
        saved = re.sub(r"  # default$", "", saved.split("\n", 1)[1], flags=re.M)
    return saved.replace("allocation: uniform", "allocation: energy")


def test_an_older_saved_recipe_without_marks_is_read_by_its_values():
    """Outputs saved before the marks load as they did: every key written, so ratio: 0.5 under energy is
    taken for a default filled in, and only another value is refused."""
    from compress.recipe import parse_recipe

    edited = _saved_then_energy("ratio: 0.5", marks=False)
    assert "# default" not in edited and "ratio: 0.5" in edited
    parse_recipe(edited, "out/recipe.yaml")
    with pytest.raises(UserError, match=r"out/recipe.yaml:\d+: svd.ratio is only read by allocation: uniform"):
        parse_recipe(edited.replace("ratio: 0.5", "ratio: 0.4"), "out/recipe.yaml")


def test_a_saved_recipe_edited_to_energy_is_refused_only_the_ratio_its_recipe_wrote():
    """A saved recipe marks the keys the defaults filled in: its ratio: 0.5 left to the default is
    no key the user wrote (no refusal under energy); one the recipe wrote, at the default value, was
    judged by its value (accepted and ignored) and is refused."""
    from compress.recipe import parse_recipe

    filled = _saved_then_energy("targets: [attention]")
    assert "ratio: 0.5  # default" in filled
    assert parse_recipe(filled, "out/recipe.yaml").passes[0].config.allocation == "energy"
    written = _saved_then_energy("ratio: 0.5")
    assert "ratio: 0.5\n" in written
    with pytest.raises(UserError, match=r"out/recipe.yaml:\d+: svd.ratio is only read by allocation: uniform"):
        parse_recipe(written, "out/recipe.yaml")


EVERY_SAVED = "ratio: 0.5, ratios: null, energy: 0.99, sensitivity: null, sensitivity_batches: 2, progress: true"


def test_a_marked_saved_recipe_writing_every_saved_key_is_judged_by_what_it_wrote():
    """In a file under the marks' header, an svd pass writing ratio, ratios, energy, sensitivity,
    sensitivity_batches and progress without marks wrote them: it is no older saved recipe judged by
    value, so its ratio under energy is refused."""
    from compress.recipe import parse_recipe

    saved = _saved_then_energy("targets: [attention]")
    unmarked = re.sub(r"^(    (?:ratio|ratios|energy|sensitivity|sensitivity_batches|progress): .*)  # default$",
                      r"\1", saved, flags=re.M)
    assert "ratio: 0.5\n" in unmarked and "progress: true\n" in unmarked
    with pytest.raises(UserError, match="svd.ratio is only read by allocation: uniform or global"):
        parse_recipe(unmarked, "out/recipe.yaml")


def test_a_recipe_writing_every_saved_key_is_saved_as_it_was_judged():
    """A recipe writing every saved key itself is judged by value (energy: 0.99 under uniform passes);
    its output's recipe.yaml wrote them unmarked, and read back refused that energy. The dump marks
    each at its default, so it loads, and edited to energy its ratio: 0.5 passes as in the recipe."""
    from compress.recipe import parse_recipe
    from compress.recipe_dump import dump_recipe

    dumped = dump_recipe(parse_recipe(ENERGY_EDIT % EVERY_SAVED, "r.yaml"))
    assert "    energy: 0.99  # default\n" in dumped
    parse_recipe(dumped, "out/recipe.yaml")
    parse_recipe(_saved_then_energy(EVERY_SAVED), "out/recipe.yaml")


def _accepted(text: str, sets: list[str]) -> bool:
    from compress.recipe import parse_recipe

    try:
        parse_recipe(text, "r.yaml", sets)
    except UserError:
        return False
    return True


SOURCES = [ENERGY_EDIT % "ratio: 0.5", ENERGY_EDIT % EVERY_SAVED, ENERGY_EDIT % "targets: [attention]",
           "model: flux\nteacher: toy:flux\npasses:\n  - svd: {allocation: energy, energy: 0.9}\n",
           "model: flux\nteacher: toy:flux\npasses:\n  - svd: {allocation: global, ratio: 0.3, trust_region: 2.0}\n"]


def _variants(source: str) -> list[str]:
    """`source`, its output's recipe.yaml (marked), that with a blank first line, with its header
    deleted, and as one saved before the marks (no header, no marks)."""
    from compress.recipe import parse_recipe
    from compress.recipe_dump import dump_recipe

    dumped = dump_recipe(parse_recipe(source, "r.yaml"))
    body = dumped.split("\n", 1)[1]
    return [source, dumped, "\n" + dumped, body, re.sub(r"  # default$", "", body, flags=re.M)]


@pytest.mark.parametrize("source", SOURCES,
                         ids=["uniform-ratio", "every-saved-key", "uniform-targets", "energy", "global"])
def test_a_dump_is_accepted_under_each_allocation_exactly_where_the_recipe_it_came_from_is(source):
    """Whatever a recipe is (written by hand, a saved one, marked or not), the svd checks judge its
    dump as they judge it: under every allocation a --set gives it, one is refused exactly where the
    other is (an older saved recipe's dump was refused as loaded: its every key counted as written)."""
    from compress.recipe import parse_recipe
    from compress.recipe_dump import dump_recipe

    for text in _variants(source):
        dumped = dump_recipe(parse_recipe(text, "r.yaml"))
        for sets in ([], *([f"passes.0.svd.allocation={a}"] for a in ("uniform", "global", "energy", "per_role"))):
            assert _accepted(dumped, sets) == _accepted(text, sets), (text, sets)


def test_an_edited_mark_counts_as_the_users_where_its_value_or_a_set_changed_it():
    """A key still marked '# default' but at another value, or given by a --set, is the user's."""
    from compress.recipe import parse_recipe

    filled = _saved_then_energy("targets: [attention]")
    with pytest.raises(UserError, match=r"out/recipe.yaml:\d+: svd.ratio is only read by"):
        parse_recipe(filled.replace("ratio: 0.5  # default", "ratio: 0.4  # default"), "out/recipe.yaml")
    with pytest.raises(UserError, match=re.escape("out/recipe.yaml (--set passes.0.svd.ratio=0.5): svd.ratio is")):
        parse_recipe(filled, "out/recipe.yaml", ["passes.0.svd.ratio=0.5"])
    parse_recipe(filled.replace("    ratio: 0.5  # default\n", ""), "out/recipe.yaml")  # removed: as left out


def test_a_default_comment_in_a_recipe_without_the_saved_header_means_nothing():
    """Only a file whose first comments hold the saved recipe's line is read for marks."""
    from compress.recipe import parse_recipe

    text = "model: flux\nteacher: toy:flux\npasses:\n  - svd:\n      allocation: energy\n      ratio: 0.5  # default\n"
    with pytest.raises(UserError, match="r.yaml:6: svd.ratio is only read by allocation: uniform or global"):
        parse_recipe(text, "r.yaml")
