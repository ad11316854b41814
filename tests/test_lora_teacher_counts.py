"""The block counts of an output's teacher before any removal (its compression record's teacher_blocks,
written into config.json by the run, read from report.json for an output written before): one rule for
`dit-compress lora`, merge_lora from Python and the replays of eval and bench (load_teacher_of), none of
which checks them for a LoRA of no block module (lora_keys.in_blocks; the replay's case: test_lora_replay_moved)."""

import copy
import json

import pytest
import torch

from compress.arch import get_adapter
from compress.errors import UserError
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE, run_recipe


def test_a_run_that_removes_blocks_records_its_teachers_counts_in_config_json(tmp_path):
    """The block map says only 'at least max + 1' of the teacher's blocks (a removed last block): the
    output's config.json records the report's exact blocks_before, and load_transformer keeps it."""
    from compress.io_output import load_transformer

    tiny_pixart(num_layers=4).save_pretrained(tmp_path / "t")
    out = run_recipe(tmp_path, SIMPLE.format(teacher=tmp_path / "t", passes="  - remove_blocks: {blocks: {blocks: [3]}}\n"),
                     "r")
    compression = json.loads((out / "config.json").read_text())["compression"]
    assert compression["block_map"] == {"blocks": [0, 1, 2]} and compression["teacher_blocks"] == {"blocks": 4}
    assert load_transformer(out).compression_meta["teacher_blocks"] == {"blocks": 4}


def _moved_chain(tmp_path, lora_of):
    """base (6 blocks) -> a (base blocks 0 2 3 4 5) -> b (a's blocks 0-3: a's last removed), b's report
    (as a run's) recording a's 5 blocks, its config.json none (an output written before it did); a LoRA of
    a's blocks (`lora_of`: tests.test_lora_limits._state or test_lora_replay_mapped._dora) saved."""
    from compress.io_output import load_transformer
    from tests.test_lora_chain import _reported_chain
    from tests.test_lora_limits import _save

    _reported_chain(tmp_path, 4, a_removes=1)
    return _save(lora_of(load_transformer(tmp_path / "a"), ["to_q"]), tmp_path / "a-lora.safetensors")


def test_eval_and_bench_replay_refuse_a_teacher_of_other_counts_than_the_report_says_as_lora_does(tmp_path):
    """b took a plain LoRA of a's blocks with a moved away; eval's and bench's replay (load_teacher_of) on
    --teacher base (6 blocks; a had 5, b's report says) gave base block j the LoRA of a's block j (to_q
    0.41 off): accepted, where `lora` refuses such a teacher. Now refused, as lora is; the new output's
    config.json carries the count (read from b's report.json) on."""
    from compress.cli import main
    from compress.io_teacher_of import load_teacher_of
    from compress.io_output import load_transformer
    from tests.test_lora_limits import _state
    from tests.test_lora_replay_mapped import refused

    lora = _moved_chain(tmp_path, _state)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    assert main(["lora", str(tmp_path / "b"), str(lora), str(tmp_path / "new")]) == 0
    new = load_transformer(tmp_path / "new")
    assert "(it has 6 transformer_blocks, the model's teacher 5)" in refused(new, str(tmp_path / "base"))
    assert json.loads((tmp_path / "new" / "config.json").read_text())["compression"]["teacher_blocks"] == {"blocks": 5}
    (tmp_path / "a-moved").rename(tmp_path / "a")
    load_teacher_of(new, str(tmp_path / "base"))  # a there: mapped through a's chain, as before


def test_merge_lora_from_python_refuses_what_lora_refuses_for_a_dora_read_as_a_moved_teachers_blocks(tmp_path):
    """merge_lora(load_transformer(b), dora, teacher=base): accepted silently (the block map's 'at least
    4'), where `dit-compress lora` refused it (b's report: a had 5). Now refused alike."""
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_replay_mapped import _dora

    dora = _moved_chain(tmp_path, _dora)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    with pytest.raises(UserError, match=r"has 6 transformer_blocks, but .*, not there now \(5\)"):
        merge_lora(load_transformer(tmp_path / "b"), dora, teacher=str((tmp_path / "base").resolve()))


