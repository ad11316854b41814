"""The model card (compress/report_card.py): what an output's README.md says of the run."""


def test_the_model_card_and_inspect_say_how_close_the_asymmetric_fits_came_to_their_undamped_optimum(capsys):
    """The card's svd lines give the median and worst fit_gap of the layers fitted to the
    uncompressed model's outputs; `inspect` the worst; neither says anything without such layers."""
    from compress.inspect import _print_optimality
    from compress.report_card import _svd_lines

    layers = {"a": {"loss_ratio": 1.0, "fit_gap": 2.5e-3}, "b": {"loss_ratio": 1.0, "fit_gap": 4e-2},
              "c": {"loss_ratio": 1.0000002, "fit_gap": 0.0}, "d": {"loss_ratio": 1.0}}
    text = "\n".join(_svd_lines({"layers": layers}))
    assert "Fitted to the uncompressed model's outputs: 3 layers" in text
    assert "median 2.50e-03, worst 4.00e-02 of the layer's output energy" in text
    assert "Fitted" not in "\n".join(_svd_lines({"layers": {"d": layers["d"]}}))
    _print_optimality([dict(v, name=k) for k, v in layers.items()])
    shown = capsys.readouterr().out
    assert "asymmetric fits above their undamped optimum over 3 layers: max 4.00e-02" in shown
    _print_optimality([dict(layers["d"], name="d")])
    assert "asymmetric" not in capsys.readouterr().out


def test_the_model_card_lists_every_removal_pass_and_reads_a_one_removal_report():
    """Two removal passes: the card said "Blocks removed by the last remove_blocks pass" with the
    last pass's blocks only. It gives the total and each pass's blocks and how they were chosen, by
    module list as the weights name them ('blocks [1]' was the group label)."""
    from compress.report_card import _removal_lines

    first = {"criterion": None, "iterative": False, "removed": {"blocks": [1]}}
    second = {"criterion": "proxy", "iterative": True, "removed": {"blocks": [5]}}
    third = {"criterion": "scan", "iterative": False, "removed": {"blocks": []}}
    record = dict(third, passes=[first, second, third], removed_total={"blocks": [1, 5]})
    assert _removal_lines(record) == [
        "", "Blocks removed (teacher indices): transformer_blocks [1, 5], by 3 remove_blocks passes:", "",
        "- remove_blocks pass 1 of 3: transformer_blocks [1] (listed in the recipe).",
        "- remove_blocks pass 2 of 3: transformer_blocks [5] (chosen by proxy, re-scored after each removal).",
        "- remove_blocks pass 3 of 3: none (chosen by scan)."]
    one = ("Blocks removed by the last remove_blocks pass (teacher indices): transformer_blocks [1] "
           "(listed in the recipe).")
    assert _removal_lines(first) == ["", one]  # a report written before `passes` was kept
    assert _removal_lines(dict(first, passes=[first], removed_total={"blocks": [1]})) == ["", one]
    assert _removal_lines(dict(third, passes=[third, third], removed_total={"blocks": []})) == []
    assert _removal_lines({}) == []


def _card(report: dict, ranks=None) -> str:
    from types import SimpleNamespace

    from compress.report_card import model_card

    return model_card(SimpleNamespace(model="flux"), dict(report, teacher="t", teacher_params=100, student_params=50),
                      ranks)


