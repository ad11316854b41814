import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from compress import load_teacher, load_transformer, save_compressed
from compress.arch import get_adapter
from compress.errors import UserError
from compress.lowrank import LowRankLinear
from tests.conftest import diffusers_log, factorize, forward, model_inputs, tiny_flux, tiny_pixart


def _factorize_some(model, rank=3):
    """Swap a few linears for LowRankLinear (plain SVD) so the round trip covers factors."""
    return factorize(model, [i.name for i in get_adapter(model).linears(model)[:6]], rank)


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_save_load_bit_identical(tmp_path, make):
    model = _factorize_some(make())
    out = save_compressed(model, tmp_path / "out")
    back = load_transformer(out)
    assert type(back) is type(model)
    inputs = model_inputs(model)
    assert torch.equal(forward(model, inputs), forward(back, inputs))
    cfg = json.loads((out / "config.json").read_text())
    ranks = cfg["compression"]["ranks"]
    assert len(ranks) == 6 and all(r == 3 or r < 3 for r in ranks.values())
    # nothing dense stored for factorized layers: file holds exactly the student's parameters
    from safetensors import safe_open

    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()["compression"])["ranks"] == ranks
    name = next(iter(ranks))
    assert {f"{name}.down.weight", f"{name}.up.weight"} <= keys and f"{name}.weight" not in keys
    n_params = sum(p.numel() for p in model.parameters())
    n_stored = sum(model.state_dict()[k].numel() for k in keys if k in dict(model.named_parameters()))
    assert n_stored == n_params


def test_removed_blocks_load_with_plain_diffusers(tmp_path):
    model = tiny_flux()
    get_adapter(model).remove_blocks(model, {"single": [1]})
    out = save_compressed(model, tmp_path / "pruned")
    plain = type(model).from_pretrained(out)
    assert len(plain.single_transformer_blocks) == 2 and plain.config.num_single_layers == 2
    inputs = model_inputs(model)
    assert torch.equal(forward(model, inputs), forward(plain.eval(), inputs))


def _write_layouts(model, root):
    """The same model as transformer folder, pipeline folder, and single file + config."""
    model.save_pretrained(root / "transformer_dir")
    (root / "pipe").mkdir()
    (root / "pipe" / "model_index.json").write_text(json.dumps(
        {"_class_name": "X", "transformer": ["diffusers", type(model).__name__]}))
    model.save_pretrained(root / "pipe" / "transformer")
    (root / "single").mkdir()
    save_file(model.state_dict(), str(root / "single" / "model.safetensors"))
    model.save_config(root / "single")


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_teacher_layouts(tmp_path, make):
    model = make()
    _write_layouts(model, tmp_path)
    inputs = model_inputs(model)
    ref = forward(model, inputs)
    for src in ("transformer_dir", "pipe", "single/model.safetensors"):
        teacher = load_teacher(str(tmp_path / src))
        assert type(teacher) is type(model)
        torch.testing.assert_close(forward(teacher, inputs), ref, rtol=1e-5, atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(UserError, match="refused"):
        load_teacher(str(bad))
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["missing/dir", "nope.safetensors"])
def test_missing_teacher(tmp_path, bad):
    with pytest.raises(UserError, match="not found"):
        load_teacher(str(tmp_path / bad))


def test_a_bare_name_is_a_missing_path_not_a_hub_id(tmp_path, monkeypatch):
    """`nothere` (no owner/, as every Hub diffusion model has) is not fetched from the Hub: no
    network wait, and the error says what a Hub id looks like."""
    import compress.io

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(compress.io, "_load_hub", lambda *a: 1 / 0)
    with pytest.raises(UserError, match=rf"^teacher not found: nothere \(there is no {tmp_path}/nothere; "
                                        r"a Hugging Face id is OWNER/NAME\)$"):
        load_teacher("nothere")


def test_truncated_safetensors(tmp_path):
    model = tiny_pixart()
    out = save_compressed(model, tmp_path / "o")
    w = out / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_transformer(out)


