"""Calibration through the real diffusers pipelines (tiny PixArtSigmaPipeline and FluxPipeline
folders, tests/pipelines.py): what is captured is exactly what the transformer saw at inference, how
records are batched and held out, teacher samples as the pipelines sample. Prompt files:
test_calib_pipeline_prompts.py; runs from them and missing packages / hub ids: test_calib_pipeline_runs.py,
test_calib_pipeline_packages.py; the sampled inputs on disk (their cache's key, call files):
test_calib_pipeline_calls.py."""

import pytest
import torch

from compress.arch import get_adapter
from compress.calib_pipeline import capture, load_pipeline_for
from compress.errors import UserError
from compress.io import load_teacher
from compress.recipe import parse_recipe
from tests.pipelines import RECIPE, flux_pipeline, pipeline_folders
from tests.runner_helpers import run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return pipeline_folders(tmp_path_factory.mktemp("pipelines"))


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_capture_records_what_the_transformer_saw(folders, family):
    """Every captured record, fed back to the transformer, gives the very prediction the sampler
    got at that step (PixArt-Σ's pipeline passes the latents positionally): both CFG branches for
    PixArt-Σ, one guidance-embedded branch for Flux (guidance distilled, as Flux.1-dev)."""
    teacher = load_teacher(str(folders[family]))
    pipe = load_pipeline_for(teacher, str(folders[family]))
    seen = []
    handle = teacher.register_forward_hook(lambda m, a, out: seen.append(out[0].detach().clone()))
    size = {"height": 32, "width": 32} if family == "flux" else {}
    try:
        records = capture(pipe, teacher, ["a photo of a cat"], steps=3, keep=3, guidance=4.0, seed=0,
                          size=size)
    finally:
        handle.remove()
    assert len(records) == len(seen) == 3
    for record, out in zip(records, seen):
        assert record["hidden_states"].shape[0] == (2 if family == "pixart" else 1)
        assert family == "pixart" or float(record["guidance"][0]) == 4.0
        with torch.no_grad():
            again = teacher(**record, return_dict=False)[0]
        torch.testing.assert_close(again, out, rtol=0, atol=0)
    assert not torch.equal(records[0]["hidden_states"], records[-1]["hidden_states"])  # it sampled


