"""plan's estimate of the run's peak memory (compress/plan_memory.py) on the shipped real-model
recipes, planned offline on a meta teacher (an output Fisher sweep's count:
tests/test_plan_memory_fisher.py)."""

from pathlib import Path

import pytest

from compress.plan import make_plan
from compress.recipe import load_recipe, parse_recipe

RECIPES = Path(__file__).parents[1] / "recipes"


def _plan(monkeypatch, name: str, free: int | None = None, sequential=None, **sets):
    """make_plan of a shipped recipe (calibration keys under `sets` replaced, and its svd passes'
    `sequential` where given), `free` bytes free here now."""
    import compress.plan_machine as plan_machine
    import compress.runner_memory as rs

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)  # no warning of this machine
    if free is not None:
        monkeypatch.setattr(rs, "free_memory", lambda device: free)
    recipe = load_recipe(RECIPES / name)
    recipe.device = "cpu"  # this process counted (plan_memory.PROCESS_BYTES) on a machine with a GPU too
    for key, value in sets.items():
        setattr(recipe.calibration, key, value)
    for spec in recipe.passes if sequential is not None else ():
        spec.config.sequential = sequential
    return make_plan(recipe)


def test_the_peak_counts_distill_training_the_student_in_float32_with_adamw(monkeypatch):
    """flux-dev-lite planned 54.9 GiB 'at the run's peak': distill's float32 student, gradients and
    AdamW's moments (16 bytes a parameter, 137 GiB) beside the bf16 teacher were left out."""
    from compress.plan_memory import beyond_memory, memory_words

    plan = _plan(monkeypatch, "flux-dev-lite.yaml")
    memory = plan["memory"]
    parts = {p["what"]: p["bytes"] for p in memory["parts"]}
    assert memory["while"] == "distill trains"
    assert parts["teacher weights"] == 2 * plan["params_before"]  # bfloat16
    assert parts["the student's float32 weights, gradients and AdamW's moments"] == 16 * plan["params_after_planned"]
    assert memory["bytes"] == sum(parts.values()) > 139 * 2**30  # more than an H200 holds
    assert memory["other"]["bytes"] < memory["bytes"] and memory["other"]["while"] is None  # calibrating
    words = memory_words(memory)
    assert words.startswith("memory: about 159.5 GiB at the run's peak, while distill trains (teacher weights 22.2 GiB")
    assert "per process, its batches' activations not counted); before distill: about 55.4 GiB" in words
    warning = beyond_memory(memory, (139 * 2**30, "cuda:0"))
    assert "AdamW's moments 136.8 GiB (passes.2.distill.train; or FSDP over several processes" in warning


