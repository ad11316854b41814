"""plan_words: plan's words for each pass, its parameters and its total, from a plan's dict (here
built by hand, but for the calibration line of a real plan; the tests of a plan that make_plan builds and
prints are in tests/test_plan*.py)."""

import json
from pathlib import Path

import pytest

from compress import cli
from compress.passes.svd import LATER
from compress.plan_words import step_words


def test_a_pass_plan_counts_long_lists_and_ranks_instead_of_dumping_them():
    """Flux.1-dev's svd pass has hundreds of targets: the line counts them and the ranks by value."""
    names = [f"single_transformer_blocks.{i}.proj_out" for i in range(30)]
    ranks = {**{n: 256 for n in names[:20]}, **{n: 64 for n in names[20:29]}, names[29]: "dense"}
    words = step_words({"pass": "svd", "line": 3, "targets": names, "ranks": ranks,
                        "params_before": 12345678, "method": "whitened", "skip_scan": True,
                        "fisher": {"sweeps": 2}})
    assert words == ("targets: 30 (single_transformer_blocks.0.proj_out, single_transformer_blocks.1.proj_out, "
                     "…, single_transformer_blocks.29.proj_out); ranks: 64 ×9, 256 ×20, dense ×1; "
                     "params_before: 12,345,678; method: whitened; skip_scan: true")


def test_ranks_that_are_all_alike_are_said_once():
    assert step_words({"ranks": {"a": LATER, "b": LATER}}) == f"ranks: {LATER}"
    assert step_words({"ranks": {}, "budget": {"double": 2}}) == 'ranks: none; budget: {"double": 2}'


