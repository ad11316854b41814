"""What remove_blocks criterion learned says: its plan (patterns, what learning holds, the estimator),
one-line mistakes at their recipe line, streaming refused naming the key, the biased-estimator note
once, how sure the choice is (model card, close calls), its progress lines off a terminal."""

import pytest
import torch

from compress.arch import get_adapter
from compress.calib_footprint import human_size
from compress.errors import BadValue, UserError
from compress.passes.remove_blocks import RemoveBlocksConfig, RemoveBlocksPass
from compress.plan import make_plan
from compress.plan_words import step_words
from compress.recipe import parse_recipe
from tests.conftest import tiny_flux, tiny_pixart
from tests.passes.test_remove_blocks import context, run


def test_plan_counts_the_patterns():
    model = tiny_pixart(num_layers=4)
    step = RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned"))
    planned = step.plan(model, get_adapter(model))
    assert planned["remove"] == "learned at run time" and planned["patterns"] == 6
    assert planned["budget"] == {"blocks": 2} and planned["blocks_after"] == {"blocks": 2}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert planned["learning_holds"].startswith(f"{human_size(4 * size)} (a copy of the model")  # 380 KiB, not 0 MiB
    assert planned["learning_holds"].endswith("; and one calibration batch's activations for the backward")
    low = RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned", learn_rank=2)).plan(
        model, get_adapter(model))
    factors = sum(2 * (m.in_features + m.out_features) * 4 for b in model.transformer_blocks for m in b.modules()
                  if isinstance(m, torch.nn.Linear))
    assert planned["learn_lr"] == 5e-4 and low["learn_lr"] == 2e-3  # factors from zero take larger steps
    assert low["learning_holds"] == f"{human_size(4 * factors)} (rank-2 factors of the block linears, " \
                                    "their gradients, Adam's moments); and one calibration batch's activations " \
                                    "for the backward"
    assert RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned", learn_lr=0)).plan(
        model, get_adapter(model))["learning_holds"] == "logits only (no backward)"  # score: a forward per step
    assert RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned", learn_lr=0, estimator="gumbel")).plan(
        model, get_adapter(model))["learning_holds"].startswith("logits only; and one calibration batch's")
    half = tiny_pixart(num_layers=4).half()  # the full update trains a float32 copy of a float16 model
    assert RemoveBlocksPass(RemoveBlocksConfig(count=2, criterion="learned")).plan(
        half, get_adapter(half))["learning_holds"] == planned["learning_holds"]
    step = RemoveBlocksPass(RemoveBlocksConfig(count={"blocks": 2}, criterion="learned", window=2))
    assert step.plan(model, get_adapter(model))["patterns"] == 4


@pytest.mark.parametrize("criterion", ["learned", "proxy"])
def test_plan_of_a_budget_of_none_learns_and_holds_nothing_as_the_run(criterion):
    """Every group 0: the run learns (or scans) nothing and reads no calibration input
    (test_a_budget_of_nothing_learns_nothing); plan said 'remove: learned at run time ... learning_holds:
    N MiB (a copy of the model ...)' and counted calibration's activations in its memory."""
    plan = make_plan(parse_recipe("model: pixart\nteacher: toy:pixart\npasses:\n"
                                  f"  - remove_blocks: {{count: {{blocks: 0}}, criterion: {criterion}}}\n", "r.yaml"))
    [step] = plan["passes"]
    assert not any("calibration activations" in part["what"] for part in plan["memory"]["parts"])
    assert step["blocks_after"] == step["blocks_before"] and "calibrates" not in step_words(step)
    if criterion == "learned":
        assert step["remove"] == "no block (a budget of none): nothing is learned"
        assert not {"learning_holds", "patterns", "learn_steps", "window"} & set(step)
    one = make_plan(parse_recipe("model: pixart\nteacher: toy:pixart\npasses:\n"
                                 f"  - remove_blocks: {{count: {{blocks: 1}}, criterion: {criterion}}}\n", "r.yaml"))
    assert any("calibration activations" in part["what"] for part in one["memory"]["parts"])