def test_the_pipeline_components_are_said_or_counted_where_their_weights_are_here(monkeypatch, tmp_path):
    """The text encoders and VAE calib_pipeline moves beside the teacher (T5-XXL: 9 GiB in bf16)
    were not in the estimate nor said to be left out."""
    import torch
    from safetensors.torch import save_file

    from compress.plan_memory import component_params, memory_words

    plan = _plan(monkeypatch, "flux-dev-stream.yaml")  # a Hub pipeline: not here to count
    assert memory_words(plan["memory"]).endswith("; the pipeline's text encoders and VAE "
                                                 "(black-forest-labs/FLUX.1-dev) come on top while "
                                                 "calibration samples, not counted")
    folder = tmp_path / "pipe"
    for name, numel in (("text_encoder", 1000), ("text_encoder_2", 3000), ("vae", 500), ("transformer", 10**6)):
        (folder / name).mkdir(parents=True)
        save_file({"w": torch.zeros(numel)}, str(folder / name / "model.safetensors"))
        save_file({"w": torch.zeros(numel)}, str(folder / name / "model.fp16.safetensors"))  # a variant: not again
    index = {"_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "tokenizer": [None, None], "tokenizer_2": [None, None],
             "vae": ["diffusers", "AutoencoderKL"],
             "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (folder / "model_index.json").write_text(__import__("json").dumps(index))
    (folder / "scheduler").mkdir()  # every part the index lists is there (pipeline_folder checks it)
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    assert component_params(str(folder), index) == 4500  # not the transformer's
    assert component_params(str(tmp_path), None) is None  # not a pipeline folder (no model_index.json)
    # the largest of what a step holds for a while: no sequential probe, no Fisher's backward here
    plan = _plan(monkeypatch, "flux-dev-stream.yaml", sequential=False, pipeline=str(folder))
    memory = plan["memory"]  # less than the svd statistics and factorizing at a block: beside them
    part = {p["what"]: p["bytes"] for p in memory["parts"] + memory["steps_smaller"]}
    assert part["the pipeline's text encoders and VAE while calibration samples"] == 4500 * 2  # bfloat16
    assert "not counted" not in memory_words(plan["memory"])
    for name in ("text_encoder", "text_encoder_2", "vae"):  # components of no parameters: plan crashed (KeyError)
        for file in (folder / name).iterdir():
            save_file({"w": torch.zeros(0)}, str(file))
    plan = _plan(monkeypatch, "flux-dev-stream.yaml", sequential=False, pipeline=str(folder))
    assert "the pipeline's text encoders" not in memory_words(plan["memory"])


def test_fisher_memory_gb_auto_is_sized_at_what_is_free_once_the_run_holds_its_weights(monkeypatch):
    """flux-dev-deep: plan said the run needs 59.4 GiB on a 23.5 GiB machine, yet granted 11 GiB a
    sweep (half what is free now); the run sizes it once teacher, student and activations are there."""
    from compress.plan_words import print_plan

    plan = _plan(monkeypatch, "flux-dev-deep.yaml", free=139 * 2**30)
    fisher = plan["passes"][2]["fisher"]
    memory = plan["memory"]
    calibrating = next(m for m in (memory, memory["other"]) if m["while"] is None)
    resident = sum(p["bytes"] for p in calibrating["parts"][:2])  # weights, activations
    assert fisher["resident_bytes"] == resident and "target_bytes" not in fisher
    assert fisher["sweep_gib"] == round((139 * 2**30 - resident) / 2 / 2**30, 1) == 42.1
    # the square roots of the Fishers a pass keeps: of the block it visits (svd_fisher_roots.Roots' groups), up
    # to its limit and the newest; no longer up to that share (44.35 GiB): the modulation pass's double
    # block, its two 18432-wide pairs (10.1 GiB) past its 2 GiB
    roots = next(p for p in calibrating["parts"] + memory["steps_smaller"] if p["what"].startswith("the output Fishers'"))
    assert roots["bytes"] == int(2 * 2**30 + 16 * 18432**2) and "passes.3.svd.targets" in roots["keys"]
    small = _plan(monkeypatch, "flux-dev-deep.yaml", free=24 * 2**30)["passes"][2]["fisher"]
    assert small["sweep_gib"] == 1.0 and small["sweeps"] > fisher["sweeps"]  # less than it holds: at least 1 GiB
    print_plan(plan)


@pytest.mark.parametrize("sequential, words, blocks", [
    (None, "two top levels and up to two blocks' worth: a block's dense linears beside their factors", 2),
    (False, "two top levels and a block", 1)])
def test_the_streamed_weights_say_the_blocks_they_count(monkeypatch, sequential, words, blocks):
    """flux-dev-stream: 'streamed weights (two top levels and a block) 1.5 GiB' counted two blocks
    (svd.sequential keeps a block's dense linears beside their factors)."""
    plan = _plan(monkeypatch, "flux-dev-stream.yaml", sequential=sequential)
    s = plan["stream"]
    (part,) = [p for p in plan["memory"]["parts"] if p["what"].startswith("streamed weights")]
    assert part["what"] == f"streamed weights ({words})"
    assert part["bytes"] == 2 * (2 * s["top_level_params"] + blocks * s["largest_block_params"])


def _toy_plan(monkeypatch, tmp_path, passes: str, sets=()):
    import compress.plan_machine as plan_machine
    from compress.recipe import parse_recipe

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)
    text = ("model: pixart\nteacher: toy:pixart\ncalibration: {source: toy, num_prompts: 4, timesteps: 2}\n"
            f"passes:\n{passes}")
    return make_plan(parse_recipe(text, str(tmp_path / "r.yaml"), list(sets)))


def _student_part(plan) -> int:
    memory = plan["memory"]
    parts = memory["parts"] if memory["while"] == "distill trains" else memory["other"]["parts"]
    return next(p["bytes"] for p in parts if p["what"].startswith("the student's float32"))


