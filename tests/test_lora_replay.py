"""eval and bench of a `dit-compress lora` output give its teacher the LoRA it took (lora_replay.replay): a
LoRA moved or deleted since is one line saying where it was and --lora PATH, which gives its new place."""

import copy
import json
import shutil

import pytest

from compress.cli import main
from tests.test_lora import _lora, _student

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")


def _err(argv, capsys) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _eval(argv, capsys) -> float:
    assert main(argv + ["--json"]) == 0, argv
    return json.loads(capsys.readouterr().out)["pred_rel_error"]


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_a_lora_moved_since_it_was_merged_is_one_line_and_lora_gives_its_new_place(tmp_path, capsys):
    """Before: eval and bench failed with '<path>: no LoRA there', even with --teacher, and said neither
    that the output recorded it nor what to do. Now the error says both, before the teacher loads, and
    --lora PATH measures the output as before the move."""
    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora")
    new = tmp_path / "new"
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(new), "--scale", "0.5"]) == 0
    capsys.readouterr()
    before = _eval(["eval", str(new)], capsys)
    shutil.move(tmp_path / "lora", tmp_path / "moved")
    gone = ("dit-compress {}: error: the LoRA this model took (dit-compress lora or "
            f"compress.merge_lora) is no longer at {tmp_path / 'lora'}, "
            "where it recorded it (moved or deleted), and its teacher takes it to stand for the model: pass its new "
            "place to eval or bench with --lora PATH, or put it back there").format  # the command's
    assert _err(["eval", str(new)], capsys) == gone("eval")
    assert _err(["eval", str(new), "--teacher", str(tmp_path / "teacher")], capsys) == gone("eval")
    assert _err(["bench", str(new), "--repeats", "1", "--device", "cpu"], capsys) == gone("bench")
    assert _eval(["eval", str(new), "--lora", str(tmp_path / "moved")], capsys) == before
    assert main(["bench", str(new), "--json", "--repeats", "1", "--device", "cpu", "--lora",
                 str(tmp_path / "moved")]) == 0
    assert json.loads(capsys.readouterr().out)["params_ratio"] > 0
    moved = ["--lora", str(tmp_path / "moved")]
    assert _err(["eval", str(new)] + moved * 2, capsys).endswith(
        "--lora given 2 times, but the model took 1 LoRA (dit-compress lora or compress.merge_lora): give --lora once")
    assert _err(["eval", str(new), "--lora", str(tmp_path / "nowhere")], capsys).endswith(
        f"--lora {tmp_path / 'nowhere'}: no such file or folder")
    assert _err(["eval", str(tmp_path / "out-s")] + moved, capsys).endswith(
        "--lora: the model took no LoRA (dit-compress lora or compress.merge_lora); its teacher is compared as it is")


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_a_lora_output_of_a_streamed_run_is_measured_against_its_teacher_with_the_lora(tmp_path, capsys):
    """A streamed run's output that took a LoRA was measured block by block against the teacher
    without it; it is measured as a resident output is (the teacher with the LoRA merged)."""
    from tests.conftest import tiny_flux
    from tests.runner_helpers import run_recipe, streamed_teacher

    run_recipe(tmp_path, streamed_teacher(tmp_path, "flux").format(stream="true"), "s")
    _lora(tiny_flux(), tmp_path / "lora")
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new")]) == 0
    resident = tmp_path / "resident"  # the same output, measured as a resident run's
    shutil.copytree(tmp_path / "new", resident)
    recipe = (resident / "recipe.yaml").read_text()
    assert "stream: true" in recipe
    (resident / "recipe.yaml").write_text(recipe.replace("stream: true", "stream: false"))
    capsys.readouterr()
    assert _eval(["eval", str(tmp_path / "new")], capsys) == pytest.approx(_eval(["eval", str(resident)], capsys),
                                                                           rel=1e-5)


