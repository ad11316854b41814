"""What plan makes of its teacher, as run loads it: a local folder or file that is no checkpoint, a
single file whose config is of another family, a compressed output compressed further, and stream: true
refused for what cannot stream (split from tests/test_plan.py)."""

import pytest
import torch

from compress import load_teacher
from compress.errors import UserError
from compress.plan import make_plan
from compress.recipe import parse_recipe


@pytest.mark.parametrize("make", [
    lambda p: p.mkdir(),  # empty
    lambda p: (p.mkdir(), (p / "notes.md").write_text("x")),  # any other folder
    lambda p: (p.mkdir(), (p / "model_index.json").write_text("{}")),  # a pipeline without transformer/
    lambda p: p.with_suffix(".txt").write_text("hello\n"),  # not a checkpoint
])
def test_plan_says_what_a_local_teacher_is_as_run_does(tmp_path, make):
    """plan and run classify a local teacher alike (io_source.check_source): not 'cannot find a
    config offline' for everything but a single file."""
    make(tmp_path / "t")
    teacher = str(next(tmp_path.iterdir()))
    with pytest.raises(UserError) as loading:
        load_teacher(teacher)
    with pytest.raises(UserError) as planning:
        make_plan(parse_recipe("model: pixart\nteacher: toy:pixart\npasses: [svd]\n", "r.yaml"), teacher=teacher)
    assert str(planning.value) == f"--teacher: {loading.value}" and "offline" not in str(planning.value)


def test_plan_checks_its_teacher_and_reads_its_config_once(tmp_path, monkeypatch):
    from tests.conftest import tiny_pixart
    from tests.test_io_source import _counting

    tiny_pixart().save_pretrained(tmp_path / "t")
    checked, read = _counting(monkeypatch)
    make_plan(parse_recipe(f"model: pixart\nteacher: {tmp_path / 't'}\ncalibration: {{source: synthetic}}\n"
                           "passes: [svd]\n", "r.yaml"))
    assert checked == [str(tmp_path / "t")] and read == [tmp_path / "t" / "config.json"]


@pytest.mark.parametrize("weights, config", [("flux", "pixart"), ("pixart", "flux")])
def test_plan_says_a_single_files_config_is_of_another_family(tmp_path, weights, config):
    from safetensors.torch import save_file

    from tests.conftest import tiny_flux, tiny_pixart

    make = {"pixart": tiny_pixart, "flux": tiny_flux}
    save_file(make[weights]().state_dict(), str(tmp_path / "t.safetensors"))
    make[config]().save_config(tmp_path / "cfg")
    for model in ("pixart", "flux"):
        recipe = parse_recipe(f"model: {model}\nteacher: toy:{model}\npasses: [svd]\n", "r.yaml")
        with pytest.raises(UserError, match=f"^--teacher: {tmp_path}/t.safetensors: the checkpoint's weights are a {weights} "
                                            f"transformer while the config in {tmp_path}/cfg describes a {config} one"):
            make_plan(recipe, teacher=str(tmp_path / "t.safetensors"), teacher_config=str(tmp_path / "cfg"))


def test_plan_of_a_compressed_output_as_teacher_is_what_run_loads(tmp_path):
    """An output compressed further: plan builds it as run loads it (its removed blocks and low-rank
    layers), not its config's dense model, so its counts and checks are the run's."""
    import torch

    from compress.arch import get_adapter
    from compress.io_export import save_compressed
    from compress.io_output import load_transformer
    from compress.lowrank import LowRankLinear
    from compress.report import param_count
    from tests.conftest import tiny_pixart

    model = tiny_pixart()
    get_adapter(model).remove_blocks(model, {"blocks": [1]})
    name = "transformer_blocks.0.ff.net.2"
    old = model.get_submodule(name)
    model.set_submodule(name, LowRankLinear.from_factors(torch.randn(old.out_features, 4),
                                                         torch.randn(4, old.in_features), old.bias.detach()))
    out = save_compressed(model, tmp_path / "out")
    recipe = parse_recipe(f"model: pixart\nteacher: {out}\ncalibration: {{source: synthetic}}\n"
                          "passes: [{remove_blocks: {count: {blocks: 1}}}]\n", "r.yaml")
    plan = make_plan(recipe)
    assert plan["params_before"] == param_count(load_transformer(out))
    assert plan["passes"][0]["blocks_before"] == {"blocks": len(model.transformer_blocks)}
    svd = parse_recipe(f"model: pixart\nteacher: {out}\ncalibration: {{source: synthetic}}\n"
                       f"passes: [{{svd: {{targets: ['{name}'], ratio: 0.5}}}}]\n", "r.yaml")
    with pytest.raises(UserError, match=r"already factorized \(in the teacher\); leave it out with svd\.ignore, or "
                                        r"compress the model this teacher was made from instead \(its own teacher\), "
                                        r"factorizing it once at a lower ratio there$"):
        make_plan(svd)


