"""compress.recipe_shipped: a shipped recipe by its name (`dit-compress run toy-pixart`), for an install from a
wheel, which has no checkout's recipes/: pyproject installs them as compress/recipes/ (F2 stop 54: the wheel had
none, and README's first command, `dit-compress run recipes/toy-pixart.yaml`, said only 'no such recipe')."""

from pathlib import Path

import pytest

import compress
from compress import cli
from compress.recipe_shipped import bare_name, resolve_recipe, shipped_folder, shipped_hint, shipped_names

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def test_the_checkout_s_recipes_are_the_shipped_ones():
    assert shipped_folder() == RECIPES
    assert shipped_names() == sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert {"toy-pixart", "toy-flux", "pixart-sigma-50", "flux-dev-lite"} <= set(shipped_names())


def test_an_installed_wheel_s_recipes_come_first(tmp_path, monkeypatch):
    """In a wheel the recipes lie in the package, compress/recipes/, with no checkout above it."""
    package = tmp_path / "site-packages" / "compress"
    (package / "recipes").mkdir(parents=True)
    (package / "recipes" / "toy-pixart.yaml").write_text("model: pixart\n")
    monkeypatch.setattr(compress, "__file__", str(package / "__init__.py"))
    assert shipped_folder() == package / "recipes"
    assert shipped_names() == ["toy-pixart"]
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("toy-pixart") == str(package / "recipes" / "toy-pixart.yaml")


def test_no_recipes_anywhere_leaves_a_name_as_it_is(tmp_path, monkeypatch):
    """A compress with neither compress/recipes/ nor a checkout's recipes/ (site-packages has no pyproject.toml)."""
    package = tmp_path / "site-packages" / "compress"
    package.mkdir(parents=True)
    (tmp_path / "site-packages" / "recipes").mkdir()  # another distribution's folder: not ours
    monkeypatch.setattr(compress, "__file__", str(package / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    assert shipped_folder() is None and shipped_names() == []
    assert resolve_recipe("toy-pixart") == "toy-pixart"
    assert shipped_hint("toy-pixar", "run") == ""


@pytest.mark.parametrize("given, bare", [
    ("toy-pixart", True), ("flux-dev-lite", True), ("toy-pixart.yaml", False), ("toy-pixart.yml", False),
    ("recipes/toy-pixart", False), ("./toy-pixart", False), ("toy:pixart", False), ("", False), (" ", False),
])
def test_a_bare_name_has_no_folder_suffix_or_toy_prefix(given, bare):
    assert bare_name(given) is bare


def test_a_shipped_name_resolves_to_its_file_and_a_path_stays_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("toy-pixart") == str(RECIPES / "toy-pixart.yaml")
    assert resolve_recipe("pixart-sigma-50") == str(RECIPES / "pixart-sigma-50.yaml")
    for given in ("recipes/toy-pixart.yaml", "toy-pixart.yaml", "toy:pixart", "toy-pixar", "PixArt-alpha/X"):
        assert resolve_recipe(given) == given


def test_a_file_or_folder_here_of_that_name_comes_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy-pixart").write_text("model: pixart\n")
    (tmp_path / "toy-flux").mkdir()
    assert resolve_recipe("toy-pixart") == "toy-pixart"
    assert resolve_recipe("toy-flux") == "toy-flux"


@pytest.mark.parametrize("given, hint", [
    ("toy-pixar", "; did you mean the shipped recipe 'toy-pixart'? (dit-compress run toy-pixart)"),
    ("zzzzzz", "; the shipped recipes: {names}"),
    ("recipes/toy-pixart.yaml", "; the shipped recipe of that name: dit-compress run toy-pixart"),  # README's
    ("somewhere/flux-dev-lite.yml", "; the shipped recipe of that name: dit-compress run flux-dev-lite"),
    ("recipes/zzzzzz.yaml", ""),
    ("recipes/toy-pixart", ""),  # no recipe's file name
])
def test_a_recipe_not_there_is_told_the_shipped_one(given, hint):
    assert shipped_hint(given, "run") == hint.format(names=", ".join(shipped_names()))


@pytest.mark.parametrize("command", ["run", "plan", "importance"])
def test_the_commands_read_a_shipped_recipe_by_its_name(tmp_path, monkeypatch, capsys, command):
    """`dit-compress run toy-pixart`, with no recipes/ here: the shipped file is the command's RECIPE (importance's
    SOURCE), a note on stderr saying which; run's default folders are named after it, out/toy-pixart."""
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setitem(cli.COMMANDS, command, lambda args: seen.append(args) or 0)
    assert cli.main([command, "toy-pixart"]) == 0
    [args] = seen
    shipped = str(RECIPES / "toy-pixart.yaml")
    assert (args.source if command == "importance" else args.recipe) == shipped
    out = capsys.readouterr()
    assert out.out == ""
    assert " ".join(out.err.split()) == f"note: toy-pixart: the shipped recipe {shipped} (copy it to change it)"
    if command == "run":
        assert (cli._out(args), cli._run_dir(args)) == (Path("out/toy-pixart"), Path("runs/toy-pixart"))


@pytest.mark.parametrize("command", ["run", "plan"])
def test_readme_s_first_command_without_a_checkout_names_the_shipped_recipe(tmp_path, monkeypatch, capsys, command):
    """`dit-compress run recipes/toy-pixart.yaml` where no recipes/ is (an install from a wheel): said only
    'no such recipe recipes/toy-pixart.yaml'."""
    monkeypatch.chdir(tmp_path)
    assert cli.main([command, "recipes/toy-pixart.yaml"]) == 2
    assert capsys.readouterr().err == (f"dit-compress {command}: error: no such recipe recipes/toy-pixart.yaml; the "
                                       f"shipped recipe of that name: dit-compress {command} toy-pixart\n")


def test_a_mistyped_shipped_name_is_told_the_one_meant(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["plan", "toy-flx"]) == 2
    assert capsys.readouterr().err == ("dit-compress plan: error: no such recipe toy-flx; did you mean the shipped "
                                       "recipe 'toy-flux'? (dit-compress plan toy-flux)\n")
    assert cli.main(["importance", "toy-flx"]) == 2
    assert capsys.readouterr().err == ("dit-compress importance: error: toy-flx: no such recipe or teacher; did you "
                                       "mean the shipped recipe 'toy-flux'? (dit-compress importance toy-flux)\n")