@pytest.mark.parametrize("cfg_branches", [True, False])
def test_flux_calibrates_at_the_recipes_embedded_guidance(folders, cfg_branches):
    """A guidance-distilled Flux samples one branch with the guidance as an input: the recipe's
    scale reaches the transformer whether or not cfg_branches is set (the Flux recipes set it
    false); PixArt-Σ without CFG branches samples the conditional branch alone."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    for family, want in (("flux", (3.5, 1)), ("pixart", (None, 2 if cfg_branches else 1))):
        calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], sample_steps=2,
                                  timesteps=1, guidance_scale=3.5, cfg_branches=cfg_branches,
                                  **({"height": 32, "width": 32} if family == "flux" else {}))
        teacher = load_teacher(str(folders[family]))
        [record] = PipelineSource(family, calib, teacher, str(folders[family])).calibration()
        assert record["hidden_states"].shape[0] == want[1]
        assert family == "pixart" or record["guidance"].tolist() == [want[0]]


def test_image_size_keys_are_checked(tmp_path):
    text = RECIPE.format(family="pixart", teacher="toy:pixart", stream="false", size="height: 8, ")
    with pytest.raises(UserError, match=r"r\.yaml:5: calibration\.height must be at least 16"):  # the key's line
        parse_recipe(text, str(tmp_path / "r.yaml"))
    text = RECIPE.format(family="pixart", teacher="toy:pixart", stream="false", size="height: 64, ")
    with pytest.raises(UserError, match=r"toy-size\.yaml:5: calibration\.height / width: the toy pipelines sample at "
                                        "their one resolution"):  # the run, as plan, at the key's line
        run_recipe(tmp_path, text, "toy-size")


def test_a_teacher_without_its_pipeline_names_calibration_pipeline(tmp_path, folders):
    """A transformer folder (or single file) as the teacher has no pipeline to sample in: one line
    before any compute naming calibration.pipeline; set, the transformer samples in that pipeline."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    transformer = str(folders["pixart"] / "transformer")
    teacher = load_teacher(transformer)
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], sample_steps=2, timesteps=1)
    with pytest.raises(UserError, match="is a folder without model_index.json; set calibration.pipeline"):
        PipelineSource("pixart", calib, teacher, transformer)
    calib.source = "auto"  # said as plan and run say it (checked_sources), not as an explicit 'pipeline'
    with pytest.raises(UserError, match=r"calibration\.source 'pipeline' \(source auto is pipeline for a teacher that "
                                        r"is not toy:\)"):
        PipelineSource("pixart", calib, teacher, transformer)
    calib.pipeline = str(folders["pixart"])
    [record] = PipelineSource("pixart", calib, teacher, calib.pipeline).calibration()
    assert record["hidden_states"].shape[0] == 2


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_pipeline_records_are_shuffled_into_batches_of_batch_size_rows(folders, family):
    """One record per transformer call (2 rows for PixArt-Σ's CFG, 1 for Flux) joined into
    batches of calibration.batch_size rows, shuffled so the first batches mix prompts and steps;
    every row is kept once, and Flux's shared img_ids / txt_ids stay as they are."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog", "a fox", "a car", "a red horse"],
                              sample_steps=3, timesteps=3, batch_size=4, guidance_scale=3.5,
                              **({"height": 32, "width": 32} if family == "flux" else {}))
    source = PipelineSource(family, calib, load_teacher(str(folders[family])), str(folders[family]))
    raw = source._run(source.prompts[:4], calib.seed)  # what calibration() samples, before batching
    batches = source.calibration()
    assert len(raw) == 12 and [b["hidden_states"].shape[0] for b in batches] == [4] * (len(raw) * len(
        raw[0]["hidden_states"]) // 4)
    flat = lambda recs: sorted(tuple(x.flatten()[:6].tolist()) for r in recs for x in r["hidden_states"])  # noqa: E731
    assert flat(batches) == flat(raw)
    rows = [x for r in raw for x in r["hidden_states"]]
    origin = [next(i for i, y in enumerate(rows) if torch.equal(x, y)) for b in batches for x in b["hidden_states"]]
    per = len(raw[0]["hidden_states"])
    prompts_first = {origin[j] // per // 3 for j in range(4)}  # 3 records (steps) per prompt
    assert origin != sorted(origin) and len(prompts_first) > 1  # shuffled: prompts mixed from the start
    if family == "flux":
        assert torch.equal(batches[0]["img_ids"], raw[0]["img_ids"]) and batches[0]["guidance"].shape == (4,)
    else:
        assert batches[0]["encoder_attention_mask"].shape[0] == 4


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_teacher_samples_are_the_pipelines_own(folders, family):
    """distill's teacher samples, drawn with the pipeline's scheduler config, equal what the real
    pipeline samples from the same noise and text embeddings (no CFG; Flux at its guidance input),
    including FluxPipeline's resolution-dependent σ shift (FLUX.1-dev's scheduler config)."""
    from compress.calib_pipeline import PipelineSource
    from compress.distill_data import cond_of, sample_latents
    from compress.recipe import CalibrationConfig

    size = {"height": 32, "width": 32} if family == "flux" else {}
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], sample_steps=2, timesteps=1,
                              cfg_branches=False, guidance_scale=3.5, **size)
    teacher = load_teacher(str(folders[family]))
    source = PipelineSource(family, calib, teacher, str(folders[family]))
    record = source._run(["a photo of a cat"], 0)[0]  # the pipeline's own transformer inputs
    cond, shape = cond_of(record), tuple(record["hidden_states"].shape)
    config = source.scheduler_config()
    assert config["_class_name"] == ("FlowMatchEulerDiscreteScheduler" if family == "flux"
                                     else "DPMSolverMultistepScheduler")
    ours = sample_latents(get_adapter(teacher), teacher, cond, shape, 4, torch.Generator().manual_seed(3),
                          "cpu", config)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    pipe = load_pipeline_for(teacher, str(folders[family]))
    if family == "flux":
        theirs = pipe(prompt_embeds=cond["encoder_hidden_states"], pooled_prompt_embeds=cond["pooled_projections"],
                      latents=noise, num_inference_steps=4, guidance_scale=3.5, output_type="latent", **size).images
        linear = sample_latents(get_adapter(teacher), teacher, cond, shape, 4, torch.Generator().manual_seed(3), "cpu")
        assert not torch.allclose(linear, theirs, atol=1e-3)  # unshifted σ would not be the pipeline's
    else:
        theirs = pipe(prompt_embeds=cond["encoder_hidden_states"], prompt_attention_mask=cond["encoder_attention_mask"],
                      negative_prompt=None, latents=noise, num_inference_steps=4, guidance_scale=1.0,
                      output_type="latent").images
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)


def test_guided_teacher_samples_are_the_pipelines_own_at_its_guidance(folders):
    """distill.guidance_scale: PixArt-Σ teacher samples guided against the negative prompt's row
    of the calibration records equal PixArtSigmaPipeline's own samples at that guidance (it encodes
    the empty negative prompt itself); unguided ones differ. Without CFG branches in the calibration
    there is no negative row, and asking for it says what to set."""
    from compress.calib_pipeline import PipelineSource
    from compress.distill_data import cond_of, sample_latents
    from compress.recipe import CalibrationConfig

    teacher = load_teacher(str(folders["pixart"]))
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog"], sample_steps=2, timesteps=1,
                              guidance_scale=4.5)
    source = PipelineSource("pixart", calib, teacher, str(folders["pixart"]))
    source.calibration()
    uncond = source.unconditional()
    assert uncond["encoder_hidden_states"].shape[0] == 1
    record = source._run(["a photo of a cat"], 0)[0]  # rows [negative; prompt]
    cond = {k: (v[1:] if torch.is_tensor(v) and v.ndim else v) for k, v in cond_of(record).items()}
    shape = (1,) + tuple(record["hidden_states"].shape[1:])
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    ours = sample_latents(get_adapter(teacher), teacher, cond, shape, 4, gen(), "cpu", source.scheduler_config(),
                          4.5, uncond)
    plain = sample_latents(get_adapter(teacher), teacher, cond, shape, 4, gen(), "cpu", source.scheduler_config())
    pipe = load_pipeline_for(teacher, str(folders["pixart"]))
    theirs = pipe("a photo of a cat", latents=torch.randn(shape, generator=gen()), num_inference_steps=4,
                  guidance_scale=4.5, output_type="latent").images
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, ours, atol=1e-3)
    unguided = PipelineSource("pixart", CalibrationConfig(source="pipeline", prompts=["a cat"], sample_steps=2,
                                                          timesteps=1, cfg_branches=False), teacher,
                              str(folders["pixart"]))
    unguided.calibration()
    with pytest.raises(UserError, match="cfg_branches: true"):
        unguided.unconditional()


def test_calibration_heldout_sets_how_many_prompts_a_pipeline_source_holds_out(folders, monkeypatch):
    """calibration.heldout counts held-out inputs for every source: a pipeline source holds out its
    last prompts, enough of them for that many (one input per kept step and CFG branch); null keeps
    20% of the prompts. The plan's row count follows the same split."""
    from compress.calib_footprint import calibration_rows
    from compress.calib_pipeline import PipelineSource, calibration_prompts
    from compress.recipe import CalibrationConfig

    prompts = [f"prompt {i}" for i in range(10)]
    calib = lambda **kw: CalibrationConfig(source="pipeline", prompts=prompts, sample_steps=6, timesteps=4, **kw)  # noqa: E731
    assert calibration_prompts(10, calib(), False) == 8 and calibration_prompts(1, calib(heldout=5), False) == 1
    assert calibration_prompts(10, calib(heldout=8), False) == 9  # 8 inputs: one prompt of 4 steps x 2 branches
    assert calibration_prompts(10, calib(heldout=9), False) == 8
    assert calibration_prompts(10, calib(heldout=9), True) == 7  # guidance input: one branch, 4 per prompt
    with pytest.raises(UserError, match=r"calibration\.heldout 1000 asks for 125 of the 10 prompts \(8 inputs each\), "
                                        r"and at least one must calibrate: hold out at most 72 inputs"):
        calibration_prompts(10, calib(heldout=1000), False)  # it left one prompt to calibrate, unsaid
    assert calibration_prompts(10, calib(heldout=72), False) == 1
    teacher = load_teacher(str(folders["pixart"]))
    for kw, held in (({}, 2), ({"heldout": 20}, 3)):
        source = PipelineSource("pixart", calib(**kw), teacher, str(folders["pixart"]))
        seen = []
        monkeypatch.setattr(source, "_run", lambda ps, seed, what="calibration": seen.append(ps) or [])
        monkeypatch.setattr("compress.calib_pipeline.rebatch", lambda records, size, seed: records)
        source.calibration(), source.heldout()
        assert seen == [prompts[:10 - held], prompts[10 - held:]]
        recipe = type("R", (), {"calibration": calib(**kw), "model": "pixart"})
        rows = calibration_rows(recipe, "pipeline", teacher.config, 10, toy=False)
        assert rows == (10 - held) * 4 * 2