def test_unsupported_class(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(UserError, match="m holds a UNet2DConditionModel \\(not a PixArt or Flux transformer\\)"):
        load_teacher(str(tmp_path / "m"))


def test_load_pipeline_with_toy_base(tmp_path):
    from compress import load_pipeline
    from compress.toy import load_toy_teacher

    teacher = load_toy_teacher("flux")
    out = save_compressed(_factorize_some(teacher, rank=8), tmp_path / "student")
    pipe = load_pipeline(out, base="toy:flux")
    assert type(pipe.transformer) is type(teacher)
    assert isinstance(pipe.transformer.get_submodule(next(iter(
        json.loads((out / "config.json").read_text())["compression"]["ranks"]))), LowRankLinear)
    images = pipe("a handwritten 3", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    assert images.shape[0] == 1 and torch.isfinite(images).all()


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_load_pipeline_of_a_toy_base_gives_every_part_the_dtype(tmp_path, family):
    """load_pipeline(out, dtype=bfloat16) with a toy base cast the transformer only: the toy text
    encoder stayed float32 (a diffusers pipeline's parts all take torch_dtype)."""
    from compress import load_pipeline
    from compress.toy import load_toy_teacher

    out = save_compressed(_factorize_some(load_toy_teacher(family), rank=8), tmp_path / "student")
    for pipe in (load_pipeline(out, base=f"toy:{family}", dtype=torch.bfloat16),
                 load_pipeline(out, base=f"toy:{family}", torch_dtype="bfloat16")):
        assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
        assert pipe.transformer.dtype == pipe.vae.dtype == torch.bfloat16
    pipe.save_pretrained(tmp_path / "saved")  # a saved toy pipeline is its own base
    pipe = load_pipeline(tmp_path / "saved", dtype=torch.bfloat16)
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16} and pipe.vae.dtype == torch.bfloat16
    images = pipe("a 3", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.isfinite(images).all()


def test_cast_changes_the_dtype_without_diffusers_empty_fp32_warning():
    from compress.io import cast

    with diffusers_log() as logged:
        model = cast(tiny_pixart(), torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert logged == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_loader_keeps_pixarts_pos_embed_as_diffusers_does(tmp_path, dtype):
    """The sin-cos table is a non-persistent buffer: diffusers' from_pretrained(torch_dtype) keeps it
    float32, so casts, single files, streamed models and outputs keep it too, and predict alike."""
    from compress.io import cast
    from compress.stream import CheckpointBlocks, empty_transformer, streamed

    model = tiny_pixart()
    model.save_pretrained(tmp_path / "folder")
    save_file(model.state_dict(), str(tmp_path / "folder" / "single.safetensors"))
    inputs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in model_inputs(model).items()}
    ref = load_teacher(str(tmp_path / "folder"), dtype=dtype)  # diffusers' own loading
    assert ref.pos_embed.pos_embed.dtype == torch.float32
    expected = forward(ref, inputs)
    meta = empty_transformer(tmp_path / "folder", dtype)
    loader = CheckpointBlocks(meta, tmp_path / "folder")
    loader.load_top()
    with torch.no_grad(), streamed(meta, loader):
        assert torch.equal(meta(**inputs, return_dict=False)[0], expected)
    save_compressed(ref, tmp_path / "out", dtype=dtype)
    for other in (cast(tiny_pixart(), dtype), load_teacher(str(tmp_path / "folder" / "single.safetensors"),
                                                           dtype=dtype),
                  load_transformer(tmp_path / "out"), load_transformer(tmp_path / "out", dtype=dtype)):
        assert other.pos_embed.pos_embed.dtype == torch.float32
        assert torch.equal(forward(other, inputs), expected)


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_more_teacher_layouts(tmp_path, make):
    """A download of transformer/ alone (no model_index.json), a folder of one weight variant
    (diffusers' variant= files, sharded or not), and --teacher-config naming a pipeline folder."""
    from compress.stream_files import checkpoint_of

    model = make()
    model.save_pretrained(tmp_path / "snapshot" / "transformer")
    model.save_pretrained(tmp_path / "fp16", variant="fp16")
    model.save_pretrained(tmp_path / "fp16_sharded", variant="fp16", max_shard_size="40KB")
    _write_layouts(model, tmp_path)
    save_file(model.state_dict(), str(tmp_path / "alone.safetensors"))
    inputs = model_inputs(model)
    ref = forward(model, inputs)
    for src in ("snapshot", "fp16", "fp16_sharded"):
        torch.testing.assert_close(forward(load_teacher(str(tmp_path / src)), inputs), ref, rtol=1e-5, atol=1e-5)
        config, files = checkpoint_of(str(tmp_path / src))
        assert config["_class_name"] == type(model).__name__ and set(files) == set(model.state_dict())
    teacher = load_teacher(str(tmp_path / "alone.safetensors"), config=str(tmp_path / "pipe"))
    torch.testing.assert_close(forward(teacher, inputs), ref, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "fp16", variant="bf16")
    with pytest.raises(UserError, match="variants bf16, fp16"):
        load_teacher(str(tmp_path / "fp16"))


def _legacy_shard_names(folder, ext):
    """diffusers' older naming of a variant's shards, which it still reads: NAME-00001-of-0000N.fp16.EXT
    and NAME.EXT.fp16.index.json (its save_pretrained writes NAME.fp16-00001-of-0000N.EXT, NAME.EXT.index.fp16.json)."""
    index = folder / f"diffusion_pytorch_model.{ext}.index.fp16.json"
    held = json.loads(index.read_text())
    renamed = {v: v.replace(".fp16-", "-").replace(f".{ext}", f".fp16.{ext}") for v in held["weight_map"].values()}
    for old, new in renamed.items():
        (folder / old).rename(folder / new)
    held["weight_map"] = {k: renamed[v] for k, v in held["weight_map"].items()}
    (folder / f"diffusion_pytorch_model.{ext}.fp16.index.json").write_text(json.dumps(held))
    index.unlink()


def test_a_folder_of_one_bin_variant_loads_as_a_safetensors_one_does(tmp_path):
    """save_pretrained(variant="fp16", safe_serialization=False) writes diffusion_pytorch_model.fp16.bin, or
    diffusion_pytorch_model.bin.index.fp16.json and its .fp16-0000N-of-0000M.bin shards: 'has config.json but
    no weights' (io_variants.weights_variant knew the safetensors names alone). Now they load, as do the older names
    of a variant's shards and index that diffusers still reads; a plain .bin beside a variant's is read."""
    from compress.io_variants import weights_variant

    model = tiny_flux()
    inputs = model_inputs(model)
    ref = forward(model, inputs)
    model.save_pretrained(tmp_path / "one", variant="fp16", safe_serialization=False)
    model.save_pretrained(tmp_path / "shards", variant="fp16", safe_serialization=False, max_shard_size="40KB")
    for ext, safe in (("bin", False), ("safetensors", True)):
        model.save_pretrained(tmp_path / f"old_{ext}", variant="fp16", safe_serialization=safe, max_shard_size="40KB")
        _legacy_shard_names(tmp_path / f"old_{ext}", ext)
    for src in ("one", "shards", "old_bin", "old_safetensors"):
        assert weights_variant(tmp_path / src) == "fp16", src
        torch.testing.assert_close(forward(load_teacher(str(tmp_path / src)), inputs), ref, rtol=1e-5, atol=1e-5)
    tiny_flux(seed=1).save_pretrained(tmp_path / "one", safe_serialization=False)  # plain .bin beside: read
    assert weights_variant(tmp_path / "one") is None
    torch.testing.assert_close(forward(load_teacher(str(tmp_path / "one")), inputs), forward(tiny_flux(seed=1), inputs))


@pytest.mark.parametrize("ext", ["bin", "safetensors"])
def test_a_run_of_a_variant_indexed_by_the_older_name_says_so_once_and_not_diffusers(tmp_path, capsys, ext):
    """A teacher whose fp16 shards are indexed by diffusers' older name (NAME.EXT.fp16.index.json, which
    7778a49 made load) gave the run diffusers' own FutureWarning ('This serialization format is now
    deprecated ...', two lines with its file:line and source line). Now that warning is silenced where
    the teacher loads (a filter of its message, not a global one) and the run says one note of its own,
    once; a teacher of today's names gets neither."""
    import warnings

    from compress.cli import main
    from tests.test_commands import RECIPE

    tiny_flux().save_pretrained(tmp_path / "teacher", variant="fp16", safe_serialization=ext == "safetensors",
                                max_shard_size="40KB")
    _legacy_shard_names(tmp_path / "teacher", ext)
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher=tmp_path / "teacher"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"),
                     "--run-dir", str(tmp_path / "run")]) == 0
        left = [f for f in warnings.filters if "serialization format" in str(getattr(f[1], "pattern", ""))]
    assert not left, left  # the filter held only while the teacher loaded
    assert not [w for w in caught if "serialization format" in str(w.message)], [str(w.message) for w in caught]
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    err = " ".join(capsys.readouterr().err.split())
    said = (f"note: {tmp_path / 'teacher'} indexes its fp16 weights by diffusers' older name "
            f"(diffusion_pytorch_model.{ext}.fp16.index.json, now diffusion_pytorch_model.{ext}.index.fp16.json), "
            "which diffusers will stop reading in its 1.0")
    assert err.count(said) == 1 and err.count("older name") == 1, err
    assert "FutureWarning" not in err and "serialization format" not in err, err
    load_teacher(str(tmp_path / "out"))  # an output (today's names): no note
    assert "older name" not in capsys.readouterr().err


