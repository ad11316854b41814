"""lora on an output of an output: the LoRA's blocks are the chain's first teacher's (the base it was
trained on), mapped through every link's block map (report_teacher.teacher_chain); blocks removed
anywhere along the chain are dropped; a chain that cannot be followed is refused in one line. eval /
bench give the output's teacher (itself an output) the LoRA through its own chain (lora_replay). A link
that moved away: test_lora_chain_moved.py."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from compress.arch import get_adapter
from compress.errors import UserError
from compress.lora import merge_lora
from compress.lowrank import LowRankLinear
from tests.conftest import factorize, tiny_flux, tiny_pixart
from tests.test_lora_limits import _save, _state

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*invalid shape")]

# per family: the base's block counts, the blocks a removes (of the base), then b (of a), and what
# b's blocks are of the base, worked out by hand
CHAINS = {
    "pixart": (dict(num_layers=6), {"blocks": [3]}, {"blocks": [3]}, {"blocks": [0, 1, 2, 5]}),
    "flux": (dict(num_layers=3, num_single_layers=4), {"double": [0], "single": [3]}, {"single": [0]},
             {"double": [1, 2], "single": [1, 2]}),
}


def _save_output(model, folder, teacher, block_map):
    """`model` saved as a run saves its output: its teacher (absolute) and block map recorded."""
    from compress.io_export import save_compressed

    files = {"block_map.json": json.dumps(block_map)} if block_map is not None else None
    return save_compressed(model, folder, extra={"teacher": str(teacher.resolve()), "block_map": block_map},
                           files=files)


def _chain(tmp_path, family):
    """(base model, c's folder): base (saved) -> a (blocks removed) -> b (more removed) -> c (b's
    to_q layers factorized, no block removed: no block map)."""
    from compress.io_output import load_transformer

    counts, drop_a, drop_b, _ = CHAINS[family]
    base = (tiny_pixart if family == "pixart" else tiny_flux)(**counts)
    base.save_pretrained(tmp_path / "base")
    adapter = get_adapter(base)
    a = copy.deepcopy(base)
    _save_output(a, tmp_path / "a", tmp_path / "base", adapter.remove_blocks(a, drop_a))
    b = load_transformer(tmp_path / "a")
    _save_output(b, tmp_path / "b", tmp_path / "a", adapter.remove_blocks(b, drop_b))
    b = load_transformer(tmp_path / "b")
    c = factorize(b, [n for n, m in b.named_modules() if n.endswith("to_q") and isinstance(m, torch.nn.Linear)], 4)
    return base, _save_output(c, tmp_path / "c", tmp_path / "b", None)


def _block(name: str, attrs: list[str]) -> tuple[str, int, str] | None:
    """(group attr, block index, the rest) of a module name inside a block."""
    for attr in attrs:
        m = re.match(rf"^{attr}\.(\d+)\.(.+)$", name)
        if m:
            return attr, int(m.group(1)), m.group(2)
    return None


def _check_deltas(before, after, weights: dict, kept: dict[str, list[int]], adapter) -> int:
    """Each adapted layer of `after` adds to `before`'s output exactly the LoRA (`weights`: its file,
    alpha = rank: scaling 1) of the base block its block descends from (kept[group][i]); how many."""
    attrs = {g.attr: g.name for g in adapter.groups}
    checked = 0
    for name, module in after.named_modules():
        place = _block(name, list(attrs))
        if place is None or not isinstance(module, (torch.nn.Linear, LowRankLinear)) or not name.endswith("to_q"):
            continue
        attr, i, rest = place
        base_name = f"transformer.{attr}.{kept[attrs[attr]][i]}.{rest}"
        x = torch.randn(3, module.in_features, generator=torch.Generator().manual_seed(checked))
        a, b = weights.get(f"{base_name}.lora_A.weight"), weights.get(f"{base_name}.lora_B.weight")
        want = torch.zeros(3, module.out_features) if a is None else x @ a.T @ b.T  # no LoRA on that base block
        with torch.no_grad():
            got = module(x) - before.get_submodule(name)(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
        checked += 1
    return checked


def _removed(weights: dict, kept: dict[str, list[int]], adapter) -> list[str]:
    """The base modules the LoRA (`weights`) adapts in blocks the chain removed."""
    groups = {g.attr: g.name for g in adapter.groups}
    names = [k[len("transformer."):-len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight")]
    return sorted(n for n in names for attr, i, _ in [_block(n, list(groups))] if i not in kept[groups[attr]])


def _without_last_kept(weights: dict, kept: dict[str, list[int]], adapter) -> dict:
    """The LoRA `weights` without its layers in base blocks from each group's last kept one on."""
    groups = {g.attr: g.name for g in adapter.groups}
    return {k: v for k, v in weights.items() for attr, i, _ in [_block(k[len("transformer."):], list(groups))]
            if i < max(kept[groups[attr]])}


