"""compress.runner_resume: what the calibration caches are keyed by and what --resume compares."""

from compress.recipe import parse_recipe
from compress.runner import build_passes
from compress.runner_resume import fingerprint, recipe_changes


def test_spilling_activations_keeps_the_calibration_caches():
    """Where activations are kept changes no statistic: the caches' fingerprint leaves it out."""
    base = "model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [mlp]}\n"
    spilled = parse_recipe(base, "r.yaml", ["calibration.spill_activations=true"])
    other = parse_recipe(base, "r.yaml", ["calibration.batch_size=7"])
    assert fingerprint("toy:pixart", "w", spilled) == fingerprint("toy:pixart", "w", parse_recipe(base, "r.yaml"))
    assert fingerprint("toy:pixart", "w", other) != fingerprint("toy:pixart", "w", spilled)


def test_resume_allows_changes_that_cannot_change_the_result(tmp_path):
    """How far this run goes, progress bars, checkpoint cadence, Fisher sweep sizes: --resume may
    change them; anything else it names."""
    base = ("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {targets: [mlp], ratio: 0.5}\n"
            "  - distill: {steps: 4, max_steps_this_run: 1}\n")
    before = parse_recipe(base, "r.yaml")
    passes = build_passes(before)
    for edit in ("passes.1.distill.max_steps_this_run=null", "passes.1.distill.checkpoint_every=1",
                 "passes.0.svd.progress=false", "passes.0.svd.fisher_memory_gb=auto",
                 "calibration.spill_activations=true"):
        assert recipe_changes(before.raw, parse_recipe(base, "r.yaml", [edit]).raw, passes) == [], edit
    now = parse_recipe(base, "r.yaml", ["passes.1.distill.steps=5", "passes.0.svd.ratio=0.4"])
    assert recipe_changes(before.raw, now.raw, passes) == ["passes.0.svd.ratio", "passes.1.distill.steps"]
