"""distill.kd_teacher: base on a chain of outputs (base -> a, a block removed -> the student, one more
removed): the key's parsing and refusals (a teacher that is no output, a base moved away, a base of other
blocks), the pass distilling toward the base (its errors and KD terms against the base, not the recipe's
teacher), and what plan says of it."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from compress.arch import get_adapter
from compress.errors import UserError
from compress.inspect_distill import distill_line
from compress.io_output import load_transformer
from compress.passes.base import RunContext
from compress.passes.distill import DistillConfig, DistillPass
from compress.passes.distill_kd_teacher import base_chain, kd_target
from compress.recipe import parse_recipe
from compress.report import error_figure
from tests.conftest import model_inputs, tiny_pixart
from tests.passes.distill_helpers import toy_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _save_output(model, folder, teacher: str, block_map):
    """`model` saved as a run saves its output: its teacher and block map recorded."""
    from compress.io_export import save_compressed

    return save_compressed(model, folder, extra={"teacher": teacher, "block_map": block_map},
                           files={"block_map.json": json.dumps(block_map)})


def _chain(tmp_path, base=None):
    """(base model, a: the output of the base with its block 1 removed, loaded as a run loads it)."""
    base = base if base is not None else tiny_pixart(num_layers=4)
    base.save_pretrained(tmp_path / "base")
    a = copy.deepcopy(base)
    _save_output(a, tmp_path / "a", str((tmp_path / "base").resolve()), get_adapter(a).remove_blocks(a, {"blocks": [1]}))
    return base, load_transformer(tmp_path / "a")


def _student(a):
    """a with its block 2 removed (the base's block 3): (student, its block map to a)."""
    student = copy.deepcopy(a)
    return student, get_adapter(student).remove_blocks(student, {"blocks": [2]})


def _heldout(model):
    batches = [model_inputs(model, batch=4, seed=s) for s in (11, 12)]
    return lambda: batches


def _rel(student, teacher, batches) -> float:
    adapter = get_adapter(student)
    with torch.no_grad():
        num = den = 0.0
        for kw in batches:
            s, t = adapter.predict(student, kw).double(), adapter.predict(teacher, kw).double()
            num, den = num + (s - t).square().sum().item(), den + t.square().sum().item()
    return (num / den) ** 0.5


def _run(student, teacher, block_map, run_dir, **cfg):
    ctx = RunContext(adapter=get_adapter(teacher), family="pixart", teacher=teacher, run_dir=run_dir,
                     train_batch=toy_data(teacher), eval_inputs=_heldout(teacher), block_map=block_map)
    config = dict(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=0, progress=False, plot=False)
    return DistillPass(DistillConfig(**{**config, **cfg})).run(student, ctx), ctx.report["distill"]


def test_base_chain_and_composed_block_map(tmp_path):
    base, a = _chain(tmp_path)
    student, to_a = _student(a)
    assert base_chain(a) == [str((tmp_path / "base").resolve())]
    kd = kd_target(a, to_a)
    assert kd.block_map == {"blocks": [0, 2]}  # the student's blocks 0, 1: a's 0, 1, the base's 0, 2
    assert kd.source == str((tmp_path / "base").resolve())
    assert all(torch.equal(p, q) for p, q in zip(kd.teacher.state_dict().values(), base.state_dict().values()))


def test_distill_toward_the_base_measures_and_trains_against_the_base(tmp_path):
    """The held-out error the pass reports before training is the student's against the base (not against
    a, its recipe's teacher, which differs from the base by a removed block), and the record names it."""
    base, a = _chain(tmp_path)
    student, to_a = _student(a)
    heldout = _heldout(a)()
    against_base, against_a = _rel(student, base, heldout), _rel(student, a, heldout)
    assert abs(against_base - against_a) > 1e-3  # the test tells them apart
    _, record = _run(copy.deepcopy(student), a, to_a, tmp_path / "run", kd_teacher="base")
    assert record["pred_rel_error_before"] == pytest.approx(against_base, rel=1e-6)
    assert record["kd_teacher"] == {"source": str((tmp_path / "base").resolve()),
                                    "chain": [str((tmp_path / "base").resolve())]}
    assert record["block_map"] == {"blocks": [0, 2]}
    assert f"held-out teacher-relative error against the chain's base {(tmp_path / 'base').resolve()} " \
           f"{error_figure(record['pred_rel_error_before'])} → " in distill_line(record)  # inspect's line
    _, plain = _run(copy.deepcopy(student), a, to_a, tmp_path / "run2")  # the default: the recipe's teacher
    assert plain["pred_rel_error_before"] == pytest.approx(against_a, rel=1e-6)
    assert "kd_teacher" not in plain
    assert record["first"]["out"] != pytest.approx(plain["first"]["out"])  # the KD term's target differs too


def test_a_teacher_that_is_no_output_is_refused(tmp_path):
    teacher = tiny_pixart(num_layers=2)
    with pytest.raises(UserError, match=r"^distill.kd_teacher: base distills toward the first teacher .* the "
                                        r"recipe's teacher is no dit-compress output .*: leave kd_teacher out"):
        _run(copy.deepcopy(teacher), teacher, None, tmp_path / "run", kd_teacher="base")


def test_a_base_moved_away_is_refused_with_the_way_out(tmp_path):
    _, a = _chain(tmp_path)
    student, to_a = _student(a)
    shutil.move(tmp_path / "base", tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"^distill.kd_teacher: base cannot find the chain's base: the recipe's "
                                        r"teacher records the teacher .*/base, which is not there; put it back"):
        _run(student, a, to_a, tmp_path / "run", kd_teacher="base")


@pytest.mark.parametrize("lambda_feat", [0.1, 0.0])
def test_a_base_of_other_blocks_is_refused_with_or_without_feature_kd(tmp_path, lambda_feat):
    """A base replaced since by one of fewer blocks: the student's blocks would be compared with other
    blocks; refused naming the block, before any step, whatever lambda_feat (the trainer's block map
    refuses it with lambda_feat: 0 too, so the refusal does not advise it)."""
    _, a = _chain(tmp_path)
    student, to_a = _student(a)
    tiny_pixart(num_layers=2).save_pretrained(tmp_path / "base")  # over the base
    with pytest.raises(UserError, match=r"^distill.kd_teacher: base compares the student's 'blocks' blocks with "
                                        r"the base's .* has 2 of them \(0..1\), so no block 2: it is not the "
                                        r"model") as e:
        _run(student, a, to_a, tmp_path / "run", kd_teacher="base", lambda_feat=lambda_feat)
    assert "lambda_feat" not in str(e.value)


@pytest.mark.parametrize("layers, said", [(2, "has 2 of them (0..1), so no block 2 or 3"),
                                          (1, "has 1 of them (block 0), so no block 2 or 3")])
def test_a_base_short_of_several_blocks_names_them_all(tmp_path, layers, said):
    """The student is a whole (its blocks the base's 0, 2, 3) and the base now has fewer: the refusal
    named the first block past it, in words that read as if the base had the rest ('has 2 of them, not
    block 2'). Now what the base has, and every block it has not."""
    _, a = _chain(tmp_path)
    tiny_pixart(num_layers=layers).save_pretrained(tmp_path / "base")  # over the base
    with pytest.raises(UserError, match=r"^distill.kd_teacher: base compares the student's 'blocks' blocks") as e:
        _run(copy.deepcopy(a), a, None, tmp_path / "run", kd_teacher="base", lambda_feat=0.0)
    assert f"the chain's base {(tmp_path / 'base').resolve()} {said}: it is not the model" in str(e.value)


def test_a_base_whose_block_count_does_not_fit_the_student_is_refused(tmp_path):
    """A student of no block map (none removed) and a base of other block count: resolve_block_map's
    refusal, as kd_teacher: base's."""
    base = tiny_pixart(num_layers=4)
    base.save_pretrained(tmp_path / "base")
    a = copy.deepcopy(base)
    _save_output(a, tmp_path / "a", str((tmp_path / "base").resolve()), {})
    a = load_transformer(tmp_path / "a")
    tiny_pixart(num_layers=3).save_pretrained(tmp_path / "base")  # over the base
    with pytest.raises(UserError, match=r"^distill.kd_teacher: base \(the chain's base .*\) does not fit the "
                                        r"student's blocks \(distill: the student has 4 'blocks' blocks, the "
                                        r"teacher 3.*\): it is not the model"):
        _run(copy.deepcopy(a), a, None, tmp_path / "run", kd_teacher="base", lambda_feat=0.0)


def test_the_key_at_its_line_in_plan_and_its_choices(tmp_path, capsys):
    from compress.plan import make_plan

    base = tiny_pixart(num_layers=4)
    _chain(tmp_path, base)
    text = (f"model: pixart\nteacher: {tmp_path / 'a'}\ncalibration: {{source: synthetic}}\npasses:\n"
            "  - remove_blocks: {blocks: {blocks: [2]}}\n"
            "  - distill: {steps: 2, data: toy, kd_teacher: KD}\n")
    with pytest.raises(UserError, match=r"r.yaml:6.*distill.kd_teacher must be one of"):
        parse_recipe(text.replace("KD", "bogus"), "r.yaml")
    plan = make_plan(parse_recipe(text.replace("KD", "base"), "r.yaml"))
    assert plan["passes"][-1]["kd_teacher"] == f"base {(tmp_path / 'base').resolve()}"
    text_toy = text.replace(str(tmp_path / "a"), "toy:pixart").replace("blocks: [2]", "blocks: [1]")
    with pytest.raises(UserError, match=r"r.yaml:6.*distill.kd_teacher: base .* is no dit-compress output"):
        make_plan(parse_recipe(text_toy.replace("KD", "base"), "r.yaml"))


def test_an_output_along_the_chain_that_took_a_lora_is_refused_at_the_key(tmp_path):
    """base -> a (block 1 removed) -> a2 (a with a LoRA of the base merged: dit-compress lora) -> t (block
    0 removed): the recipe's teacher t's chain goes through a2, whose LoRA the base holds none of; refused
    at the key's line naming a2 and the LoRA (it would be silently lost from the target). The recipe's
    teacher a2 itself is distilled toward the base with the LoRA (io_teacher_of.load_teacher_of replays it)."""
    from compress.io_export import save_compressed
    from compress.lora import merge_lora
    from compress.plan import make_plan
    from tests.test_lora_chain import _base_lora

    base, a = _chain(tmp_path)
    lora, _ = _base_lora(base, tmp_path)
    merge_lora(a, lora)
    recorded = dict(teacher=str((tmp_path / "base").resolve()), block_map={"blocks": [0, 2, 3]},
                    loras=a.compression_meta["loras"])  # as dit-compress lora saves a2
    save_compressed(a, tmp_path / "a2", extra=recorded, files={"block_map.json": '{"blocks": [0, 2, 3]}'})
    a2 = load_transformer(tmp_path / "a2")
    kd = kd_target(a2, None)  # the recipe's teacher took it: the base with the LoRA
    assert not all(torch.equal(p, q) for p, q in zip(kd.teacher.state_dict().values(), base.state_dict().values()))
    t = copy.deepcopy(a2)
    t.compression_meta = {}
    _save_output(t, tmp_path / "t", str((tmp_path / "a2").resolve()), get_adapter(t).remove_blocks(t, {"blocks": [0]}))
    text = (f"model: pixart\nteacher: {tmp_path / 't'}\ncalibration: {{source: synthetic}}\npasses:\n"
            "  - remove_blocks: {blocks: {blocks: [1]}}\n"
            "  - distill: {steps: 2, data: toy, kd_teacher: base}\n")
    with pytest.raises(UserError, match=r"^r.yaml:6.*distill.kd_teacher: base cannot distill toward the chain's "
                                        r"base through .*/a2, which took the LoRA .*base-lora.safetensors "
                                        r"\(dit-compress lora\).*leave kd_teacher out") as e:
        make_plan(parse_recipe(text, "r.yaml"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"through .*/a2, which took the LoRA"):
        kd_target(load_transformer(tmp_path / "t"), None)


def test_plan_memory_counts_the_chain_base_held_beside_the_teacher(tmp_path):
    """plan's memory estimate while distill trains: the chain's base (kd_teacher: base) as its own part,
    its parameter count as the output that read it records it (report.json teacher_params); where that
    output records none, the teacher's part says the base is not counted."""
    from compress.plan import make_plan

    base = tiny_pixart(num_layers=4)
    _chain(tmp_path, base)
    text = (f"model: pixart\nteacher: {tmp_path / 'a'}\ncalibration: {{source: synthetic}}\npasses:\n"
            "  - remove_blocks: {blocks: {blocks: [2]}}\n"
            "  - distill: {steps: 2, data: toy, kd_teacher: base}\n")

    def distilling(plan) -> dict:
        memory = plan["memory"]
        phase = memory if memory["while"] == "distill trains" else memory["other"]
        return {p["what"]: p for p in phase["parts"]}

    parts = distilling(make_plan(parse_recipe(text, "r.yaml")))
    assert "teacher weights (not counting the chain's base, kd_teacher: base)" in parts
    params = sum(p.numel() for p in base.parameters())
    (tmp_path / "a" / "report.json").write_text(json.dumps({"teacher": str((tmp_path / "base").resolve()),
                                                            "teacher_params": params}))
    plan = make_plan(parse_recipe(text, "r.yaml"))
    parts = distilling(plan)
    part = parts[f"the chain's base {(tmp_path / 'base').resolve()} (kd_teacher: base)"]
    assert part["bytes"] == params * plan["calibration"]["itemsize"]
    assert part["keys"] == ["passes.1.distill.kd_teacher", "compute_dtype"]
    assert "teacher weights" in parts
    plain = distilling(make_plan(parse_recipe(text.replace(", kd_teacher: base", ""), "r.yaml")))
    assert set(plain) == set(parts) - {part["what"]}


@pytest.mark.parametrize("samples", [True, False])
def test_the_note_says_teacher_samples_are_still_the_recipe_teachers(tmp_path, capsys, samples):
    _, a = _chain(tmp_path)
    student, to_a = _student(a)
    kd_target(a, to_a, student, teacher_samples=samples)
    said = " ".join(capsys.readouterr().err.split())
    assert "distilling toward the chain's base" in said
    assert ("the teacher samples it trains on (data: teacher_samples) are still the recipe's teacher's" in said) == samples


def _recipe(tmp_path, svd: bool = True) -> str:
    """remove_blocks, distill kd_teacher: base (line 6), svd (where `svd`) of the chain's output a."""
    return (f"model: pixart\nteacher: {tmp_path / 'a'}\ncalibration: {{source: synthetic, num_prompts: 2, "
            "batch_size: 2}\npasses:\n  - remove_blocks: {blocks: {blocks: [2]}}\n"
            "  - distill: {steps: 2, data: toy, kd_teacher: base, batch_size: 2, progress: false, plot: false, "
            "checkpoint_every: 0}\n" + ("  - svd: {targets: [attention], ratio: 0.5, multiple: 2}\n" if svd else ""))


def test_the_stage_line_report_and_card_say_which_teacher_each_error_is_against(tmp_path, capsys):
    """The runner's line after the pass gave one 'teacher-relative error' (the recipe's teacher's) just
    after the pass's note said its errors are against the chain's base: it now says which is which and
    gives the pass's own against the base, as inspect does; so do the stage's report record and the card."""
    from tests.runner_helpers import run_recipe

    _chain(tmp_path)
    run_recipe(tmp_path, _recipe(tmp_path, svd=False), "r")
    report = json.loads((tmp_path / "out-r" / "report.json").read_text())
    base, stage = str((tmp_path / "base").resolve()), report["stages"][1]
    after = report["distill"]["pred_rel_error_after"]
    assert stage["kd_teacher"] == {"source": base, "relative_error": after} and "kd_teacher" not in report["stages"][0]
    said = " ".join(capsys.readouterr().err.split())
    assert (f"teacher-relative error {stage['relative_error']:.4g} (against the recipe's teacher; against the "
            f"chain's base {base} {after:.4g})") in said
    assert said.count("against the recipe's teacher;") == 1  # not on remove_blocks' line
    card = " ".join((tmp_path / "out-r" / "README.md").read_text().split())
    assert (f"Stage 2 (distill) distilled toward the chain's base `{base}` (kd_teacher: base): its error above is "
            f"against the teacher; against that base it is {error_figure(after)}.") in card


def _resumable_past_the_pass(tmp_path) -> str:
    """A run of remove_blocks, distill kd_teacher: base, svd (its recipe returned) stopped after the distill
    (its stage saved, the svd's not, no output), the chain's base then moved away."""
    from tests.runner_helpers import run_recipe

    _chain(tmp_path)
    text = _recipe(tmp_path)
    run_recipe(tmp_path, text, "r")
    shutil.rmtree(tmp_path / "run-r" / "stages" / "2-svd")
    (tmp_path / "run-r" / "stages" / "finished.json").unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "out-r")
    shutil.move(tmp_path / "base", tmp_path / "elsewhere")
    return text


def test_resume_past_the_pass_does_not_want_the_base(tmp_path):
    """--resume after the kd_teacher: base pass is done (its stage saved, the svd after it not) runs on
    with the base moved away: only a pass that runs needs it. Resumed from before it, still refused."""
    from tests.runner_helpers import run_recipe

    text = _resumable_past_the_pass(tmp_path)
    stages = tmp_path / "run-r" / "stages"
    run_recipe(tmp_path, text, "r", resume=True)
    assert (stages / "2-svd" / "state.json").is_file() and (tmp_path / "out-r").is_dir()
    shutil.rmtree(stages / "2-svd")
    shutil.rmtree(stages / "1-distill")
    (stages / "finished.json").unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "out-r")
    with pytest.raises(UserError, match=r"r.yaml:6: distill.kd_teacher: base cannot find the chain's base"):
        run_recipe(tmp_path, text, "r", resume=True)


