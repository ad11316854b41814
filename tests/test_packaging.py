"""pyproject.toml's package list: every folder of compress/ (and of recipes/, installed as compress/recipes/:
package-dir) is a listed package, and every file in it that is not Python is matched by that package's
package-data, so a wheel carries the toy teachers' weights and the shipped recipes with their prompts, and
setuptools has nothing to warn about at install."""

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folders() -> dict[str, Path]:
    """Package name -> the folder it installs from, for every folder holding files."""
    found = {}
    mapped = [(path, name) for name, path in _setuptools().get("package-dir", {}).items()]  # recipes/: compress.recipes
    for top, name in (("compress", "compress"), *mapped):
        for folder in [ROOT / top, *(ROOT / top).rglob("*")]:
            if folder.is_dir() and folder.name != "__pycache__" and any(p.is_file() for p in folder.iterdir()):
                parts = folder.relative_to(ROOT / top).parts
                found[".".join([name, *parts])] = folder
    return found


def test_every_folder_is_a_listed_package():
    listed = set(_setuptools()["packages"])
    folders = _folders()
    assert set(folders) - listed == set(), "folders pyproject.toml does not list as packages"
    assert listed - set(folders) == set(), "packages pyproject.toml lists that are not there"


def test_the_shipped_recipes_are_a_package_s_data():
    """recipes/ goes into the wheel (F2 stop 54: it did not, and an install without a checkout had no recipe)."""
    assert _folders()["compress.recipes"] == ROOT / "recipes"
    assert _folders()["compress.recipes.prompts"] == ROOT / "recipes" / "prompts"


def test_every_data_file_is_package_data():
    data = _setuptools().get("package-data", {})
    unmatched = [str(p.relative_to(ROOT)) for name, folder in _folders().items() for p in folder.iterdir()
                 if p.is_file() and p.suffix not in (".py", ".pyc")
                 and not any(fnmatch.fnmatch(p.name, g) for g in data.get(name, []))]
    assert unmatched == [], "files a wheel would leave out"


def test_the_root_holds_no_package_but_compress_and_tests():
    """A package folder at the repo root shadows an installed package of its name wherever the root is
    on sys.path (`python -m pytest`): kernels/ hid Hugging Face's `kernels`, which transformers 5.25
    imports, and no test could import diffusers' Flux."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {"compress", "tests"}