def test_plan_of_a_budget_of_none_at_some_counts_only_still_learns():
    """An earlier removal picks its group at run time, so 'single' may have 3 or 4 blocks: 0.25 of them
    is none at 3 but one at 4, learned at run time (the run resolves the budget on the counts it finds);
    plan said 'no block (a budget of none): nothing is learned' and counted no calibration activations.
    Only a budget of none at every count it may find learns nothing."""
    def plan_of(fraction):
        return make_plan(parse_recipe("model: flux\nteacher: toy:flux\npasses:\n  - remove_blocks: {count: 1}\n"
                                      f"  - remove_blocks: {{fraction: {{single: {fraction}}}, criterion: learned}}\n",
                                      "r.yaml"))
    plan = plan_of(0.25)
    step = plan["passes"][1]
    assert step["remove"] == "learned at run time (none where single has 3)"
    assert step["budget"] == {"single": 1} and step["budget_min"] == {"single": 0} and step["patterns"] == 4
    assert 'budget: {"single": 0–1}' in step_words(step) and "learning_holds" in step
    assert any("calibration activations" in part["what"] for part in plan["memory"]["parts"])
    none = plan_of(0.2)["passes"][1]  # none of 3 or of 4
    assert none["remove"] == "no block (a budget of none): nothing is learned" and "learning_holds" not in none


@pytest.mark.parametrize("config, error, words", [
    (dict(count=2, criterion="learned"), UserError, r"a budget per group \(count: \{double: 1, single: 1\}\)"),
    (dict(count={"single": 2}, criterion="learned", window=2), UserError,
     r"group 'single': the window of blocks 2\.\.2 would lose all 1: set a larger window"),
    (dict(count={"single": 1}, window=3), BadValue, "window applies to criterion: learned"),
    (dict(count={"single": 1}, criterion="learned", iterative=True), BadValue, "chooses all blocks at once"),
    (dict(count={"single": 1}, criterion="learned", learn_steps=0), BadValue, "learn_steps must be an integer ≥ 1"),
    (dict(count={"single": 1}, criterion="learned", logit_lr=0), BadValue, "logit_lr must be a number > 0"),
    (dict(count={"single": 1}, criterion="learned", learn_rank=0), BadValue, "learn_rank must be an integer ≥ 1"),
    (dict(count={"single": 1}, criterion="learned", learn_rank=4, learn_lr=0), BadValue,
     "learn_rank shapes the weight update, and learn_lr: 0 turns it off"),
    (dict(blocks={"single": [1]}, criterion="learned"), BadValue,
     "remove_blocks.criterion: learned chooses blocks for a count or fraction; blocks lists the blocks to remove"),
])
def test_mistakes_are_one_line_errors(config, error, words):
    model = tiny_flux()
    with pytest.raises(error, match=words):
        RemoveBlocksPass(RemoveBlocksConfig(**config)).check(model, get_adapter(model))


def test_streaming_is_refused_naming_the_key_to_change(tmp_path):
    """With stream: true, criterion learned is refused at its line and by the key --set takes, as svd's
    refusals are ('use criterion scan or proxy' named no key); proxy, scan and listed blocks stream."""
    from compress.recipe import parse_recipe
    from compress.runner import build_passes
    from compress.runner_stream import check_streaming

    with pytest.raises(UserError, match="remove_blocks.criterion: learned trains through the whole model"):
        RemoveBlocksPass(RemoveBlocksConfig(count={"single": 1}, criterion="learned")).check_streaming()
    RemoveBlocksPass(RemoveBlocksConfig(count={"single": 1}, criterion="proxy")).check_streaming()
    text = ("model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {ranks: {modulation: 8}, fisher: block}\n"
            "  - remove_blocks:\n      count: 1\n      criterion: learned\n")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"), ["stream=true"])
    with pytest.raises(UserError) as e:
        check_streaming(build_passes(recipe), recipe.passes, recipe.path)
    assert str(e.value) == (f"{tmp_path / 'r.yaml'}:7 (with --set stream=true): remove_blocks.criterion: learned "
                            "trains through the whole model; with stream: true set passes.1.remove_blocks.criterion "
                            "to scan or proxy")


