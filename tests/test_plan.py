from pathlib import Path

import pytest

from compress import load_teacher
from compress.errors import UserError
from compress.plan import make_plan
from compress.plan_words import step_words
from compress.recipe import parse_recipe


def _planned(passes: str, stream: bool = False) -> list[dict]:
    text = f"model: pixart\nteacher: toy:pixart\nstream: {str(stream).lower()}\npasses:\n{passes}"
    return make_plan(parse_recipe(text, "r.yaml"))["passes"]


IMP, RB, SVD = "  - importance: {}\n", "  - remove_blocks: {count: 1}\n", "  - svd: {targets: [mlp], ratio: 0.5}\n"


@pytest.mark.parametrize("passes, words", [
    (IMP + RB, "reused from the importance pass (line 5)"),
    (IMP + SVD + RB, "scanned here: the importance pass (line 5) scored the model before svd (line 6) changed it"),
    (IMP + "  - distill: {steps: 1}\n" + RB,
     "scanned here: the importance pass (line 5) scored the model before distill (line 6) changed it"),
    (IMP + "  - remove_blocks: {blocks: {blocks: [0]}}\n" + RB,
     "scanned here: the importance pass (line 5) scored the model before remove_blocks (line 6) changed it"),
    (IMP + SVD + IMP + RB, "reused from the importance pass (line 7)"),
    ("  - importance: {proxy_only: true}\n" + RB, "scanned here: the importance pass (line 5) has no scan scores"),
    ("  - importance: {proxy_only: true}\n  - remove_blocks: {count: 1, criterion: proxy}\n",
     "reused from the importance pass (line 5)"),
])
def test_plan_says_whether_a_removal_reuses_the_importance_scores(passes, words):
    """remove_blocks reuses an importance pass's scores only while no pass that changes weights has
    run since (Pass.changes_weights), as the run decides: the plan says which."""
    step = _planned(passes)[-1]
    assert step["scores"] == words
    assert f"scores: {words}" in step_words(step)


def test_plan_says_nothing_of_reuse_without_an_importance_pass():
    assert "scores" not in _planned(SVD + RB)[-1]
    assert "scores" not in _planned(IMP + "  - remove_blocks: {blocks: {blocks: [0]}}\n")[-1]


@pytest.mark.parametrize("passes, scans", [(IMP + RB, 0), (IMP + SVD.replace("0.5", "0.5, fisher: block") + RB, 1)])
def test_a_streamed_plan_counts_the_scan_of_stale_scores(passes, scans):
    assert _planned(passes, stream=True)[-1]["streamed_scan"]["scans"] == scans


@pytest.mark.parametrize("svd, words", [
    ("{targets: [mlp], ratio: 0.5}", None),  # the prediction's Fisher: not fitted, block-level
    ("{targets: [mlp], ratio: 0.5, fisher: block}", "fitted_to_reference: 12; sequential: true"),
    ("{targets: [mlp], ratio: 0.5, fisher: none, sequential: false}", "fitted_to_reference: 12; sequential: false"),
    ("{targets: [mlp, modulation], ratio: 0.5, fisher: modulation}", "fitted_to_reference: 12; sequential: true"),
])
def test_plan_says_which_targets_are_fitted_to_the_reference_and_whether_sequentially(svd, words):
    """The tiny toy PixArt has 6 blocks of 2 MLP linears."""
    (step,) = _planned(f"  - svd: {svd}\n")
    line = step_words(step)
    assert ("fitted_to_reference" in line) == (words is not None)
    assert words is None or words in line


def _plan_beyond(monkeypatch, capsys, calibration: str, svd: str = "{fisher: none}", have: int = 2**30):
    """(plan, stderr) of a toy recipe planned where the machine has `have` bytes (and a disk a spill fits:
    warned, not refused as test_plan_says_what_run_would_refuse_in_runs_words is)."""
    import compress.plan_machine as plan_machine
    import compress.runner_memory as runner_memory

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: have)
    monkeypatch.setattr(runner_memory, "free_bytes", lambda folder: 2**60)
    text = f"model: pixart\nteacher: toy:pixart\ndevice: cpu\ncalibration: {calibration}\npasses:\n  - svd: {svd}\n"
    plan = make_plan(parse_recipe(text, "r.yaml"))
    return plan, capsys.readouterr().err