def _base_lora(base, tmp_path):
    """A LoRA of the base's to_q layers (random: each block's its own), saved; (its file, its weights)."""
    weights = _state(copy.deepcopy(base), ["to_q"])
    return _save(weights, tmp_path / "base-lora.safetensors"), weights


def _reported_chain(tmp_path, b_removes: int, a_removes: int = 5):
    """The base (PixArt, 6 blocks, saved): a removes its block `a_removes` (its last), b a's block
    `b_removes`, and b's report.json records a's 5 blocks before its removal (as a run's does)."""
    from compress.io_output import load_transformer

    base = tiny_pixart(num_layers=6)
    base.save_pretrained(tmp_path / "base")
    adapter = get_adapter(base)
    a = copy.deepcopy(base)
    _save_output(a, tmp_path / "a", tmp_path / "base", adapter.remove_blocks(a, {"blocks": [a_removes]}))
    b = load_transformer(tmp_path / "a")
    _save_output(b, tmp_path / "b", tmp_path / "a", adapter.remove_blocks(b, {"blocks": [b_removes]}))
    (tmp_path / "b" / "report.json").write_text(json.dumps({"teacher": str((tmp_path / "a").resolve()),
                                                             "remove_blocks": {"blocks_before": {"blocks": 5}}}))
    return base


@pytest.mark.parametrize("family", ["pixart", "flux"])
@pytest.mark.parametrize("which", ["b", "c"])
@pytest.mark.parametrize("last", [True, False], ids=["whole", "without-the-last-kept-blocks"])
def test_an_output_of_an_output_takes_each_base_blocks_lora_in_the_block_descending_from_it(tmp_path, family,
                                                                                             which, last):
    """b (blocks of a) took the LoRA through its own block map only: base block 4's LoRA in its block 3
    (base block 5) without a word, or base block 5's refused; c (no block map of its own) refused a
    LoRA of the whole base. Each output block now takes the LoRA of the base block it descends from
    through every link (`last`: the LoRA has the base's last kept block of each group, or not); those
    of blocks removed anywhere along the chain are dropped (listed), and the result says whose blocks
    they were read as."""
    from compress.io_output import load_transformer

    base, _ = _chain(tmp_path, family)
    lora, weights = _base_lora(base, tmp_path)
    if not last:
        weights = _without_last_kept(weights, CHAINS[family][3], get_adapter(base))
        lora = _save(weights, lora)
    student = load_transformer(tmp_path / which)
    before = copy.deepcopy(student)
    report = merge_lora(student, lora)
    kept = CHAINS[family][3]
    adapter = get_adapter(base)
    assert _check_deltas(before, student, weights, kept, adapter) == sum(map(len, kept.values())) * \
        (2 if family == "pixart" else 1)  # PixArt: attn1 and attn2
    removed = _removed(weights, kept, adapter)
    assert removed and sorted(report["dropped"]) == removed
    assert report["blocks_of"] == str((tmp_path / "base").resolve())
    assert student.compression_meta["loras"][-1]["blocks_of"] == report["blocks_of"]