def test_lora_on_a_model_that_took_none_is_refused_streamed_or_not(tmp_path, capsys):
    """A streamed output's eval ignored --lora (even a path not there), and so did eval of a model
    that is no output; the resident path refused it."""
    from tests.runner_helpers import run_recipe, streamed_teacher

    out = run_recipe(tmp_path, streamed_teacher(tmp_path, "flux").format(stream="true"), "s")
    capsys.readouterr()
    assert main(["eval", str(out), "--lora", str(tmp_path / "nowhere")]) == 2
    assert "--lora: the model took no LoRA (dit-compress lora or compress.merge_lora)" in capsys.readouterr().err
    assert main(["eval", "toy:pixart", "--lora", str(tmp_path / "nowhere")]) == 2
    assert "toy:pixart is not a dit-compress output" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_a_lora_option_holding_another_lora_warns(tmp_path, capsys):
    """--lora was matched to the recorded LoRAs by place alone: another file, or the same LoRAs in
    another order, measured the model against another teacher in silence. The merge records each
    local LoRA's signature; a --lora that differs is warned about (and measured as given)."""
    from compress.lora_replay import warn_if_other_loras

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora")
    _lora(copy.deepcopy(teacher), tmp_path / "other")  # random again: another LoRA
    new = tmp_path / "new"
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(new)]) == 0
    record = json.loads((new / "config.json").read_text())["compression"]["loras"][0]
    assert record["signature"] and all(name.endswith(".safetensors") for name in record["signature"])
    shutil.move(tmp_path / "lora", tmp_path / "moved")
    capsys.readouterr()
    assert main(["eval", str(new), "--json", "--lora", str(tmp_path / "moved")]) == 0
    assert "warning" not in capsys.readouterr().err  # the same LoRA in its new place
    assert main(["eval", str(new), "--json", "--lora", str(tmp_path / "other")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (f"warning: --lora {tmp_path / 'other'} is not the LoRA the model took (recorded at {tmp_path / 'lora'}): "
            "its teacher is given it as it is") in err and err.count("warning:") == 1  # said once
    a, b = ({"source": str(tmp_path / n), "scale": 1.0, "signature": {"": {"sha256": n}}} for n in "ab")
    warn_if_other_loras([a, b], ["me/lora-a", str(tmp_path / "y")])  # a Hub id, nothing there: not compared
    err = " ".join(capsys.readouterr().err.split())
    assert "warning" not in err and f"--lora me/lora-a, {tmp_path / 'y'}: not compared" in err
    (tmp_path / "a.safetensors").write_bytes(b"a")
    (tmp_path / "b.safetensors").write_bytes(b"b")
    from compress.io_signature import lora_signature

    a, b = ({"source": n, "scale": 1.0, "signature": lora_signature(str(tmp_path / f"{n}.safetensors"))} for n in "ab")
    warn_if_other_loras([a, b], [str(tmp_path / "b.safetensors"), str(tmp_path / "a.safetensors")])
    assert "warning: the same LoRAs in another order than the model took them (each takes the scale of the one in " \
           "its place; a DoRA's norms, the LoRAs before it): its teacher is given them as they are" \
           in " ".join(capsys.readouterr().err.split())  # files that cannot be read: they may be DoRAs


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_lora_gives_a_pipeline_folders_transformer_the_new_place_of_its_lora(tmp_path, capsys):
    """eval PIPE --lora PATH, PIPE a pipeline folder whose transformer/ took a LoRA (a pipeline's
    save_pretrained), said PIPE is not a dit-compress output: the check read PIPE's own config.json."""
    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora")
    new = tmp_path / "new"
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(new)]) == 0
    capsys.readouterr()
    before = _eval(["eval", str(new)], capsys)
    pipe = tmp_path / "pipe"
    shutil.copytree(new, pipe / "transformer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer":
                                                       ["diffusers", "FluxTransformer2DModel"]}))
    shutil.move(tmp_path / "lora", tmp_path / "moved")
    assert _eval(["eval", str(pipe), "--lora", str(tmp_path / "moved")], capsys) == before