def test_plan_refuses_to_stream_a_single_file_or_an_output_as_run_does(tmp_path):
    """stream: true with a single-file teacher, or a dit-compress output: plan says what run says
    (stream_files.checkpoint_of), instead of printing a streamed plan run then refuses."""
    from compress.io_export import save_compressed
    from tests.conftest import tiny_pixart

    tiny_pixart().save_pretrained(tmp_path / "t")
    single = tmp_path / "t" / "diffusion_pytorch_model.safetensors"
    out = save_compressed(tiny_pixart(), tmp_path / "out")
    for teacher, words in ((single, "stream: true reads a diffusers folder"), (out, "is a dit-compress output")):
        recipe = parse_recipe(f"model: pixart\nteacher: {teacher}\nstream: true\ncalibration: {{source: synthetic}}\n"
                              "passes: [{svd: {targets: [mlp], ratio: 0.5, fisher: block}}]\n", "r.yaml")
        with pytest.raises(UserError, match=words):
            make_plan(recipe)
    ok = parse_recipe(f"model: pixart\nteacher: {tmp_path / 't'}\nstream: true\ncalibration: {{source: synthetic}}\n"
                      "passes: [{svd: {targets: [mlp], ratio: 0.5, fisher: block}}]\n", "r.yaml")
    assert make_plan(ok)["stream"]


def test_plan_reads_its_pipelines_model_index_once(tmp_path, monkeypatch):
    """make_plan of a recipe sampling in a local pipeline folder read its model_index.json 7 times (its
    calibration source checked by checked_sources, check_sampled_pipeline and warn_unused_calibration, then
    by the plan's calibration and footprint; whether it is a toy's twice; its parts counted once): it is read
    once, as the sources are checked, and passed down (inputs.Sampling); the parts are counted from it."""
    from pathlib import Path

    from tests.pipelines import RECIPE, pixart_pipeline

    pipe = pixart_pipeline(tmp_path / "pipe")
    text = RECIPE.replace("{teacher}", str(pipe)).replace("{family}", "pixart").replace("{size}", "")
    recipe = parse_recipe(text.format(stream="false"), str(tmp_path / "r.yaml"))
    reads, read_text = [], Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: (reads.append(p) if p.name == "model_index.json"
                                                                else None) or read_text(p, *a, **k))
    plan = make_plan(recipe)
    assert reads == [pipe / "model_index.json"]
    parts = {p["what"]: p["bytes"] for p in plan["memory"]["steps_smaller"]}  # held while sampling only
    assert parts["the pipeline's text encoders and VAE while calibration samples"] > 0


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_plan_and_a_runs_checks_build_the_teachers_meta_model_and_read_its_headers_once(tmp_path, monkeypatch, kind):
    """The teacher's meta model was built and its weight files' headers read twice, in `plan` and in a
    run's checks before the teacher loads: by checked_sources (io_source_recipe.check_weights) and again
    by make_plan (plan._teacher). Now make_plan takes the model check_weights checked (up to ~0.8 s of
    meta model on a full-size config)."""
    import compress.io_headers as io_headers
    import compress.plan as plan
    import compress.runner_prepare as runner_prepare
    from compress.runner import Runner
    from tests.conftest import tiny_pixart

    tiny_pixart().save_pretrained(tmp_path / "t")
    teacher = tmp_path / "t" / ("diffusion_pytorch_model.safetensors" if kind == "file" else "")
    built, read = [], []
    meta_model, header_shapes = plan.meta_model, io_headers.header_shapes
    monkeypatch.setattr(plan, "meta_model", lambda *a, **k: built.append(a[0]) or meta_model(*a, **k))
    monkeypatch.setattr(io_headers, "header_shapes", lambda path: read.append(path) or header_shapes(path))
    recipe = parse_recipe(f"model: pixart\nteacher: {teacher}\ndevice: cpu\ncalibration: {{source: synthetic}}\n"
                          "passes: [{remove_blocks: {blocks: {blocks: [0]}}}]\n", str(tmp_path / "r.yaml"))
    make_plan(recipe)
    assert (len(built), read) == (1, [tmp_path / "t" / "diffusion_pytorch_model.safetensors"])

    class Loading(Exception):
        pass

    def load(*args, **kwargs):  # the run's checks are done: the teacher loads next
        raise Loading

    built.clear(), read.clear()
    monkeypatch.setattr(runner_prepare, "load_checked_teacher", load)
    with pytest.raises(Loading):
        Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    assert (len(built), read) == (1, [tmp_path / "t" / "diffusion_pytorch_model.safetensors"])