def test_a_lora_past_the_count_its_output_records_is_refused_from_python_as_by_the_cli(tmp_path, capsys):
    """a removes the base's last block 5, b a's block 4 (b records a's 5 blocks); a moved away. The base's
    LoRA, read as a's blocks, has a block 5, past a's 5: merge_lora(load_transformer(b), lora) merged it
    with transformer_blocks.5 listed as dropped (check_teacher_count used no recorded count: only the CLI
    read the report, a second time); now it refuses it, in the CLI's words."""
    from compress.cli import main
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_chain import _base_lora, _reported_chain

    base = _reported_chain(tmp_path, 4)
    lora, _ = _base_lora(base, tmp_path)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    with pytest.raises(UserError, match=r"the LoRA adapts transformer_blocks\.5, but the base model .*/a has 5 "):
        merge_lora(load_transformer(tmp_path / "b"), lora)
    capsys.readouterr()
    assert main(["lora", str(tmp_path / "b"), str(lora), str(tmp_path / "new")]) == 2
    assert "the LoRA adapts transformer_blocks.5, but the base model" in capsys.readouterr().err


def test_a_given_teacher_does_not_bound_a_plain_loras_blocks(tmp_path, capsys):
    """a (base 6 blocks, its last removed) takes a LoRA of an 8-block model. With no --teacher it was
    refused (the base has 6); with --teacher deeper (8 blocks, whose weights a plain LoRA does not read)
    it was merged, 'the teacher's transformer_blocks.5, .6, .7' listed as removed, blocks the base never
    had. Now refused alike, naming the base's count."""
    from compress.cli import main
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_chain import _save_output
    from tests.test_lora_limits import _save, _state

    base = tiny_pixart(num_layers=6)
    base.save_pretrained(tmp_path / "base")
    _save_output(base, tmp_path / "a", tmp_path / "base", get_adapter(base).remove_blocks(base, {"blocks": [5]}))
    tiny_pixart(num_layers=8).save_pretrained(tmp_path / "deeper")
    lora = _save(_state(tiny_pixart(num_layers=8), ["to_q"]), tmp_path / "deep-lora.safetensors")
    deeper = str(tmp_path / "deeper")
    with pytest.raises(UserError, match=r"adapts transformer_blocks\.7, but the base model .*/base has 6 "):
        merge_lora(load_transformer(tmp_path / "a"), lora, teacher=deeper)
    capsys.readouterr()
    assert main(["lora", str(tmp_path / "a"), str(lora), str(tmp_path / "new"), "--teacher", deeper]) == 2
    assert "but the base model" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_refused_dora_of_a_moved_outputs_blocks_names_the_way_out_that_merges_it_as_with_it_there(tmp_path, capsys):
    """a removes the base's last block (a's block j is base block j), b a's block 4; the DoRA was trained
    on a, and a moved away. --teacher base is refused (6 vs 5), though the merge would have been right:
    without a's block map that cannot be known. The refusal said to put a back or give its new place,
    neither possible where a is gone; it now names the way out that is: a plain model of the base blocks
    a kept, which merges exactly as with a there."""
    from compress.cli import main
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_chain import _reported_chain
    from tests.test_lora_limits import _save
    from tests.test_lora_replay_mapped import _dora, same

    base = _reported_chain(tmp_path, 4)
    dora = _save(_dora(load_transformer(tmp_path / "a"), ["to_q"]), tmp_path / "a-dora.safetensors")
    kept = copy.deepcopy(base)
    get_adapter(kept).remove_blocks(kept, {"blocks": [5]})
    kept.save_pretrained(tmp_path / "kept")  # the base's blocks a kept, saved as no output
    (tmp_path / "a").rename(tmp_path / "a-moved")
    capsys.readouterr()
    assert main(["lora", str(tmp_path / "b"), str(dora), str(tmp_path / "new"), "--teacher", str(tmp_path / "base")]) == 2
    assert "(were it an output: a plain model of the base blocks it kept)" in capsys.readouterr().err
    assert main(["lora", str(tmp_path / "b"), str(dora), str(tmp_path / "new"), "--teacher", str(tmp_path / "kept")]) == 0
    (tmp_path / "a-moved").rename(tmp_path / "a")
    expected = load_transformer(tmp_path / "b")
    merge_lora(expected, dora)  # a there: the norms of a's blocks, read through its chain
    assert same(load_transformer(tmp_path / "new"), expected.state_dict())


