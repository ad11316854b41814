"""calib_footprint's estimate against what calibration really holds: rows and tokens of the first
block's inputs, from the toy, synthetic and real-pipeline sources; the warning a run prints."""

import pytest
import torch

from compress.arch import get_adapter
from compress.calib import BlockCalibration
from compress.calib_footprint import calibration_rows, describe, footprint, human_size, row_tokens
from compress.inputs import input_source, source_kind
from compress.io import load_teacher
from compress.recipe import parse_recipe
from tests.pipelines import flux_pipeline, pixart_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = """\
model: {family}
teacher: {teacher}
calibration: {{{calibration}}}
passes:
  - svd: {{targets: [mlp], fisher: {fisher}, ratio: 0.5, multiple: 2}}
"""


def _first_block_inputs(teacher, batches):
    cal = BlockCalibration(teacher, get_adapter(teacher), batches, "teacher", progress=False)
    cal.capture()
    return cal.inputs  # [(args, kwargs)] per batch


def _measured(family, teacher, batches):
    """(rows, residual-stream tokens, caption tokens) of the first block's inputs."""
    adapter = get_adapter(teacher)
    inputs = [adapter.hidden_of(a, k) + [k["encoder_hidden_states"]] for a, k in _first_block_inputs(teacher, batches)]
    rows = sum(x[0].shape[0] for x in inputs)
    if family == "flux":  # double blocks: image and text streams side by side
        return rows, inputs[0][0].shape[1] + inputs[0][1].shape[1], 0
    return rows, inputs[0][0].shape[1], inputs[0][1].shape[1]