def _pickled_pixart(tmp_path):
    """An original PixArt .pth of tests/conftest's tiny PixArt and, in cfg/, its config."""
    from tests.conftest import tiny_pixart
    from tests.test_io_single import _to_original_pixart

    model = tiny_pixart()
    torch.save({"state_dict": _to_original_pixart(model.state_dict())}, tmp_path / "PixArt.pth")
    model.save_config(tmp_path / "cfg")
    return tmp_path / "PixArt.pth"


def test_plan_says_a_pickles_other_family_is_its_configs(tmp_path):
    """A pickle's family is its config's (plan reads no pickle): the refusal names that config, not
    the file, as a transformer of the other family, and says what to do, as the other refusals do."""
    from tests.conftest import tiny_flux

    pth = _pickled_pixart(tmp_path)
    tiny_flux().save_config(tmp_path / "fcfg")
    recipe = parse_recipe(f"model: pixart\nteacher: {pth}\ncalibration: {{source: synthetic}}\npasses: [svd]\n", "r.yaml")
    with pytest.raises(UserError) as refused:
        make_plan(recipe, teacher_config=str(tmp_path / "fcfg"))
    assert str(refused.value) == (
        f"r.yaml:1: model is 'pixart' but the config {tmp_path}/fcfg given for the teacher {pth} describes a "
        "FluxTransformer2DModel (flux); set model: flux or give the config of its own transformer")


def test_plan_notes_it_does_not_read_a_pickled_teachers_weights(tmp_path, capsys):
    """A .pth teacher's weights are run's to check (a pickle loads whole): plan says so once, so that
    its figures, of the config, are not taken as checked against them; a .safetensors file: no note."""
    from safetensors.torch import save_file

    from tests.conftest import tiny_pixart

    pth = _pickled_pixart(tmp_path)
    save_file(tiny_pixart().state_dict(), str(tmp_path / "t.safetensors"))
    for teacher, noted in ((pth, 1), (tmp_path / "t.safetensors", 0)):
        make_plan(parse_recipe(f"model: pixart\nteacher: {teacher}\nteacher_config: {tmp_path / 'cfg'}\n"
                               "calibration: {source: synthetic}\npasses: [svd]\n", "r.yaml"))
        err = " ".join(capsys.readouterr().err.split())
        assert err.count("note: plan does not read a .pth teacher's weights (a pickle loads whole); run checks "
                         "them against its config") == noted


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_plan_notes_it_does_not_read_a_folders_pickled_weights(tmp_path, capsys, shard):
    """A teacher folder of .bin weights (diffusion_pytorch_model.bin, or shards and their index): plan
    reads no pickle there either, and says so once, naming the folder; its safetensors twin: no note."""
    from tests.conftest import tiny_pixart

    model = tiny_pixart()
    model.save_pretrained(tmp_path / "bin", safe_serialization=False, **({"max_shard_size": shard} if shard else {}))
    model.save_pretrained(tmp_path / "st")
    assert shard is None or (tmp_path / "bin" / "diffusion_pytorch_model.bin.index.json").is_file()
    for teacher, noted in ((tmp_path / "bin", 1), (tmp_path / "st", 0)):
        make_plan(parse_recipe(f"model: pixart\nteacher: {teacher}\ncalibration: {{source: synthetic}}\n"
                               "passes: [svd]\n", "r.yaml"))
        err = " ".join(capsys.readouterr().err.split())
        assert err.count(f"note: plan does not read a .bin teacher's weights ({teacher}: a pickle loads whole); "
                         "run checks them against its config") == noted
        assert err.count("plan does not read") == noted


