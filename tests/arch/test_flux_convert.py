"""BFL Flux keys -> diffusers keys: the same tensors as diffusers' own converter at Flux.1's width,
the exact inverse of tests/bfl.py at any width, and one-line reasons for what does not convert."""

import pytest
import torch

from compress.arch.flux_convert import convert_bfl_flux
from tests.bfl import flux_to_bfl
from tests.conftest import tiny_flux


def _full_width_rows(guidance: bool) -> dict:
    """A BFL state dict of one double and one single block with Flux.1's row counts (3072 wide,
    MLP 12288) and two columns: diffusers' converter splits at those sizes whatever the columns."""
    g = torch.Generator().manual_seed(0)
    d, mlp = 3072, 12288
    rows = {"img_in": d, "txt_in": d, "final_layer.linear": 64, "final_layer.adaLN_modulation.1": 2 * d,
            **{f"{e}.{io}_layer": d for e in ("time_in", "vector_in") + (("guidance_in",) if guidance else ())
               for io in ("in", "out")},
            **{f"double_blocks.0.{s}_mod.lin": 6 * d for s in ("img", "txt")},
            **{f"double_blocks.0.{s}_attn.qkv": 3 * d for s in ("img", "txt")},
            **{f"double_blocks.0.{s}_attn.proj": d for s in ("img", "txt")},
            **{f"double_blocks.0.{s}_mlp.{i}": (mlp if i == 0 else d) for s in ("img", "txt") for i in (0, 2)},
            "single_blocks.0.modulation.lin": 3 * d, "single_blocks.0.linear1": 3 * d + mlp,
            "single_blocks.0.linear2": d}
    sd = {f"{k}.{s}": torch.randn((n, 2) if s == "weight" else (n,), generator=g)
          for k, n in rows.items() for s in ("weight", "bias")}
    norms = [f"double_blocks.0.{s}_attn.norm.{q}_norm.scale" for s in ("img", "txt") for q in ("query", "key")]
    norms += [f"single_blocks.0.norm.{q}_norm.scale" for q in ("query", "key")]
    sd.update({k: torch.randn(128, generator=g) for k in norms})
    return sd


@pytest.mark.parametrize("guidance", [True, False])
def test_same_tensors_as_diffusers_converter_at_flux1_width(guidance):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    bfl = _full_width_rows(guidance)
    want = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    got = convert_bfl_flux(dict(bfl), inner_dim=3072)
    assert got.keys() == want.keys()
    assert ("time_text_embed.guidance_embedder.linear_1.weight" in got) == guidance
    for k, v in want.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("overrides", [{}, {"guidance_embeds": False}, {"num_attention_heads": 3}])
def test_inverse_of_the_test_writer_at_any_width(overrides):
    model = tiny_flux(**overrides)
    inner = model.config.num_attention_heads * model.config.attention_head_dim
    bfl = flux_to_bfl(model)
    assert any(k.startswith("single_blocks.") for k in bfl) and not any("transformer_blocks" in k for k in bfl)
    got = convert_bfl_flux(bfl, inner)
    want = model.state_dict()
    assert got.keys() == want.keys() and not bfl  # the BFL dict is emptied as it converts
    for k, v in want.items():
        assert torch.equal(got[k], v), k
        assert got[k].untyped_storage().nbytes() == v.numel() * v.element_size(), k  # no view of a fused tensor


def test_diffusers_keys_pass_through():
    sd = tiny_flux().state_dict()
    got = convert_bfl_flux(sd, 16)
    assert got == sd and got is not sd


def test_what_does_not_convert_is_named():
    bfl = flux_to_bfl(tiny_flux())
    singles = {k: v for k, v in bfl.items() if k.startswith("single_blocks.")}
    with pytest.raises(ValueError, match=r"'single_blocks\.0\.linear1\.weight' of shape \(112, 16\) does not "
                                         r"split into attn\.to_q, attn\.to_k, attn\.to_v, proj_mlp of width 40"):
        convert_bfl_flux(singles, 40)  # 3 x 40 rows > 112
    for width in (8, 24):  # qkv: exactly 3 x width rows
        with pytest.raises(ValueError, match=r"'double_blocks\.0\.img_attn\.qkv\.weight' of shape \(48, 16\) "
                                             f"does not split into attn\\.to_q, attn\\.to_k, attn\\.to_v of width {width}"):
            convert_bfl_flux(dict(bfl), width)
    bfl["double_blocks.0.img_attn.lora_up.weight"] = torch.zeros(1)  # not a key of BFL's model
    with pytest.raises(ValueError, match=r"'double_blocks\.0\.img_attn\.lora_up\.weight' has no counterpart"):
        convert_bfl_flux(bfl, 16)
