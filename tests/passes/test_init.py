"""compress.passes' tables: each pass's config class (passes.CONFIGS, which a recipe's options are
checked against before torch's start-up) is its pass's config_cls, and its module imports no torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from compress.passes import CONFIGS, PASSES, config_class, pass_class

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", PASSES)
def test_a_passes_config_class_is_its_config_cls(name):
    assert set(CONFIGS) == set(PASSES)
    assert config_class(name) is pass_class(name).config_cls


def test_the_config_classes_import_no_torch():
    """Nor do the recipe's checks of them: every shipped recipe is loaded, and a pass option refused."""
    code = ("import glob, sys\n"
            "from compress.passes import CONFIGS, config_class\n"
            "from compress.recipe import load_recipe, parse_recipe\n"
            "from compress.errors import UserError\n"
            "[config_class(name) for name in CONFIGS]\n"
            "[load_recipe(p) for p in glob.glob('recipes/*.yaml')]\n"
            "try:\n"
            "    parse_recipe('model: flux\\nteacher: toy:flux\\npasses: [{svd: {ratio: 2}}]\\n', 'r.yaml')\n"
            "except UserError as e:\n"
            "    print(e)\n"
            "print('torch' in sys.modules, 'diffusers' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines() == ["r.yaml:3: svd.ratio must be in (0, 1], got 2.0", "False False"], done.stderr