def test_the_model_card_counts_the_factorized_layers_the_output_holds():
    """An svd run on an output (34 factorized layers) that factorized 2 more said 'Factorized layers: 2'
    where inspect showed 36. Given the output's ranks the card counts what it holds, and says how many
    this recipe's svd passes made (without them, as before, only those)."""
    ours = {f"single_transformer_blocks.{i}.attn.to_k": {"rank": 8, "loss_ratio": 1.0} for i in range(2)}
    ranks = {**{f"transformer_blocks.{i}.ff.net.2": 16 for i in range(34)}, **{n: 8 for n in ours}}
    report = {"svd": {"layers": ours, "passes": [{}]}}
    worst = "worst whitened loss / closed-form optimal loss: 1.000000000"
    assert (f"Factorized layers: 36 (34 came factorized in the teacher); by this recipe's svd pass: 2; {worst}."
            in _card(report, ranks).splitlines())
    assert f"Factorized layers: 2; {worst}." in _card(report).splitlines()
    dense = {f"transformer_blocks.{i}.attn.to_q": {"rank": "dense"} for i in range(3)}
    both = {"svd": {"layers": {**ours, **dense}, "passes": [{}, {}]}}  # two svd passes made all it holds
    ranks_of_ours = {n: 8 for n in ours}
    assert f"Factorized layers: 2; {worst}." in _card(both, ranks_of_ours).splitlines()
    assert (f"Factorized layers: 3 (1 came factorized in the teacher); by this recipe's svd passes: 2; {worst}."
            in _card(both, {**ranks_of_ours, "x.to_v": 4}).splitlines())
    assert "Factorized layers: 36 (all came factorized in the teacher)." in _card({}, ranks).splitlines()
    assert "actorized" not in _card({}, {}) and "actorized" not in _card({})


def test_the_model_card_gives_a_resumed_distill_pass_its_total_seconds():
    """After a resumed distill the card gave the last invocation's 9.8 s where report.json's
    distill.seconds said 45.7 (9.2 this run): the card now adds the earlier invocations' 36.5 s."""
    stages = [{"pass": "svd", "params": 60, "relative_error": 0.1, "seconds": 3.7},
              {"pass": "distill", "params": 60, "relative_error": 0.05, "seconds": 9.8},
              {"pass": "distill", "params": 60, "relative_error": 0.04, "seconds": 2.5}]
    first = {"seconds": 45.7, "seconds_this_run": 9.2}  # resumed
    second = {"seconds": 2.1, "seconds_this_run": 2.1}  # run whole in this invocation
    rows = _card({"stages": stages, "distill": dict(second, earlier=[first])}).splitlines()
    assert "| svd | 60 | 0.1000 | 3.7 |" in rows
    assert "| distill | 60 | 0.05000 | 46.3 (9.8 this run) |" in rows
    assert "| distill | 60 | 0.04000 | 2.5 |" in rows
    one = _card({"stages": stages[:2], "distill": {"seconds": 12.0}}).splitlines()  # before seconds_this_run
    assert "| distill | 60 | 0.05000 | 9.8 |" in one


def test_a_runs_card_counts_the_layers_its_output_holds_with_a_factorized_teacher(tmp_path):
    """A run whose teacher is an output (mlp factorized) that factorizes attention: its card counts
    every factorized layer the output holds (config.json's ranks), those the teacher brought among them."""
    import json

    from tests.conftest import tiny_pixart
    from tests.runner_helpers import SIMPLE, run_recipe

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    svd = "  - svd: {{targets: [{}], ratio: 0.5, multiple: 2}}\n"
    first = run_recipe(tmp_path, SIMPLE.format(teacher=tmp_path / "teacher", passes=svd.format("mlp")), "a")
    second = run_recipe(tmp_path, SIMPLE.format(teacher=first, passes=svd.format("attention")), "b")
    held = json.loads((second / "config.json").read_text())["compression"]["ranks"]
    brought = json.loads((first / "config.json").read_text())["compression"]["ranks"]
    assert brought and set(brought) < set(held)
    card = (second / "README.md").read_text().splitlines()
    line = next(x for x in card if x.startswith("Factorized layers:"))
    assert line.startswith(f"Factorized layers: {len(held)} ({len(brought)} came factorized in the teacher); "
                           f"by this recipe's svd pass: {len(held) - len(brought)}; "), line
    report, first_params = (json.loads((f / "report.json").read_text()) for f in (second, first))
    assert report["base"] == {"source": str(tmp_path / "teacher"), "params": first_params["teacher_params"]}
    assert "base" not in first_params  # a plain teacher is its own base
    share = f"{report['student_params'] / report['base']['params']:.1%}"
    assert (f"Parameters: {report['student_params']:,} of {report['teacher_params']:,} ("
            f"{report['student_params'] / report['teacher_params']:.1%} of the teacher); {share} of the "
            f"{report['base']['params']:,} of `{tmp_path / 'teacher'}`, where its chain of teachers starts.") in card


