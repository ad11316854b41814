"""eval and bench of an output that took a LoRA read as its own teacher T's blocks (T, an output with
blocks removed, moved away at the merge: blocks_of T) give another teacher of T's base (T's teacher,
the base, another output of the base) the LoRA mapped through both chains' block maps, exactly as a
LoRA of the base (lora_replay.mapped_blocks); a teacher of another base is still refused in one line."""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import torch

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*invalid shape")]

B_OF_BASE = [0, 1, 2, 5]  # b's blocks, as base blocks (tests.test_lora_chain.CHAINS["pixart"])


def as_base_lora(weights: dict, kept: list[int]) -> dict:
    """A LoRA in b's blocks (`weights`) renumbered as a LoRA of the base: b's block j is base block kept[j]."""
    def renamed(key: str) -> str:
        return re.sub(r"\.transformer_blocks\.(\d+)\.", lambda m: f".transformer_blocks.{kept[int(m[1])]}.", key)

    return {renamed(k): v for k, v in weights.items()}


def moved_chain(tmp_path, dora: bool = False):
    """(base, c, b's LoRA file, its weights): c (base -> a -> b -> c) took a LoRA of b's blocks while b was
    moved away (blocks_of b), b back in place since; a2 (base blocks 0 2 3 4 5) is another output of base.
    `dora`: a DoRA, its norms read at the merge from b_copy, a teacher numbered as b (--teacher base, its
    6 blocks not b's 4, is refused: lora_replay_moved.given_numbered_otherwise)."""
    from compress.arch import get_adapter
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_chain import _chain, _save_output
    from tests.test_lora_limits import _save, _state

    base, c_folder = _chain(tmp_path, "pixart")
    a2 = copy.deepcopy(base)
    _save_output(a2, tmp_path / "a2", tmp_path / "base", get_adapter(a2).remove_blocks(a2, {"blocks": [1]}))
    weights = (_dora if dora else _state)(load_transformer(tmp_path / "b"), ["to_q"])
    lora = _save(weights, tmp_path / "b-lora.safetensors")
    (tmp_path / "b").rename(tmp_path / "b-moved")
    c = load_transformer(c_folder)
    merge_lora(c, lora, teacher=b_copy(base, tmp_path) if dora else None)
    (tmp_path / "b-moved").rename(tmp_path / "b")
    assert c.compression_meta["loras"][0]["blocks_of"] == str((tmp_path / "b").resolve())
    return base, c, lora, weights


def b_copy(base, tmp_path, family: str = "pixart") -> str:
    """tmp_path/b-copy: the base's blocks b kept (tests.test_lora_chain.CHAINS), saved as no output: a
    DoRA's teacher numbered as b, its weights b's (b removes blocks, factorizes none)."""
    from compress.arch import get_adapter
    from tests.test_lora_chain import CHAINS

    model, kept = copy.deepcopy(base), CHAINS[family][3]
    adapter = get_adapter(model)
    adapter.remove_blocks(model, {g: [i for i in range(n) if i not in kept.get(g, range(n))]
                                  for g, n in adapter.block_counts(model).items()})
    model.save_pretrained(tmp_path / "b-copy")
    return str((tmp_path / "b-copy").resolve())


def other_base_copies(tmp_path, output: str) -> None:
    """base2, a copy of the base elsewhere, and a3, a copy of `output` (an output of the base) recording
    base2 for its teacher: of another base."""
    shutil.copytree(tmp_path / "base", tmp_path / "base2")
    shutil.copytree(tmp_path / output, tmp_path / "a3")
    config = json.loads((tmp_path / "a3" / "config.json").read_text())
    config["compression"]["teacher"] = str((tmp_path / "base2").resolve())
    (tmp_path / "a3" / "config.json").write_text(json.dumps(config))


def refused(*args, **kwargs) -> str:
    """The one line load_teacher_of(*args, **kwargs) refuses with (a UserError)."""
    from compress.errors import UserError
    from compress.io_teacher_of import load_teacher_of

    with pytest.raises(UserError) as e:
        load_teacher_of(*args, **kwargs)
    return str(e.value)