def test_a_lora_read_against_a_moved_teacher_is_replayed_on_that_teacher_as_its_own_blocks(tmp_path):
    """c took a LoRA while its teacher b (itself an output: base -> a -> b, blocks removed) was moved
    away: its blocks were read as b's own (blocks_of b). Replayed on b (back in place) for eval, b's
    block i takes the LoRA's block i, as c's did, not (through b's chain) the base block b's block i
    descends from: the teacher compared with then took other blocks' LoRAs."""
    import torch

    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from compress.lora_replay import replay
    from tests.test_lora_chain import _chain
    from tests.test_lora_limits import _save, _state

    _, c_folder = _chain(tmp_path, "pixart")
    lora = _save(_state(load_transformer(tmp_path / "b"), ["to_q"]), tmp_path / "b-lora.safetensors")
    (tmp_path / "b").rename(tmp_path / "b-moved")
    c = load_transformer(c_folder)
    merge_lora(c, lora)
    (tmp_path / "b-moved").rename(tmp_path / "b")
    assert c.compression_meta["loras"][0]["blocks_of"] == str((tmp_path / "b").resolve())
    teacher, expected = load_transformer(tmp_path / "b"), load_transformer(tmp_path / "b")
    merge_lora(expected, lora, own_blocks=True)
    replay(teacher, c.compression_meta["loras"], took=c.compression_meta["teacher"])
    got, want = teacher.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_lora_read_as_blocks_of_one_base_is_refused_on_a_teacher_of_another_naming_both(tmp_path):
    """c (base -> a -> b -> c) took a LoRA of base (blocks_of base). eval/bench --teacher a2, an output of
    another base (base2, a copy elsewhere), gave a2's block i the LoRA's block i (read as a2's own blocks),
    not that of the base block a2's block i descends from: a silent comparison with another teacher. Now
    one line naming both bases; a, whose chain leads to base, still takes it through its chain. (A LoRA
    of base block 5 too was refused on a2 as past its last block, as a LoRA of a deeper model.)"""
    import torch

    from compress.errors import UserError
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_chain import _chain
    from tests.test_lora_limits import _save, _state

    base, c_folder = _chain(tmp_path, "pixart")
    weights = _state(copy.deepcopy(base), ["to_q"])  # base blocks 0-4: as many as a2 has, so HEAD merged it
    lora = _save({k: v for k, v in weights.items() if ".transformer_blocks.5." not in k}, tmp_path / "lora.safetensors")
    c = load_transformer(c_folder)
    merge_lora(c, lora)
    base_path, base2 = str((tmp_path / "base").resolve()), tmp_path / "base2"
    assert c.compression_meta["loras"][0]["blocks_of"] == base_path
    shutil.copytree(tmp_path / "base", base2)
    shutil.copytree(tmp_path / "a", tmp_path / "a2")
    config = json.loads((tmp_path / "a2" / "config.json").read_text())
    config["compression"]["teacher"] = str(base2.resolve())
    (tmp_path / "a2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as e:
        load_teacher_of(c, str(tmp_path / "a2"))
    assert str(e.value) == (f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
                            "compress.merge_lora) was read as blocks of "
                            f"{base_path}, but the teacher to compare with was compressed from {base2.resolve()}: its "
                            "blocks descend from that base's, not those the LoRA's were mapped to; compare with the "
                            f"model's own teacher, or one compressed from {base_path}")
    teacher, expected = load_teacher_of(c, str(tmp_path / "a")), load_transformer(tmp_path / "a")
    merge_lora(expected, lora)  # through a's chain: its block i takes the LoRA of the base block it descends from
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in teacher.state_dict().items())