def test_a_distill_before_the_svd_trains_the_student_as_it_is_then(monkeypatch, tmp_path):
    """The student was always the one after every pass: a distill before an svd trains the whole
    model (a reviewer: 9 MiB planned where it holds 27)."""
    plan = _toy_plan(monkeypatch, tmp_path, "  - distill: {steps: 20}\n"
                                            "  - svd: {targets: [attention, mlp], ratio: 0.2, multiple: 8}\n")
    assert plan["params_after_planned"] < plan["params_before"]
    assert _student_part(plan) == 16 * plan["params_before"]


def test_the_distill_student_is_bounded_by_the_global_budget_and_trains_what_train_says(monkeypatch, tmp_path):
    """After a global svd pass the student is at most the budget's count (it was counted dense), and
    train: factors / non_factors train fewer (4 bytes for the untrained float32 weights, 16 trained)."""
    svd = "  - svd: {targets: [attention, mlp], ratio: 0.3, multiple: 8, allocation: global}\n"
    plans = {train: _toy_plan(monkeypatch, tmp_path, svd + f"  - distill: {{steps: 20, train: {train}}}\n")
             for train in ("all", "factors", "non_factors")}
    full = plans["all"]
    assert full["params_after_at_most"] < full["params_after_planned"]
    assert _student_part(full) == 16 * full["params_after_at_most"]
    student = full["passes"][1]["student"]
    assert student["params"] == full["params_after_at_most"]
    budget = full["decided_later"][0]["budget_params"]
    factors = plans["factors"]["passes"][1]["student"]["trained"]
    assert factors == budget  # none factorized on the meta model yet: what the budget may factorize
    assert _student_part(plans["factors"]) == 4 * student["params"] + 12 * budget < _student_part(full)
    assert _student_part(plans["non_factors"]) == 16 * student["params"]  # no factors known: a bound