@pytest.mark.parametrize("removal, used", [
    ("remove_blocks: {blocks: {blocks: [1]}}", False),  # explicit blocks: no scan
    ("remove_blocks: {count: {blocks: 0}, criterion: learned}", False),  # a removal of none (8b62c74)
    ("remove_blocks: {count: {blocks: 1}}", True),  # blocks scanned by importance
])
def test_plan_says_when_no_pass_calibrates(tmp_path, capsys, removal, used):
    """A recipe whose passes read no calibration input printed 'calibration: 160 inputs of 16 + 8 caption
    tokens; each block's activations ... hold about 3 MiB at once, ...' all the same; plan --json's
    calibration.used says which."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: pixart\nteacher: toy:pixart\npasses:\n  - {removal}\n")
    assert cli.main(["plan", str(recipe)]) == 0
    line = capsys.readouterr().out.splitlines()[1].strip()
    assert line.startswith("calibration: none (no pass calibrates") != used and line.startswith("calibration: 160 inputs") == used
    assert cli.main(["plan", str(recipe), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]["used"] is used


@pytest.mark.parametrize("passes, used, drawn", [
    ("distill: {steps: 2, warmup_steps: 0, data: teacher_samples}", False, True),  # samples on the prompts
    ("distill: {steps: 2, warmup_steps: 0, data: toy}", False, False),
    ("svd: {ratio: 0.5}", True, True),
])
def test_plan_says_a_distill_on_teacher_samples_draws_calibration_inputs(tmp_path, capsys, passes, used, drawn):
    """distill's data: teacher_samples samples the teacher on the calibration inputs (through a pipeline
    source: sampling the pipeline, minutes), but calibrates on none: plan said 'calibration: none (no pass
    calibrates: the run draws only its held-out inputs)'. Now the inputs are said drawn, without
    activations (calibration.drawn; calibration.used stays false: memory counts none)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: pixart\nteacher: toy:pixart\npasses:\n  - {passes}\n")
    assert cli.main(["plan", str(recipe)]) == 0
    line = " ".join(capsys.readouterr().out.splitlines()[1].split())
    assert line.startswith("calibration: none") != drawn
    assert ("calibration: 160 inputs drawn, though no pass calibrates" in line) == (drawn and not used)
    assert cli.main(["plan", str(recipe), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    calib = plan["calibration"]
    assert (calib["used"], calib["drawn"], calib["source"]) == (used, drawn, "toy")
    assert ("activations" in json.dumps(plan["memory"]["parts"])) == used  # none held by teacher samples


def test_the_pipeline_draw_is_said_to_take_minutes():
    """Through a pipeline source, the inputs distill samples on are the pipeline's own samples."""
    from compress.plan_words import NO_CALIBRATION, calibration_words

    calib = {"used": False, "drawn": True, "source": "pipeline", "rows": 40}
    assert calibration_words(calib).startswith("calibration: 40 inputs drawn, sampling the pipeline (minutes), "
                                               "though no pass calibrates")
    assert calibration_words(dict(calib, drawn=False)) == NO_CALIBRATION


def test_a_distill_on_teacher_samples_counts_the_pipeline_it_samples(tmp_path, monkeypatch):
    """Through a pipeline source, distill's teacher samples draw the calibration inputs (calibration.drawn)
    from the pipeline, its text encoders and VAE beside the teacher, as an svd pass's do; plan counted
    them only where some pass calibrates (calibration.used): the peak before distill left them out, and a
    Hub pipeline's note that they are not counted was missing. One rule: plan.draws."""
    import compress.plan_machine as plan_machine
    import compress.plan_memory as plan_memory
    from compress.plan import make_plan
    from compress.pipeline_folder import folder_index
    from compress.plan_memory import memory_words
    from compress.recipe import parse_recipe
    from tests.pipelines import pixart_pipeline

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)  # no warning of this machine
    folder = pixart_pipeline(tmp_path / "pipe")
    what = "the pipeline's text encoders and VAE while calibration samples"

    def planned(passes="distill: {steps: 2, warmup_steps: 0, data: teacher_samples}"):
        recipe = parse_recipe(f"model: pixart\nteacher: {folder}\ncalibration: {{source: pipeline, prompts: [a cat, "
                              "a dog], sample_steps: 2, timesteps: 2, batch_size: 2, heldout: 2}\npasses:\n"
                              f"  - {passes}\n", str(tmp_path / "r.yaml"))
        recipe.device = "cpu"
        return make_plan(recipe)

    plan = planned()
    memory = plan["memory"]
    assert (plan["calibration"]["used"], plan["calibration"]["drawn"]) == (False, True)
    before = {p["what"]: p["bytes"] for p in memory["other"]["parts"]}  # before distill trains: sampling
    assert before[what] == plan_memory.component_params(str(folder), folder_index(str(folder))) * 4 > 0  # float32
    assert "before distill: about " in memory_words(memory) and what in memory_words(memory)
    assert what not in memory_words(planned("remove_blocks: {blocks: {blocks: [0]}}")["memory"])  # draws none
    monkeypatch.setattr(plan_memory, "component_params", lambda source, index: None)  # a Hub id: not here to count
    assert memory_words(planned()["memory"]).endswith(
        f"; the pipeline's text encoders and VAE ({folder}) come on top while calibration samples, not counted")


def test_plan_s_role_table_says_its_ratio_is_of_the_teacher(tmp_path, capsys):
    """The role table's ratio is after / the teacher's parameters, removed blocks included; inspect's
    'of dense' is of the student's remaining layers (this recipe's mlp: plan 39.3%, inspect 47.1%),
    and neither table said which base it used."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: pixart\nteacher: toy:pixart\npasses:\n  - remove_blocks: {blocks: {blocks: [4]}}\n"
                      "  - svd: {ratio: 0.5, multiple: 8, targets: [mlp]}\n")
    assert cli.main(["plan", str(recipe)]) == 0
    printed = capsys.readouterr().out
    mlp = next(line for line in printed.splitlines() if line.startswith("│ mlp "))
    assert mlp.split("│")[1:-1] == [" mlp             ", " 790,272 ", "         310,400 ", "  39.3% "], mlp
    after = " ".join(printed[printed.index("└"):].split())
    assert ("ratio: after / before, of the teacher's parameters (removed blocks count in before); inspect's "
            "'of dense' is of the student's remaining layers") in after, after


@pytest.mark.parametrize("toy, minutes", [(True, False), (False, True)])
def test_the_pipeline_draw_takes_minutes_only_in_a_real_pipeline(toy, minutes):
    """A toy's pipeline (toy:pixart, toy:flux, a saved one) samples in seconds: plan said '(minutes)' of it."""
    from compress.plan_words import calibration_words

    line = calibration_words({"used": False, "drawn": True, "source": "pipeline", "toy_pipeline": toy, "rows": 4})
    assert line.startswith("calibration: 4 inputs drawn, sampling the pipeline")
    assert ("(minutes)" in line) == minutes


def test_plan_samples_the_toy_pipeline_without_minutes(tmp_path, capsys):
    """distill on teacher samples through the toy:pixart pipeline: 'calibration: 4 inputs drawn, sampling
    the pipeline (minutes), though ...' though it samples in seconds; now no '(minutes)'."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: pixart\nteacher: toy:pixart\npasses:\n"
                      "  - distill: {steps: 2, warmup_steps: 0, data: teacher_samples}\n")
    sets = ["--set", "calibration.source=pipeline", "--set", "calibration.prompts=[a 1, a 2]",
            "--set", "calibration.sample_steps=2", "--set", "calibration.timesteps=2"]
    assert cli.main(["plan", str(recipe), *sets]) == 0
    line = " ".join(capsys.readouterr().out.splitlines()[1].split())
    assert line.startswith("calibration: 4 inputs drawn, sampling the pipeline, though no pass calibrates")
    assert cli.main(["plan", str(recipe), *sets, "--json"]) == 0
    calib = json.loads(capsys.readouterr().out)["calibration"]
    assert (calib["source"], calib["toy_pipeline"]) == ("pipeline", True)


@pytest.mark.parametrize("pipeline", ["toy:pixart", "saved"])
def test_a_toy_pipeline_s_text_encoder_and_vae_are_counted(tmp_path, monkeypatch, pipeline):
    """A toy's pipeline (toy:pixart, or a folder its save_pretrained wrote) has its own text encoder and
    VAE, which plan can count: its memory line said they 'come on top while calibration samples, not
    counted', as of a Hub pipeline whose configs are not here."""
    import compress.plan_machine as plan_machine
    from compress.plan import make_plan
    from compress.plan_memory import memory_words
    from compress.recipe import parse_recipe
    from compress.toy.weights import load_text_encoder, load_toy_pipeline

    monkeypatch.setattr(plan_machine, "machine_memory", lambda: None)  # no warning of this machine
    if pipeline == "saved":
        load_toy_pipeline("pixart").save_pretrained(tmp_path / "pipe")
        pipeline = str(tmp_path / "pipe")
    recipe = parse_recipe(f"model: pixart\nteacher: toy:pixart\ncalibration: {{source: pipeline, pipeline: {pipeline}, "
                          "prompts: [a 1, a 2], sample_steps: 2, timesteps: 2}\npasses:\n"
                          "  - distill: {steps: 2, warmup_steps: 0, data: teacher_samples}\n", str(tmp_path / "r.yaml"))
    memory = make_plan(recipe)["memory"]
    parts = {p["what"]: p["bytes"] for p in memory["other"]["parts"]}
    encoder = sum(p.numel() for p in load_text_encoder().parameters())  # the toy VAE has no parameters
    assert parts["the pipeline's text encoders and VAE while calibration samples"] == encoder * 4 > 0  # float32
    assert "come on top while calibration samples, not counted" not in memory_words(memory)


def test_plan_at_40_columns_keeps_role_names_and_numbers_whole(tmp_path, capsys, monkeypatch):
    """At COLUMNS=40 the role table cut its names and header ('attent…', 'cross_…', '(plann…'). Now
    role names and numbers stay whole (never folded: 'cross_' over 'attention' read as two roles), and
    the column left out is said."""
    from compress.report import results

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ratio: 0.5, multiple: 8}\n")
    monkeypatch.setattr(results, "_width", 40)
    assert cli.main(["plan", str(recipe)]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("parameters by role"):printed.index("└")]
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 40
    names = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    assert names == ["attention", "cross_attention", "mlp", "output", "embedding", "modulation"], names
    mlp = next(line for line in table.splitlines() if line.startswith("│ mlp "))
    assert [c.strip() for c in mlp.split("│")[1:-1]] == ["mlp", "372,480", "47.1%"], mlp
    said = " ".join(printed[printed.index("└"):].split())
    assert "column before left out to fit 40 terminal columns (rerun with --json or in a wider terminal to see it)" in said, said