def test_the_wrote_line_and_the_card_give_a_chained_outputs_share_of_the_base_and_a_plain_ones_as_before():
    """B's teacher is out/A, an output of toy:flux: the run said '69.3% of the teacher' and the card
    '(69.3%)', both of A. They now name A and give B's share of toy:flux too; a plain teacher's are as before."""
    from compress.report_card import wrote_words

    chained = {"student_params": 703056, "teacher_params": 1014096, "base": {"source": "toy:flux", "params": 2345744}}
    assert wrote_words(chained, "out/A") == "703,056 params, 69.3% of the teacher out/A, 30.0% of the base toy:flux"
    assert ("Parameters: 703,056 of 1,014,096 (69.3% of the teacher); 30.0% of the 2,345,744 of `toy:flux`, where "
            "its chain of teachers starts.") in _card_of(chained).splitlines()
    plain = {"student_params": 703056, "teacher_params": 1014096}
    assert wrote_words(plain, "toy:flux") == "703,056 params, 69.3% of the teacher"
    assert "Parameters: 703,056 of 1,014,096 (69.3%)." in _card_of(plain).splitlines()
    assert "Parameters: 50 of 100 (50.0%)." in _card({"base": {"source": "x", "params": "?"}}).splitlines()


def test_the_card_of_a_three_link_chain_names_where_the_chain_starts_not_what_the_teacher_came_from(tmp_path):
    """c's teacher b was compressed from a, itself from toy:flux: the card said b was "compressed from"
    toy:flux, its chain's base. It now says where the chain of teachers starts."""
    import json

    from compress.report_teacher import chain_base_record
    from tests.teacher_chain_helpers import chained_outputs, output_config

    a, _ = chained_outputs(tmp_path, "toy:flux")
    (a / "report.json").write_text(json.dumps({"teacher": "toy:flux", "teacher_params": 2345744}))
    b = output_config(tmp_path / "b", str(a.resolve()))
    report = {"student_params": 703056, "teacher_params": 1014096, "base": chain_base_record(str(b))}
    assert report["base"] == {"source": "toy:flux", "params": 2345744}
    card = _card_of(report)
    assert ("Parameters: 703,056 of 1,014,096 (69.3% of the teacher); 30.0% of the 2,345,744 of `toy:flux`, where "
            "its chain of teachers starts.") in card.splitlines()
    assert "compressed from" not in card


def _card_of(report: dict) -> str:
    from types import SimpleNamespace

    from compress.report_card import model_card

    return model_card(SimpleNamespace(model="flux"), dict(report, teacher="t"))