def same(teacher, want: dict) -> bool:
    got = teacher.state_dict()
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("other", ["a", "base", "a2"])
def test_a_lora_read_as_a_moved_teachers_blocks_is_mapped_through_the_chains_to_a_teacher_of_its_base(tmp_path, other):
    """Before: --teacher a (b's own teacher), the base or a2 was refused ('... is another model (its weight
    files are not b's ...)' / '(no dit-compress output, and b one with blocks removed)'), though b's chain
    (base blocks 0 1 2 5) says which base block each of the LoRA's blocks is. Now the teacher takes it as
    the same LoRA of the base, renumbered: its block descending from base block 5 takes b's block 3's,
    those b removed none."""
    from safetensors.torch import save_file

    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora

    base, c, _, weights = moved_chain(tmp_path)
    save_file(as_base_lora(weights, B_OF_BASE), str(tmp_path / "base-lora.safetensors"))
    expected = copy.deepcopy(base) if other == "base" else load_transformer(tmp_path / other)
    merge_lora(expected, tmp_path / "base-lora.safetensors")  # a LoRA of the base, through other's own chain
    assert same(load_teacher_of(c, str(tmp_path / other)), expected.state_dict())


def test_a_lora_read_as_a_moved_teachers_blocks_is_refused_on_a_teacher_of_another_base(tmp_path):
    """A copy of the base elsewhere (base2), or an output of it: the chains lead to two bases, no mapping
    is known to be exact: one line, as before (not_took)."""
    _, c, lora, _ = moved_chain(tmp_path)
    other_base_copies(tmp_path, "a2")
    b = str((tmp_path / "b").resolve())
    base = str((tmp_path / "base").resolve())
    for other, why in [("a3", f"its weight files are not {b}'s: "), ("base2", f"its own base, while {b}'s blocks "
                                                                              f"descend from {base})")]:
        said = refused(c, str(tmp_path / other))
        assert said.startswith(f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
                               "compress.merge_lora) was read as "
                               f"blocks of its teacher {b} (not there when it took it: read as a base), a "
                               f"dit-compress output, but the teacher to compare with, {tmp_path / other}, "
                               f"is another model ({why}"), said



def test_a_lora_read_as_a_moved_teachers_blocks_refused_on_a_base_says_why_it_is_not_mapped(tmp_path):
    """--teacher base2 (a copy of the base elsewhere), or the base while a (b's teacher) is moved away:
    the refusal said '(no dit-compress output, and b one with blocks removed)', c360853's words for
    every base before it mapped the LoRA to one; it now says why it is not mapped: another base, or
    b's chain, which cannot be followed to a base now."""
    _, c, lora, _ = moved_chain(tmp_path)
    shutil.copytree(tmp_path / "base", tmp_path / "base2")
    b, a, base = (str((tmp_path / n).resolve()) for n in ["b", "a", "base"])

    def refusal(other, why) -> str:
        return (f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
                f"compress.merge_lora) was read as blocks of its teacher {b} "
                f"(not there when it took it: read as a base), a dit-compress output, but the teacher to compare "
                f"with, {tmp_path / other}, is another model ({why}): its blocks are not {b}'s, those the LoRA's "
                f"were mapped to; compare with the model's own teacher {b}")

    said = refused(c, str(tmp_path / "base2"))
    assert said == refusal("base2", f"its own base, while {b}'s blocks descend from {base}")
    (tmp_path / "a").rename(tmp_path / "a-moved")
    said = refused(c, str(tmp_path / "base"))
    assert said == refusal("base", f"{b}'s teacher {a} is not there now, to map its blocks to the teacher's")