@pytest.fixture(scope="module")
def toy_plans():
    from compress.plan import make_plan
    from compress.recipe import load_recipe

    return {name: make_plan(load_recipe(f"recipes/{name}.yaml")) for name in ("toy-pixart", "toy-flux")}


def _role_table(plan: dict, width: int, capsys, monkeypatch) -> str:
    """What print_plan prints of the role table on a `width`-column terminal, its caption included."""
    from compress.plan_words import print_plan
    from compress.report import results

    monkeypatch.setattr(results, "_width", width)
    monkeypatch.setattr(results, "_force_terminal", True)  # (piped, the lines are whole: a pipe's test below)
    print_plan(plan)
    printed = capsys.readouterr().out
    return printed[printed.index("parameters by role"):printed.index("\nratio: after")]


@pytest.mark.parametrize("width", [20, 25, 36, 38, 41, 46, 48, 51])
@pytest.mark.parametrize("name", ["toy-pixart", "toy-flux"])
def test_plan_never_splits_a_role_name_or_number(toy_plans, name, width, capsys, monkeypatch):
    """At COLUMNS=36-41 and 46-51 the role table fitted by folding its names: 'cross_' on one row and
    'attention' on the next, read as two roles (30, 44 and 52+ left columns out instead); under 25 it cut
    them ('cross_…', '100.…'). Now every role name and number is whole on one line at any width: the
    table leaves columns out first, and where even role and ratio do not fit, a line per role broken
    at its spaces ('cross_attention: before 396,288, ...')."""
    plan = toy_plans[name]
    text = _role_table(plan, width, capsys, monkeypatch)
    assert "…" not in text and max(len(line) for line in text.splitlines()[1:]) <= width, text  # the title apart
    words = {word.rstrip(",:") for word in text.replace("│", " ").split()}  # whole on one line
    for role, n in plan["by_role_before"].items():
        after = plan["by_role_after_at_most"].get(role, 0)
        assert role in words and f"{after / n:.1%}" in words, (role, text)
    if width < 25:  # a line per role, each column's header beside its cell
        assert not any(line[:1] in "┏┃┡│└" for line in text.splitlines())
        said = " ".join(text.split())
        assert all(f"{role}: before {n:,}," in said for role, n in plan["by_role_before"].items()), said


