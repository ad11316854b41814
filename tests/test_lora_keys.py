"""lora's reading of keys and loader logs: another format's prefixes, loader exceptions and dropped
weights are one line; two adapters in one file are refused; a densified layer shows no svd loss;
a LoRA block past the teacher's count is refused by merge_lora itself."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from compress.errors import UserError
from compress.lora import merge_lora
from tests.conftest import diffusers_log, tiny_flux, tiny_pixart
from tests.test_lora import _lora, _student
from tests.test_lora_limits import _save, _state

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

Q = "transformer_blocks.0.attn.to_q"


def _pair(prefix: str, module: str = Q, out: int = 16) -> dict:
    return {f"{prefix}{module}.lora_A.weight": torch.randn(4, 16), f"{prefix}{module}.lora_B.weight": torch.randn(out, 4)}


@pytest.mark.parametrize("keys", [
    _pair("diffusion_model.", "double_blocks.0.img_attn.qkv", 48),  # BFL / ComfyUI names, peft parts
    _pair("diffusion_model."), _pair("unet."),
    {"lora_transformer_transformer_blocks_0_attn_to_q.lora_A.weight": torch.randn(4, 16),
     "lora_transformer_transformer_blocks_0_attn_to_q.lora_B.weight": torch.randn(16, 4)},
    _pair("transformer.diffusion_model."),  # prefixed already: peft itself finds no module
], ids=["bfl", "diffusion_model", "unet", "lora_transformer", "transformer.diffusion_model"])
def test_a_flux_lora_of_another_key_format_is_one_quiet_line(tmp_path, capsys, keys):
    """No `transformer.` added to keys naming no module of the transformer, and what peft or diffusers
    raise while loading is one UserError line, with no ERROR log of diffusers' printed; where the keys
    name the transformer's layers under another prefix (diffusion_model., unet.), it says to rename it."""
    renamed = next((p for p in ("diffusion_model.", "unet.")
                    if all(k.startswith(p + "transformer_blocks") for k in keys)), None)
    said = rf"rename the LoRA's '{re.escape(renamed)}' keys to 'transformer\.'" if renamed else \
        r"a LoRA of another model\?$"
    with diffusers_log() as logged, pytest.raises(UserError, match=said):
        merge_lora(tiny_flux(), _save(keys, tmp_path / "l.safetensors"))
    assert capsys.readouterr().err == "" and logged == []


def test_a_hub_lycoris_dora_whose_dora_scale_diffusers_drops_is_refused(monkeypatch):
    """A Hub LoRA's keys are not seen before diffusers reads them; its Flux reader drops dora_scale
    keys with a warning: that warning is a UserError, not a silent merge as a plain LoRA."""
    import diffusers.loaders.lora_pipeline as pipeline

    state = {**_state(tiny_flux(), ["to_q"]), f"transformer.{Q}.dora_scale": torch.ones(1, 16)}
    monkeypatch.setattr(pipeline, "_fetch_state_dict", lambda **kw: (dict(state), None))
    with pytest.raises(UserError, match=r"someone/dora-lora: a LyCORIS DoRA \(dora_scale keys\), which is not "
                                        r"supported"):
        merge_lora(tiny_flux(), "someone/dora-lora")


def test_a_loader_log_of_dropped_keys_is_an_error_and_other_logs_stay_quiet(capsys):
    from compress.lora_keys import quiet_loaders

    log = logging.getLogger("diffusers.loaders.lora_conversion_utils")
    handlers = logging.getLogger("diffusers").handlers[:]
    with diffusers_log() as logged:
        with quiet_loaders("x.safetensors"):
            log.warning("something harmless")
        with pytest.raises(UserError, match=r"^x.safetensors: the LoRA loader dropped some of its weights.*"
                                            r"Unsupported keys for ai-toolkit"):
            with quiet_loaders("x.safetensors"):
                log.warning("Unsupported keys for ai-toolkit: dict_keys(['a', 'b', 'c', 'd', 'e'])")
    assert capsys.readouterr().err == "" and logged == [] and logging.getLogger("diffusers").handlers == handlers