def test_a_follower_resuming_past_the_pass_does_not_want_the_base(tmp_path, monkeypatch):
    """Several processes, --resume after the kd_teacher: base pass: only rank 0 read which passes were done,
    so a follower asked for the base the pass no longer needs, and refused ('distill.kd_teacher: base cannot
    find the chain's base'). Rank 0's record now says which pass it continues after (runner_answers.RESUMES_AFTER)."""
    from compress.runner import Runner
    from compress.runner_answers import check_same_run
    from compress.runner_ranks import announce
    from tests.ranks_helpers import launch_env

    text = _resumable_past_the_pass(tmp_path)
    launch_env(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")

    def resumed(rank: str) -> Runner:
        monkeypatch.setenv("RANK", rank)
        recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
        return Runner(recipe, tmp_path / "out-r", tmp_path / "run-r", resume=True)

    main = resumed("0")
    announce(main.run_dir, main.about)  # as Runner.run starts (runner_ranks.leading)
    main.prepare()
    follower = resumed("1")
    follower.followed = check_same_run(follower.run_dir, follower.about, "recipe", poll=0.01)  # as _follow
    follower.prepare()
    assert [p.resumed_past for p in follower.passes] == [True, True, False]


def test_a_base_changed_since_is_warned_of_and_distilled_toward_as_it_is(tmp_path, capsys):
    """The output records the base's weight files (as a run does): a base saved over since (a fine-tune)
    is warned of, naming it, as eval warns of a recorded teacher that changed, and loaded as it is now."""
    from compress.io_signature import teacher_signature

    base, a = _chain(tmp_path)
    a.compression_meta["teacher_files"] = teacher_signature(str((tmp_path / "base").resolve()))
    student, to_a = _student(a)
    with torch.no_grad():
        base.transformer_blocks[0].attn1.to_q.weight.add_(1.0)
    base.save_pretrained(tmp_path / "base")  # over it
    kd = kd_target(a, to_a)
    assert torch.equal(kd.teacher.transformer_blocks[0].attn1.to_q.weight, base.transformer_blocks[0].attn1.to_q.weight)
    said = " ".join(capsys.readouterr().err.split())
    assert f"warning: teacher {(tmp_path / 'base').resolve()} changed since the recipe's teacher was compressed from " \
           "it: " in said
    assert "distill measures against it as it is now (put the original back to distill toward that)" in said


def test_a_chain_of_two_outputs_leads_to_its_base(tmp_path):
    """base -> a (its block 1 removed) -> b (a's block 0 removed) -> the student (b's block 1 removed): the
    student's block is the base's block 2, through both block maps, and the chain names a between."""
    base, a = _chain(tmp_path)
    b = copy.deepcopy(a)
    _save_output(b, tmp_path / "b", str((tmp_path / "a").resolve()), get_adapter(b).remove_blocks(b, {"blocks": [0]}))
    b = load_transformer(tmp_path / "b")
    student = copy.deepcopy(b)
    to_b = get_adapter(student).remove_blocks(student, {"blocks": [1]})
    kd = kd_target(b, to_b)
    assert kd.chain == [str((tmp_path / "a").resolve()), str((tmp_path / "base").resolve())]
    assert kd.block_map == {"blocks": [2]}  # b's blocks 0, 1 are a's 1, 2, the base's 2, 3; the student keeps b's 0
    against_base = _rel(student, base, _heldout(b)())
    _, record = _run(student, b, to_b, tmp_path / "run", kd_teacher="base")
    assert record["pred_rel_error_before"] == pytest.approx(against_base, rel=1e-6)


def test_a_base_of_another_family_or_width_is_refused(tmp_path):
    from tests.conftest import tiny_flux

    _, a = _chain(tmp_path)
    student, to_a = _student(a)
    shutil.rmtree(tmp_path / "base")
    tiny_flux().save_pretrained(tmp_path / "base")
    with pytest.raises(UserError, match=r"^distill.kd_teacher: base \(the chain's base .*/base\): teacher .*/base is a "
                                        r"Flux.*; the model to compare with it is a PixArtTransformer2DModel"):
        kd_target(a, to_a)
    shutil.rmtree(tmp_path / "base")
    tiny_pixart(num_layers=4, attention_head_dim=4).save_pretrained(tmp_path / "base")
    with pytest.raises(UserError, match=r"^distill.kd_teacher: base \(the chain's base .*/base\): .*attention_head_dim 4 "
                                        r"\(the model's: 8\); put back the base the chain was compressed from, or leave "
                                        r"kd_teacher out"):
        kd_target(a, to_a)