def test_guidance_scale_1_runs_one_branch_and_counts_one(folders):
    """At guidance_scale 1 the pipeline turns classifier-free guidance off (one branch whatever
    cfg_branches says): rows per prompt, the held-out split and the plan's rows count one."""
    from compress.calib_footprint import calibration_rows
    from compress.calib_pipeline import PipelineSource, calibration_prompts
    from compress.calib_prompts import rows_per_prompt
    from compress.recipe import CalibrationConfig

    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog", "a fox"], sample_steps=3,
                              timesteps=2, guidance_scale=1.0, heldout=2, batch_size=64)
    assert rows_per_prompt(calib, False) == 2 and calibration_prompts(3, calib, False) == 2
    teacher = load_teacher(str(folders["pixart"]))
    batches = PipelineSource("pixart", calib, teacher, str(folders["pixart"])).calibration()
    held = sum(b["hidden_states"].shape[0] for b in batches)  # (B, C, H, W)
    recipe = type("R", (), {"calibration": calib, "model": "pixart"})
    assert held == calibration_rows(recipe, "pipeline", teacher.config, 3, toy=False) == 4


def test_flux_without_guidance_embeds_has_no_unconditional_row(tmp_path):
    """FLUX.1-schnell's records (no guidance input, no CFG branch in FluxPipeline) hold only prompt
    rows: teacher samples guided against an empty-prompt row are refused, not guided against the
    first prompt's row."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    folder = flux_pipeline(tmp_path / "pipe", guidance_embeds=False)
    calib = CalibrationConfig(source="pipeline", prompts=["a cat", "a dog", "a fox"], sample_steps=2,
                              timesteps=1, guidance_scale=3.5, prompts_per_call=2, height=32, width=32)
    source = PipelineSource("flux", calib, load_teacher(str(folder)), str(folder))
    [batch] = source.calibration()
    assert batch["hidden_states"].shape[0] == 2 and batch.get("guidance") is None  # 2 calibrating prompts, a row each
    with pytest.raises(UserError, match="FluxPipeline runs no CFG branch"):
        source.unconditional()


def test_a_pipeline_under_home_loads(folders, tmp_path, monkeypatch):
    """A teacher ~/pipe passed the checks and loaded, then its pipeline failed: diffusers took the
    unexpanded '~/pipe' for a Hub id ('Repo id must use alphanumeric chars')."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pipe").symlink_to(folders["pixart"])
    teacher = load_teacher("~/pipe")
    assert load_pipeline_for(teacher, "~/pipe").transformer is teacher
    calib = CalibrationConfig(source="pipeline", prompts=["a cat"], sample_steps=2, timesteps=1)
    source = PipelineSource("pixart", calib, teacher, "~/pipe")
    assert source.scheduler_config()["_class_name"] == "DPMSolverMultistepScheduler"


