"""lora at its limits: a layer grown past break-even is stored dense (the output loads again), the
report names what was left out, and LoRAs of another model (other widths, other blocks, other
family, other layer kinds) or in other key forms are one quiet line or read as they are."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from compress.errors import UserError
from compress.lora import merge_lora
from tests.conftest import diffusers_log, forward, model_inputs, tiny_flux, tiny_pixart
from tests.test_lora import _lora, _student, _with_text_encoder

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

GROWN = ["to_q", "proj_mlp", "ff.net.0.proj", "norm1.linear"]  # low-rank (fused GELU too) and dense ones


def _state(model, targets, rank=4, prefix="transformer.") -> dict:
    """A random peft LoRA of `model` on `targets`, as a state dict with `prefix` on its keys."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    peft.inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets,
                                            init_lora_weights=False), model)
    return {prefix + k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def _save(state: dict, path):
    from safetensors.torch import save_file

    save_file(state, str(path))
    return path


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_a_layer_grown_past_break_even_is_stored_dense_and_the_output_loads(tmp_path, capsys, monkeypatch):
    """A rank-16 LoRA on layers kept at rank 4 (16 x 16) and 6 (64 x 16, fused GELU) would grow them
    past break-even, to 20 > 16 = min(in, out): they are stored dense, predicting what the grown factors
    predict, and the written output loads (a rank past min(in, out) did not) as the merged model."""
    from compress.cli import main
    from compress.io_output import load_transformer
    from compress.lowrank import LowRankLinear

    student, teacher = _student(tmp_path)
    monkeypatch.setattr("tests.test_lora.RANK", 16)
    _lora(teacher, tmp_path / "lora", GROWN)
    grown = copy.deepcopy(student)
    with monkeypatch.context() as m:
        m.setattr("compress.lora_merge.past_break_even", lambda *a: False)  # the reference: all grown
        merge_lora(grown, tmp_path / "lora")
    report = merge_lora(student, tmp_path / "lora")
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new")]) == 0
    new = load_transformer(tmp_path / "new")
    inputs = model_inputs(student)
    assert torch.equal(forward(new, inputs), forward(student, inputs))
    torch.testing.assert_close(forward(student, inputs), forward(grown, inputs), rtol=1e-5, atol=1e-5)
    assert report["rank_added"] == {} and "transformer_blocks.0.ff.net.0.proj" in report["densified"]
    assert "single_transformer_blocks.0.proj_mlp" in report["densified"]
    assert not any(isinstance(student.get_submodule(n), LowRankLinear) for n in report["densified"])
    assert f"{len(report['densified'])} stored dense (grown past break-even)" in capsys.readouterr().out
    entry = json.loads((tmp_path / "new" / "report.json").read_text())["loras"][0]
    assert entry["densified"] == report["densified"]
    assert main(["inspect", str(tmp_path / "new")]) == 0


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_the_report_names_the_layers_left_out_and_records_the_lora_as_config_does(tmp_path, capsys, monkeypatch):
    """report.json's loras entry lists the LoRA's modules in removed blocks and its text-encoder ones;
    it and the card record the LoRA's path as config.json does (absolute), given relative."""
    from compress.cli import main

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    te = ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]
    _with_text_encoder(tmp_path / "lora" / "pytorch_lora_weights.safetensors", te)
    report = merge_lora(student, tmp_path / "lora")
    monkeypatch.chdir(tmp_path)
    assert main(["lora", "out-s", "lora", "new"]) == 0
    capsys.readouterr()
    entry = json.loads((tmp_path / "new" / "report.json").read_text())["loras"][0]
    assert entry["dropped"] == report["dropped"] != [] and entry["not_merged"] == te
    config = json.loads((tmp_path / "new" / "config.json").read_text())["compression"]
    assert entry["lora"] == config["loras"][0]["source"] == str((tmp_path / "lora").resolve())
    assert f"`{entry['lora']}`" in (tmp_path / "new" / "README.md").read_text()


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_an_output_without_report_names_the_removed_blocks_its_lora_layers_were_in(tmp_path, capsys):
    """lora of an output saved again with save_pretrained (no report.json) said the layers in removed
    blocks were "listed in report.json" and wrote none: it names the teacher's blocks they were in."""
    from compress.cli import main
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)  # the teacher's double block 0 removed
    _lora(teacher, tmp_path / "lora")
    dropped = len(merge_lora(student, tmp_path / "lora")["dropped"])
    load_transformer(tmp_path / "out-s").save_pretrained(tmp_path / "saved")
    assert main(["lora", str(tmp_path / "saved"), str(tmp_path / "lora"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert f"; {dropped} of its layers were in removed blocks (the teacher's transformer_blocks.0; " \
           f"{tmp_path / 'saved'} has no report.json to list them in)" in " ".join(out.split())
    assert not (tmp_path / "new" / "report.json").exists()
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new2")]) == 0
    assert f"{dropped} of its layers were in removed blocks (listed in report.json)" in \
        " ".join(capsys.readouterr().out.split())
    assert len(json.loads((tmp_path / "new2" / "report.json").read_text())["loras"][0]["dropped"]) == dropped


@pytest.mark.filterwarnings("ignore:.*invalid shape")
@pytest.mark.parametrize("damaged", ["{not json", "[]"])
def test_an_output_with_a_damaged_report_says_so_of_its_lora_layers_in_removed_blocks(tmp_path, capsys, damaged):
    """S47 review: lora of an output whose report.json is there but damaged (not JSON, or no mapping)
    said '{OUT} has no report.json to list them in': it says the report is damaged, and keeps it as it was."""
    from compress.cli import main

    student, teacher = _student(tmp_path)  # the teacher's double block 0 removed
    _lora(teacher, tmp_path / "lora")
    dropped = len(merge_lora(student, tmp_path / "lora")["dropped"])
    (tmp_path / "out-s" / "report.json").write_text(damaged)
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new")]) == 0
    assert f"; {dropped} of its layers were in removed blocks (the teacher's transformer_blocks.0; " \
           f"{tmp_path / 'out-s'}'s report.json is damaged, so they are not listed in it)" in \
           " ".join(capsys.readouterr().out.split())
    assert (tmp_path / "new" / "report.json").read_text() == damaged


def test_the_lora_output_keeps_the_dtype_the_output_records(tmp_path, capsys):
    """config.json's compression.dtype (the export dtype run wrote) is kept in lora's output."""
    from compress.cli import main

    _, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new")]) == 0
    new, old = (json.loads((tmp_path / f / "config.json").read_text())["compression"] for f in ("new", "out-s"))
    assert "dtype" in old and new.get("dtype") == old["dtype"]


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_a_lora_of_a_wider_model_names_the_layer_and_both_shapes(tmp_path, family):
    """A LoRA of the same family with other widths: one line naming the layer and both shapes, not
    torch's size mismatch for every key."""
    make = tiny_flux if family == "flux" else tiny_pixart
    lora = _save(_state(make(attention_head_dim=16), ["to_q"]), tmp_path / "wide.safetensors")
    with pytest.raises(UserError, match=r"to_q.lora_A.weight' is \(4, 32\), but '.*to_q' of the \w+ is a linear "
                                        r"of 16 -> 16 features .*a LoRA of another model \(other widths\)\?$"):
        merge_lora(make(), lora)


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_lora_blocks_the_teacher_never_had_and_a_lora_that_merges_nothing_are_refused(tmp_path, capsys):
    """A LoRA block past the teacher's count (a group the student kept whole) is refused as one of
    another model, not counted as removed; a LoRA whose layers are all in removed blocks is refused."""
    from compress.cli import main

    deeper = _save(_state(tiny_pixart(num_layers=5), ["to_q"]), tmp_path / "deeper.safetensors")
    with pytest.raises(UserError, match=r"adapts transformer_blocks.4, but the base model has 3 transformer_blocks"):
        merge_lora(tiny_pixart(), deeper)
    student, _ = _student(tmp_path)  # double block 0 of 2 removed; its 3 single blocks kept
    removed = {k: v for k, v in _state(tiny_flux(), ["to_q"]).items() if ".transformer_blocks.0." in k}
    with pytest.raises(UserError, match=r": its 1 layer is not in a block the student kept \(in a removed block, or "
                                        r"past the base model .*'s last: transformer_blocks\.0\.attn\.to_q\); merging"):
        merge_lora(student, removed)  # it said "none of its 1 layers is" and "(all in removed blocks ... to_q …)"
    # past the block map's last kept block, the teacher's count is report.json's (lora reads it)
    singles = _state(tiny_flux(num_single_layers=5), ["to_q"])
    _save({k: v for k, v in singles.items() if ".3." in k or ".0." in k}, tmp_path / "singles.safetensors")
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "singles.safetensors"), str(tmp_path / "new")]) == 2
    assert (f"adapts single_transformer_blocks.3, but the base model {tmp_path / 'teacher'} has 3 "
            "single_transformer_blocks (0 to 2)") in \
        capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_lora_of_another_family_is_one_quiet_line(tmp_path, capsys):
    """A PixArt LoRA on Flux: no peft warning nor diffusers log listing every key, one short error
    saying it names layers the model does not have; kohya keys diffusers cannot convert: at most three."""
    pixart = _save(_state(tiny_pixart(num_layers=2), ["to_q", "to_k", "ff.net.0.proj"]), tmp_path / "p.safetensors")
    with warnings.catch_warnings(record=True) as caught, diffusers_log() as logged:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match=r"names a layer FluxTransformer2DModel does not have: a LoRA of another "
                                            r"model\?$"):
            merge_lora(tiny_flux(), pixart)
    assert not caught and capsys.readouterr().err == "" and logged == []
    kohya = {f"lora_unet_transformer_blocks_{i}_attn1_to_{x}.{p}": torch.ones(4, 16)
             for i in range(3) for x in "qkv" for p in ("lora_down.weight", "lora_up.weight")}
    with diffusers_log() as logged, pytest.raises(UserError) as e:
        merge_lora(tiny_flux(), _save(kohya, tmp_path / "k.safetensors"))
    assert len(str(e.value)) < 400 and "(18 in all)" in str(e.value) and "a LoRA of another model?" in str(e.value)
    assert capsys.readouterr().err == "" and logged == []