def test_plan_says_the_fishers_disk_in_bytes_and_json_has_their_count(capsys):
    """plan said the output Fishers' disk in GiB rounded to 0.01: toy-pixart's svd passes read '0.02 GiB on
    disk' and '0.0 GiB on disk while the pass runs' (4.5 MiB), and plan --json had only that disk_gib. Now
    its fisher entry has disk_bytes (disk_gib kept), docs/PLAN_JSON.md lists its every key, and the line
    says human_size of it."""
    from compress.calib_footprint import human_size
    from tests.test_plan import _doc_tables, _plan_json

    plan = _plan_json(capsys, "toy-pixart.yaml")
    fishers = [s["fisher"] for s in plan["passes"] if "fisher" in s]
    assert [f["disk_bytes"] for f in fishers] == [16384000, 4718592]  # 50 targets' Fishers; adaln_single's
    assert all(set(f) == _doc_tables()["`fisher` (of an svd pass)"] - {"resident_bytes"} for f in fishers)
    assert all(f["disk_gib"] == round(f["disk_bytes"] / 2**30, 2) for f in fishers)
    assert cli.main(["plan", str(Path(__file__).parents[1] / "recipes" / "toy-pixart.yaml")]) == 0
    said = [line.split(", ")[-1] for line in capsys.readouterr().out.splitlines() if "on disk" in line]
    assert said == [f"{human_size(f['disk_bytes'])} on disk while the pass runs" for f in fishers]
    assert said == ["16 MiB on disk while the pass runs", "4 MiB on disk while the pass runs"]