def test_model_card_and_note_say_how_sure_the_choice_is(tmp_path, capsys):
    from compress.report_card import _removal_lines

    model = tiny_pixart(num_layers=4)
    ctx = context(model, tmp_path)
    run(model, ctx, count={"blocks": 1}, criterion="learned", learn_steps=3, learn_lr=0.0, logit_lr=1e-3)
    record = ctx.report["remove_blocks"]
    [w] = record["learned"]["windows"]
    p = w["likeliest"][0]["probability"]
    assert w["likeliest"][1]["probability"] > 0.8 * p  # three tiny steps from uniform logits: a close call
    err = capsys.readouterr().err
    assert "a close call" in err
    [_, line] = _removal_lines(record)
    assert line == ("Blocks removed by the last remove_blocks pass (teacher indices): transformer_blocks "
                    f"{w['removed']} (chosen by learned; transformer_blocks: probability {p:.2f}).")
    # the log names the blocks too (it did not: learn_steps 10 and 20 can take different ones), by
    # module as inspect does (it said 'blocks [1]', the group label)
    assert err.splitlines()[-1] == (f"remove_blocks: removed transformer_blocks {w['removed']} (teacher indices; "
                                    f"chosen by learned; transformer_blocks: probability {p:.2f})")


def test_estimator_defaults_to_score_without_a_weight_update(capsys):
    """gumbel's straight-through gradient needs the update (README, "Which blocks to remove"): the
    default turns to score at learn_lr 0, and an explicit gumbel there is a note (the runner warns)."""
    model = tiny_pixart(num_layers=4)
    step = lambda **kw: RemoveBlocksPass(RemoveBlocksConfig(count=1, criterion="learned", **kw))
    plan = lambda **kw: step(**kw).plan(model, get_adapter(model))
    notes = lambda **kw: step(**kw).notes(model, get_adapter(model))
    assert plan()["estimator"] == "gumbel" and plan(learn_rank=2)["estimator"] == "gumbel"
    assert plan(learn_lr=0)["estimator"] == "score"
    assert plan(learn_lr=0, estimator="score")["estimator"] == "score"
    assert plan(learn_lr=0, estimator="gumbel")["estimator"] == "gumbel"
    assert "warning" not in capsys.readouterr().err  # plan and check print nothing: the runner warns
    (key, words, reads), = notes(learn_lr=0, estimator="gumbel")
    assert key == "estimator" and reads == ("learn_lr",)  # a --set of learn_steps is not named with it
    assert words.startswith("remove_blocks.estimator: gumbel with learn_lr: 0")
    assert "use estimator: score" in words
    assert notes(learn_lr=0) == notes(learn_lr=1e-4, estimator="gumbel") == notes() == []


def test_plan_warns_of_a_biased_estimator_once_at_its_line(capsys):
    """It printed from check(), which plan runs twice (the upfront check and the pass's plan)."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe

    recipe = parse_recipe("model: pixart\nteacher: toy:pixart\n"
                          "calibration: {source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}\n"
                          "passes:\n  - remove_blocks:\n      count: 1\n      criterion: learned\n"
                          "      learn_lr: 0\n      estimator: gumbel\n", "r.yaml")
    make_plan(recipe)
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("estimator: gumbel with learn_lr: 0") == 1
    assert "warning: r.yaml:9: remove_blocks.estimator: gumbel" in said


def test_estimator_must_be_known():
    with pytest.raises(BadValue, match="remove_blocks.estimator must be one of gumbel, score, not 'adam'"):
        RemoveBlocksConfig(count={"single": 1}, criterion="learned", estimator="adam").validate()


@pytest.mark.parametrize("pass_text, where", [
    ("  - remove_blocks:\n      count: {blocks: 1}\n      window: 3\n", r"r\.yaml:10: remove_blocks\.window applies"),
    ("  - remove_blocks:\n      count: {blocks: 1}\n      criterion: learned\n      estimator: adam\n",
     r"r\.yaml:11: remove_blocks\.estimator must be one of"),
])
def test_recipe_mistakes_name_the_line(pass_text, where):
    from compress.recipe import parse_recipe

    text = ("version: 1\nmodel: pixart\nteacher: toy:pixart\ncalibration:\n  num_prompts: 4\n  timesteps: 2\n"
            "passes:\n" + pass_text)
    with pytest.raises(UserError, match=where):
        parse_recipe(text, "r.yaml")


def test_close_call_note_names_teacher_blocks(tmp_path, capsys):
    model = tiny_pixart(num_layers=6)
    ctx = context(model, tmp_path)
    run(model, ctx, blocks={"blocks": [1]})
    run(model, ctx, count={"blocks": 1}, criterion="learned", learn_steps=2, learn_lr=0.0, logit_lr=1e-4)
    [w] = ctx.report["remove_blocks"]["learned"]["windows"]
    err = " ".join(capsys.readouterr().err.split())
    assert f"learned, transformer_blocks 0, 2, 3, 4, 5: a close call: removing {w['removed']} won" in err
    assert w["removed"][0] in (0, 2, 3, 4, 5)


def test_learning_off_a_terminal_is_lines_on_stderr(tmp_path, capsys):
    """The bar is not drawn off a terminal (a job's log): the default recipe's learned removal said nothing
    after 'pass 2/5: remove_blocks' for minutes, and looked hung. A line per tenth of the steps, as distill's."""
    model = tiny_pixart(num_layers=4)
    run(model, context(model, tmp_path), count={"blocks": 1}, criterion="learned", learn_steps=20, learn_lr=0.0)
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line.split() for line in err.splitlines() if line.startswith("remove_blocks learned ")]
    assert [words[2] for words in lines] == [f"{s}/20" for s in range(2, 21, 2)]
    assert all(words[3] == "loss" and float(words[4]) >= 0 for words in lines)