def test_a_lora_on_the_patch_embedding_says_it_is_no_linear(tmp_path):
    lora = _save(_state(tiny_pixart(), ["pos_embed.proj", "to_q"]), tmp_path / "conv.safetensors")
    with pytest.raises(UserError, match=r"the LoRA adapts 'pos_embed.proj', a Conv2d, not a linear layer$"):
        merge_lora(tiny_pixart(), lora)


def test_raw_peft_state_dicts_are_read_without_prefix_or_with_adapter_names(tmp_path):
    """A Flux LoRA saved without `transformer.` (as PixArt's reader takes it) and a state dict with peft's
    adapter-named keys (`lora_A.default.weight`) merge as the plain diffusers form does."""
    for make, targets in [(tiny_flux, ["to_q", "proj_mlp"]), (tiny_pixart, ["to_q", "ff.net.2"])]:
        state, inputs = _state(make(), targets), model_inputs(make())
        want = make()
        merge_lora(want, state)
        bare = {k[len("transformer."):]: v for k, v in state.items()}
        named = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                 for k, v in bare.items()}
        for lora in (_save(bare, tmp_path / "bare.safetensors"), named):
            got = make()
            merge_lora(got, lora)
            assert torch.equal(forward(got, inputs), forward(want, inputs))


def _one_layer_lora_output(tmp_path, dense: bool = False):
    """(a PixArt output, a LoRA file): the output of base (saved) less its block 1 of 3, its block 0's
    attn1.to_q at rank 2 and attn2.to_q at 6 (as report.json's svd layers record); the rank-2 LoRA
    of base's attn1.to_q in blocks 0 (kept: grown) and 1 (removed: dropped), and where `dense` its
    block 0's attn2.to_q (6 + 2 reaches 16 x 16's break-even 8: stored dense)."""
    from compress.arch import get_adapter
    from compress.io_export import save_compressed
    from tests.conftest import factorize

    base = tiny_pixart()
    base.save_pretrained(tmp_path / "base")
    s = copy.deepcopy(base)
    block_map = get_adapter(s).remove_blocks(s, {"blocks": [1]})
    layers = {"transformer_blocks.0.attn1.to_q": 2, "transformer_blocks.0.attn2.to_q": 6}
    for name, rank in layers.items():
        factorize(s, [name], rank)
    svd = {n: {"rank": r, "loss": 1.0, "optimal_loss": 1.0, "loss_ratio": 1.0, "time_s": 0.25} for n, r in layers.items()}
    out = save_compressed(s, tmp_path / "out", extra={"teacher": str((tmp_path / "base").resolve()),
                                                      "block_map": block_map},
                          files={"report.json": json.dumps({"svd": {"layers": svd}}), "README.md": "# a card\n"})
    wanted = [".transformer_blocks.0.attn1.to_q.", ".transformer_blocks.1.attn1.to_q."] + \
        ([".transformer_blocks.0.attn2.to_q."] if dense else [])
    state = _state(copy.deepcopy(base), ["attn1.to_q", "attn2.to_q"], rank=2)
    return out, _save({k: v for k, v in state.items() if any(w in k for w in wanted)}, tmp_path / "l.safetensors")