def test_a_count_of_lora_flags_other_than_the_loras_taken_says_each_count_in_words(tmp_path):
    """--lora given against the LoRAs an output took: "took 1 LoRAs", "given 1 times" and "once for
    each, in the order it took them" for a single LoRA; each count now agrees with its noun."""
    from compress.errors import UserError
    from compress.lora_replay import replayed_sources

    one, two = [{"source": str(tmp_path / "a")}], [{"source": str(tmp_path / "a")}, {"source": str(tmp_path / "b")}]
    with pytest.raises(UserError, match=r"^--lora given 2 times, but the model took 1 LoRA \(dit-compress lora or "
                                        r"compress\.merge_lora\): "
                                        r"give --lora once$"):
        replayed_sources(one, [str(tmp_path)] * 2)
    with pytest.raises(UserError, match=r"^--lora given 1 time, but the model took 2 LoRAs \(dit-compress lora or "
                                        r"compress\.merge_lora\): "
                                        r"give --lora once for each, in the order it took them$"):
        replayed_sources(two, [str(tmp_path)])


def test_plain_loras_in_another_order_at_their_scales_are_the_same_teacher(tmp_path, capsys):
    """eval --lora B --lora A of a model that took A then B warned of another teacher, though plain
    LoRAs add up alike (W + s1·B1A1 + s2·B2A2): kept where the order matters, a DoRA among them (its
    norms are taken with the LoRAs before it) or scales that differ (each --lora takes its place's)."""
    import torch
    from safetensors.torch import save_file

    from compress.io_signature import lora_signature
    from compress.lora_replay import warn_if_other_loras

    def saved(name: str, dora: bool = False) -> str:
        weights = {f"transformer.{name}.lora_A.weight": torch.ones(2, 4), f"transformer.{name}.lora_B.weight": torch.ones(4, 2)}
        if dora:
            weights[f"transformer.{name}.lora_magnitude_vector"] = torch.ones(4)
        save_file(weights, str(tmp_path / f"{name}.safetensors"))
        return str(tmp_path / f"{name}.safetensors")

    def warned(sources, scales) -> str:
        records = [{"source": s, "scale": k, "blocks_of": "toy:pixart", "signature": lora_signature(s)}
                   for s, k in zip(sources, scales)]
        capsys.readouterr()
        warn_if_other_loras(records, sources[::-1])
        return " ".join(capsys.readouterr().err.split())

    plain = [saved("a"), saved("b")]
    err = warned(plain, [0.5, 0.5])
    assert "warning" not in err and "another order than the model took them, at the same scales" in err
    assert "warning: the same LoRAs in another order" in warned(plain, [0.7, 2.0])  # each takes its place's scale
    assert "warning: the same LoRAs in another order" in warned([saved("c", dora=True), plain[0]], [0.5, 0.5])