def _check(tmp_path, family, teacher_source, calibration, fisher="all"):
    text = RECIPE.format(family=family, teacher=teacher_source, calibration=calibration, fisher=fisher)
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    teacher = load_teacher(teacher_source)
    src = input_source(family, teacher_source, recipe.calibration, teacher)
    kind = source_kind(recipe.calibration, teacher_source)
    prompts, toy = len(getattr(src, "prompts", ())), getattr(src, "toy", False)  # PipelineSource's: a toy's
    want = (calibration_rows(recipe, kind, teacher.config, prompts, toy=toy),
            *row_tokens(recipe, kind, teacher.config, toy=toy))
    assert _measured(family, teacher, src.calibration()) == want
    f = footprint(recipe, teacher_source, teacher.config, prompts, toy=toy)  # float32: 4 bytes
    width = teacher.config.num_attention_heads * teacher.config.attention_head_dim
    assert f["bytes"] == want[0] * (2 * want[1] + want[2]) * width * 4 * (2 if fisher == "block" else 1)
    return f


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_toy_and_synthetic_sources(tmp_path, family):
    _check(tmp_path, family, f"toy:{family}", "num_prompts: 3, timesteps: 2, cfg_branches: true, batch_size: 4")
    f = _check(tmp_path, family, f"toy:{family}", "source: synthetic, num_prompts: 3, timesteps: 2", "block")
    assert f["streams"] == 2 and "for the reference stream too" in describe(f)


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_real_pipeline_sources(tmp_path, family):
    """The tiny real pipelines: PixArt-Σ at its default size (256² for the tiny sample size 32)
    with 300 T5 tokens and both CFG branches; Flux at 32² with 512 T5 tokens, one branch."""
    (tmp_path / "p").mkdir()
    folder = (pixart_pipeline if family == "pixart" else flux_pipeline)(tmp_path / "p" / "pipe")
    size = "height: 32, width: 32, " if family == "flux" else ""
    f = _check(tmp_path, family, str(folder), f"source: pipeline, prompts: [a cat, a dog, a fox], {size}"
               "sample_steps: 3, timesteps: 2, batch_size: 4")
    assert (f["rows"], f["tokens"], f["caption_tokens"]) == ((8, 256, 300) if family == "pixart" else (4, 516, 0))
    if family == "pixart":  # a size it bins to its nearest trained aspect ratio (here 176 x 352 px)
        f = _check(tmp_path, family, str(folder), "source: pipeline, prompts: [a cat, a dog], height: 128, "
                   "width: 256, sample_steps: 2, timesteps: 1, batch_size: 4")
        assert f["tokens"] == (176 // 16) * (352 // 16)


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_a_toy_pipeline_source_counts_the_toy_pipelines_tokens(tmp_path, family):
    """calibration.pipeline: toy:NAME samples at the toys' one resolution with the toy text encoder,
    which pads every prompt to its 8 tokens: plan counted the real pipelines' 300 (PixArt-Σ) or 512
    (Flux) T5 tokens, and Flux's 1024² image. The footprint is what the first block receives."""
    from compress.toy.text import MAX_TOKENS

    text = RECIPE.format(family=family, teacher=f"toy:{family}", fisher="all", calibration=(
        f"source: pipeline, pipeline: toy:{family}, prompts: [a 1, a 2, a 3], sample_steps: 3, timesteps: 2, batch_size: 4"))
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    teacher = load_teacher(f"toy:{family}")
    src = input_source(family, f"toy:{family}", recipe.calibration, teacher)
    assert src.toy
    f = footprint(recipe, f"toy:{family}", teacher.config, len(src.prompts), toy=src.toy)
    assert _measured(family, teacher, src.calibration()) == (f["rows"], f["tokens"], f["caption_tokens"])
    assert (f["tokens"], f["caption_tokens"]) == ((16, MAX_TOKENS) if family == "pixart" else (16 + MAX_TOKENS, 0))


def test_flux_without_guidance_embeds_counts_the_one_branch_it_samples(tmp_path):
    """FluxPipeline runs one transformer branch per step for a Flux without a guidance embedding
    (FLUX.1-schnell) too, whatever guidance_scale and cfg_branches say: the plan counts one."""
    (tmp_path / "p").mkdir()
    folder = flux_pipeline(tmp_path / "p" / "pipe", guidance_embeds=False)
    f = _check(tmp_path, "flux", str(folder), "source: pipeline, prompts: [a cat, a dog, a fox], height: 32, "
               "width: 32, sample_steps: 3, timesteps: 2, batch_size: 4, guidance_scale: 3.5, cfg_branches: true")
    assert f["rows"] == 2 * 2  # 2 calibrating prompts x 2 kept steps x 1 branch


def test_a_run_warns_when_activations_would_not_fit(tmp_path, monkeypatch, capsys):
    import compress.runner
    import compress.runner_memory as rs
    from compress.runner import Runner

    text = RECIPE.format(family="pixart", teacher="toy:pixart", fisher="none",
                         calibration="num_prompts: 2, timesteps: 2, batch_size: 4, heldout: 4")
    monkeypatch.setattr(rs, "available_bytes", lambda: 1000)

    def stop(runner):  # right after prepare(): the warning is out, nothing is computed
        raise RuntimeError("stop")

    monkeypatch.setattr(compress.runner, "restore", stop)
    with pytest.raises(RuntimeError, match="stop"):
        Runner(parse_recipe(text, str(tmp_path / "r.yaml")), tmp_path / "o", tmp_path / "r").run()
    err = capsys.readouterr()
    assert "set calibration.spill_activations: true" in err.out + err.err
    spilled = text.replace("heldout: 4", "heldout: 4, spill_activations: true")
    with pytest.raises(RuntimeError, match="stop"):
        Runner(parse_recipe(spilled, str(tmp_path / "r.yaml")), tmp_path / "o", tmp_path / "r").run()
    err = capsys.readouterr()
    assert "spill_activations" not in err.out + err.err


def test_the_backward_estimate_per_token_and_block_matches_what_autograd_keeps():
    """calib_footprint.SAVED_PER_TOKEN (values per token and block, in hidden widths, kept for a
    whole-model backward: what `plan` estimates from) against the bytes autograd saves in real
    diffusers blocks (narrower than the real models, bf16, weights not counted), measured with the
    tool that set it."""
    from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

    from compress.calib_footprint import SAVED_PER_TOKEN
    from tools.bench_backward_memory import inputs, kept_bytes, pixart_inputs

    flux = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                  attention_head_dim=128, num_attention_heads=6, joint_attention_dim=4096,
                                  pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    kept = kept_bytes(flux.to(torch.bfloat16).requires_grad_(False).eval(), inputs(256, 64), False)
    ratios = [kept[g] / (320 * 768 * 2) for g in ("double", "single")]
    pixart = PixArtTransformer2DModel(sample_size=32, num_layers=1, num_attention_heads=8, attention_head_dim=72,
                                      in_channels=4, out_channels=8, cross_attention_dim=576, caption_channels=4096,
                                      patch_size=2, norm_type="ada_norm_single", use_additional_conditions=False)
    kept = kept_bytes(pixart.to(torch.bfloat16).requires_grad_(False).eval(), pixart_inputs(32, 64), False)
    ratios.append(kept["blocks"] / (256 * 576 * 2))
    assert all(0.75 * SAVED_PER_TOKEN <= r <= 1.15 * SAVED_PER_TOKEN for r in ratios), ratios


def _hide_transformers(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))