def _dora(model, targets: list[str]) -> dict:
    """A random DoRA of `model` on `targets` (magnitudes off peft's start), as a state dict of a file."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from tests.test_lora import _randomize_extras

    peft.inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False,
                                            use_dora=True), model)
    _randomize_extras(model)
    return {"transformer." + k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.parametrize("other", ["a", "base", "a2"])
def test_a_dora_read_as_a_moved_teachers_blocks_takes_its_norms_from_the_base_blocks_it_is_mapped_to(tmp_path, other):
    """A DoRA of b's blocks, taken by c while b was moved away (norms from --teacher base), mapped to
    --teacher a, the base or a2: each block's norms are those of the base block it descends from (read
    from the teacher's chain's base, as own_blocks reads them), as the same DoRA of the base renumbered
    gives. Before, a and a2 read the norms of the LoRA's block j from base block j (b's block 3, base
    block 5, took base block 3's weight)."""
    from safetensors.torch import save_file

    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora

    base, c, _, weights = moved_chain(tmp_path, dora=True)
    save_file(as_base_lora(weights, B_OF_BASE), str(tmp_path / "base-dora.safetensors"))
    expected = copy.deepcopy(base) if other == "base" else load_transformer(tmp_path / other)
    merge_lora(expected, tmp_path / "base-dora.safetensors")  # norms from the base, in its own blocks
    assert same(load_teacher_of(c, str(tmp_path / other)), expected.state_dict())


def shallow_teacher(tmp_path, base) -> None:
    """x, an output of the base keeping base blocks 0 1 2 (3 blocks), and t, an output of x removing none."""
    from compress.arch import get_adapter
    from compress.io_output import load_transformer
    from tests.test_lora_chain import _save_output

    x = copy.deepcopy(base)
    _save_output(x, tmp_path / "x", tmp_path / "base", get_adapter(x).remove_blocks(x, {"blocks": [3, 4, 5]}))
    _save_output(load_transformer(tmp_path / "x"), tmp_path / "t", tmp_path / "x", None)


def test_a_mapped_lora_checks_its_block_count_against_the_teacher_its_blocks_are_of(tmp_path):
    """The LoRA's blocks are b's (4 blocks); mapped to t (base blocks 0 1 2, its teacher x of 3 blocks), b's
    block 3 (base block 5, which t lacks) is past the map's last entry, and its count was read from t's
    own teacher x: 'the LoRA adapts transformer_blocks.3, but the base model has 3 transformer_blocks (0
    to 2): a LoRA of another (deeper) model?', a refusal of the LoRA c took. Now counted as b's blocks:
    t takes the LoRA as the same LoRA of the base (b's block 3 dropped)."""
    from safetensors.torch import save_file

    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora

    base, c, _, weights = moved_chain(tmp_path)
    shallow_teacher(tmp_path, base)
    save_file(as_base_lora(weights, B_OF_BASE), str(tmp_path / "base-lora.safetensors"))
    expected = load_transformer(tmp_path / "t")
    merge_lora(expected, tmp_path / "base-lora.safetensors")
    assert same(load_teacher_of(c, str(tmp_path / "t")), expected.state_dict())


def test_a_mapped_lora_adapting_a_block_its_teacher_never_had_is_refused_naming_it(tmp_path):
    """--lora adapting a block 4 of b (4 blocks): mapped to a (base blocks 0 1 2 4 5, its teacher the base of
    6), the count read was the base's, and a took the LoRA without a word, its block 4 dropped; now
    refused naming b, as c's merge (reading it as b's blocks) refused it."""
    from safetensors.torch import save_file

    _, c, _, weights = moved_chain(tmp_path)
    deeper = {re.sub(r"blocks\.3\.", "blocks.4.", k): v.clone() for k, v in weights.items() if "blocks.3." in k}
    save_file({**weights, **deeper}, str(tmp_path / "deeper.safetensors"))
    b = str((tmp_path / "b").resolve())
    said = refused(c, str(tmp_path / "a"), loras=[str(tmp_path / "deeper.safetensors")])
    assert said == (f"{tmp_path / 'deeper.safetensors'}: the LoRA adapts transformer_blocks.4, but the base "
                    f"model {b} has 4 transformer_blocks (0 to 3): a LoRA of another (deeper) model?")