def test_a_loaded_output_saves_again_with_what_the_run_recorded(tmp_path):
    out = save_compressed(_factorize_some(tiny_flux()), tmp_path / "a", dtype=torch.bfloat16,
                          extra={"teacher": "toy:flux", "block_map": {"blocks": [0, 2]}})
    again = save_compressed(load_transformer(out, torch_dtype=torch.float16), tmp_path / "b")
    first, second = (json.loads((o / "config.json").read_text())["compression"] for o in (out, again))
    assert second["teacher"] == "toy:flux" and second["block_map"] == first["block_map"]
    assert load_transformer(again).dtype == torch.float16  # diffusers' torch_dtype spelling works too


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_diffusers_save_pretrained_of_a_loaded_output_loads_back(tmp_path, make):
    """`transformer.save_pretrained` (what a pipeline's save_pretrained calls) writes the factors
    and the compression section, so the folder is again an output that loads bit-identical."""
    out = save_compressed(_factorize_some(make()), tmp_path / "a", extra={"teacher": "toy"})
    loaded = load_transformer(out)
    loaded.save_pretrained(tmp_path / "b")
    back = load_transformer(tmp_path / "b")
    inputs = model_inputs(loaded)
    assert torch.equal(forward(loaded, inputs), forward(back, inputs))
    compression = json.loads((tmp_path / "b" / "config.json").read_text())["compression"]
    assert compression["ranks"] == json.loads((out / "config.json").read_text())["compression"]["ranks"]
    assert compression["teacher"] == "toy"