def test_the_lora_command_on_a_chained_output_writes_the_base_blocks_lora(tmp_path, capsys):
    """`dit-compress lora c LORA NEW`: the new output's layers hold the base blocks' LoRA as
    merge_lora gives them, and it names the base the LoRA's blocks were read as."""
    from compress.cli import main
    from compress.io_output import load_transformer

    base, c = _chain(tmp_path, "pixart")
    lora, weights = _base_lora(base, tmp_path)
    assert main(["lora", str(c), str(lora), str(tmp_path / "new")]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"the LoRA's blocks read as those of {(tmp_path / 'base').resolve()}" in said
    assert _check_deltas(load_transformer(c), load_transformer(tmp_path / "new"), weights,
                         CHAINS["pixart"][3], get_adapter(base)) == 8


def test_the_lora_command_checks_a_chains_block_count_against_its_base_and_records_it(tmp_path, capsys):
    """a removes the base's last block, b another, and b's report.json records a's 5 blocks before its
    removal: `lora b` compared the base block 5 the LoRA adapts with a's 5 blocks and refused it ("the
    teacher has 5"). It now merges, the line says whose blocks the LoRA's were read as, and the
    report's LoRA entry records it (blocks_of)."""
    from compress.cli import main

    base = _reported_chain(tmp_path, 3)
    lora, _ = _base_lora(base, tmp_path)
    assert main(["lora", str(tmp_path / "b"), str(lora), str(tmp_path / "new")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    base_path = str((tmp_path / "base").resolve())
    assert f"; its blocks read as {base_path}'s; 4 of its layers were in removed blocks" in out
    entry = json.loads((tmp_path / "new" / "report.json").read_text())["loras"][-1]
    assert entry["blocks_of"] == base_path and len(entry["dropped"]) == 4


@pytest.mark.parametrize("recorded_by", ["report", "config"])
def test_a_lora_past_a_chains_base_count_is_refused_where_the_base_config_cannot_be_read(tmp_path, capsys,
                                                                                         monkeypatch, recorded_by):
    """b (4 blocks) <- a <- a Hub base of 6 blocks whose config is not at hand offline (no shipped
    one): merge_lora's count check read nothing and the CLI skipped its report.json check for a chain,
    so a LoRA of a 7-block model had its block 6 listed as dropped (in a removed block). The base's
    count is now read from what the chain records: the report.json of a, compressed straight from the
    base (its removal's blocks_before: 'report'), or where a removed no block, a's own config
    ('config'); the LoRA is refused, the whole base's LoRA still merges."""
    from compress.cli import main
    from compress.io_export import save_compressed
    from compress.io_output import load_transformer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = "dit-compress-tests/no-such-base"
    base = tiny_pixart(num_layers=6)
    a, adapter = copy.deepcopy(base), get_adapter(base)
    if recorded_by == "report":  # a removes the base's last block, b a's block 3
        a_map, drop_b = adapter.remove_blocks(a, {"blocks": [5]}), [3]
        report = json.dumps({"teacher": hub, "remove_blocks": {"blocks_before": {"blocks": 6}}})
    else:  # a removes none, b a's (the base's) blocks 3 and 5
        a_map, drop_b, report = None, [3, 5], json.dumps({"teacher": hub})
    save_compressed(a, tmp_path / "a", extra={"teacher": hub, "block_map": a_map}, files={"report.json": report})
    b = load_transformer(tmp_path / "a")
    _save_output(b, tmp_path / "b", tmp_path / "a", adapter.remove_blocks(b, {"blocks": drop_b}))
    deeper = _save(_state(tiny_pixart(num_layers=7), ["to_q"]), tmp_path / "deeper.safetensors")
    student = load_transformer(tmp_path / "b")
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(UserError, match=r"the LoRA adapts transformer_blocks\.6, but the base model "
                                        r"dit-compress-tests/no-such-base has 6 "):
        merge_lora(student, deeper)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    assert main(["lora", str(tmp_path / "b"), str(deeper), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ("transformer_blocks.6, but the base model "
                                                   "dit-compress-tests/no-such-base has 6") in err
    assert not (tmp_path / "new").exists()
    lora, _ = _base_lora(base, tmp_path)
    assert sorted(merge_lora(student, lora)["dropped"]) == [f"transformer_blocks.{i}.{attn}.to_q"
                                                             for i in (3, 5) for attn in ("attn1", "attn2")]


def test_a_chain_that_cannot_be_followed_is_refused_saying_why(tmp_path):
    """A link moved (a) or recording no teacher: the LoRA's blocks cannot be mapped to the output's,
    one line naming the chain and why, nothing merged."""
    from compress.io_output import load_transformer

    base, c = _chain(tmp_path, "pixart")
    lora, _ = _base_lora(base, tmp_path)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    student = load_transformer(c)
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(UserError) as e:
        merge_lora(student, lora)
    b, a = (tmp_path / "b").resolve(), (tmp_path / "a").resolve()
    assert str(e.value).startswith(f"the model records the teacher {b}, which records {a}, which is not there: ")
    assert "\n" not in str(e.value)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    config = json.loads((tmp_path / "a-moved" / "config.json").read_text())
    del config["compression"]["teacher"]
    (tmp_path / "a-moved" / "config.json").write_text(json.dumps(config))
    (tmp_path / "a-moved").rename(tmp_path / "a")
    with pytest.raises(UserError, match=f"^the model records the teacher {b}, which records {a}, which records "
                                        "no teacher: "):
        merge_lora(student, lora)


@pytest.mark.parametrize("family", ["pixart", "flux"])
@pytest.mark.parametrize("last", [True, False], ids=["whole", "without-the-last-kept-blocks"])
def test_eval_gives_a_chained_outputs_teacher_the_base_blocks_lora_through_its_own_chain(tmp_path, family, last):
    """c took a LoRA of the base; eval and bench load c's teacher b (an output of a) and give it the
    LoRA (io_teacher_of.load_teacher_of -> lora_replay.replay): each of b's blocks takes its base block's LoRA
    through b's and a's block maps, not b's alone (which gave it other blocks' LoRAs, or refused)."""
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer

    base, c = _chain(tmp_path, family)
    lora, weights = _base_lora(base, tmp_path)
    if not last:
        weights = _without_last_kept(weights, CHAINS[family][3], get_adapter(base))
        lora = _save(weights, lora)
    took = load_transformer(c)  # as `lora` records what it took (the replay reads only the record)
    took.compression_meta["loras"] = [{"source": str(lora.resolve()), "scale": 1.0, "modules": 1,
                                       "blocks_of": str((tmp_path / "base").resolve())}]
    teacher = load_teacher_of(took, str(tmp_path / "b"))
    assert _check_deltas(load_transformer(tmp_path / "b"), teacher, weights, CHAINS[family][3],
                         get_adapter(base)) > 0


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_a_lora_recorded_before_blocks_of_is_replayed_in_the_teachers_own_blocks(tmp_path, family):
    """c took a LoRA before records named the base (no blocks_of): it was read as c's teacher b's, b's
    block i's LoRA going to c's block descending from it. eval gave b that LoRA through b's chain, as
    the base's (b's block 3, base block 5, took the LoRA's block 5, or nothing): b now takes it in its
    own blocks, block i the LoRA's block i, what c took."""
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer

    _, c = _chain(tmp_path, family)
    b = load_transformer(tmp_path / "b")
    weights = _state(copy.deepcopy(b), ["to_q"])  # a LoRA in b's blocks
    lora = _save(weights, tmp_path / "b-lora.safetensors")
    took = load_transformer(c)
    took.compression_meta["loras"] = [{"source": str(lora.resolve()), "scale": 1.0, "modules": 1}]
    own = {g.name: list(range(len(getattr(b, g.attr)))) for g in get_adapter(b).groups}
    assert _check_deltas(b, load_teacher_of(took, str(tmp_path / "b")), weights, own, get_adapter(b)) == \
        sum(map(len, own.values())) * (2 if family == "pixart" else 1)


def test_block_maps_compose_from_the_student_out_and_a_map_past_its_teachers_is_named():
    """composed_block_map: each link's map read through the next one's; a link without a map, or
    without a group, keeps all its blocks; a map naming a block its teacher's map does not have (the
    teacher replaced since) is one line naming both."""
    from compress.lora_teacher import composed_block_map

    maps = [{"double": [0, 2]}, None, {"double": [0, 1, 3], "single": [1, 2]}, {"single": [0, 2, 3]}]
    assert composed_block_map(maps, ["the model", "/c", "/b", "/a"]) == {"double": [0, 3], "single": [2, 3]}
    with pytest.raises(UserError, match=r"^/c has double block 2 of its teacher /b, whose block map has 2 blocks: "
                                        r"it is not the output the model was compressed from \(replaced since\?\)$"):
        composed_block_map([{"double": [0, 2]}, {"double": [0, 1]}], ["/c", "/b"])


def test_a_lora_of_only_blocks_the_chain_removed_names_the_base_not_the_teacher(tmp_path):
    """c <- b <- a <- base, the LoRA's layers all in the base's block 3 (a removed it): refused, as
    'past the teacher's last', though its blocks are read as the chain's base's, not c's teacher b's.
    It now names the base model whose blocks they are."""
    from compress.io_output import load_transformer

    base, c = _chain(tmp_path, "pixart")
    _, weights = _base_lora(base, tmp_path)
    lora = _save({k: v for k, v in weights.items() if ".transformer_blocks.3." in k}, tmp_path / "l.safetensors")
    base_path = re.escape(str((tmp_path / "base").resolve()))
    with pytest.raises(UserError, match=r"none of its 2 layers is in a block the student kept \(all in removed "
                                        rf"blocks, or past the base model {base_path}'s last: transformer_blocks\.3\."):
        merge_lora(load_transformer(c), lora)