def test_a_component_s_index_names_the_files_counted_not_the_single_file_beside_them(tmp_path):
    from safetensors.torch import save_file

    from compress.plan_memory import component_files
    import json
    import torch

    folder = tmp_path / "text_encoder"
    folder.mkdir()
    save_file({"w": torch.zeros(1000)}, str(folder / "model.safetensors"))
    save_file({"w": torch.zeros(1000)}, str(folder / "model-00001-of-00001.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    assert component_files(folder) == [folder / "model-00001-of-00001.safetensors"]
    (folder / "model.safetensors.index.json").unlink()
    (folder / "model-00001-of-00001.safetensors").unlink()
    save_file({"w": torch.zeros(10)}, str(folder / "model.fp16.safetensors"))
    assert component_files(folder) == [folder / "model.safetensors"]  # plain over a variant
    (folder / "model.safetensors").unlink()
    save_file({"w": torch.zeros(10)}, str(folder / "model.bf16.safetensors"))
    assert component_files(folder) == [folder / "model.bf16.safetensors"]  # one variant, not both


def test_the_checkpointed_backward_never_exceeds_the_plain_one():
    """A long caption beside few image tokens (16 beside 300; toy:pixart in its pipeline was counted so)
    planned 'about 3 MiB per calibration batch (4 MiB with svd.gradient_checkpointing: true)': the
    caption was counted as every block's input when checkpointed, not at all without."""
    from types import SimpleNamespace

    from compress.calib_footprint import backward_bytes

    config = SimpleNamespace(num_attention_heads=2, attention_head_dim=8)
    for tokens, caption, blocks in ((16, 300, 1), (16, 300, 2), (4096, 300, 28), (4608, 0, 57), (1, 512, 1)):
        f = {"itemsize": 2, "rows": 8, "batch_rows": 4, "tokens": tokens, "caption_tokens": caption}
        plain, checkpointed = backward_bytes(f, config, blocks)
        assert checkpointed <= plain, (tokens, caption, blocks)


def _calib_bytes(run_dir) -> dict[str, list[int]]:
    """Tensor bytes of each calibration cache file a run wrote, by what it holds: a block group's
    statistics ('double', 'single'), a within-block re-run's ('stage'), the conditioning's."""
    import torch

    found: dict[str, list[int]] = {}
    for file in sorted(run_dir.glob("calib/*/*/*.pt")):
        stats = torch.load(file, weights_only=True)
        size = sum(t.nbytes for st in stats.values() for t in st.values() if isinstance(t, torch.Tensor))
        found.setdefault(file.name.split("-")[0], []).append(size)
    return found


@pytest.mark.parametrize("sequential", [False, True])
def test_the_svd_statistics_are_what_its_calibration_holds(monkeypatch, tmp_path, sequential):
    """plan's peak left out the svd pass's float64 statistics (a Gram per block input, with the
    reference stream's cross term; the conditioning's throughout): a toy Flux at hidden 384 planned
    159 MiB where the run peaked at 1.0-1.2 GiB. The planned terms are the bytes of the tensors
    calibration holds, as its cache files keep them."""
    import compress.plan_machine as plan_machine
    import compress.plan_memory as pm
    from compress.recipe import parse_recipe
    from tests.conftest import tiny_flux
    from tests.runner_helpers import run_recipe

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)
    tiny_flux().save_pretrained(tmp_path / "teacher")
    text = (f"model: flux\nteacher: {tmp_path / 'teacher'}\ndevice: cpu\n"
            "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}\n"
            "passes:\n  - svd: {targets: [attention, mlp, modulation], ratio: 0.5, multiple: 2, "
            f"fisher: none, sequential: {str(sequential).lower()}, progress: false}}\n")
    plan = make_plan(parse_recipe(text, str(tmp_path / "plan.yaml")))
    stats = plan["passes"][0]["statistics"]
    run_recipe(tmp_path, text, "run")
    held = _calib_bytes(tmp_path / "run-run")
    blocks = held["double"] + held["single"]
    assert stats["block"] == max(blocks) > 0 and stats["where"] == "double 0"
    assert stats["module"] == "transformer_blocks.0"  # said by its module name, not "blocks 0" (PixArt's group)
    assert stats["held"] == sum(held["conditioning"]) > 0  # every modulation linear's conditioning
    assert stats["sequential"] is sequential
    assert stats["bytes"] == stats["held"] + (2 if sequential else 1) * max(blocks)
    assert ("stage" in held) is sequential and max(held.get("stage", [0])) <= stats["block"]  # re-runs: a bound
    parts = {p["what"]: p["bytes"] for p in plan["memory"]["parts"]}
    assert parts[next(w for w in parts if w.startswith("svd statistics (float64; transformer_blocks.0 holds most"))] == stats["bytes"]
    widest = stats["widest"]
    assert parts[f"factorizing the widest target ({widest}, float64)"] == stats["factorize"] > 0
    assert parts["this process (python, torch, diffusers)"] == pm.PROCESS_BYTES
    assert plan["memory"]["bytes"] == sum(parts.values())


def test_this_process_is_counted_where_the_run_computes_on_the_cpu(monkeypatch):
    """Python with torch and diffusers imported, the held-out inputs and the teacher's reference predictions
    made, holds about 550 MiB (plan_memory.PROCESS_BYTES; 500 MiB read before the teacher loads was counted,
    while toy runs held 549-558 MiB besides their weights as the first pass started): on the CPU that is the
    machine's memory the estimate is compared with; a GPU's is not."""
    from compress.plan_memory import PROCESS_BYTES, beyond_memory

    memory = _plan(monkeypatch, "flux-dev-stream.yaml")["memory"]
    (part,) = [p for p in memory["parts"] if p["what"] == "this process (python, torch, diffusers)"]
    assert part["bytes"] == PROCESS_BYTES == 550 * 2**20
    warning = beyond_memory({**memory, "parts": [part], "bytes": part["bytes"]}, (2**20, "this machine"))
    assert warning.endswith("this machine has: this process (python, torch, diffusers) 550 MiB")  # no empty ()
    recipe = load_recipe(RECIPES / "flux-dev-stream.yaml")
    recipe.device = "cuda"
    assert not any(p["what"].startswith("this process") for p in make_plan(recipe)["memory"]["parts"])


def test_statistics_of_targets_no_block_holds_are_named_without_a_block(tmp_path):
    """A pass whose targets' statistics are all kept over the walk (the modulation linears' conditioning)
    printed "svd statistics (float64; None holds most)"."""
    text = ("model: flux\nteacher: toy:flux\ndevice: cpu\npasses:\n"
            "  - svd: {targets: [modulation], ranks: {modulation: 8}, fisher: none}\n")
    plan = make_plan(parse_recipe(text, str(tmp_path / "plan.yaml")))
    assert plan["passes"][0]["statistics"]["where"] is None
    words = [p["what"] for p in plan["memory"]["parts"] if p["what"].startswith("svd statistics")]
    assert words == ["svd statistics (float64; held over the whole walk, no block's own)"]


def test_run_refuses_a_peak_beyond_the_memory_and_the_run_folders_free_disk(monkeypatch, capsys, tmp_path):
    """calibration.num_prompts: 1000000000 (a tester's c48): plan warned, run computed, ran out of memory in
    its first pass and advised calibration.spill_activations: true (~300 TB on disk). A peak more than the
    memory and the run folder's free disk together fits however the run spills: refused before the teacher
    loads, at the line of the key that drives it; one a spill could hold is warned only (test_plan)."""
    import compress.plan_machine as plan_machine
    import compress.runner_memory as rs
    import compress.runner_prepare as runner_prepare
    from compress.errors import UserError
    from compress.runner import Runner

    def load(*args, **kwargs):
        raise AssertionError("the teacher loaded")

    monkeypatch.setattr(runner_prepare, "load_checked_teacher", load)
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 2**30)
    monkeypatch.setattr(rs, "free_bytes", lambda folder: 2 * 2**30)
    text = ("model: pixart\nteacher: toy:pixart\ndevice: cpu\ncalibration:\n  num_prompts: 100000000\n"
            "passes:\n  - svd: {fisher: none}\n")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    with pytest.raises(UserError) as e:
        Runner(recipe, tmp_path / "out", tmp_path / "run").prepare()
    said = str(e.value)
    assert said.startswith(f"{tmp_path}/r.yaml:5: as written, the run would hold about 61035.") and said.endswith(
        f"at its peak, more than the memory there is (1.0 GiB) and the disk free under {tmp_path / 'run'} (2.0 GiB), "
        "3.0 GiB together, which no calibration.spill_activations: true changes: calibration activations "
        "61035.2 GiB (calibration.num_prompts, calibration.timesteps, calibration.cfg_branches)"), said
    assert "warning" not in capsys.readouterr().err  # its warning's spill advice not said before it