def test_plan_of_a_real_pixart_recipe_needs_no_transformers(monkeypatch, capsys):
    """The core install plans the shipped PixArt-Σ recipe (a square size needs no resolution bins,
    which live in diffusers' pipeline module, which imports transformers)."""
    from pathlib import Path

    from compress.cli import main

    _hide_transformers(monkeypatch)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pixart-sigma-50.yaml"
    assert main(["plan", str(recipe)]) == 0
    out = capsys.readouterr()
    assert "816 inputs of 4,096 + 300 caption tokens" in " ".join(out.out.split())


def test_plan_of_a_non_square_pixart_size_without_transformers_says_what_to_install(monkeypatch, capsys):
    """A non-square size is binned with diffusers' tables: without transformers `plan` says what to
    install instead of printing a traceback."""
    from pathlib import Path

    from compress.cli import main

    _hide_transformers(monkeypatch)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pixart-sigma-50.yaml"
    assert main(["plan", str(recipe), "--set", "calibration.width=768"]) != 0
    err = capsys.readouterr().err
    assert "pip install 'dit-compress[pipelines]'" in err and "Traceback" not in err


@pytest.mark.parametrize("sample_size", [32, 64, 128, 256, 48])
def test_square_sizes_bin_as_the_pixart_sigma_pipeline_bins_them(sample_size):
    """The shortcut for square sizes against diffusers' own binning (and no bins: the size asked)."""
    from diffusers.image_processor import PixArtImageProcessor
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    from compress.calib_footprint import pixart_binned

    bins = {256: sigma.ASPECT_RATIO_2048_BIN, 128: sigma.ASPECT_RATIO_1024_BIN,
            64: sigma.ASPECT_RATIO_512_BIN, 32: sigma.ASPECT_RATIO_256_BIN}.get(sample_size)
    for side in (256, 512, 768, 1024, 2048, 4096):
        want = PixArtImageProcessor.classify_height_width_bin(side, side, bins) if bins else (side, side)
        assert pixart_binned(sample_size, side, side) == want


@pytest.mark.parametrize("svd, streams, copies", [
    ("{}", 1, 1),  # fisher: all, no fit, block-level
    ("{fisher: block}", 2, 2),  # fitted asymmetrically; sequential: auto follows
    ("{fisher: none, sequential: false}", 2, 1),
    ("{fisher: modulation}", 2, 2),  # attention + MLP targets without the prediction's Fisher
    ("{fisher: modulation, targets: [modulation]}", 1, 1),
    ("{fisher: block, targets: [modulation]}", 1, 1),  # the conditioning has no reference stream
    ("{sequential: true}", 1, 2),
    ("{fisher: block, activations: teacher, asymmetric: false}", 1, 1),
])
def test_streams_and_block_copies_follow_what_the_svd_pass_does(tmp_path, svd, streams, copies):
    """The footprint's reference stream and dense block copy are the svd pass's own decisions."""
    from compress.arch import get_adapter
    from compress.calib_footprint import asymmetric_streams, block_copies
    from compress.passes.svd import SVDPass
    from compress.passes.svd_targets import resolve_targets
    from tests.conftest import tiny_pixart

    recipe = parse_recipe(f"model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {svd}\n", str(tmp_path / "r.yaml"))
    assert (asymmetric_streams(recipe), block_copies(recipe)) == (streams, copies)
    cfg = recipe.passes[0].config
    model = tiny_pixart()
    svd_pass = SVDPass(cfg)
    targets = resolve_targets(get_adapter(model).linears(model), cfg.targets, cfg.ignore)
    assert (svd_pass._fits(targets), svd_pass._sequential(targets)) == (streams == 2, copies == 2)