def test_plan_warns_when_calibration_activations_would_not_fit_and_names_their_keys(monkeypatch, capsys):
    """num_prompts: 100000000 planned quietly; the run failed with an out-of-memory after loading."""
    import re

    plan, err = _plan_beyond(monkeypatch, capsys, "{num_prompts: 100000000}")
    assert plan["memory"]["bytes"] > 2**30
    line = " ".join(err.split())  # rich wraps nothing (soft_wrap), but be safe
    # at the line of the key that drives it (it said 'r.yaml: the run would ...', a tester's n14)
    assert line.startswith("warning: r.yaml:4: the run would hold about ")
    assert "more than the 1.0 GiB this machine has" in line
    assert re.search(r"calibration activations [0-9.]+ GiB \(calibration\.num_prompts, calibration\.timesteps, "
                     r"calibration\.cfg_branches; or calibration\.spill_activations: true\)$", line)
    _, err = _plan_beyond(monkeypatch, capsys, "{num_prompts: 10}")
    assert "warning" not in err
    _, err = _plan_beyond(monkeypatch, capsys, "{num_prompts: 100000000}", have=None)  # unknown: no warning
    assert "warning" not in err


def test_plan_warns_of_a_batch_size_whose_fisher_backward_would_not_fit(monkeypatch, capsys):
    _, err = _plan_beyond(monkeypatch, capsys, "{num_prompts: 10000, batch_size: 100000000000}",
                          "{fisher: all, fisher_memory_gb: 0.5}", have=8 * 2**30)
    assert "more than the 8.0 GiB this machine has: an output Fisher's backward of one calibration batch" in err
    assert "(calibration.batch_size, passes.0.svd.fisher_memory_gb; or passes.0.svd.gradient_checkpointing: true)" in err
    _, err = _plan_beyond(monkeypatch, capsys, "{num_prompts: 10000, batch_size: 32}",
                          "{fisher: all, fisher_memory_gb: 0.5}", have=8 * 2**30)
    assert "warning" not in err


def test_plan_shows_the_estimated_peak(monkeypatch, capsys):
    from compress.plan_words import print_plan

    plan, _ = _plan_beyond(monkeypatch, capsys, "{num_prompts: 10}", have=2**40)
    parts = {p["what"]: p["bytes"] for p in plan["memory"]["parts"]}
    assert parts["teacher and student weights"] == 2 * plan["params_before"] * 4
    assert parts["calibration activations"] == plan["calibration"]["bytes"]
    assert plan["memory"]["bytes"] == sum(parts.values())
    print_plan(plan)
    assert "  memory: about " in capsys.readouterr().out


