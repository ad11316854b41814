import pytest
import torch
from torch import nn

from compress.arch import ROLES, get_adapter
from tests.conftest import model_inputs, tiny_flux, tiny_pixart


def test_every_linear_has_a_role(tiny_model):
    adapter = get_adapter(tiny_model)
    infos = adapter.linears(tiny_model)
    n_linear = sum(isinstance(m, nn.Linear) for m in tiny_model.modules())
    assert len(infos) == n_linear  # classify() raises KeyError on an unknown linear
    assert {i.role for i in infos} <= set(ROLES)


def test_roles_of_known_modules():
    p = {i.name: i for i in get_adapter("pixart").linears(tiny_pixart())}
    assert p["adaln_single.linear"].role == "modulation"
    assert p["transformer_blocks.1.attn2.to_k"].role == "cross_attention"
    assert p["transformer_blocks.1.attn2.to_k"].input_key == "caption"
    assert p["transformer_blocks.2.ff.net.0.proj"].role == "mlp"
    f = {i.name: i for i in get_adapter("flux").linears(tiny_flux())}
    for name in ("transformer_blocks.0.norm1.linear", "transformer_blocks.1.norm1_context.linear",
                 "single_transformer_blocks.2.norm.linear", "norm_out.linear"):
        assert f[name].role == "modulation" and f[name].input_key == "temb"
    assert f["single_transformer_blocks.0.proj_out"].part == "fused_out"
    assert f["single_transformer_blocks.0.proj_mlp"].input_key == f[
        "single_transformer_blocks.0.attn.to_q"].input_key
    assert (f["transformer_blocks.0.attn.add_k_proj"].group, f[
        "transformer_blocks.0.attn.add_k_proj"].block) == ("double", 0)


def test_parts_name_the_projection():
    """A rule's part r"\\1" is filled from the module name: q, k, v (and ctx_q ... for Flux's text side)."""
    p = {i.name: i.part for i in get_adapter("pixart").linears(tiny_pixart())}
    assert [p[f"transformer_blocks.0.attn1.to_{x}"] for x in "qkv"] == ["q", "k", "v"]
    assert [p[f"transformer_blocks.0.attn2.to_{x}"] for x in "qkv"] == ["q", "k", "v"]
    f = {i.name: i.part for i in get_adapter("flux").linears(tiny_flux())}
    assert [f[f"transformer_blocks.0.attn.add_{x}_proj"] for x in "qkv"] == ["ctx_q", "ctx_k", "ctx_v"]
    assert [f[f"single_transformer_blocks.1.attn.to_{x}"] for x in "qkv"] == ["q", "k", "v"]
    assert not any("\\" in part for part in [*p.values(), *f.values()])


def test_unknown_linear_is_an_error(tiny_model):
    tiny_model.extra_head = nn.Linear(4, 4)
    try:
        get_adapter(tiny_model).linears(tiny_model)
    except KeyError as e:
        assert "extra_head" in str(e)
    else:
        raise AssertionError("an unclassified linear must fail")


def _chain(model, inputs):
    """Run the model block by block through the adapter; compare with the full forward."""
    adapter = get_adapter(model)
    captured = {}
    first_group, _, first = next(adapter.iter_blocks(model))

    def grab(mod, args, kwargs):
        captured["in"] = (args, kwargs)

    h = first.register_forward_pre_hook(grab, with_kwargs=True)
    model(**inputs)
    h.remove()
    args, kwargs = captured["in"]
    outs = []
    for group, _, blk in adapter.iter_blocks(model):
        out = adapter.run_block(blk, args, kwargs)
        outs.append(out)
        args, kwargs = adapter.next_inputs(group, args, kwargs, out)
    return outs