@pytest.mark.parametrize("svd", ["{fisher: none}", "{}", "{sequential: true}", "{fisher: none, sequential: false}",
                                 "{fisher: block, activations: teacher, asymmetric: false}"])
def test_the_footprints_probe_is_probe_bytes_of_its_block_copies(tmp_path, svd):
    """probe_bytes takes the block copies footprint already has (it recomputed them from the recipe):
    the same bytes as before, 0 without within-block sequential calibration."""
    from compress.calib_footprint import SAVED_PER_TOKEN, block_copies, probe_bytes
    from compress.plan import meta_model

    recipe = parse_recipe(f"model: pixart\nteacher: toy:pixart\npasses:\n  - svd: {svd}\n", str(tmp_path / "r.yaml"))
    config = meta_model("toy:pixart").config
    f = footprint(recipe, "toy:pixart", config, 0, toy=False)
    width = config.num_attention_heads * config.attention_head_dim
    before = 0 if block_copies(recipe) == 1 else (
        (SAVED_PER_TOKEN * f["tokens"] + 2 * (f["tokens"] + f["caption_tokens"])) * width * 4)
    assert f["probe_bytes"] == before == probe_bytes(f["block_copies"], f["tokens"], f["caption_tokens"], width, 4)
    assert f["block_copies"] == block_copies(recipe)


def test_a_fisher_sweep_holds_the_taps_of_its_own_chunk_only():
    """fisher_memory_gb splits the targets into sweeps that each tap only their chunk: the sweep that
    holds most counts, not every target at once. Per target a tap and one probe's gradient (the one
    before is dropped first; gradient checkpointing's rerun taps nothing); no input (nothing reads it)."""
    from compress.calib_footprint import sweep_held_bytes
    from compress.passes.svd_fisher_budget import TAP_COPIES

    def target(name, rows, out=10, dense=False):
        return {"name": name, "out": out, "rows": rows, "dense": dense}

    assert TAP_COPIES == 2
    targets = [target("q", 6), target("k", 6), target("o", 2)]
    assert sweep_held_bytes(targets, [["q", "k", "o"]], 2) == 2 * 2 * 10 * (6 + 6 + 2)
    assert sweep_held_bytes(targets, [["q"], ["k"], ["o"]], 2) == 2 * 2 * 60
    dense = [target("q", 6, out=3, dense=True)]
    assert sweep_held_bytes(dense, [["q"]], 2) == 2 * 2 * 18 + 8 * (18 + 2 * 9)


@pytest.mark.parametrize("n, words", [
    (0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1023.5, "1 KiB"), (2**10, "1 KiB"),
    (2**20 - 513, "1023 KiB"), (2**20 - 512, "1 MiB"), (2**20, "1 MiB"), (300 * 2**20, "300 MiB"),
    (2**30 - 2**19 - 1, "1023 MiB"), (2**30 - 2**19, "1.0 GiB"), (1.5 * 2**30, "1.5 GiB"), (80 * 2**30, "80.0 GiB")])
def test_human_size_says_small_sizes_in_kib_and_bytes(n, words):
    """Under 1 MiB a size read '0 MiB' (a run refused its spill with 'their 0 MiB would not fit the 0 MiB
    free'): KiB, then bytes; each unit from where the one below would round to 1024."""
    assert human_size(n) == words


