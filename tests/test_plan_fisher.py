"""plan_fisher: what an svd pass's output Fishers hold, sized as the pass sizes them."""

import pytest

from compress.plan import make_plan
from compress.recipe import parse_recipe

RECIPE = """\
model: {family}
teacher: {teacher}
device: cpu
calibration: {{source: synthetic, num_prompts: 4, timesteps: 1, batch_size: 4}}
passes:
  - svd: {{targets: [attention, mlp], ratio: 0.5, multiple: 2, fisher: block, fisher_memory_gb: auto, progress: false}}
"""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_fisher_block_auto_is_chunked_in_plan_as_the_pass_chunks_it(monkeypatch, tmp_path, family):
    """fisher: block with fisher_memory_gb: auto: plan chunked each block's targets (and kept their square
    roots) at 2 GiB (svd_fisher_budget.FALLBACK_GB), the pass at half the memory free as its walk starts, so the
    two disagreed. Both now size it with svd_fisher_budget.fisher_budget, plan at what is free here less what it
    estimates the run holds by then (teacher, student, calibration activations): with the run finding that
    free, each block's chunks are the pass's (svd_fisher_budget.block_chunks): one a block at 32 GiB, several
    with auto's 1 GiB floor taken off and a few KiB free."""
    import compress.passes.svd_fisher_measure as svd_module  # SVDPass's _block_roots chunks there
    import compress.passes.svd_fisher_budget as sf
    import compress.plan_machine as plan_machine
    import compress.runner_memory as rs
    from compress.arch import get_adapter
    from compress.inputs import SyntheticSource
    from compress.passes.base import RunContext
    from compress.passes.svd import SVDPass
    from tests.conftest import tiny_flux, tiny_pixart

    make = tiny_flux if family == "flux" else tiny_pixart
    make().save_pretrained(tmp_path / "teacher")
    recipe = parse_recipe(RECIPE.format(family=family, teacher=tmp_path / "teacher"), str(tmp_path / "r.yaml"))
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)
    real_chunks, real_block_chunks = sf.fisher_chunks, svd_module.block_chunks

    def planned(free):  # (budget, chunks) of each block as plan chunks it, what plan takes the run to hold
        seen = []
        monkeypatch.setattr(sf, "fisher_chunks", lambda *a: seen.append((a[1], real_chunks(*a))) or seen[-1][1])
        monkeypatch.setattr(rs, "free_memory", lambda device: free)
        memory = make_plan(recipe)["memory"]
        monkeypatch.setattr(sf, "fisher_chunks", real_chunks)
        held = [p["bytes"] for p in memory["parts"] if p["what"].startswith(("teacher and student weights",
                                                                             "calibration activations"))]
        assert len(held) == 2
        return seen, sum(held)

    def run(free):  # (budget, chunks) of each block as the pass chunks it, `free` bytes free as it starts
        seen = []
        chunked = lambda *a: seen.append((a[5], real_block_chunks(*a))) or seen[-1][1]  # noqa: E731
        monkeypatch.setattr(svd_module, "block_chunks", chunked)
        monkeypatch.setattr(rs, "free_memory", lambda device: free)
        model = make()
        batches = SyntheticSource(family, recipe.calibration, model.config).calibration()
        ctx = RunContext(adapter=get_adapter(model), family=family, teacher=make(), run_dir=tmp_path / f"run-{free}",
                         calibration_inputs=lambda: batches, fingerprint=None)
        SVDPass(recipe.passes[0].config).run(model, ctx)
        return seen

    spare = 64 * 2**30  # free beyond what the run holds: 32 GiB a chunk, every block's targets in one
    _, resident = planned(None)
    plan, _ = planned(resident + spare)
    ran = run(spare)
    assert len(ran) == len(plan) > 1 and all(budget == spare / 2 for budget, _ in plan)  # 2 GiB before
    assert [budget for budget, _ in plan] == [budget for budget, _ in ran]
    assert [chunks for _, chunks in plan] == [chunks for _, chunks in ran] and all(len(c) == 1 for _, c in ran)

    monkeypatch.setattr(sf, "AUTO_MIN_GB", 0.0)  # no 1 GiB floor: a few KiB a chunk, several a block
    model = make()
    (first,) = ran[0][1]  # the first block's targets
    spare = 2 * sum(sf.fisher_bytes(model.get_submodule(n).out_features, None) for n in first) // 3
    plan, _ = planned(resident + spare)
    ran = run(spare)
    assert [budget for budget, _ in plan] == [budget for budget, _ in ran] == [spare / 2] * len(ran)
    assert [chunks for _, chunks in plan] == [chunks for _, chunks in ran] and len(ran[0][1]) > 1


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_plan_counts_each_targets_output_as_the_pass_measures_it(monkeypatch, tmp_path, family):
    """What plan takes each target's output on one calibration batch to be (plan_fisher._tapped: out x its
    rows x itemsize, calib_footprint.tap_tokens) and what the pass chunks the sweeps by (svd_fisher_budget.output_sizes,
    a forward of the first batch) are two counts of one thing: equal for every linear of both toys."""
    import compress.plan_fisher as pf
    import compress.plan_machine as plan_machine
    from compress.arch import get_adapter
    from compress.inputs import SyntheticSource
    from compress.passes.svd_fisher_budget import output_sizes
    from tests.conftest import tiny_flux, tiny_pixart

    make = tiny_flux if family == "flux" else tiny_pixart
    model = make()
    model.save_pretrained(tmp_path / "teacher")
    roles = "attention, mlp, modulation, embedding, output" + (", cross_attention" if family == "pixart" else "")
    text = RECIPE.format(family=family, teacher=tmp_path / "teacher").replace(
        "[attention, mlp]", f"[{roles}]").replace("fisher: block", "fisher: all")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)
    planned, real = [], pf._tapped
    monkeypatch.setattr(pf, "_tapped", lambda *a: planned.extend(real(*a)) or planned[-len(a[3]):])
    itemsize = make_plan(recipe)["calibration"]["itemsize"]
    adapter = get_adapter(model)
    batch = SyntheticSource(family, recipe.calibration, model.config).calibration()[0]
    measured = output_sizes(model, adapter, batch, [t["name"] for t in planned])
    assert len(planned) > 20 and {t["part"] for t in planned} > {"mod"}
    assert {t["name"]: t["out"] * t["rows"] * itemsize for t in planned} == measured