def test_block_chain_reproduces_model(tiny_model):
    inputs = model_inputs(tiny_model)
    adapter = get_adapter(tiny_model)
    recorded = []
    hooks = [blk.register_forward_hook(lambda m, a, o: recorded.append(o))
             for _, _, blk in adapter.iter_blocks(tiny_model)]
    with torch.no_grad():
        tiny_model(**inputs)
        for h in hooks:
            h.remove()
        chained = _chain(tiny_model, inputs)
    for a, b in zip(recorded, chained):
        for x, y in zip(adapter.hidden_of_output(a), adapter.hidden_of_output(b)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_remove_blocks_renumbers_and_keeps_config():
    model = tiny_flux()
    block_map = get_adapter(model).remove_blocks(model, {"double": [0], "single": [0, 2]})
    assert block_map == {"double": [1], "single": [1]}
    assert model.config.num_layers == 1 and model.config.num_single_layers == 1
    assert len(model.transformer_blocks) == 1 and len(model.single_transformer_blocks) == 1
    names = [i.name for i in get_adapter(model).linears(model)]
    assert "single_transformer_blocks.0.proj_out" in names
    assert not any(n.startswith("single_transformer_blocks.1.") for n in names)
    with torch.no_grad():
        model(**model_inputs(model))  # still runs


def test_task_loss_is_finite(tiny_model):
    adapter = get_adapter(tiny_model)
    inputs = model_inputs(tiny_model)
    latents = inputs.pop("hidden_states")
    inputs.pop("timestep")
    loss, kwargs = adapter.task_loss(tiny_model, latents, inputs, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    assert kwargs["hidden_states"].shape == latents.shape


def test_embedding_linears_read_their_own_inputs():
    for model in (tiny_pixart(), tiny_flux()):
        infos = [i for i in get_adapter(model).linears(model) if i.role == "embedding"]
        assert len({i.input_key for i in infos}) == len(infos)


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_skipped_output_inverts_hidden_of_output(family):
    adapter = get_adapter(family)
    hidden = [torch.randn(2, 4, 8), torch.randn(2, 3, 8)][: 1 if family == "pixart" else 2]
    back = adapter.hidden_of_output(adapter.skipped_output(hidden))
    assert len(back) == len(hidden) and all(a is b for a, b in zip(back, hidden))


def test_noise_level_and_sampled_prediction():
    pixart, flux = get_adapter("pixart"), get_adapter("flux")
    assert pixart.noise_level(torch.tensor([999, 0])).tolist() == [0.999, 0.0]
    assert flux.noise_level(torch.tensor(0.25)).tolist() == [0.25]
    grid = pixart.timestep_grid(5, {"timestep": torch.zeros(1, dtype=torch.long)})
    assert grid.tolist() == [0, 250, 500, 749, 999] and grid.dtype == torch.long
    assert flux.timestep_grid(4, {"timestep": torch.zeros(1), "hidden_states": torch.zeros(1, 16, 8)}).tolist() \
        == [0.25, 0.5, 0.75, 1.0]
    model = tiny_pixart(out_channels=8)  # learned-variance half, as PixArt-Σ
    pred = torch.randn(2, 8, 8, 8)
    assert pixart.sampled_prediction(model, pred).shape[1] == 4
    assert pixart.sampled_prediction(tiny_pixart(), pred[:, :4]).shape[1] == 4
    assert flux.sampled_prediction(tiny_flux(), pred) is pred


def test_what_compression_measures_ignores_the_learned_variance_half():
    """PixArt-Σ predicts ε and a learned variance (out_channels = 2 · in_channels) and its pipeline
    samples on ε alone: the prediction the teacher-relative error, the output Fisher and
    compensation measure (adapter.predict) is the ε half, so a model differing from the teacher
    only in its variance rows has error 0 and the same output Fisher of every layer."""
    from compress.passes.base import predictions, relative_error
    from compress.passes.svd_fisher import output_fisher

    teacher = tiny_pixart()
    assert teacher.config.out_channels == 2 * teacher.config.in_channels and teacher.config.patch_size == 1
    adapter, batches = get_adapter(teacher), [model_inputs(teacher, seed=s) for s in range(2)]
    other = tiny_pixart()
    with torch.no_grad():  # proj_out rows are (patch, patch, channel) with the channel fastest: 4.. = variance
        other.proj_out.weight[4:] += 3.0
        other.proj_out.bias[4:] -= 1.0
    assert predictions(teacher, adapter, batches)[0].shape[1] == 4
    raw = [m(**batches[0], return_dict=False)[0] for m in (teacher, other)]
    assert not torch.allclose(raw[0], raw[1])  # the full outputs differ
    assert relative_error(other, predictions(teacher, adapter, batches), adapter, batches) == 0.0
    names = ["transformer_blocks.1.ff.net.2", "transformer_blocks.2.attn1.to_q"]
    fa, fb = (output_fisher(m, adapter, batches, names, probes=2, seed=0) for m in (teacher, other))
    for n in names:
        torch.testing.assert_close(fa[n], fb[n], rtol=0, atol=0)


def test_per_sample_linears_are_exactly_those_with_one_output_row_per_sample(tiny_model):
    """Adapter.per_sample (the rule the output Fisher's memory plan uses: one gradient row per
    sample, not per token) against what each linear of the real class outputs."""
    adapter = get_adapter(tiny_model)
    shapes = {}
    hooks = [tiny_model.get_submodule(i.name).register_forward_hook(
        lambda m, a, y, name=i.name: shapes.__setitem__(name, tuple(y.shape))) for i in adapter.linears(tiny_model)]
    with torch.no_grad():
        tiny_model(**model_inputs(tiny_model, batch=3), return_dict=False)
    for h in hooks:
        h.remove()
    infos = adapter.linears(tiny_model)
    assert len(shapes) == len(infos) and any(adapter.per_sample(i) for i in infos)
    for info in infos:
        assert adapter.per_sample(info) == (shapes[info.name][:-1] == (3,)), (info.name, shapes[info.name])