def test_learning_off_a_terminal_logs_every_few_minutes_too(tmp_path, capsys, monkeypatch):
    """Its lines were its own logger's, a tenth apart alone: a slow step of a real model left the log silent
    for a tenth of the learning. Now compress.progress decides, with a line every LOG_EVERY_S (here each step)."""
    monkeypatch.setattr("compress.progress.LOG_EVERY_S", 0.0)
    model = tiny_pixart(num_layers=4)
    run(model, context(model, tmp_path), count={"blocks": 1}, criterion="learned", learn_steps=20, learn_lr=0.0)
    err = capsys.readouterr().err
    lines = [line.split() for line in err.splitlines() if line.startswith("remove_blocks learned ")]
    counts = list(dict.fromkeys(words[2] for words in lines))  # (the timer may say a step's line again)
    counts = counts[counts[:1] == ["0/20"]:]  # (and, where the first step outlasts its 10 ms tick, 0/20 first)
    assert counts == [f"{s}/20" for s in range(1, 21)]  # (a tenth apart: 10 of them)


def test_a_weight_update_that_diverges_is_blamed_not_the_teacher(tmp_path):
    """learn_lr 1e30: the second step's forward overflows. The line said 'non-finite loss at step 2 (the
    masked model's prediction or the teacher's)' of a finite teacher, naming no layer and no rate."""
    from compress.errors import NumericError

    model = tiny_pixart(num_layers=4)
    with pytest.raises(NumericError) as e:
        run(model, context(model, tmp_path), count={"blocks": 1}, criterion="learned", learn_steps=4,
            learn_lr=1e30)
    words = str(e.value)
    assert words.startswith("remove_blocks: criterion learned: non-finite loss at step 2 (the teacher's "
                            "prediction is finite, the masked model's is not): "), words
    assert "output is the first to hold NaN/Inf" in words and words.endswith("; lower learn_lr (1e+30)"), words
    assert "or the teacher's" not in words


def test_a_teacher_whose_prediction_is_not_finite_is_blamed(tmp_path):
    """The teacher's own prediction NaN on a calibration batch: the line says so, and no rate to lower."""
    from compress.errors import NumericError

    model = tiny_pixart(num_layers=4)
    ctx = context(model, tmp_path)
    ctx.teacher = tiny_pixart(num_layers=4)
    ctx.teacher.proj_out.bias.data[:] = float("nan")
    with pytest.raises(NumericError, match=r"^remove_blocks: criterion learned: non-finite loss at step 1: the "
                                           r"teacher's prediction on calibration batch \d+ holds NaN/Inf$"):
        run(model, ctx, count={"blocks": 1}, criterion="learned", learn_steps=2)