def test_the_lora_line_and_card_count_one_layer_in_the_singular(tmp_path, capsys):
    """One layer merged (factorized: grown) and one in a removed block: lora said "1 layers took the
    LoRA", "1 factorized ones", "1 of its layers were in removed blocks", and the card "1 layers"."""
    from compress.cli import main

    out, lora = _one_layer_lora_output(tmp_path)
    assert main(["lora", str(out), str(lora), str(tmp_path / "new")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"wrote {tmp_path / 'new'}: 1 layer took the LoRA at scale 1, 1 factorized one by rank [2]; 1 of its " \
           "layers was in removed blocks (listed in report.json)" in said, said
    assert "at scale 1, 1 layer; parameters now" in (tmp_path / "new" / "README.md").read_text()


def test_inspect_counts_the_layers_a_lora_grew_in_an_output_whose_run_factorized_none(tmp_path, capsys):
    """An output whose run had no svd pass (one pass removing a block from an output: its factorized
    layers are its teacher's) that took a LoRA: inspect said "the factorized layers it adapts grew by its
    rank (stored dense where that passed break-even)", with no count, as it did for a LoRA adapting none.
    It counts them from report.json's lora entries, or says the LoRA adapts no factorized layer."""
    from diffusers import PixArtTransformer2DModel

    from compress.cli import main

    out, lora = _one_layer_lora_output(tmp_path, dense=True)
    report = json.loads((out / "report.json").read_text())
    del report["svd"]  # as a removal-only run's report
    (out / "report.json").write_text(json.dumps(report))
    base = PixArtTransformer2DModel.from_pretrained(tmp_path / "base")
    dense_only = _save({k: v for k, v in _state(base, ["attn1.to_k"], rank=2).items()
                        if ".transformer_blocks.0." in k}, tmp_path / "k.safetensors")
    said = {}
    for name, file in (("grown", lora), ("dense", dense_only)):
        assert main(["lora", str(out), str(file), str(tmp_path / name)]) == 0
        capsys.readouterr()
        assert main(["inspect", str(tmp_path / name)]) == 0
        said[name] = " ".join(capsys.readouterr().out.split())
    assert "(2 layers); 1 factorized layer grew by its rank and 1 was stored dense (past break-even) by role" \
        in said["grown"], said["grown"]
    assert "(1 layer); it adapts no factorized layer (only dense ones, which took it in their weights) by role" \
        in said["dense"], said["dense"]
