"""plan's count of an output Fisher sweep (compress/plan_memory.py): the taps and float64 gradients
of its targets, chunked as the pass chunks them, fisher: block and the Fishers' square roots held
beside the walk's statistics, one block's backward (moved from tests/test_plan_memory.py)."""

import pytest

from compress.plan import make_plan
from compress.recipe import parse_recipe
from tests.test_plan_memory import RECIPES


def _tapped_bytes(model, family: str, recipe, names: list[str]) -> tuple[int, int]:
    """(its targets' outputs, the widest float64 Fisher update) in bytes, as an output Fisher sweep
    taps them on the run's first calibration batch (svd_fisher.tapped)."""
    import torch

    from compress.arch import get_adapter
    from compress.inputs import SyntheticSource
    from compress.passes.svd_fisher import tapped

    batch = SyntheticSource(family, recipe.calibration, model.config).calibration()[0]
    with tapped(model, names) as (inputs, outputs), torch.enable_grad():
        get_adapter(model).predict(model, batch)
    assert not inputs  # kept only for prediction_gradients, which reads them
    taps = sum(z.numel() * z.element_size() for z in outputs.values())
    adding = max(8 * (z.numel() + 2 * z.shape[-1] ** 2) for z in outputs.values())  # (rows, out) and gᵀg
    return taps, adding


@pytest.mark.parametrize("family, targets", [("flux", "[attention, mlp]"),
                                             ("pixart", "[attention, cross_attention, mlp]")])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_an_output_fisher_sweep_counts_its_taps_and_gradients(monkeypatch, tmp_path, family, targets, checkpointing):
    """plan left out what an output Fisher's sweep taps: per target a zero tap on its output and the
    gradient of the probe at hand (the one before is dropped first; gradient checkpointing's rerun of
    the blocks does not tap them again; no target's input is kept). The toy recipes' runs peaked about
    0.25 GiB above the plan (0.68-0.70x): the toy Flux's 44 targets tap 37.5 MiB of outputs a batch.
    Counted as the tensors a tapped forward makes (Flux's double blocks read the image tokens on one
    side, the text tokens on the other; PixArt-Σ's cross-attention keys and values the caption),
    doubling with the batch."""
    import compress.plan_machine as plan_machine
    from tests.conftest import tiny_flux, tiny_pixart

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)
    make = tiny_flux if family == "flux" else tiny_pixart
    make().save_pretrained(tmp_path / "teacher")
    sizes = {}
    for batch in (4, 8):
        text = (f"model: {family}\nteacher: {tmp_path / 'teacher'}\ndevice: cpu\n"
                f"calibration: {{source: synthetic, num_prompts: 8, timesteps: 1, batch_size: {batch}}}\n"
                f"passes:\n  - svd: {{targets: {targets}, ratio: 0.5, multiple: 2, fisher: all, "
                f"gradient_checkpointing: {str(checkpointing).lower()}, progress: false}}\n")
        recipe = parse_recipe(text, str(tmp_path / "plan.yaml"))
        plan = make_plan(recipe)
        memory = plan["memory"]
        (part,) = [p for p in memory["parts"] + memory["steps_smaller"] if "taps" in p["what"]]
        assert part["what"] == "an output Fisher sweep's taps of its targets and a probe's gradients"
        assert part["keys"] == ["calibration.batch_size", "passes.0.svd.targets", "passes.0.svd.fisher_memory_gb"]
        assert "taps" not in plan["passes"][0]["statistics"]  # read, then left out of plan --json
        taps, adding = _tapped_bytes(make(), family, recipe, plan["passes"][0]["targets"])
        assert part["bytes"] == 2 * taps + adding
        sizes[batch] = part["bytes"] - adding
    assert sizes[8] == 2 * sizes[4]


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_plan_and_the_pass_chunk_an_output_fishers_targets_alike_counting_their_taps(monkeypatch, tmp_path, family):
    """fisher_memory_gb chunked the targets by their Fishers alone: PixArt-Σ at 1024² (float32, a batch of
    8) put all 260 targets in one sweep whose taps were ~197 GiB beside a 139 GiB GPU. Each target's
    taps (its output twice, svd_fisher_budget.TAP_COPIES) now count against the budget, in the plan as in the
    pass (svd_fisher_budget.sweep_chunks, on the outputs a forward of the first batch makes)."""
    import compress.plan_machine as plan_machine
    from compress.arch import get_adapter
    from compress.inputs import SyntheticSource
    from compress.passes.svd_decisions import prediction_fisher
    from compress.passes.svd_fisher import fisher_bytes
    from compress.passes.svd_fisher_budget import sweep_chunks
    from tests.conftest import tiny_flux, tiny_pixart

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)
    make = tiny_flux if family == "flux" else tiny_pixart
    model = make()
    model.save_pretrained(tmp_path / "teacher")
    adapter = get_adapter(model)
    text = (f"model: {family}\nteacher: {tmp_path / 'teacher'}\ndevice: cpu\n"
            "calibration: {source: synthetic, num_prompts: 8, timesteps: 1, batch_size: 4}\n"
            "passes:\n  - svd: {targets: [attention, mlp], ratio: 0.5, multiple: 2, fisher: all, "
            "fisher_memory_gb: GB, progress: false}\n")
    names = set(make_plan(parse_recipe(text.replace("GB", "1.0"), str(tmp_path / "p.yaml")))["passes"][0]["targets"])
    recipe = parse_recipe(text.replace("GB", "1.0"), str(tmp_path / "p.yaml"))
    infos = [i for i in adapter.linears(model) if i.name in names and prediction_fisher(recipe.passes[0].config, i)]
    fishers = sum(fisher_bytes(i.out_features, None) for i in infos)
    budget = 1.01 * fishers  # their Fishers alone fit one sweep
    recipe = parse_recipe(text.replace("GB", repr(budget / 2**30)), str(tmp_path / "p.yaml"))
    plan = make_plan(recipe)["passes"][0]["fisher"]
    batches = SyntheticSource(family, recipe.calibration, model.config).calibration()
    chunks = sweep_chunks(model, adapter, batches, infos, float(recipe.passes[0].config.fisher_memory_gb) * 2**30)
    assert len(chunks) > 1 and plan["sweeps"] == len(chunks)
    size = {i.name: fisher_bytes(i.out_features, None) for i in infos}
    assert plan["sweep_bytes"] == max(sum(size[n] for n in ch) for ch in chunks)