def test_the_memory_a_cuda_device_has_is_its_total(monkeypatch):
    import compress.plan_machine as plan_machine
    import compress.plan_memory as pm

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(plan_machine.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(plan_machine.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(plan_machine.torch.cuda, "get_device_properties", lambda i: Props)
    assert plan_machine.device_memory("cuda:1") == (80 * 2**30, "cuda:1")
    assert plan_machine.device_memory("auto") == (80 * 2**30, "cuda:0")
    assert plan_machine.device_memory("cuda:2") is None  # not here: make_plan says so
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 16 * 2**30)
    assert plan_machine.device_memory("cpu") == (16 * 2**30, "this machine")
    memory = {"bytes": 90 * 2**30, "parts": [{"what": "w", "bytes": 90 * 2**30, "keys": ["teacher"], "fix": ""}]}
    assert pm.beyond_memory(memory, (80 * 2**30, "cuda:0")) == (
        "the run would hold about 90.0 GiB at its peak, more than the 80.0 GiB cuda:0 has: w 90.0 GiB (teacher)")
    assert pm.beyond_memory(memory, (100 * 2**30, "cuda:0")) is None


def test_run_warns_of_a_peak_beyond_the_machine_before_it_loads_the_teacher(monkeypatch, capsys, tmp_path):
    """--set calibration.num_prompts=100000000 loaded the teacher and ended later out of memory."""
    import compress.io_source_config as io_source_config
    import compress.plan_machine as plan_machine
    import compress.runner as runner
    import compress.runner_memory as runner_memory
    import compress.runner_prepare as runner_prepare

    class Loading(Exception):
        pass

    def load(*args, **kwargs):  # what was said before the teacher loads
        raise Loading(capsys.readouterr().err)

    monkeypatch.setattr(runner_prepare, "load_checked_teacher", load)
    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 2**30)
    monkeypatch.setattr(runner_memory, "free_bytes", lambda folder: 2**60)  # spilled, it would fit: warned only
    # the run's source check fetches a Hub id's config before the warning (here: PixArt-Σ's, which it
    # could plan on, and does not: the warning is of recipes planned offline)
    shipped = io_source_config.checked("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", hub=False).config
    monkeypatch.setattr(io_source_config, "hub_config", lambda repo_id: dict(shipped))

    def said_before_loading(calibration: str, teacher: str = "toy:pixart") -> str:
        text = (f"model: pixart\nteacher: {teacher}\ndevice: cpu\ncalibration: {calibration}\n"
                "passes:\n  - svd: {fisher: none}\n")
        recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
        with pytest.raises(Loading) as e:
            runner.Runner(recipe, tmp_path / "out", tmp_path / "run").prepare()
        return " ".join(str(e.value).split())

    said = said_before_loading("{num_prompts: 100000000}")
    assert said.startswith(f"warning: {tmp_path}/r.yaml:4: the run would hold about ")
    assert "more than the 1.0 GiB this machine has" in said and said.count("warning") == 1  # the plan's notes held back
    assert "warning" not in said_before_loading("{num_prompts: 10}")
    assert said_before_loading("{num_prompts: 100000000}", "someone/not-shipped") == ""  # not planned offline: the run's checks say
    assert said_before_loading("{source: synthetic, num_prompts: 100000000}", "someone/not-shipped") == ""


C48 = ("model: pixart\nteacher: toy:pixart\ndevice: cpu\ncalibration:\n  num_prompts: {prompts}\n"
       "passes:\n  - svd: {{fisher: none}}\n")