@pytest.mark.parametrize("make, attn", [(tiny_flux, "attn"), (tiny_pixart, "attn1")])
def test_two_adapters_or_one_weight_twice_are_refused(make, attn):
    """`lora_A.default.weight` and `lora_A.style.weight` would both become `lora_A.weight` (the last
    kept, silently); so would `x.lora_A.weight` beside `x.lora_A.default.weight`."""
    module = f"transformer.transformer_blocks.0.{attn}.to_q"
    two = {f"{module}.lora_{p}.{name}.weight": torch.randn(*shape) for name in ("default", "style")
           for p, shape in (("A", (4, 16)), ("B", (16, 4)))}
    with pytest.raises(UserError, match=r"its keys name 2 peft adapters \(default, style\)"):
        merge_lora(make(), two)
    twice = {**_pair("transformer.", module[len("transformer."):]),
             **{k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                for k, v in _pair("transformer.", module[len("transformer."):]).items()}}
    with pytest.raises(UserError, match=r"are the same weight"):
        merge_lora(make(), twice)
    if make is tiny_pixart:  # its own reader: with and without `transformer.`
        both = {**_pair("transformer.", module[len("transformer."):]), **_pair("", module[len("transformer."):])}
        with pytest.raises(UserError, match=r"are the same weight"):
            merge_lora(make(), both)


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_inspect_shows_no_svd_loss_for_a_layer_a_lora_densified(tmp_path, capsys, monkeypatch):
    """A layer stored dense after a LoRA no longer holds the svd pass's factorization: its loss, ratio,
    energy and output error are not shown, nor counted in the whitened-loss line; time and spectrum stay."""
    from compress.cli import main
    from compress.inspect import inspect_output

    _, teacher = _student(tmp_path)
    monkeypatch.setattr("tests.test_lora.RANK", 16)
    _lora(teacher, tmp_path / "lora", ["to_q", "proj_mlp", "ff.net.0.proj"])
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new")]) == 0
    capsys.readouterr()
    rows = {r["name"]: r for r in inspect_output(tmp_path / "new", as_json=True)}
    capsys.readouterr()
    dense = [n for n, r in rows.items() if r["rank"] is None and "time_s" in r]
    assert dense, "no densified layer"
    for name in dense:
        assert not {"loss", "optimal_loss", "loss_ratio", "energy_kept", "rel_output_error"} & set(rows[name])
    assert main(["inspect", str(tmp_path / "new")]) == 0
    counted = sum("loss_ratio" in r for r in rows.values())
    assert f"loss / optimal loss over {counted} " in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_merge_lora_refuses_a_block_past_the_teachers_count_after_the_block_map(tmp_path):
    """Past a block map's last kept block, merge_lora reads the teacher's count from the recorded
    teacher's config (not only the CLI from report.json): a block the teacher never had is refused,
    not counted as removed."""
    student, _ = _student(tmp_path)  # double block 0 of 2 removed: its block map keeps [1]
    deeper = _state(tiny_flux(num_layers=3), ["to_q"])
    lora = {k: v for k, v in deeper.items() 
            if k.startswith(("transformer.transformer_blocks.1.", "transformer.transformer_blocks.2."))}
    base = re.escape(str(tmp_path / "teacher"))  # the recorded teacher: the base, named
    with pytest.raises(UserError, match=rf"adapts transformer_blocks.2, but the base model {base} has 2 "
                                        r"transformer_blocks \(0 to 1\)"):
        merge_lora(student, lora)