def _printed_plan(plan: dict, width: int, capsys, monkeypatch, terminal: bool = True) -> str:
    """print_plan's lines on a `width`-column results console, a terminal's or (`terminal` false) a pipe's."""
    from compress.plan_words import print_plan
    from compress.report import results

    monkeypatch.setattr(results, "_width", width)
    monkeypatch.setattr(results, "_force_terminal", terminal)  # (its colours stay off: chosen at its start)
    print_plan(plan)
    return capsys.readouterr().out


@pytest.mark.parametrize("width", [40, 60, 80])
@pytest.mark.parametrize("name", ["toy-pixart", "toy-flux"])
def test_plans_lines_break_at_their_spaces_on_a_narrow_terminal(toy_plans, name, width, capsys, monkeypatch):
    """T2 stop 52 #8: at COLUMNS=40 plan printed its prose as it was (the memory line 568 characters, the
    ≤ footnote 150, 'total parameters' 196), which the terminal folds mid-word, while inspect and
    importance break theirs at spaces. Now each line wider than the terminal is broken at its spaces
    (a word longer than a line whole, on a line of its own), its continuation lines two further in; its
    words and their order as they were."""
    from rich.cells import cell_len

    wide = _printed_plan(toy_plans[name], 100000, capsys, monkeypatch)
    narrow = _printed_plan(toy_plans[name], width, capsys, monkeypatch)
    assert max(map(cell_len, wide.splitlines())) > 150  # (the lines it broke)
    assert all(cell_len(line) <= width or len(line.split()) == 1 for line in narrow.splitlines()), narrow
    for start, end in (("", "parameters by role"), ("total parameters", None)):  # the table's own test: above
        said, was = (text[text.index(start):text.index(end) if end else None] for text in (narrow, wide))
        assert " ".join(said.split()) == " ".join(was.split())
    lines = narrow[narrow.index("  memory: "):].splitlines()
    assert lines[1].startswith("    ") and not lines[1].startswith("     ")  # two further in than its line


@pytest.mark.parametrize("name", ["toy-pixart", "toy-flux"])
def test_a_piped_plan_keeps_each_line_whole(toy_plans, name, capsys, monkeypatch):
    """R2 stop 52: piped, plan broke its lines at 80 columns as on a terminal (toy-pixart's 29 lines 64; `plan R |
    grep memory` got a piece of the memory line), though a log keeps a line whole for grep (report.soft_wrap).
    Now only a terminal's lines are broken: piped, at any width, its lines are the wide terminal's (the table
    still fitted to the width: report_fit's own tests)."""
    wide = _printed_plan(toy_plans[name], 100000, capsys, monkeypatch)
    piped = _printed_plan(toy_plans[name], 40, capsys, monkeypatch, terminal=False)
    head = lambda out: out[:out.index("parameters by role")]  # noqa: E731 (the lines above the table)
    total = lambda out: [line for line in out.splitlines() if line.startswith("total parameters")]  # noqa: E731
    assert head(piped) == head(wide) and total(piped) == total(wide) and len(total(wide)) == 1
    assert sum(line.startswith("  memory: ") and line.endswith("not counted)") for line in piped.splitlines()) == 1