@pytest.mark.parametrize("a, b, words", [
    (1.3 * 2**20, 2**20, ("1.3 MiB", "1.0 MiB")), (1.5 * 2**30, 1.46 * 2**30, ("1.50 GiB", "1.46 GiB")),
    (1360000, 1359999, ("1,360,000 bytes", "1,359,999 bytes")), (3 * 2**20, 2**20, ("3 MiB", "1 MiB")),
    (2**20, 2**20, ("1 MiB", "1 MiB")), (1000, 999, ("1000 bytes", "999 bytes"))])
def test_two_sizes_compared_are_said_so_they_differ(a, b, words):
    """A message comparing two sizes read 'take 1 MiB, more than the 1 MiB of memory' (bench's --batch
    refusal of 1.3 MiB): human_sizes adds decimals where they read the same, then says bytes."""
    from compress.calib_footprint import human_sizes

    assert human_sizes(a, b) == words


@pytest.mark.parametrize("a, b, words", [
    (1536, 1535, ("1,536 bytes", "1,535 bytes")), (1535, 1536, ("1,535 bytes", "1,536 bytes")),
    (1536, 1400, ("1.5 KiB", "1.4 KiB")), (1023.5, 1023, ("1,024 bytes", "1,023 bytes")),
    (1.5 * 2**20, 1.2 * 2**20, ("1.5 MiB", "1.2 MiB")), (1.06 * 2**20, 2**20, ("1.06 MiB", "1.00 MiB")),
    (1.1 * 2**20, 2**20, ("1.1 MiB", "1.0 MiB")), (2.5 * 2**20, 2**20, ("2 MiB", "1 MiB")),
    (2 * 2**20, 2**20, ("2 MiB", "1 MiB")), (651 * 2**20, 640 * 2**20, ("651 MiB", "640 MiB")),
    (80 * 2**30, 79.9 * 2**30, ("80.0 GiB", "79.9 GiB")), (0, 5, ("0 bytes", "5 bytes"))])
def test_two_close_sizes_are_not_said_further_apart_than_they_are(a, b, words):
    """R2: human_sizes(1536, 1535) said '2 KiB' and '1 KiB', a byte's gap read as double: it added
    decimals only where the words read the same. Now where rounding misstates their ratio (by more than
    half its distance from 1, on a log scale) decimals that show it, then bytes; sizes far apart as
    before ('2 MiB' and '1 MiB' of 2.5 and 1 MiB: 2 for 2.5, within half of it)."""
    from compress.calib_footprint import human_sizes

    assert human_sizes(a, b) == words


@pytest.mark.parametrize("a, b, words", [
    (1023.7 * 2**20, 1023.2 * 2**20, ("1023.7 MiB", "1023.2 MiB")), (0.4, 0.6, ("0 bytes", "1 byte")),
    (1, 2, ("1 byte", "2 bytes")), (float("inf"), 1, ("inf bytes", "1 byte")),
    (float("nan"), 2**20, ("nan bytes", "1 MiB")),
    (1023.97 * 2**20, 1023.2 * 2**20, ("1.0 GiB", "1023 MiB"))])
def test_decimals_added_keep_the_unit_a_size_reads_in_and_bytes_are_whole(a, b, words):
    """R1: human_size(n, more) took the next unit where the one below rounds to 1024 with no decimals, so
    human_sizes(1023.7 MiB, 1023.2 MiB) fell through to '1,073,427,251 bytes' and '1,072,902,963 bytes';
    0.4 and 0.6 bytes read '0 bytes' and '1 bytes'; an infinite size raised OverflowError."""
    from compress.calib_footprint import human_sizes

    assert human_sizes(a, b) == words


def test_a_size_with_more_decimals_takes_the_next_unit_only_where_those_would_say_1024():
    """R1: human_size(1023.7 MiB, more=1) said '1.00 GiB', where '1023.7 MiB' shows its decimal."""
    assert human_size(1023.7 * 2**20, 1) == "1023.7 MiB" and human_size(1023.96 * 2**20, 1) == "1.00 GiB"
    assert human_size(1023.7 * 2**20) == "1.0 GiB" and human_size(1023.4 * 2**20) == "1023 MiB"
