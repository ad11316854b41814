"""The output-Fisher sweeps `plan` gives the shipped real recipes at a stated free memory (the sweep
counts of docs/PASSES.md, "Output Fishers"): `python tools/plan_sweeps.py [FREE_GIB ...]` (default 139, an H200's free memory, and
24, this machine's). Free memory is set, not measured, so the counts do not depend on the machine;
fisher_memory_gb as each recipe sets it (auto) and at the 2 GiB default."""

import sys
from pathlib import Path

import compress.plan_machine as plan_machine
import compress.runner_memory as runner_memory
from compress.plan import make_plan
from compress.recipe import load_recipe

RECIPES = ["flux-dev-deep", "pixart-sigma-50", "flux-dev-modulation"]


def sweeps(name: str, free_gib: float | None) -> list[tuple[int, float]]:
    """(sweeps, GiB a sweep) of each svd pass with an output Fisher; free_gib None: 2 GiB fixed."""
    recipe = load_recipe(Path("recipes") / f"{name}.yaml")
    recipe.device = "cpu"
    for spec in recipe.passes:
        if free_gib is None and getattr(spec.config, "fisher_memory_gb", None) == "auto":
            spec.config.fisher_memory_gb = 2.0
    runner_memory.free_memory = lambda device: int((free_gib or 0) * 2**30) or None
    plan = make_plan(recipe)
    return [(s["fisher"]["sweeps"], s["fisher"]["sweep_gib"]) for s in plan["passes"] if "fisher" in s]


def main(argv: list[str]) -> None:
    plan_machine.machine_memory = lambda: None  # no "more than the machine" warning
    for free in [None, *(float(a) for a in argv or ["139", "24"])]:
        said = "fisher_memory_gb 2" if free is None else f"auto, {free:g} GiB free"
        for name in RECIPES:
            print(f"{said:>24}  {name:<20} " + ", ".join(f"{n} sweeps of {g} GiB" for n, g in sweeps(name, free)))


if __name__ == "__main__":
    main(sys.argv[1:])