def _cached_bin(tmp_path, monkeypatch, shard: str | None) -> tuple:
    """The tiny PixArt (3 blocks) as the Hugging Face cache in tmp_path/hub holds a snapshot of it: 'acme/bin'
    of .bin weights (one, or shards of `shard` and their index), 'acme/st' of safetensors; the Hub offline,
    never asked. (the recipe of a teacher {} and one svd pass, acme/bin's snapshot folder)"""
    import huggingface_hub
    from huggingface_hub import constants

    from tests.conftest import tiny_pixart
    from tests.pipelines import hub_cache

    def no_request(*args, **kwargs):
        raise AssertionError("asked the Hub")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_request)
    model = tiny_pixart()
    model.save_pretrained(tmp_path / "bin", safe_serialization=False, **({"max_shard_size": shard} if shard else {}))
    model.save_pretrained(tmp_path / "st")
    hub_cache(tmp_path / "hub", "acme/bin", tmp_path / "bin")
    hub_cache(tmp_path / "hub", "acme/st", tmp_path / "st")
    text = "model: pixart\nteacher: {}\ncalibration: {{source: synthetic}}\npasses: [svd]\n"
    return text, tmp_path / "hub" / "models--acme--bin" / "snapshots" / ("0" * 40)


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_plan_notes_it_does_not_read_a_cached_hub_teachers_pickled_weights(tmp_path, monkeypatch, capsys, shard):
    """S47: a Hub id whose snapshot in the Hugging Face cache holds .bin weights is planned from its config,
    its weights not read, as a local folder of them is, but got none of the folder's 'note: plan does not
    read a .bin teacher's weights (DIR: ...)' (9913088), so its figures looked checked. Now the same note,
    DIR the snapshot's transformer folder; its safetensors twin (checked from its headers): no note."""
    text, folder = _cached_bin(tmp_path, monkeypatch, shard)
    for teacher, noted in (("acme/bin", 1), ("acme/st", 0)):
        make_plan(parse_recipe(text.format(teacher), "r.yaml"))
        err = " ".join(capsys.readouterr().err.split())
        assert err.count(f"note: plan does not read a .bin teacher's weights ({folder}: a pickle loads whole); "
                         "run checks them against its config") == noted, err
        assert err.count("plan does not read") == noted


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_a_cached_hub_teachers_bin_refusals_as_it_loads_start_where_it_was_given(tmp_path, monkeypatch, shard):
    """S47: what run's load of a cached Hub teacher's .bin weights refuses ('SNAPSHOT: the weights do not
    match config.json: missing ...', its config counting 4 blocks over 3) had no place, where a local .bin
    folder's starts 'r.yaml:2: ' (fbbcd54). Now it does."""
    import json

    from compress.runner_setup import load_checked_teacher

    text, folder = _cached_bin(tmp_path, monkeypatch, shard)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, num_layers=4)))
    with pytest.raises(UserError) as e:
        load_checked_teacher(parse_recipe(text.format("acme/bin"), "r.yaml"))
    assert str(e.value).startswith(f"r.yaml:2: {folder}: the weights do not match config.json: missing "), str(e.value)