def test_a_dora_of_a_moved_teachers_blocks_is_refused_a_teacher_below_its_block_maps_at_least(tmp_path, capsys):
    """b as above with no report (nor count in its config): its block map says only that a had at least
    4 blocks. A given teacher of 3 is refused, saying 'at least 4'; one of 6 passes that bound (the
    count a block map cannot tell)."""
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_replay_mapped import _dora

    dora = _moved_chain(tmp_path, _dora)
    (tmp_path / "b" / "report.json").unlink()
    (tmp_path / "a").rename(tmp_path / "a-moved")
    tiny_pixart(num_layers=3).save_pretrained(tmp_path / "three")
    with pytest.raises(UserError, match=r"has 3 transformer_blocks, but .*, not there now \(at least 4\): "):
        merge_lora(load_transformer(tmp_path / "b"), dora, teacher=str(tmp_path / "three"))
    assert merge_lora(load_transformer(tmp_path / "b"), dora, teacher=str(tmp_path / "base"))["merged"] == 8


@pytest.mark.parametrize("targets", [["proj_out"], ["proj_out", "to_q"]], ids=["outside-the-blocks", "and-in-blocks"])
def test_a_dora_of_no_block_is_not_refused_a_teacher_numbered_otherwise(tmp_path, capsys, targets):
    """b as above, a moved away; a DoRA of a on proj_out alone, no block module. --teacher base (6 blocks,
    a 5) was refused ('the teacher given, <base>, has 6 transformer_blocks, but the DoRA's blocks are
    numbered as <a>'s ...'), though no block's norms are read: the base's proj_out is a's. Now merged,
    from Python and the CLI, as by hand: diag(m / ‖W + B·A‖_row) (W + B·A), W the base's proj_out (scaling
    1). A DoRA of blocks too is refused as before."""
    from safetensors.torch import load_file

    from compress.cli import main
    from compress.io_output import load_transformer
    from compress.lora import merge_lora
    from tests.test_lora_replay_mapped import _dora

    dora = _moved_chain(tmp_path, lambda model, _: _dora(model, targets))
    (tmp_path / "a").rename(tmp_path / "a-moved")
    b, base = load_transformer(tmp_path / "b"), str((tmp_path / "base").resolve())
    if targets != ["proj_out"]:
        with pytest.raises(UserError, match=r"has 6 transformer_blocks, but .*, not there now \(5\)"):
            merge_lora(b, dora, teacher=base)
        return
    assert merge_lora(b, dora, teacher=base)["merged"] == 1
    w, lora = load_file(str(tmp_path / "base" / "diffusion_pytorch_model.safetensors")), load_file(str(dora))
    down, up, m = (lora[f"transformer.proj_out.{k}"].double() for k in ("lora_A.weight", "lora_B.weight",
                                                                         "lora_magnitude_vector"))
    summed = w["proj_out.weight"].double() + up @ down  # (out, in)
    by_hand = (m / torch.linalg.norm(summed, dim=1))[:, None] * summed
    torch.testing.assert_close(b.proj_out.weight.double(), by_hand, rtol=1e-5, atol=1e-6)
    assert main(["lora", str(tmp_path / "b"), str(dora), str(tmp_path / "new"), "--teacher", base]) == 0
    assert torch.equal(load_transformer(tmp_path / "new").proj_out.weight, b.proj_out.weight)