def test_fisher_block_and_the_fishers_square_roots_are_counted_while_the_walk_holds_its_statistics(monkeypatch):
    """toy-pixart-stream (fisher: block) planned 0.55 GiB where its run peaked at 0.65 GiB: nothing
    counted a block's own output Fisher (its backward, taps and Fishers) nor the square roots L, L⁻¹
    that the pass keeps of every target factorized so far, up to fisher_memory_gb (svd_fisher_roots.Roots)."""
    import compress.plan_statistics as ps
    from compress.recipe import load_recipe

    counted, block_fishers = [], ps.block_fishers
    monkeypatch.setattr(ps, "block_fishers", lambda *a: (found := block_fishers(*a), counted.extend(found))[0])
    plan = make_plan(load_recipe(RECIPES / "toy-pixart-stream.yaml"))
    memory = plan["memory"]
    parts = {p["what"]: p for p in memory["parts"] + memory["steps_smaller"]}
    roots = parts["the output Fishers' square roots kept for the block visited (L and L⁻¹, float64)"]
    blocks = {}  # hidden 128: a block's pairs, all of them (less than fisher_memory_gb)
    for t in plan["passes"][0]["targets"]:
        blocks.setdefault(".".join(t.split(".")[:2]), []).append(16 * (4 * 128 if t.endswith("ff.net.0.proj") else 128)**2)
    assert len(blocks) > 1 and roots["bytes"] == max(sum(pairs) for pairs in blocks.values())
    (block,) = counted  # beside factorizing its widest target, the larger of the two counts (one pass's blocks)
    assert block["what"].startswith("a block's output Fisher (fisher: block)")
    assert block["bytes"] > plan["backward"][0] // 6 + 8 * 512**2  # one block's backward of a batch, its Fishers
    assert any(p["bytes"] >= block["bytes"] and p["what"].startswith(("a block's", "factorizing")) for p in parts.values())
    resident = make_plan(load_recipe(RECIPES / "toy-pixart.yaml"))["memory"]  # fisher: all, no block's own
    assert not any(p["what"].startswith("a block's output Fisher") for p in resident["parts"] + resident["steps_smaller"])


def test_a_blocks_output_fisher_takes_one_blocks_backward_whatever_the_blocks_left(monkeypatch):
    """plan_fisher.block_fishers took a block's backward as plan["backward"] (taken over the planned
    model's blocks) over blocks_after (per group the most the run may leave, which a removal placed at
    run time makes differ): one block's backward is its own (calib_footprint.block_backward_bytes)."""
    import copy

    import compress.plan_statistics as ps
    from compress.calib_footprint import block_backward_bytes
    from compress.recipe import load_recipe

    seen, block_fishers = [], ps.block_fishers
    monkeypatch.setattr(ps, "block_fishers", lambda *a: seen.append(copy.deepcopy(a)) or block_fishers(*a))
    plan = make_plan(load_recipe(RECIPES / "toy-pixart-stream.yaml"))
    recipe, planned, taps, resident = seen[0]
    (held,) = block_fishers(recipe, planned, taps, resident)
    more = {**planned, "blocks_after": {g: 2 * n for g, n in planned["blocks_after"].items()}}
    assert block_fishers(recipe, more, taps, resident) == [held]
    blocks, f = sum(planned["blocks_after"].values()), planned["calibration"]  # here as many as planned
    token = 128 * f["itemsize"] * min(f["rows"], f["batch_rows"])  # hidden 128
    assert planned["backward"][0] == blocks * block_backward_bytes(f) + f["caption_tokens"] * token
    assert held["bytes"] > block_backward_bytes(f) > 0 and "width" not in plan["calibration"]


@pytest.mark.parametrize("sets, fishers", [([], " and its largest sweep's Fishers"),
                                           (["passes.2.svd.fisher_memory_gb=auto"], "")])
def test_the_memory_line_names_an_output_fishers_backward_once(sets, fishers):
    """plan's memory line of toy-pixart read '... an output Fisher's backward of one calibration batch
    63 MiB, an output Fisher's backward of one calibration batch: its targets' taps and a probe's
    gradients 68 MiB': two parts, one name. The first is the backward and (but with auto, which sizes
    itself to what is free) the largest sweep's Fishers; the second what the sweep taps beside them."""
    from compress.recipe import load_recipe

    memory = make_plan(load_recipe(RECIPES / "toy-pixart.yaml", sets))["memory"]
    whats = [p["what"] for p in memory["parts"] if "output Fisher" in p["what"]]  # the line's parts
    assert whats == ["an output Fisher's backward of one calibration batch" + fishers,
                     "an output Fisher sweep's taps of its targets and a probe's gradients"]
