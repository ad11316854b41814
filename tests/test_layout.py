"""docs/LAYOUT.md, the module map beside DESIGN.md, names every module of compress/ (kernels in compress/kernels/) and
nothing that is gone."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_module_map_names_every_module_and_only_those():
    text = (ROOT / "docs" / "LAYOUT.md").read_text()
    named = set(re.findall(r"`(compress/[\w/]+\.py)`", text))
    present = {p.relative_to(ROOT).as_posix() for d in ("compress",) for p in (ROOT / d).rglob("*.py")}
    assert present - named == set(), "modules missing from docs/LAYOUT.md"
    assert named - present == set(), "docs/LAYOUT.md names modules that are gone"