def test_load_pipeline_refuses_a_base_of_another_architecture(tmp_path):
    """A base pipeline whose transformer is not the student's teacher (another class, or other
    widths) is a UserError at load, not a traceback inside the first denoising step."""
    from diffusers import DiffusionPipeline

    from compress import load_pipeline
    from tests.pipelines import pixart_pipeline

    (tmp_path / "p").mkdir()
    base = pixart_pipeline(tmp_path / "p" / "pipe")
    teacher = DiffusionPipeline.from_pretrained(base).transformer
    out = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], rank=2), tmp_path / "ok")
    assert isinstance(load_pipeline(out, base=str(base)).transformer.transformer_blocks[0].ff.net[2],
                      LowRankLinear)
    for student, message in ((tiny_pixart(), "its config has patch_size 2 .the model's: 1."),
                             (tiny_flux(), "holds a PixArtTransformer2DModel; the compressed")):
        out = save_compressed(student, tmp_path / type(student).__name__)
        with pytest.raises(UserError, match=message):
            load_pipeline(out, base=str(base))


def test_load_pipeline_of_a_real_base_warns_nothing_and_needs_the_pipelines_extra(tmp_path, monkeypatch):
    """No FutureWarning about diffusers' deprecated `torch_dtype`; without transformers a one-line
    error saying what to install, not diffusers' AttributeError from a dummy text encoder class."""
    import importlib.util
    import warnings

    from compress import load_pipeline
    from tests.pipelines import pixart_pipeline

    (tmp_path / "p").mkdir()
    base = pixart_pipeline(tmp_path / "p" / "pipe")
    out = save_compressed(load_teacher(str(base)), tmp_path / "out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_pipeline(out, base=str(base))
    assert not [w for w in caught if "torch_dtype" in str(w.message)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(UserError, match=r"needs transformers: pip install 'dit-compress\[pipelines\]'"):
        load_pipeline(out, base=str(base))


def test_load_pipeline_takes_the_recorded_teacher_as_its_base(tmp_path):
    """load_pipeline(out) without base raised a raw TypeError; it takes the teacher the output
    records where that is a toy, a pipeline folder or a Hub id, and asks for base= otherwise."""
    from compress import load_pipeline
    from compress.toy import load_toy_teacher

    out = save_compressed(_factorize_some(load_toy_teacher("pixart"), rank=8), tmp_path / "student",
                          extra={"teacher": "toy:pixart"})
    assert type(load_pipeline(out).transformer).__name__ == "PixArtTransformer2DModel"
    for teacher, words in (({}, "records no teacher"), ({"teacher": str(tmp_path)}, "is not a pipeline folder")):
        bare = save_compressed(_factorize_some(load_toy_teacher("pixart"), rank=8), tmp_path / f"s{len(teacher)}",
                               extra=teacher)
        with pytest.raises(UserError, match=words + ".*pass base="):
            load_pipeline(bare)


@pytest.mark.parametrize("source", ["folder", "file", "toy"])
def test_load_teacher_takes_a_dtype_by_name_from_every_source_and_refuses_others_in_one_line(tmp_path, source):
    """'bfloat16' was ignored for a folder (diffusers' float32) and a torch device string for a
    single file or a toy teacher (a traceback); as load_transformer, names are dtypes."""
    model = tiny_pixart()
    model.save_pretrained(tmp_path / "folder")
    save_file(model.state_dict(), str(tmp_path / "folder" / "w.safetensors"))
    src = {"folder": tmp_path / "folder", "file": tmp_path / "folder" / "w.safetensors", "toy": "toy:pixart"}[source]
    assert load_teacher(src, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(UserError, match=r"^load_teacher: dtype must be a floating torch dtype or one of "
                                        r"'float32', 'float16', 'bfloat16', got 'fp17'$"):
        load_teacher(src, dtype="fp17")


def test_load_teacher_dtype_none_keeps_the_weights_own_dtype_for_every_source(tmp_path):
    """None meant the file's dtype for a single file and an output, but float32 for a folder."""
    model = tiny_pixart().half()
    model.save_pretrained(tmp_path / "fp16")
    model.save_pretrained(tmp_path / "variant", variant="fp16")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    save_file(model.state_dict(), str(tmp_path / "fp16" / "w.safetensors"))
    tiny_pixart().to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for src, dtype in [("fp16", torch.float16), ("variant", torch.float16), ("sharded", torch.float16),
                       ("fp16/w.safetensors", torch.float16), ("bf16", torch.bfloat16)]:
        assert load_teacher(tmp_path / src, dtype=None).dtype == dtype, src
    assert load_teacher("toy:pixart", dtype=None).dtype == torch.float32  # its weights are float32
    assert load_teacher(tmp_path / "fp16").dtype == torch.float32  # the default


def test_a_folder_with_an_index_fetches_its_shards_not_the_single_file_beside_them():
    """from_pretrained reads the index and its shards where both are there: the single file too
    doubled a Hub download (about 24 GB more for Flux.1-dev)."""
    from compress.io_variants import variant_weights

    names = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
             "diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert variant_weights(names, None) == sorted(names[2:])
    assert variant_weights(names[:2], None) == ["diffusion_pytorch_model.safetensors"]
    assert variant_weights(["diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"], "fp16") == \
        ["diffusion_pytorch_model.fp16.safetensors"]


def test_a_model_index_beside_a_config_reads_that_config_for_a_teacher_as_for_an_output(tmp_path):
    """model_index.json beside a transformer's own config.json (no transformer/): load_transformer,
    inspect, eval and bench read that config.json, where load_teacher and run --teacher refused the same
    folder ("t is a pipeline folder without transformer/config.json"); one rule now (io.transformer_place)."""
    from compress.io_source import check_source

    model = tiny_flux()
    model.save_pretrained(tmp_path / "t")
    save_compressed(_factorize_some(tiny_flux()), tmp_path / "o")
    for folder in ("t", "o"):
        (tmp_path / folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
        assert check_source(str(tmp_path / folder)) == "folder"  # run --teacher's check
    inputs = model_inputs(model)
    torch.testing.assert_close(forward(load_teacher(str(tmp_path / "t")), inputs), forward(model, inputs))
    torch.testing.assert_close(forward(load_teacher(str(tmp_path / "o")), inputs),
                               forward(load_transformer(tmp_path / "o"), inputs))


def test_a_json_file_nested_past_pythons_recursion_limit_is_one_line(tmp_path):
    """report.json nested 100,000 brackets deep: inspect / eval said a RecursionError traceback (F2 stop 50)."""
    from compress.io import read_json

    path = tmp_path / "report.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match=f"cannot read {path}: maximum recursion depth"):
        read_json(path)