@pytest.mark.parametrize("name", ["toy-pixart", "toy-flux"])
def test_a_piped_plan_keeps_the_role_table_s_base_whole(toy_plans, name, capsys, monkeypatch):
    """R1 stop 53: piped, the role table's caption (what its ratio is of) was still broken at the console's
    width, a table caption's ('...(removed blocks count in' / "before); inspect's 'of dense' is..."), so
    `plan R | grep "of dense"` got half a sentence. Now it is a line under the table as plan's others are:
    whole piped, broken at its spaces on a terminal."""
    from compress.plan_words import ROLE_BASE

    piped = _printed_plan(toy_plans[name], 80, capsys, monkeypatch, terminal=False).splitlines()
    assert ROLE_BASE in piped
    narrow = _printed_plan(toy_plans[name], 40, capsys, monkeypatch).splitlines()
    at = next(k for k, line in enumerate(narrow) if line.startswith("ratio: after / before"))
    assert " ".join(" ".join(narrow[at:at + 4]).split()).startswith(ROLE_BASE)
    assert all(len(line) <= 40 for line in narrow[at:at + 4])


@pytest.mark.parametrize("name", ["toy-pixart", "toy-flux"])
def test_a_piped_plan_keeps_each_roles_line_whole_at_any_width(toy_plans, name, capsys, monkeypatch):
    """T2 stop 54: `COLUMNS=20 dit-compress plan R | cat` broke the role table's lines (where even its
    least does not fit: a line per role) at the width, 'attention:' on one line and its numbers on the
    next ('parameters by role' / '(linears)'), so `grep attention:` lost them; piped, they are whole now."""
    plan = toy_plans[name]
    piped = _printed_plan(plan, 20, capsys, monkeypatch, terminal=False).splitlines()
    assert "parameters by role (linears)" in piped
    for role in plan["by_role_before"]:
        line = next(line for line in piped if line.startswith(f"{role}: "))
        assert line.startswith(f"{role}: before {plan['by_role_before'][role]:,}, after (planned) ") and "ratio" in line
    terminal = _printed_plan(plan, 20, capsys, monkeypatch).splitlines()  # a terminal's still fit it
    assert all(len(line) <= 20 for line in terminal[terminal.index("parameters by role"):][:8]), terminal


@pytest.mark.parametrize("name", ["toy-pixart", "toy-flux"])
def test_plans_lines_that_fit_are_printed_as_before(toy_plans, name, capsys, monkeypatch):
    """Wide enough, each line is one line, as before; the recipe's name bold, each pass's name cyan."""
    from rich.console import Console

    from compress.plan_words import print_plan
    from compress.report import results

    wide = _printed_plan(toy_plans[name], 100000, capsys, monkeypatch)
    plan = toy_plans[name]
    assert wide.splitlines()[0] == f"{plan['recipe']}  teacher {plan['teacher']} ({plan['family']})"
    assert any(line.startswith("  memory: ") and line.endswith("not counted)") for line in wide.splitlines())
    recorded = Console(record=True, width=100000, force_terminal=True, color_system="standard",
                       file=open("/dev/null", "w"))
    monkeypatch.setattr(results, "_width", 100000)
    with monkeypatch.context() as patched:
        import compress.plan_words as plan_words

        patched.setattr(plan_words, "results", recorded)
        print_plan(plan)
    html = recorded.export_html(inline_styles=True)
    assert f'font-weight: bold">{plan["recipe"]}</span>' in html
    cyan = '<span style="color: #008080; text-decoration-color: #008080">'
    assert all(f'{cyan}{step["pass"]}</span> ' in html for step in plan["passes"]), html