def test_an_output_as_the_teacher_names_the_base_pipeline_it_records(tmp_path):
    """The pipeline source with an output as the teacher (no model_index.json) asked for a PixArt
    Hub id whatever the family: the example is of the teacher's family, and the base the output
    records (through outputs made from outputs) comes first."""
    from compress.calib_pipeline import PipelineSource
    from compress.recipe import CalibrationConfig
    from tests.teacher_chain_helpers import chained_outputs, output_config

    _, d = chained_outputs(tmp_path, "toy:flux")
    calib = CalibrationConfig(source="pipeline", prompts=["a 3", "a 7"])
    with pytest.raises(UserError) as e:
        PipelineSource("flux", calib, None, str(d))
    assert str(e.value) == (f"calibration.source 'pipeline' samples in a diffusers pipeline, and the teacher {d} is a "
                            f"folder without model_index.json; set calibration.pipeline to toy:flux, the base "
                            f"pipeline {d} records, or calibration.source: synthetic")  # a toy's chain: no Hugging Face id
    output_config(tmp_path / "bare", None)
    with pytest.raises(UserError, match=r"base pipeline \(a Hugging Face id such as PixArt-alpha/PixArt-Sigma-XL"):
        PipelineSource("pixart", calib, None, str(tmp_path / "bare"))
    with pytest.raises(UserError, match=r"base pipeline \(a Hugging Face id such as black-forest-labs/FLUX.1-dev,"):
        PipelineSource("flux", calib, None, str(tmp_path / "bare"))
