"""The caption's statistics (calib_stats `Reader.dedupe`): computed once per distinct caption, but
weighed as often as the calibration's forwards read it, every prompt, timestep and CFG branch."""

import pytest
import torch

from compress.arch import get_adapter
from compress.calib import BlockCalibration
from compress.calib_stats import StatsCache
from compress.passes.svd_walk import readers, walk
from tests.conftest import tiny_pixart


pytestmark = pytest.mark.usefixtures("one_thread")
TOKENS = 5


def _cfg_batches(model) -> list[dict]:
    """Two batches of four rows as classifier-free guidance calibrates: prompts a, b and c (c's text is a's)
    with their unconditional (empty) caption beside them, at two timesteps; each mask reads the prompt's tokens."""
    g = torch.Generator().manual_seed(0)
    c, s, d = model.config.in_channels, model.config.sample_size, model.config.caption_channels
    text = {k: torch.randn(TOKENS, d, generator=g) for k in ("a", "b", "empty")}
    text["c"] = text["a"]
    read = {"a": 3, "b": 4, "c": 3, "empty": 1}  # tokens of each caption attention reads

    def batch(prompts, t):
        mask = torch.tensor([[1.0] * read[p] + [0.0] * (TOKENS - read[p]) for p in prompts])  # (B, L)
        return dict(hidden_states=torch.randn(len(prompts), c, s, s, generator=g),
                    encoder_hidden_states=torch.stack([text[p] for p in prompts]), encoder_attention_mask=mask,
                    timestep=torch.full((len(prompts),), t),
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None})

    return [batch(["a", "b", "empty", "empty"], 100), batch(["c", "a", "empty", "empty"], 700)]


def _direct(model, name: str, batches: list[dict]) -> torch.Tensor:
    """(rows read, d): the input of `name` in full forwards, a forward hook's, the rows each mask reads."""
    rows = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, args: rows.append(args[0].double()))
    with torch.no_grad():
        for b in batches:
            model(**b)
    handle.remove()
    return torch.cat([x[b["encoder_attention_mask"].bool()] for x, b in zip(rows, batches)])


def test_the_svd_walks_caption_stats_are_a_forward_hooks_sums_over_every_branch():
    """The svd pass's readers of the caption (cross-attention keys and values, the caption projection)
    deduplicate it, and their stats equal Σ xᵀx, Σ x and the rows of what a forward hook sees in every
    calibration forward: the unconditional caption as often as it is read (4 times here), a's text thrice."""
    model = tiny_pixart()
    batches = _cfg_batches(model)
    adapter = get_adapter(model)
    targets = [i for i in adapter.linears(model) if i.role == "cross_attention" or "caption" in i.name]
    assert all(r.dedupe for r in readers([i for i in targets if i.part in ("k", "v") or i.group is None]))
    seen = {}

    def visit(info, stats):
        seen[info.name] = stats
        return False

    cal = BlockCalibration(model, adapter, batches, "teacher", progress=False)
    walk(cal, targets, visit, [], StatsCache(None), 0)
    for name in ("transformer_blocks.0.attn2.to_k", "transformer_blocks.1.attn2.to_v",
                 "caption_projection.linear_1", "caption_projection.linear_2"):
        source = "transformer_blocks.0.attn2.to_k" if ".attn2." in name else name  # the projected caption
        x = _direct(model, source, batches)  # (rows read, d)
        assert seen[name].rows == x.shape[0] == (3 + 4 + 1 + 1) + (3 + 3 + 1 + 1), name
        torch.testing.assert_close(seen[name].gram, x.T @ x, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(seen[name].total, x.sum(0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spill", [False, True])
def test_the_unconditional_caption_weighs_once_per_branch_in_the_block_walk(spill, tmp_path):
    """Student activations (the caption is a kwarg no block changes), kept in memory or spilled to disk
    (each batch's caption read back from its file): the caption Gram of the first block counts each of
    the 8 rows' captions, the empty one 4 times, a's text 3 times."""
    model = tiny_pixart()
    batches = _cfg_batches(model)
    name = "transformer_blocks.0.attn2.to_k"
    x = _direct(model, name, batches)
    only = readers([i for i in get_adapter(model).linears(model) if i.name == name])
    cal = BlockCalibration(model, get_adapter(model), batches, "student", progress=False,
                           spill=tmp_path if spill else None)
    cal.capture()
    stats = next(cal.blocks(lambda g, i: only if i == 0 else [])).stats[only[0].key]
    torch.testing.assert_close(stats.gram, x.T @ x, rtol=1e-9, atol=1e-9)
    assert stats.rows == 17  # 4 + 3 + 3 + 3 of the prompts' tokens, 4 x 1 of the empty caption's