def test_the_model_card_says_which_metric_each_number_is_in_and_whose_optimum_it_is():
    """Under the defaults (fisher: all, compensation on) the card's 'worst whitened loss / closed-form
    optimal loss: 1.000000000' read as the optimum under the exact Fisher (it is the optimum under the
    Fisher estimated from fisher_probes probes), and nothing said that loss and energy are those of the
    Fisher-weighted W + βΔ while the relative output error is the plain one against W. A line now says it."""
    from compress.report_card import _svd_lines

    rec = {"rank": 4, "loss_ratio": 1.0, "weighting": "output-weighted"}
    layers = {"a": dict(rec, compensation_step=0.5), "b": dict(rec, compensation_step=0.0),
              "c": {"rank": "dense", "compensation_step": 0.5}}
    text = " ".join(_svd_lines({"fisher": "all", "fisher_probes": 4, "layers": layers}))
    assert ("Energy kept, loss and optimal loss are in each layer's factorization objective, its output error on "
            "its calibration inputs: weighted, for 2 layers, by the final prediction's output Fisher F, estimated "
            "from 4 random probes (svd.fisher_probes) and damped to F + λI (svd.fisher_damping); of W + βΔ, for 1 "
            "compensated layer (its weight plus its compensation step)") in text, text
    assert "The relative output error is each layer's plain output error" in text
    assert ("The closed-form optimum is the optimum of each layer's objective with its output Fisher estimated "
            "from 4 random probes (svd.fisher_probes) and damped (svd.fisher_damping), not of the exact Fisher.") in text
    plain = {"a": {"rank": 4, "loss_ratio": 1.0, "weighting": "calibration output", "asymmetric": True}}
    text = " ".join(_svd_lines({"fisher": "none", "layers": plain}))
    assert "Fisher F" not in text and "inputs: of W + Δ, for 1 layer fitted asymmetrically (its fit" in text, text
    assert "The closed-form optimum is the exact optimum of each layer's calibration output error." in text
    assert "objective" not in " ".join(_svd_lines({"layers": {"a": {"rank": 4, "loss_ratio": 1.0}}}))  # older reports


def test_a_report_whose_layers_name_their_weighting_objective_reads_as_before():
    """Each layer's svd.layers.<name>.objective (output-weighted, calibration output) is now `weighting`,
    apart from the summary's svd.objective; report.json files of finished runs still carry the old key, and
    the card (and inspect, through metric_words / optimum_words) says the same of them as of a new one."""
    from compress.report_card import _svd_lines, metric_words, optimum_words

    def svd(key: str, fisher: str, value: str) -> dict:
        layers = {"a": {"rank": 4, "loss_ratio": 1.0, key: value, "compensation_step": 0.5},
                  "b": {"rank": "dense"}}
        return {"fisher": fisher, "fisher_probes": 4, "objective": "guided_compensation", "layers": layers}

    for fisher, value in (("all", "output-weighted"), ("none", "calibration output")):
        old, new = svd("objective", fisher, value), svd("weighting", fisher, value)
        assert metric_words(new) and optimum_words(new), new
        assert (metric_words(old), optimum_words(old), _svd_lines(old)) == \
            (metric_words(new), optimum_words(new), _svd_lines(new))
    assert "weighted, for 1 layer, by" in " ".join(metric_words(svd("weighting", "all", "output-weighted")))


def test_the_cards_counts_take_the_singular_for_one_and_the_plural_otherwise():
    """'for 1 layers', 'for 1 compensated layers', '1 stages', '1 random probes' read wrong: each count in
    the card's svd and removal lines agrees with its noun (compress.words.counted)."""
    from compress.report_card import _removal_lines, _svd_lines

    def card(n: int, probes: int) -> str:
        rec = {"rank": 4, "loss_ratio": 1.0, "weighting": "output-weighted", "compensation_step": 0.5,
               "asymmetric": True, "fit_gap": 1e-3}
        stage = {"calibration_error": 0.1, "uncompensated_error": 0.2}
        svd = {"fisher": "all", "fisher_probes": probes, "layers": {f"l{i}": dict(rec) for i in range(n)},
               "compensation": {f"double {i} mlp": stage for i in range(n)}}
        return " ".join(_svd_lines(svd))

    one, two = card(1, 1), card(2, 4)
    for words in ("weighted, for 1 layer, by", "from 1 random probe (svd.fisher_probes)",
                  "of W + βΔ, for 1 compensated layer (its weight plus its compensation step)",
                  "of W + Δ, for 1 layer fitted asymmetrically (its fit", "outputs: 1 layer; their fit",
                  "Compensation in 1 stage:"):
        assert words in one, (words, one)
    for words in ("weighted, for 2 layers, by", "from 4 random probes (svd.fisher_probes)",
                  "of W + βΔ, for 2 compensated layers (their weight plus its compensation step)",
                  "of W + Δ, for 2 layers fitted asymmetrically (their fit", "outputs: 2 layers; their fit",
                  "Compensation in 2 stages:"):
        assert words in two, (words, two)
    passes = [{"criterion": None, "removed": {"blocks": [1]}}, {"criterion": "scan", "removed": {"blocks": [2]}}]
    assert "by 2 remove_blocks passes:" in _removal_lines(dict(passes[1], passes=passes,
                                                                removed_total={"blocks": [1, 2]}))[1]