def test_one_rule_says_a_teacher_is_moved_away_for_lora_base_and_the_replay(tmp_path):
    """lora_teacher.missing, which lora_base (a moved teacher read as a base) and lora_replay.read_as_took
    (a teacher not there, no base of its own) both ask, is report_teacher.chain_break's NOT_THERE."""
    from compress.lora_teacher import missing
    from compress.report_teacher import NOT_THERE, chain_break

    (tmp_path / "here").mkdir()
    sources = ["toy:pixart", "owner/name", str(tmp_path / "here"), str(tmp_path / "gone"), "./gone", "~/gone-f12"]
    assert [missing(s) for s in sources] == [chain_break([s]) == NOT_THERE for s in sources] == \
        [False, False, False, True, True, True]


def test_a_lora_read_as_a_teachers_blocks_is_refused_while_that_teacher_is_away_and_nothing_recognises_it(tmp_path):
    """c's record names no weight files of b: with b moved away, --teacher a (an output, blocks removed) or
    the base (6 blocks, b had 4) took the LoRA in b's own numbering, rc 0 without a word (a's block 3, base
    block 4, took b's block 3's, base block 5's). Now refused in one line naming b and what to do; b at a
    new place is taken where its files are recorded, and a plain model of b's 4 blocks still takes it."""
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.io_signature import teacher_signature
    from compress.lora import merge_lora

    _, c, lora, _ = moved_chain(tmp_path)
    shutil.copytree(tmp_path / "b", tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    (tmp_path / "plain" / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "compression"}))
    files = teacher_signature(str(tmp_path / "b"))
    b = str((tmp_path / "b").resolve())
    (tmp_path / "b").rename(tmp_path / "b-away")
    refusal = (f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
               f"compress.merge_lora) was read as blocks of {b}, not there "
               f"now, and the teacher to compare with, {{}}, cannot be shown to be it (the model records no weight "
               f"files of it to compare), while its blocks may be numbered otherwise ({{}}): put {b} back, or give its "
               "new place with --teacher")
    for other, why in [("a", "a dit-compress output with blocks removed along its chain of teachers"),
                       ("base", "it has 6 transformer_blocks, the model's teacher 4"),
                       ("b-away", "a dit-compress output with blocks removed along its chain of teachers")]:
        assert refused(c, str(tmp_path / other)) == refusal.format(tmp_path / other, why)
    expected = load_transformer(tmp_path / "b-away")
    del expected.compression_meta  # a plain model, as --teacher plain loads
    merge_lora(expected, lora)
    assert same(load_teacher_of(c, str(tmp_path / "plain")), expected.state_dict())
    c.compression_meta["teacher_files"] = files  # as a run records its teacher's
    expected = load_transformer(tmp_path / "b-away")
    merge_lora(expected, lora, own_blocks=True)
    assert same(load_teacher_of(c, str(tmp_path / "b-away")), expected.state_dict())


def test_a_teachers_files_recorded_by_another_dit_compress_are_not_known_to_be_the_teachers_own(tmp_path):
    """c's record of b's weight files made by an older dit-compress (another method): with b moved away,
    --teacher a was taken for b ('the same files': lora_replay._compared_files False) and took the LoRA in
    b's numbering, rc 0 without a word; now its files are not known to be b's, as with no record: refused,
    saying the record is another version's (it said 'the model records no weight files of it')."""
    _, c, lora, _ = moved_chain(tmp_path)
    c.compression_meta["teacher_files"] = {"method": "an older dit-compress's",
                                           "files": {"diffusion_pytorch_model.safetensors": {"bytes": 1}}}
    b = str((tmp_path / "b").resolve())
    (tmp_path / "b").rename(tmp_path / "b-away")
    said = refused(c, str(tmp_path / "a"))
    assert said == (f"the LoRA {lora.resolve()} this model took (dit-compress lora or "
                    f"compress.merge_lora) was read as blocks of {b}, "
                    f"not there now, and the teacher to compare with, {tmp_path / 'a'}, cannot be shown to be "
                    "it (the weight files the model records of it were recorded by another dit-compress "
                    "version, which this one cannot compare), while its blocks may be numbered otherwise (a "
                    f"dit-compress output with blocks removed along its chain of teachers): put {b} back, or "
                    "give its new place with --teacher")