def test_the_memory_warning_names_the_line_of_the_key_that_drives_it():
    """plan's warning said 'r.yaml: the run would hold ...' (a tester's n14): the line of the first key of its
    largest part the recipe gives (or its --set), the recipe alone where it gives none (defaults)."""
    from compress.plan_memory import memory_where

    recipe = parse_recipe("model: pixart\nteacher: toy:pixart\ncalibration:\n  timesteps: 4\npasses:\n  - svd\n",
                          "r.yaml", ["calibration.num_prompts=9"])
    part = {"what": "calibration activations", "bytes": 9, "fix": "",
            "keys": ["calibration.num_prompts", "calibration.timesteps"]}
    weights = {"what": "teacher and student weights", "bytes": 100, "keys": ["teacher", "compute_dtype"], "fix": ""}
    assert memory_where(recipe, _peak(part)) == "r.yaml (--set calibration.num_prompts)"
    assert memory_where(recipe, _peak(dict(part, keys=["calibration.timesteps"]))) == "r.yaml:4"
    assert memory_where(recipe, _peak(part, weights)) == "r.yaml:2"  # the largest part's key first
    assert memory_where(recipe, _peak(part, weights), teacher_given=True) == "r.yaml"  # --teacher: not line 2
    assert memory_where(recipe, _peak(dict(part, keys=["calibration.batch_size"]))) == "r.yaml"


def _peak(*parts: dict) -> dict:
    return {"bytes": sum(p["bytes"] for p in parts), "parts": list(parts)}