def test_the_card_says_which_weights_its_errors_are_of_and_the_exported_ones_error():
    """The stage errors are of the compute dtype's weights before the export cast: the card said nothing of
    it. It gives the exported weights' error where the export rounds them, says where it holds them exactly,
    and where a streamed run did not measure them; an older report says nothing."""
    from compress.report_card import export_lines

    rounded = {"dtype": "bfloat16", "computed_in": "float32", "relative_error": 0.83474}
    assert export_lines({"export": rounded}) == [
        "", "The teacher-relative errors above are of the float32 weights before the export; the output holds "
            "them in bfloat16: its teacher-relative error on the same held-out inputs is 0.8347."]
    assert export_lines({"export": dict(rounded, relative_error=None)})[1].endswith(
        "the output holds them in bfloat16 (not measured in the run: `dit-compress eval` measures it).")
    exact = {"dtype": "float32", "computed_in": "bfloat16", "exact": True, "relative_error": 0.5}
    assert export_lines({"export": exact}) == ["", "The output holds the weights measured above, exactly, in float32."]
    assert export_lines({}) == [] and export_lines({"export": "x"}) == []


def test_the_model_card_names_flux_blocks_by_module_and_recipe_group():
    """Flux's removals read 'double [1], single [3]', the group labels, where inspect's tables and the
    weights say transformer_blocks / single_transformer_blocks: now both, the module list first."""
    from compress.report_card import _removal_lines

    record = {"criterion": "scan", "iterative": False, "removed": {"double": [1], "single": [0, 3]}}
    assert _removal_lines(record) == ["", "Blocks removed by the last remove_blocks pass (teacher indices): "
                                      "transformer_blocks (double) [1], single_transformer_blocks (single) [0, 3] "
                                      "(chosen by scan)."]


def test_a_toys_unmeasured_export_names_no_command_as_measuring_it():
    """A streamed toy exported in bfloat16 said its weights' error was 'not measured in the run: `dit-compress
    eval` measures it', but eval gives a toy's pred_rel_error on 256 toy triples, another measure (T5: 0.1179
    against 0.1166 recomputed): the words say so; a real teacher's eval measures it, as before."""
    from compress.report_card import export_lines

    export = {"dtype": "bfloat16", "computed_in": "float32", "relative_error": None}
    for report in ({"teacher": "toy:flux", "export": export},
                   {"teacher": "out/A", "base": {"source": "toy:pixart", "params": 10}, "export": export}):
        line = export_lines(report)[1]
        assert "`dit-compress eval` measures it" not in line, line
        assert line.endswith("(not measured in the run; `dit-compress eval` gives a toy's pred_rel_error on "
                             "256 toy triples, another measure)."), line
    real = export_lines({"teacher": "black-forest-labs/FLUX.1-dev", "export": export})[1]
    assert real.endswith("(not measured in the run: `dit-compress eval` measures it)."), real


