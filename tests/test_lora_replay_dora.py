"""A DoRA replayed on teachers of one base (lora_replay): its norms are those of the weight it was
trained on top of, the LoRA's block j of the model its blocks are of, which is the base block that
model's block j descends from (lora.in_base). So every teacher gives a base block's modules the same
weights, whether it takes the LoRA as its own blocks (the model the LoRA's blocks are of, or an old
record's teacher) or mapped through both chains: b's block 3 (base block 5) and a's block 4 (base
block 5) come out equal, as the same DoRA of the base renumbered gives them."""

from __future__ import annotations

import copy
import re

import pytest

from tests.test_lora_replay_mapped import B_OF_BASE, _dora, as_base_lora, b_copy, moved_chain, same

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*invalid shape")]

TEACHERS = ["b", "a", "base", "a2"]  # b: the LoRA's own blocks; the others mapped through their chains


def by_base_block(teacher) -> dict:
    """The teacher's state dict keyed as its base's: its block i of a group named by the base block it
    descends from (lora_teacher.lora_base's block map; a base: its own)."""
    from compress.arch import get_adapter
    from compress.lora_teacher import lora_base

    block_map = lora_base(teacher).block_map if getattr(teacher, "compression_meta", None) else {}
    attrs = {g.attr: g.name for g in get_adapter(teacher).groups}

    def renamed(key: str) -> str:
        m = re.match(r"^(\w+)\.(\d+)\.(.+)$", key)
        if m is None or m[1] not in attrs or attrs[m[1]] not in block_map:
            return key
        return f"{m[1]}.{block_map[attrs[m[1]]][int(m[2])]}.{m[3]}"

    return {renamed(k): v for k, v in teacher.state_dict().items()}


def replays(c, tmp_path, teachers: list[str] = TEACHERS) -> dict:
    """{teacher: the teacher eval gives c (its LoRAs replayed), keyed by base block} for `teachers`."""
    from compress.io_teacher_of import load_teacher_of

    return {name: by_base_block(load_teacher_of(c, str(tmp_path / name))) for name in teachers}


def disagreeing(got: dict) -> list[str]:
    """'x vs y: key' for each module two replays (`got`: replays) hold of one base block with other weights."""
    import torch

    out, names = [], list(got)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            out += [f"{x} vs {y}: {k}" for k in sorted(got[x].keys() & got[y].keys())
                    if not torch.equal(got[x][k], got[y][k])]
    return out


def test_a_dora_read_as_the_teachers_own_blocks_takes_the_norms_of_the_base_blocks_they_descend_from(tmp_path):
    """c took a DoRA of b's blocks (blocks_of b). Before, b (the model its blocks are of, taking it as
    its own blocks) read the norms of its block j from base block j: its block 3, base block 5, took base
    block 3's norms, while a, the base and a2 (mapped) took base block 5's: base block 5's to_q came out
    up to 0.28 apart (attn2's 0.48). Now b takes them from base block 5 too: every teacher gives each
    base block's modules the same weights, and b is given exactly the same DoRA of the base renumbered."""
    from safetensors.torch import save_file

    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from compress.lora import merge_lora

    base, c, _, weights = moved_chain(tmp_path, dora=True)
    save_file(as_base_lora(weights, B_OF_BASE), str(tmp_path / "base-dora.safetensors"))
    expected = load_transformer(tmp_path / "b")
    merge_lora(expected, tmp_path / "base-dora.safetensors")  # norms from the base, in its own blocks
    assert same(load_teacher_of(c, str(tmp_path / "b")), expected.state_dict())
    assert disagreeing(replays(c, tmp_path)) == []


def test_an_old_dora_record_takes_the_same_norms_on_its_teacher_and_on_a_mapped_one(tmp_path):
    """c records a DoRA of b's blocks without blocks_of (merged before records named a base). b, its own
    teacher, takes it as its own blocks; a, the base and a2 mapped through both chains
    (lora_replay_old.read_as_took). Before, b read its block 3's norms from base block 3, the mapped
    ones from base block 5 (base block 5's to_q 0.33 apart); now each base block's modules are equal."""
    from compress.arch import get_adapter
    from compress.io_output import load_transformer
    from compress.io_signature import teacher_signature
    from tests.test_lora_chain import _chain, _save_output
    from tests.test_lora_limits import _save

    base, c_folder = _chain(tmp_path, "pixart")
    a2 = copy.deepcopy(base)
    _save_output(a2, tmp_path / "a2", tmp_path / "base", get_adapter(a2).remove_blocks(a2, {"blocks": [1]}))
    lora = _save(_dora(load_transformer(tmp_path / "b"), ["to_q"]), tmp_path / "b-dora.safetensors")
    c = load_transformer(c_folder)
    c.compression_meta["loras"] = [{"source": str(lora.resolve()), "scale": 1.0, "modules": 1}]
    c.compression_meta["teacher_files"] = teacher_signature(str(tmp_path / "b"))  # as a run records it
    assert disagreeing(replays(c, tmp_path)) == []


def test_a_flux_dora_read_as_a_moved_teachers_blocks_gives_each_base_block_the_same_weights(tmp_path):
    """Flux's two groups (b = base double blocks 1 2, single blocks 1 2): c took a DoRA of b's blocks
    with b away (--teacher b_copy, numbered as b); b, a and the base given it agree on every base block's
    modules. Before, b's double block 0 (base block 1) took base double block 0's norms, and so on."""
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_chain import _chain
    from tests.test_lora_limits import _save

    base, c_folder = _chain(tmp_path, "flux")
    lora = _save(_dora(load_transformer(tmp_path / "b"), ["to_q", "proj_mlp"]), tmp_path / "b-dora.safetensors")
    (tmp_path / "b").rename(tmp_path / "b-moved")
    c = load_transformer(c_folder)
    merge_lora(c, lora, teacher=b_copy(base, tmp_path, "flux"))
    (tmp_path / "b-moved").rename(tmp_path / "b")
    assert c.compression_meta["loras"][0]["blocks_of"] == str((tmp_path / "b").resolve())
    assert disagreeing(replays(c, tmp_path, ["b", "a", "base"])) == []