def test_the_refusal_of_a_peak_beyond_memory_and_disk_names_stream_and_counts_swap(monkeypatch):
    """Weights most of the peak (not streamed): the refusal said 'it fits in no way, not even with
    calibration.spill_activations: true' and dropped the warning's fix, stream: true, which would fit (R2's
    mem2). And a machine's swap, where no cgroup limit binds, is counted in the refusal's bound (a run
    through it crawls, but ran): said where it counted."""
    from types import SimpleNamespace

    import compress.plan_machine as plan_machine
    import compress.plan_memory as pm
    import compress.runner_memory as rm

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 64 << 30)
    monkeypatch.setattr(plan_machine, "machine_swap", lambda: 0)
    monkeypatch.setattr(rm, "free_bytes", lambda folder: 20 << 30)
    memory = _peak(pm._part(pm.WEIGHTS, 95 << 30, ["teacher", "compute_dtype"], "stream: true"),
                   pm._part("calibration activations", 5 << 30, ["calibration.num_prompts"],
                            "calibration.spill_activations: true"))
    cpu = SimpleNamespace(device="cpu")
    assert pm.beyond_disk(cpu, memory, "runs/x") == (
        "as written, the run would hold about 100.0 GiB at its peak, more than the memory there is (64.0 GiB) and "
        "the disk free under runs/x (20.0 GiB), 84.0 GiB together, which no calibration.spill_activations: true "
        "changes: teacher and student weights 95.0 GiB (teacher, compute_dtype; stream: true)")
    monkeypatch.setattr(plan_machine, "machine_swap", lambda: 16 << 30)
    assert pm.beyond_disk(cpu, memory, "runs/x") is None  # 64 + 16 + 20 GiB: not refused
    monkeypatch.setattr(plan_machine, "machine_swap", lambda: 8 << 30)
    assert "more than the memory there is (72.0 GiB, 8.0 GiB of it swap) and the disk free" in \
        pm.beyond_disk(cpu, memory, "runs/x")


def test_swap_is_counted_only_where_no_cgroup_limit_binds(monkeypatch, tmp_path):
    import compress.plan_machine as plan_machine

    meminfo = "MemTotal:       1000 kB\nSwapTotal:       2048 kB\nSwapFree:        2048 kB\n"
    real = plan_machine.Path
    monkeypatch.setattr(plan_machine, "Path", lambda p: real(tmp_path / "meminfo") if p == "/proc/meminfo" else real(p))
    (tmp_path / "meminfo").write_text(meminfo)
    monkeypatch.setattr(plan_machine, "_physical_memory", lambda: 8 << 30)
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 8 << 30)
    assert plan_machine.machine_swap() == 2 << 20
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 4 << 30)  # a container's limit
    assert plan_machine.machine_swap() == 0


def test_swap_is_counted_within_the_cgroup_s_swap_max(monkeypatch, tmp_path):
    """A container whose cgroup v2 memory.swap.max is 0 counted the host's SwapTotal (R3): now none;
    'max' is no limit, a number caps it."""
    import compress.plan_machine as plan_machine

    real, read = plan_machine.Path, plan_machine._read_int
    monkeypatch.setattr(plan_machine, "Path", lambda p: real(tmp_path / "meminfo") if p == "/proc/meminfo" else real(p))
    (tmp_path / "meminfo").write_text("MemTotal:       1000 kB\nSwapTotal:       2048 kB\n")
    monkeypatch.setattr(plan_machine, "_physical_memory", lambda: 8 << 30)
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 8 << 30)
    for swap_max, counted in (("0", 0), ("max", 2 << 20), ("1048576", 1 << 20), (None, 2 << 20)):
        monkeypatch.setattr(plan_machine, "_read_int", lambda p: (read(str(tmp_path / "swap.max")) if swap_max is not None
                                                        else None) if p.endswith("memory.swap.max") else read(p))
        (tmp_path / "swap.max").write_text(f"{swap_max}\n")
        assert plan_machine.machine_swap() == counted, swap_max


def test_the_refusal_says_the_peak_and_the_room_it_passes_so_they_differ(monkeypatch):
    """R1: a peak of 10.03 GiB over 8 GiB of memory and 2.01 GiB of disk read 'about 10.0 GiB at its peak, more
    than the memory there is (8.0 GiB) and the disk free under runs/x (2.0 GiB) together': as equal, in a
    refusal. The peak and the total are said together (calib_footprint.human_sizes), the total named."""
    from types import SimpleNamespace

    import compress.plan_machine as plan_machine
    import compress.plan_memory as pm
    import compress.runner_memory as rm

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 8 << 30)
    monkeypatch.setattr(plan_machine, "machine_swap", lambda: 0)
    monkeypatch.setattr(rm, "free_bytes", lambda folder: int(2.01 * 2**30))
    memory = _peak(pm._part(pm.WEIGHTS, int(10.03 * 2**30), ["teacher"], "stream: true"))
    assert pm.beyond_disk(SimpleNamespace(device="cpu"), memory, "runs/x").startswith(
        "as written, the run would hold about 10.03 GiB at its peak, more than the memory there is (8.0 GiB) and the "
        "disk free under runs/x (2.0 GiB), 10.01 GiB together, which no")