def test_a_block_past_the_count_names_the_base_model_whose_count_it_is():
    """The count is the base model's (the teacher, or for an output of an output the first teacher of
    its chain), not the output's own teacher's: the message says the base model, by name where known."""
    from compress.lora_keys import check_blocks

    check_blocks("transformer_blocks", 6, [0, 5], "l.safetensors", base="org/base")  # all within: no error
    with pytest.raises(UserError, match=r"^l\.safetensors: the LoRA adapts transformer_blocks\.6, but the base "
                                        r"model org/base has 6 transformer_blocks \(0 to 5\): a LoRA of another"):
        check_blocks("transformer_blocks", 6, [2, 6], "l.safetensors", base="org/base")
    with pytest.raises(UserError, match=r"adapts transformer_blocks\.7, but the base model has 6 transformer_blocks"):
        check_blocks("transformer_blocks", 6, [7], "l.safetensors")


STATE_DICT_RE = "the LoRA state dict"
PROJ = "lora_unet_double_blocks_0_img_attn_proj"  # kohya's name of transformer_blocks.0.attn.to_out.0


def _kohya(module: str = PROJ, width: int | None = None) -> dict:
    d = width or tiny_flux().config.num_attention_heads * tiny_flux().config.attention_head_dim
    return {f"{module}.lora_down.weight": torch.randn(4, d), f"{module}.lora_up.weight": torch.randn(d, 4),
            f"{module}.alpha": torch.tensor(4.0)}


@pytest.mark.parametrize("extra, first", [
    ({f"{PROJ}.diff_b": "bias"}, f"{PROJ}.diff_b"),  # diffusers filters non-zero diff_b out (an INFO line)
    ({"diffusion_model.double_blocks.0.img_attn.norm.key_norm.diff": "norm"},  # ComfyUI: dropped (INFO)
     "diffusion_model.double_blocks.0.img_attn.norm.key_norm.diff"),
    ({f"lora_foo_{PROJ[len('lora_unet_'):]}.{p}": p for p in ("lora_down.weight", "lora_up.weight")},  # no log
     f"lora_foo_{PROJ[len('lora_unet_'):]}.lora_down.weight"),
], ids=["diff_b", "comfyui_norm_diff", "other_prefix"])
def test_a_kohya_flux_lora_whose_transformer_weights_diffusers_drops_is_refused(tmp_path, capsys, extra, first):
    """diffusers' Flux reader of kohya / ComfyUI LoRAs drops a non-zero bias delta (diff_b), a norm's
    delta (diff) with an INFO line, and keys of another prefix with none: each is an error naming the
    key and the count, not a merge leaving the bias unchanged."""
    base = _kohya()
    d = base[f"{PROJ}.lora_up.weight"].shape[0]
    fill = {"bias": torch.full((d,), 5.0), "norm": torch.ones(tiny_flux().config.attention_head_dim),
            "lora_down.weight": base[f"{PROJ}.lora_down.weight"].clone(),
            "lora_up.weight": base[f"{PROJ}.lora_up.weight"].clone()}
    state = {**base, **{k: fill[v] for k, v in extra.items()}}
    n = len(extra)
    with pytest.raises(UserError, match=rf"^\S+: {n} transformer keys? \('{re.escape(first)}'.*not a LoRA weight "
                                        r"diffusers' Flux loader reads.*merging would lose (it|them) silently$"):
        merge_lora(tiny_flux(), _save(state, tmp_path / "l.safetensors"))
    with pytest.raises(UserError, match=rf"^{STATE_DICT_RE}: {n} transformer key"):
        merge_lora(tiny_flux(), state)
    assert capsys.readouterr().err == ""



def test_a_kohya_flux_lora_with_zero_diff_b_and_text_encoders_merges_listing_each_encoders_modules(tmp_path):
    """An all-zero diff_b changes nothing (diffusers purges it): merged. Text-encoder modules of any
    encoder (lora_te1_, and lora_te2_, which diffusers drops without a word) are listed as not merged,
    one per module (not per down / up weight), with their alphas."""
    d = tiny_flux().config.num_attention_heads * tiny_flux().config.attention_head_dim
    te1, te2 = "lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    state = {**_kohya(), f"{PROJ}.diff_b": torch.zeros(d), **_kohya(te1, 8), **_kohya(te2, 8)}
    student = tiny_flux()
    before = student.transformer_blocks[0].attn.to_out[0].weight.clone()
    done = merge_lora(student, _save(state, tmp_path / "l.safetensors"))
    assert done["merged"] == 1 and done["not_merged"] == [te1, te2]
    assert not torch.equal(student.transformer_blocks[0].attn.to_out[0].weight, before)