def test_an_output_that_took_a_lora_says_its_errors_are_of_the_weights_before_it():
    """After `dit-compress lora` the card and inspect said 'The output holds the weights measured above,
    exactly, in float32' (T5: 0.1724, of the weights before the merge; the merged ones' 0.1722 against the
    teacher with the LoRA) and the card's headline kept the old parameter count: lora_card gives the merged
    model's, and the export words say the errors are of the weights before the LoRA."""
    from compress.report_card import export_lines, lora_card

    exact = {"dtype": "float32", "computed_in": "float32", "exact": True, "relative_error": 0.1724}
    before = {"teacher": "toy:pixart", "teacher_params": 1000, "student_params": 400, "export": exact,
              "stages": [{"pass": "svd", "params": 400, "relative_error": 0.1724, "seconds": 1.0}]}
    after = dict(before, student_params=410, loras=[{"lora": "/l.safetensors", "scale": 0.8}])
    said = ("The teacher-relative errors above are of the weights before `dit-compress lora` merged the LoRA in; the "
            "output holds them with it merged, in float32, an error not measured (`dit-compress eval` compares the "
            "output with the teacher given the same LoRA).")
    assert export_lines(after) == ["", said]
    rounded = dict(after, export={"dtype": "bfloat16", "computed_in": "float32", "relative_error": 0.2},
                   loras=[{}, {}])
    assert export_lines(rounded)[1].startswith("The teacher-relative errors above are of the float32 weights before "
                                               "the export and before `dit-compress lora` merged 2 LoRAs in; the "
                                               "output holds them with both merged, in bfloat16, an error not")
    card = _card_of(before)
    assert "Parameters: 400 of 1,000 (40.0%)." in card and "exactly, in float32" in card
    merged = lora_card(card, after)
    assert "Parameters: 410 of 1,000 (41.0%)." in merged and "Parameters: 400" not in merged
    assert said in merged and "exactly" not in merged
    damaged = dict(after, student_params=None)  # its parameters line unknown: left as it was
    assert lora_card(card, damaged) == card.replace(export_lines(before)[1], said)


def test_the_model_card_gives_each_stages_guided_error_where_the_run_recorded_one():
    """The card's stage table gave the teacher-relative error alone, though report.json's stages record the
    guided error too (runner_heldout): now a column of it, '-' for a stage saved before it was recorded, and
    a line saying what it is; a run that recorded none keeps the table as it was."""
    stages = [{"pass": "svd", "params": 60, "relative_error": 0.178, "guided_error": 0.22431, "seconds": 3.7},
              {"pass": "svd", "params": 50, "relative_error": 0.05, "seconds": 2.5}]
    rows = _card({"stages": stages}).splitlines()
    assert "| stage | params | teacher-relative error | guided error | seconds |" in rows
    assert "|---|---:|---:|---:|---:|" in rows
    assert "| svd | 60 | 0.1780 | 0.2243 | 3.7 |" in rows and "| svd | 50 | 0.05000 | - | 2.5 |" in rows
    said = next(r for r in rows if r.startswith("Guided error: "))
    assert "uncond + s · (cond − uncond)" in said and "`-`: a stage that recorded none" in said
    both = _card({"stages": [stages[0], dict(stages[1], guided_error=0.06)]})
    assert "| svd | 50 | 0.05000 | 0.06000 | 2.5 |" in both and "`-`" not in both
    plain = _card({"stages": [stages[1]]}).splitlines()
    assert "| stage | params | teacher-relative error | seconds |" in plain and "| svd | 50 | 0.05000 | 2.5 |" in plain
    assert not any(r.startswith("Guided error") for r in plain)


def test_the_card_names_the_first_compensated_stage_not_the_first_stage():
    """'first stage 0.1653 → 0.154' (T3's out_v1 card) named svd.compensation's first record: the first stage
    compensated, not the walk's first stage (one factorized uncompensated is in neither svd.compensation nor
    the card). Now 'first compensated stage'."""
    from compress.report_card import _svd_lines

    stages = {"double 1 mlp": {"calibration_error": 0.154, "uncompensated_error": 0.1653},
              "double 2 mlp": {"calibration_error": 0.0781, "uncompensated_error": 0.08456}}
    said = " ".join(_svd_lines({"compensation": stages}))
    assert ("Compensation in 2 stages: calibration prediction error after the last one 0.07810 (plain factorization "
            "there: 0.08456; first compensated stage 0.1653 → 0.1540).") in said, said
