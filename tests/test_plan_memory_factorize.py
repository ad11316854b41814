"""plan's count of what an svd pass holds while it calibrates (compress/plan_statistics.py): the float64
temporaries of factorizing a target, against what factorizing one holds, and one pass's parts never
summed with another's."""

import json
import re

from compress.plan import make_plan
from tools import bench_factorize_memory as tool

# a Flux transformer of hidden 1024 (about 145M parameters), planned from its config alone
MID_FLUX = {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56],
            "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 512, "num_attention_heads": 8,
            "num_layers": 2, "num_single_layers": 4, "out_channels": None, "patch_size": 1,
            "pooled_projection_dim": 256}


def _flux(tmp_path, monkeypatch, heads: int, passes: str):
    """make_plan of a streamed Flux recipe (synthetic inputs, `passes` its passes' YAML) with a
    teacher of hidden 128 x `heads` (2 double- and 4 single-stream blocks) planned from its config:
    a Hub id whose cache holds config.json alone (not downloaded yet; a local folder of a config and
    no weights is refused, as run refuses it)."""
    from huggingface_hub import constants

    from compress.recipe import parse_recipe
    from tests.pipelines import hub_cache

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text(json.dumps({**MID_FLUX, "num_attention_heads": heads}))
    cache = hub_cache(tmp_path / "hub", "acme/mid-flux", tmp_path / "teacher")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    text = ("model: flux\nteacher: acme/mid-flux\nstream: true\ndevice: cpu\n"
            "calibration: {source: synthetic, num_prompts: 20, timesteps: 8, batch_size: 64}\n"
            f"passes:\n{passes}")
    return make_plan(parse_recipe(text, str(tmp_path / "flux.yaml")))


def test_factorizing_a_fitted_target_counts_what_it_holds_not_13_copies_of_its_gram_and_weight(tmp_path, monkeypatch):
    """A mid-size streamed Flux (hidden 1024) planned 3.0 GiB for factorizing its widest target
    (single_transformer_blocks.0.proj_out, 1024 x 5120, fitted to the reference): 13 float64
    (g, g + o) matrices, where the code holds about 5 (g, g) ones and 10 (o, g) ones at once (the
    asymmetric fit's eigh). At hidden 256 (proj_out 256 x 1280) the plan's part is at least what
    factorizing that target holds, and not much more."""
    plan = _flux(tmp_path, monkeypatch, 2, "  - svd: {targets: [attention, mlp], fisher: none, ratio: 0.5, multiple: 64}\n")
    (part,) = [p for p in plan["memory"]["parts"] if p["what"].startswith("factorizing the widest target")]
    assert "single_transformer_blocks.0.proj_out" in part["what"]
    measured = tool.measured(256, 1280)
    assert measured <= part["bytes"] + 4 * 2**20  # the few MiB a 64-wide target shows too
    assert part["bytes"] < 1.3 * measured


def test_one_svd_pass_at_a_time_its_statistics_factorizing_and_square_roots_together(tmp_path, monkeypatch):
    """A streamed mid-size Flux, attention + MLP then modulation (fisher: block each), planned the
    first pass's statistics and factorizing beside the second's square roots (of its 6144-wide
    modulation linears: 1.1 GiB), the largest of each over the passes; the passes calibrate one after
    another, so the calibrating parts counted are one pass's, and the other's are smaller."""
    memory = _flux(tmp_path, monkeypatch, 8, "  - svd: {targets: [attention, mlp], fisher: block, ratio: 0.5, multiple: 64}\n"
                                "  - svd: {targets: [modulation], fisher: block, ranks: {modulation: 64}}\n")["memory"]
    calibrating = ("svd statistics", "factorizing", "the output Fishers' square roots", "a block's output Fisher")

    def by_pass(parts):
        found = {}
        for p in parts:
            if p["what"].startswith(calibrating):
                index = int(re.match(r"passes\.(\d+)\.", p["keys"][-1]).group(1))
                found[index] = found.get(index, 0) + p["bytes"]
        return found

    counted, others = by_pass(memory["parts"]), by_pass(memory["steps_smaller"])
    assert len(counted) == 1 and set(others) == {0, 1} - set(counted)
    assert max(counted.values()) > max(others.values())
    roots = [p for p in memory["parts"] + memory["steps_smaller"]
             if p["what"].startswith("the output Fishers' square roots")]
    assert {int(p["keys"][-1].split(".")[1]) for p in roots} == {0, 1}  # both passes keep some