def test_a_loader_info_line_dropping_weights_is_an_error_but_a_purge_of_zeros_is_not(capsys):
    """diffusers says at INFO that it filters out a kohya LoRA's non-zero diff_b (a Hub LoRA's keys are
    not seen before): an error; all-zero keys purged drop nothing; missing keys are the LoRA's lack."""
    from compress.lora_keys import quiet_loaders

    log = logging.getLogger("diffusers.loaders.lora_conversion_utils")
    with diffusers_log() as logged:
        with quiet_loaders("x"):
            log.info("The `diff_b` LoRA params are all zeros which make them ineffective. So, we will purge them "
                     "out of the current state dict to make loading possible.")
            log.info("something harmless")
        with pytest.raises(UserError, match=r"^x: the LoRA loader dropped some of its weights.*`diff_b` keys found"):
            with quiet_loaders("x"):
                log.info("`diff_b` keys found in the state dict which are currently unsupported. So, we will filter "
                         "out those keys.")
        with pytest.raises(UserError, match=r"^x: the LoRA lacks weights for some modules the loader adapted"):
            with quiet_loaders("x"):
                logging.getLogger("diffusers.utils.peft_utils").warning(
                    "Loading adapter weights from state_dict led to missing keys in the model: a.lora_B.weight")
    assert capsys.readouterr().err == "" and logged == []


def _model_and_pair(family: str) -> tuple:
    """A tiny model of `family` and a rank-2 diffusers-style LoRA state dict on one of its linears."""
    model, module = (tiny_pixart(), "transformer_blocks.0.attn1.to_q") if family == "pixart" else (tiny_flux(), Q)
    out_f, in_f = model.get_submodule(module).weight.shape
    return model, {f"transformer.{module}.lora_A.weight": torch.randn(2, in_f),
                   f"transformer.{module}.lora_B.weight": torch.randn(out_f, 2)}


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_a_lora_of_text_encoder_modules_only_says_so(tmp_path, family):
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    state = {f"{te}.lora_down.weight": torch.randn(2, 8), f"{te}.lora_up.weight": torch.randn(8, 2),
             f"{te}.alpha": torch.tensor(2.0)}
    model = _model_and_pair(family)[0]
    with pytest.raises(UserError, match=r"l.safetensors: only text-encoder modules \(1\), nothing for the "
                                        r"transformer$"):
        merge_lora(model, _save(state, tmp_path / "l.safetensors"))


def _with_nan(state: dict) -> str:
    key = next(iter(state))
    state[key][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    return rf"holds 3 NaN/Inf values in '{re.escape(key)}'"


def _with_other_rank(state: dict) -> str:
    a, b = state
    state[b] = torch.randn(state[b].shape[0], 3)
    return rf"lora_A rank 2 vs lora_B rank 3 for '{a[len('transformer.'):-len('.lora_A.weight')]}'"


@pytest.mark.parametrize("family", ["pixart", "flux"])
@pytest.mark.parametrize("damage", [_with_nan, _with_other_rank], ids=["nan", "ranks"])
def test_a_damaged_lora_file_is_said_damaged_naming_the_key(tmp_path, family, damage):
    """NaN/Inf in the LoRA's own tensors, or a lora_B whose rank is not its lora_A's, is a one-line
    UserError naming the file and the key or module as read, not a scale to lower once merged nor
    peft's size mismatch of its own parameter names."""
    model, state = _model_and_pair(family)
    said = damage(state)
    with pytest.raises(UserError, match=rf"l.safetensors: {said}: the file is damaged$"):
        merge_lora(model, _save(state, tmp_path / "l.safetensors"))