def test_plan_says_what_run_would_refuse_in_runs_words(monkeypatch, capsys, tmp_path):
    """calibration.num_prompts: 100000000 (stop 44's c48): run refuses a peak beyond the memory and the run
    folder's free disk together before the teacher loads; plan only warned the peak beyond memory (advising
    calibration.spill_activations: true, which run says changes nothing) and exited 0. Now plan warns in
    run's words, at the same line, of the disk under run's default run folder (runs/NAME; its nearest existing
    parent's), and plan --json has them as memory.refusal; still exit 0, as plan's memory warning and its note
    of a device not here (what this machine has, not the recipe); a recipe that fits: no line, null."""
    import json

    import compress.plan_machine as plan_machine
    import compress.runner_memory as runner_memory
    import compress.runner_prepare as runner_prepare
    from compress.cli import main
    from compress.runner import Runner

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: 2**30)
    monkeypatch.setattr(plan_machine, "machine_swap", lambda: 0)
    measured = []
    monkeypatch.setattr(runner_memory, "free_bytes", lambda folder: measured.append(folder) or 2 * 2**30)
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "c48.yaml"
    recipe.write_text(C48.format(prompts=100000000))
    assert main(["plan", str(recipe), "--json"]) == 0
    out, err = capsys.readouterr()
    refusal = json.loads(out)["memory"]["refusal"]
    assert measured == [Path("runs/c48")]  # run's default --run-dir, not there yet: free_bytes climbs to tmp_path
    assert refusal.startswith(f"{recipe}:5: as written, the run would hold about 61035.") and refusal.endswith(
        "at its peak, more than the memory there is (1.0 GiB) and the disk free under runs/c48 (2.0 GiB), 3.0 GiB together, "
        "which no calibration.spill_activations: true changes: calibration activations 61035.2 GiB "
        "(calibration.num_prompts, calibration.timesteps, calibration.cfg_branches)"), refusal
    assert " ".join(err.split()).startswith(  # with its default --run-dir (...): tests/test_plan_run_dir.py
        f"warning: {refusal}; `dit-compress run` would refuse this before it loads the teacher")
    monkeypatch.setattr(runner_prepare, "load_checked_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    with pytest.raises(UserError) as e:  # run's own words, of the same folder
        Runner(parse_recipe(recipe.read_text(), str(recipe)), tmp_path / "out", Path("runs/c48")).prepare()
    assert str(e.value) == refusal
    recipe.write_text(C48.format(prompts=10))
    assert main(["plan", str(recipe), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["memory"]["refusal"] is None and "warning" not in err


def test_the_peak_counts_the_largest_fisher_sweep_not_fisher_memory_gb(monkeypatch, capsys):
    """fisher_memory_gb (a limit per sweep, 2 GiB) was counted as held: the toy recipe, whose Fishers
    are ~0.02 GiB, was estimated at 2.1 GiB and warned of on a machine of 1.5 GiB."""
    from pathlib import Path

    import compress.plan_machine as plan_machine
    from compress.recipe import load_recipe

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: int(1.5 * 2**30))
    plan = make_plan(load_recipe(Path(__file__).parents[1] / "recipes" / "toy-pixart.yaml"))
    assert "warning" not in capsys.readouterr().err and plan["memory"]["bytes"] < 2**30
    sweeps = [s["fisher"]["sweep_bytes"] for s in plan["passes"] if "fisher" in s]
    fisher = next(p for p in plan["memory"]["parts"] if "Fisher" in p["what"])
    assert fisher["bytes"] == plan["backward"][0] + max(sweeps)


def test_the_peak_counts_a_fisher_bigger_than_fisher_memory_gb_that_takes_its_own_sweep(monkeypatch, capsys):
    """A target whose Fisher alone is more than the limit gets a sweep of its own and holds all of it."""
    plan, _ = _plan_beyond(monkeypatch, capsys, "{num_prompts: 10}", "{fisher: all, fisher_memory_gb: 1e-6}", 2**40)
    (fisher,) = [s["fisher"] for s in plan["passes"] if "fisher" in s]
    assert fisher["sweeps"] == fisher["targets"] and fisher["sweep_bytes"] > 1e-6 * 2**30
    memory = plan["memory"]  # the part, or beside it where a block's svd statistics and factorizing hold more
    part = next(p for p in memory["parts"] + memory["steps_smaller"]
                if p["what"] == "an output Fisher's backward of one calibration batch and its largest sweep's Fishers")
    assert part["bytes"] == plan["backward"][0] + fisher["sweep_bytes"]


@pytest.mark.parametrize("removal", ["{fraction: 0.1}", "{count: 0}", "{fraction: 0.1, iterative: true}",
                                     "{fraction: {blocks: 0.1}}"])
@pytest.mark.parametrize("before", ["", IMP])
def test_a_removal_of_no_block_plans_no_scan(removal, before):
    """A fraction too small to remove a block (the toy PixArt has 6) removes nothing, and the run
    then scans nothing (remove_blocks_budget.removes_nothing): the plan says no scan, no reuse."""
    for stream in (False, True):
        plan = make_plan(parse_recipe(f"model: pixart\nteacher: toy:pixart\nstream: {str(stream).lower()}\n"
                                      f"passes:\n{before}  - remove_blocks: {removal}\n", "r.yaml"))
        step = plan["passes"][-1]
        assert step["scans"] == 0 and "scans: 0" in step_words(step)
        assert "scores" not in step and "streamed_scan" not in step
        if not before:  # nor holds its residual streams (the importance pass's scan would)
            assert not any("skip scan" in part["what"] for part in plan["memory"]["parts"])


def test_plan_refuses_a_second_svd_pass_over_a_global_pass_s_targets_as_run_does():
    """plan listed both passes over the same modulation linears, the second's params_before counted dense,
    and said nothing; the run stopped when the second pass started, after the first's calibration."""
    text = ("model: flux\nteacher: toy:flux\npasses:\n"
            "  - svd: {targets: [modulation], allocation: global, ratio: 0.6, multiple: 8}\n"
            "  - svd:\n      targets: [modulation]\n      ranks: {modulation: 8}\n")
    with pytest.raises(UserError, match=r"^r\.yaml:6: svd: transformer_blocks\.0\.norm1\.linear, .* are already "
                                        r"factorized, some of them at least \(by the svd pass at line 4: its global"):
        make_plan(parse_recipe(text, "r.yaml"))


GLOBAL = ("model: pixart\nteacher: toy:pixart\npasses:\n  - remove_blocks: {blocks: {blocks: [1]}}\n"
          "  - svd: {targets: [attention, cross_attention, mlp], allocation: {allocation}, ratio: 0.6, multiple: 8}\n")


def test_a_pass_a_set_added_is_shown_at_its_set_not_line_1(capsys):
    """A pass --set put in the recipe has no line of the file: plan showed 'importance (line 1)'."""
    from compress.plan_words import print_plan

    recipe = parse_recipe(GLOBAL.replace("{allocation}", "uniform"), "r.yaml",
                          ["passes.0={importance: {buckets: 3}}"])
    plan = make_plan(recipe)
    assert plan["passes"][0]["line"] is None and plan["passes"][0]["set"] == "--set passes.0={importance: {buckets: 3}}"
    assert plan["passes"][1]["line"] == 5 and "set" not in plan["passes"][1]
    print_plan(plan)
    out = capsys.readouterr().out
    assert "  importance (--set passes.0={importance: {buckets: 3}}): blocks: 6;" in out and "(line 1)" not in out
    assert "  svd (line 5): " in out


def test_a_pass_a_set_added_is_named_at_its_set_where_later_steps_refer_to_it(tmp_path, capsys):
    """remove_blocks' 'reused from the importance pass (line 1)' and a second svd pass's 'by the svd pass at
    line 1' named the recipe's first line for a pass a --set put there."""
    from compress.recipe import load_recipe

    toy = Path(__file__).parents[1] / "recipes" / "toy-flux.yaml"
    plan = make_plan(load_recipe(toy, ["passes.0={importance: {buckets: 2}}"]))
    removal = next(s for s in plan["passes"] if s["pass"] == "remove_blocks")
    assert removal["scores"] == "reused from the importance pass (--set passes.0={importance: {buckets: 2}})"
    text = ("model: flux\nteacher: toy:flux\ncalibration: {source: toy, num_prompts: 4, timesteps: 2}\n"
            "passes:\n  - svd: {targets: [mlp], ratio: 0.5}\n  - svd: {targets: [mlp], ratio: 0.5}\n")
    (tmp_path / "r.yaml").write_text(text)
    first = "passes.0={svd: {targets: [mlp], allocation: global, ratio: 0.3, multiple: 8}}"
    with pytest.raises(UserError, match=r"by the svd pass at --set passes\.0=\{svd: "):
        make_plan(load_recipe(tmp_path / "r.yaml", [first]))


TOY_PIPELINE = """\
model: pixart
teacher: toy:pixart
calibration: {source: pipeline, prompts: [a cat, a dog, a fox, a car], sample_steps: 3, timesteps: 2,
              batch_size: 4}
passes:
  - svd: {targets: [attention], multiple: 8}
"""


def test_plan_refuses_what_a_pipeline_source_would_at_the_recipes_line():
    """calibration.height on a toy pipeline was refused only when the run sampled, without a line;
    a heldout larger than the prompts give left one prompt to calibrate, unsaid (14 inputs of 32
    prompts planned)."""
    text = TOY_PIPELINE.replace("batch_size: 4}", "batch_size: 4,\n              height: 64}")
    with pytest.raises(UserError, match=r"^r\.yaml:5: calibration\.height / width: the toy pipelines sample"):
        make_plan(parse_recipe(text, "r.yaml"))
    with pytest.raises(UserError, match=r"^r\.yaml \(--set calibration\.width\): calibration\.height / width"):
        make_plan(parse_recipe(TOY_PIPELINE, "r.yaml", ["calibration.width=64"]))
    with pytest.raises(UserError) as e:  # 4 inputs a prompt (2 steps x 2 branches): 3 prompts of 4 at most
        make_plan(parse_recipe(TOY_PIPELINE, "r.yaml", ["calibration.heldout=13"]))
    assert str(e.value) == ("r.yaml (--set calibration.heldout): calibration.heldout 13 asks for 4 of the 4 prompts "
                            "(4 inputs each), and at least one must calibrate: hold out at most 12 inputs, or give "
                            "more prompts")
    assert make_plan(parse_recipe(TOY_PIPELINE, "r.yaml", ["calibration.heldout=12"]))["calibration"]["rows"] == 4
    text = TOY_PIPELINE.replace("batch_size: 4}", "batch_size: 4, heldout: 8}")  # 2 prompts of 4 held out
    with pytest.raises(UserError, match=r"^r\.yaml:4 \(with --set calibration\.timesteps=1\): calibration\.heldout 8 "
                                        r"asks for 4 of the 4 prompts \(2 inputs each\)"):
        make_plan(parse_recipe(text, "r.yaml", ["calibration.timesteps=1"]))


@pytest.mark.parametrize("passes", ["  - svd: {targets: [attention, mlp], ratio: 0.5}\n",
                                    "  - remove_blocks: {blocks: {double: [1], single: [0, 2]}}\n"
                                    "  - svd: {targets: [mlp], ratio: 0.5}\n"])
def test_plan_s_parameters_by_block_add_up_to_its_totals_as_inspect_s_do(passes):
    """by_block_before/after summed the blocks' linears only: a Flux block's q/k RMSNorm weights, its
    norms, and the top level's embeddings and norms were missing, so they did not add up to
    params_before (53,776,912 against 53,775,376 on a hidden-512 Flux). Every parameter of each block
    now counts, and the top level as "-", as inspect's table by block (inspect.other_params)."""
    from compress.report import param_count

    plan = make_plan(parse_recipe(f"model: flux\nteacher: toy:flux\npasses:\n{passes}", "r.yaml"))
    teacher = load_teacher("toy:flux")
    double = teacher.transformer_blocks[0]
    assert plan["by_block_before"]["double.0"] == param_count(double)  # its q/k norms too
    assert sum(plan["by_block_before"].values()) == plan["params_before"] == param_count(teacher)
    assert sum(plan["by_block_after"].values()) == plan["params_after_planned"]
    assert plan["by_block_after"]["-"] == plan["by_block_before"]["-"]  # the top level untouched
    assert len(plan["by_block_after"]) - 1 == sum(plan["blocks_after"].values())  # removed blocks gone


def _doc_tables() -> dict[str, set[str]]:
    """{section heading: the keys its table lists} of docs/PLAN_JSON.md."""
    import re

    tables, heading = {}, None
    for line in (Path(__file__).parents[1] / "docs" / "PLAN_JSON.md").read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            tables[heading] = set()
        elif heading and (m := re.match(r"^\| `([^`]+)` \|", line)):
            tables[heading].add(m.group(1))
    return tables


def _plan_json(capsys, *argv: str) -> dict:
    import json

    from compress.cli import main

    recipes = Path(__file__).parents[1] / "recipes"
    assert main(["plan", str(recipes / argv[0]), "--json", *argv[1:]]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_doc_lists_every_key_plan_emits(capsys):
    """No document listed the keys plan --json emits: docs/PLAN_JSON.md does, and its tables are those
    of real plans of the toy recipes (a global svd pass; a fraction over Flux's two groups, --set)."""
    tables = _doc_tables()
    flux = _plan_json(capsys, "toy-flux.yaml", "--set", "passes.1.remove_blocks={fraction: 0.3}")
    pixart = _plan_json(capsys, "toy-pixart.yaml")
    for plan in (flux, pixart):
        assert set(plan) == tables["Top level"]
        assert set(plan["calibration"]) == tables["`calibration`"]
        assert set(plan["memory"]) == tables["`memory`"]
        assert set(plan["decided_later"][0]) == tables["`decided_later` entries"] - {"set"}
    (unplaced,) = flux["unplaced_removals"]
    assert set(unplaced) == tables["`unplaced_removals` entries"] - {"set"}  # (set: of a pass --set added)
    assert set(flux["passes"][1]) & tables["`passes` entries"] == {"pass", "line", "scores"}