def test_a_lora_read_as_its_moved_teachers_blocks_is_refused_on_another_model_and_taken_by_that_teacher(tmp_path):
    """c (base -> a -> b -> c) took a LoRA while b was moved away: its blocks read as b's own (blocks_of
    b, b = base blocks 0, 1, 2, 5). eval/bench --teacher a2 (another output of base: base blocks 0, 2, 3,
    4, 5), or --teacher base, took it in their own blocks (their block 1, base block 2, b's block 1's LoRA,
    of base block 1): a comparison with a teacher no one had, without a word. Now one line naming both
    while b is not there; b, back in place or given at its new place (the weight files c recorded of it),
    still takes it in its own blocks (back in place, a2 and base take it mapped through b's chain:
    test_lora_replay_mapped)."""
    import torch

    from compress.arch import get_adapter
    from compress.errors import UserError
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.io_signature import teacher_signature
    from compress.lora import merge_lora
    from tests.test_lora_chain import _chain, _save_output
    from tests.test_lora_limits import _save, _state

    base, c_folder = _chain(tmp_path, "pixart")
    a2 = copy.deepcopy(base)
    _save_output(a2, tmp_path / "a2", tmp_path / "base", get_adapter(a2).remove_blocks(a2, {"blocks": [1]}))
    lora = _save(_state(load_transformer(tmp_path / "b"), ["to_q"]), tmp_path / "b-lora.safetensors")
    c = load_transformer(c_folder)
    c.compression_meta["teacher_files"] = teacher_signature(str(tmp_path / "b"))  # as a run records it
    b, moved = str((tmp_path / "b").resolve()), tmp_path / "b-moved"
    (tmp_path / "b").rename(moved)
    merge_lora(c, lora)
    assert c.compression_meta["loras"][0]["blocks_of"] == b

    def own(folder):  # the teacher given the LoRA as c read it: its block i the LoRA's block i
        expected = load_transformer(folder)
        merge_lora(expected, lora, own_blocks=True)
        return expected.state_dict()

    def same(teacher, want) -> bool:
        return teacher.state_dict().keys() == want.keys() and all(torch.equal(v, want[k]) for k, v in
                                                                   teacher.state_dict().items())

    assert same(load_teacher_of(c, str(moved)), own(moved))  # b at its new place: its files as c recorded
    with pytest.raises(UserError) as e:  # b not there: a2 is not b (c's record of b's files), nor of b's base
        load_teacher_of(c, str(tmp_path / "a2"))
    assert str(e.value) == (f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
                            f"compress.merge_lora) was read as blocks of {b}, "
                            f"but the teacher to compare with was compressed from {(tmp_path / 'base').resolve()}: its "
                            "blocks descend from that base's, not those the LoRA's were mapped to; compare with the "
                            f"model's own teacher, or one compressed from {b}")
    moved.rename(tmp_path / "b")  # back in place: b is known for a dit-compress output
    assert same(load_teacher_of(c, b), own(tmp_path / "b"))  # a2 and base, of b's base: test_lora_replay_mapped


def test_an_old_dora_record_on_a_chain_is_replayed_with_the_norms_of_the_chains_base(tmp_path):
    """A DoRA merged before records named a base (no blocks_of) into c (base -> a -> b -> c), read in b's
    blocks with --teacher base for its norms (the only teacher such a merge took: an output is refused).
    eval/bench give b it in its own blocks, and took its norms from b's recorded teacher a, an output:
    'teacher a is a dit-compress output ...; pass that with --teacher (dit-compress lora) or teacher= to
    merge_lora', no way out in eval. Now from the chain's base (as a two-link chain, whose b records the
    base itself, already did): each of b's blocks' from the base block it descends from, the weight the
    DoRA was trained on top of, as the same DoRA of the base renumbered gives b (b's block 3 is base block
    5; the old merge, given the base, read base block 3's: tests/test_lora_replay_dora.py)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora import _lora
    from tests.test_lora_chain import _chain
    from tests.test_lora_replay_mapped import B_OF_BASE, as_base_lora

    _, c_folder = _chain(tmp_path, "pixart")
    _lora(load_transformer(tmp_path / "b"), tmp_path / "dora", targets=["to_q"], use_dora=True)
    c, base = load_transformer(c_folder), str((tmp_path / "base").resolve())
    merge_lora(c, tmp_path / "dora", teacher=base, own_blocks=True)  # as dit-compress lora c DORA --teacher base did
    assert "blocks_of" not in c.compression_meta["loras"][0]
    with safe_open(str(tmp_path / "dora" / "pytorch_lora_weights.safetensors"), "pt") as f:  # its scaling kept
        weights, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(as_base_lora(weights, B_OF_BASE), str(tmp_path / "base-dora.safetensors"), metadata=metadata)
    expected = load_transformer(tmp_path / "b")
    merge_lora(expected, tmp_path / "base-dora.safetensors")  # norms from the base, in its own blocks
    got, want = load_teacher_of(c, str(tmp_path / "b")).state_dict(), expected.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