@pytest.mark.parametrize("fisher", ["all", "block"])
def test_auto_is_planned_at_the_free_memory_of_the_recipes_device(monkeypatch, tmp_path, fisher):
    """fisher_memory_gb auto with device: cpu on a machine with a GPU was planned at the GPU's free
    memory (svd_fisher_budget.plan_device took no recipe), the run sizing it at the CPU's."""
    import torch

    import compress.plan_machine as plan_machine
    import compress.runner_memory as rs
    from tests.conftest import tiny_pixart

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    text = RECIPE.format(family="pixart", teacher=tmp_path / "teacher").replace("fisher: block", f"fisher: {fisher}")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)
    asked = []
    monkeypatch.setattr(rs, "free_memory", lambda device: asked.append(device.type) or
                        (100 if device.type == "cuda" else 8) * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = make_plan(recipe)
    assert "cpu" in asked
    if fisher == "all":
        assert plan["passes"][0]["fisher"]["free_bytes"] == 8 * 2**30
    budgets = []
    import compress.passes.svd_fisher_budget as sf

    real = sf.fisher_budget
    monkeypatch.setattr(sf, "fisher_budget", lambda s, device, r: budgets.append(device.type) or real(s, device, r))
    make_plan(recipe)
    assert set(budgets) == ({"cpu"} if fisher == "block" else set())  # all: from free_bytes, checked above
