"""Where outputs are read from and written to: `~` in every path a user gives, the format an output
was written in, dtype and device names, a missing shard index, a toy base of another family, a
file in the way of a new output, and what `bench --json` calls its batch (outputs saved again and
loaded back: tests/test_io_output_load.py; the `home` fixture is in tests/conftest.py)."""

import json

import pytest
import torch

from compress import load_pipeline, load_transformer, save_compressed
from compress.cli import main
from compress.errors import UserError
from tests.conftest import factorize, tiny_flux, tiny_pixart
from tests.test_commands import RECIPE as FLUX_RECIPE

RECIPE = FLUX_RECIPE.replace("model: flux", "model: pixart")


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _output(tmp_path, name="out", make=tiny_pixart) -> object:
    model = make()
    layer = "transformer_blocks.0.ff.net.2"
    return save_compressed(factorize(model, [layer], rank=2), tmp_path / name)


# ---- 1. ~ ---------------------------------------------------------------------------------------
def test_run_inspect_and_bench_expand_home_in_their_paths(home, tmp_path, capsys):
    """`--out=~/x` reaches dit-compress unexpanded (no shell expands ~ after =): run made a folder
    named ~ in the current folder, and inspect / bench "~/x" found no output."""
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher=tmp_path / "teacher"))
    assert main(["run", str(tmp_path / "r.yaml"), "--out=~/x", "--run-dir=~/r"]) == 0
    assert (home / "x" / "config.json").is_file() and (home / "r").is_dir()
    assert not (tmp_path / "cwd" / "~").exists()
    capsys.readouterr()
    assert main(["inspect", "~/x", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"]
    from compress.inspect import inspect_output

    assert inspect_output("~/x", as_json=True) and json.loads(capsys.readouterr().out)["report"]["teacher"]
    assert main(["bench", "~/x", "--json", "--repeats", "1", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["params_ratio"] < 1


def test_the_run_folder_of_an_interrupt_note_expands_home(home):
    from argparse import Namespace

    from compress.cli import _run_dir

    assert _run_dir(Namespace(run_dir="~/r", recipe="a.yaml")) == home / "r"


def test_the_python_api_expands_home(home, tmp_path):
    from compress.io_output import empty_compressed, weight_files
    from compress.toy import load_toy_teacher

    out = save_compressed(factorize(load_toy_teacher("pixart"), ["transformer_blocks.0.ff.net.2"], rank=8), "~/o")
    assert out == home / "o" and not (tmp_path / "cwd" / "~").exists()
    assert weight_files("~/o") == [out / "diffusion_pytorch_model.safetensors"]
    assert type(empty_compressed("~/o")).__name__ == "PixArtTransformer2DModel"
    assert load_transformer("~/o").transformer_blocks[0].ff.net[2].rank == 8
    assert load_pipeline("~/o", base="toy:pixart").transformer.transformer_blocks[0].ff.net[2].rank == 8
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    runner = Runner(parse_recipe(RECIPE.format(teacher="toy:pixart"), "r.yaml"), "~/out", "~/run")
    assert (runner.out, runner.run_dir) == (home / "out", home / "run")


# ---- 7. bench's batch ----------------------------------------------------------------------------
def test_bench_reports_the_batch_it_was_asked_for_and_the_rows_apart(tmp_path, capsys):
    """`bench --batch 1 --json` said "batch": 2 (the rows of PixArt-Σ's doubled CFG batch) beside "images": 1."""
    teacher = tiny_pixart()
    teacher.save_pretrained(tmp_path / "teacher")
    out = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], rank=2), tmp_path / "out",
                          extra={"teacher": str(tmp_path / "teacher")})
    bench = ["bench", str(out), "--repeats", "1", "--batch", "1", "--device", "cpu"]
    assert main([*bench, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["batch"] == 1 and result["rows"] == 2 and "images" not in result
    assert main(bench) == 0
    assert "(float32, batch 1: 2 rows per step)" in " ".join(capsys.readouterr().out.split())


# ---- 2. a toy base of another family ----------------------------------------------------------
def test_a_toy_base_of_another_family_or_name_is_a_user_error(tmp_path):
    """load_pipeline(pixart_output, base="toy:flux") gave a ToyFluxPipeline around a PixArt
    transformer (a TypeError at sampling); toy:bogus a raw ValueError."""
    out = _output(tmp_path)
    with pytest.raises(UserError, match="^base pipeline toy:flux holds a FluxTransformer2DModel; the compressed "
                                        "transformer is a PixArtTransformer2DModel: pass a base of its family$"):
        load_pipeline(out, base="toy:flux")
    with pytest.raises(UserError, match="^base pipeline: unknown toy teacher 'toy:bogus'"):
        load_pipeline(out, base="toy:bogus")
    with pytest.raises(UserError, match="the transformer of base pipeline toy:pixart is not the model"):
        load_pipeline(out, base="toy:pixart")  # the toy's widths are not the tiny model's


# ---- 3. a file in the way of a new output -----------------------------------------------------
def test_a_file_where_the_outputs_parent_should_be_is_one_line(tmp_path, capsys, monkeypatch):
    """`convert FILE f/sub` with f a file: a FileExistsError traceback from atomic_folder's mkdir."""
    from safetensors.torch import save_file

    from tests.bfl import flux_to_bfl

    model = tiny_flux()
    model.save_config(tmp_path / "cfg")
    save_file(flux_to_bfl(model, "model.diffusion_model."), str(tmp_path / "flux.safetensors"))
    (tmp_path / "f").write_text("a file")
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(capsys, ["convert", "flux.safetensors", "f/sub", "--teacher-config", "cfg"])
    assert err == "dit-compress convert: error: output folder f/sub: cannot make the folder f (f is a file, not a folder)"
    with pytest.raises(UserError, match=r"^output folder f/a/b: cannot make the folder f/a "
                                        r"\(f is a file, not a folder\)$"):
        save_compressed(model, "f/a/b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg", "f", "flux.safetensors"]


# ---- 4. the output format ---------------------------------------------------------------------
def _with_format(out, value):
    config = json.loads((out / "config.json").read_text())
    if value is None:
        del config["compression"]["format"]
    else:
        config["compression"]["format"] = value
    (out / "config.json").write_text(json.dumps(config))


def test_an_output_of_a_newer_format_is_refused(tmp_path, capsys):
    out = _output(tmp_path)
    _with_format(out, 2)
    message = f"{out} was written by a newer dit-compress (format 2; this one reads up to 1): upgrade dit-compress"
    with pytest.raises(UserError) as e:
        load_transformer(out)
    assert str(e.value) == message
    for command in ("inspect", "bench"):
        assert _one_line_error(capsys, [command, str(out)]) == f"dit-compress {command}: error: {message}"
    _with_format(out, "2")
    with pytest.raises(UserError, match="compression.format must be a format number .this dit-compress reads 1 "
                                        "to 1., got '2'"):
        load_transformer(out)


@pytest.mark.parametrize("value", [1, None])
def test_the_formats_read_until_now_still_load(tmp_path, value):
    out = _output(tmp_path)
    _with_format(out, value)
    assert load_transformer(out).transformer_blocks[0].ff.net[2].rank == 2


# ---- 5. dtype and device names ----------------------------------------------------------------
@pytest.mark.parametrize("name, dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16),
                                         ("float32", torch.float32), ("torch.float16", torch.float16)])
def test_a_dtype_by_name_loads_as_diffusers_takes_it(tmp_path, name, dtype):
    out = _output(tmp_path)
    assert load_transformer(out, dtype=name).dtype == dtype
    assert load_transformer(out, torch_dtype=name).dtype == dtype


@pytest.mark.parametrize("dtype", ["float8", "half", torch.int8, 16])
def test_a_dtype_that_is_no_float_dtype_is_one_line(tmp_path, dtype):
    out = _output(tmp_path)
    with pytest.raises(UserError, match="^load_transformer: dtype must be a floating torch dtype or one of "
                                        "'float32', 'float16', 'bfloat16', got "):
        load_transformer(out, dtype=dtype)


def test_a_device_that_is_not_here_is_one_line(tmp_path, monkeypatch):
    """device="gpu": torch's list of every device type; "cuda" without one: an AssertionError."""
    out = _output(tmp_path)
    with pytest.raises(UserError, match="^load_transformer: device 'gpu' is not a torch device; this machine "
                                        "has cpu"):
        load_transformer(out, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(UserError) as e:
            load_transformer(out, device=device)
        mps = ", mps" if torch.backends.mps.is_available() else ""
        assert str(e.value) == (f"load_transformer: device {device!r} is not on this machine "
                                f"(torch {torch.__version__}); it has cpu{mps}")
    assert next(load_transformer(out, device=torch.device("cpu")).parameters()).device.type == "cpu"


# ---- 6. a sharded output without its index ----------------------------------------------------
def test_a_sharded_output_without_its_index_says_the_index_is_missing(tmp_path):
    out = _output(tmp_path)
    load_transformer(out).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json"
    assert index.is_file() and load_transformer(tmp_path / "sharded").transformer_blocks[0].ff.net[2].rank == 2
    index.unlink()
    with pytest.raises(UserError, match=f"^{index} is missing: the output's weights are in [0-9]+ shards "
                                        r"\(diffusion_pytorch_model-00001-of-000[0-9]+.safetensors …\)"):
        load_transformer(tmp_path / "sharded")


def test_devices_torch_knows_but_this_check_does_not_are_left_to_torch():
    """Only CUDA and MPS are checked against this machine: xpu, hpu and the like went to .to() before
    the check and still do (a reviewer found them refused as 'not on this machine')."""
    from compress.io_output import as_device

    assert as_device("xpu").type == "xpu" and as_device("meta").type == "meta"
    assert as_device(torch.device("cpu")).type == "cpu" and as_device("cpu:0").type == "cpu"


def test_an_existing_parent_that_cannot_be_written_says_so_not_that_it_cannot_be_made(tmp_path, monkeypatch):
    """The parent exists, the temp folder inside it fails (no permission): 'cannot write in', the
    reason from the OS (its mkdir made to fail as it does for a non-root user: root writes anywhere)."""
    import errno
    from pathlib import Path

    mkdir = Path.mkdir

    def refused(self, *args, **kwargs):
        if self.parent == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied")
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(UserError, match=r"^output folder .*/out: cannot write in .*pytest.* "
                                        r"\(Permission denied\)$"):
        save_compressed(tiny_flux(), tmp_path / "out")


# ---- 8. the folder an output's files are in, found as a teacher's are ---------------------------
@pytest.fixture
def run_output(tmp_path, capsys):
    """An output of a run (recipe.yaml and report.json beside it: eval and bench measure it)."""
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher=tmp_path / "teacher"))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    return tmp_path / "out"


@pytest.mark.parametrize("index", [False, True], ids=["transformer-alone", "pipeline"])
def test_every_command_finds_an_output_in_transformer_where_load_teacher_finds_a_teacher(run_output, tmp_path,
                                                                                         capsys, index):
    """A download of a pipeline's transformer/ alone (hf download ID --include 'transformer/*': no
    model_index.json) was read by run --teacher (io.transformer_folder) and refused by load_transformer,
    inspect, eval, bench and lora ("dl is not a dit-compress output folder (needs config.json ...)"); bench
    refused a pipeline folder's too ("dl/report.json names no teacher; pass --teacher")."""
    import shutil

    from compress.io import transformer_folder
    from compress.io_output import output_folder

    folder = tmp_path / "dl"
    shutil.copytree(run_output, folder / "transformer")
    if index:
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    assert output_folder(folder) == transformer_folder(folder) == folder / "transformer"
    assert load_transformer(folder).transformer_blocks[0].ff.net[2].rank < 32
    assert main(["inspect", str(folder), "--json"]) == 0 and json.loads(capsys.readouterr().out)["layers"]
    assert main(["eval", str(folder), "--json"]) == 0 and json.loads(capsys.readouterr().out)["pred_rel_error"] < 1
    assert main(["bench", str(folder), "--json", "--repeats", "1", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["params_ratio"] < 1
    lora = tmp_path / "none.safetensors"
    assert _one_line_error(capsys, ["lora", str(folder), str(lora), str(tmp_path / "new")]) == (
        f"dit-compress lora: error: {lora}: no LoRA there (a .safetensors file, or a folder holding one)")
    if not index:  # its base is the teacher it records, not the folder above transformer/ (no pipeline)
        with pytest.raises(UserError, match=f"records the teacher {tmp_path / 'teacher'}, which is not a pipeline"):
            load_pipeline(folder)


def test_a_pipeline_folder_without_a_transformer_config_is_refused_in_one_line_as_a_teacher_and_an_output(
        tmp_path, capsys):
    """model_index.json, and a transformer/ without config.json: load_teacher (run --teacher) said "pipe is
    a pipeline folder without transformer/config.json", load_transformer, inspect, bench and lora "pipe is
    not a dit-compress output folder (needs config.json and ...)", eval "pipe is not a dit-compress output"."""
    from compress import load_teacher

    folder = tmp_path / "pipe"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    line = f"{folder} is a pipeline folder without transformer/config.json"
    for argv in (["inspect", str(folder)], ["eval", str(folder)], ["bench", str(folder)],
                 ["lora", str(folder), str(tmp_path), str(tmp_path / "new")]):
        assert _one_line_error(capsys, argv) == f"dit-compress {argv[0]}: error: {line}", argv
    for load in (load_transformer, load_pipeline, load_teacher):
        with pytest.raises(UserError) as e:
            load(str(folder))
        assert str(e.value) == line, load


def test_a_mistyped_local_output_is_said_as_inspect_says_it(tmp_path, monkeypatch, capsys):
    """load_transformer('out/toy-pixartt') said the folder 'is not a dit-compress output folder (needs
    config.json ...)', and 'no/such/out' that it is 'not a Hub id; download it first': inspect's words now."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    _output(tmp_path, "out/toy-pixart")
    for load in (load_transformer, load_pipeline):
        for given in ("out/toy-pixartt", "no/such/out"):
            with pytest.raises(UserError) as said:
                load(given)
            cli = _one_line_error(capsys, ["inspect", given]).partition("error: ")[2]
            assert str(said.value).startswith(cli.split(" (")[0].split(": inspect")[0]), (said.value, cli)
        with pytest.raises(UserError, match=r"^no such folder no/such/out \(an output folder is written by"):
            load(__import__("pathlib").Path("no/such/out"))  # a Path is never a Hub id


# ---- 7. a damaged weight index ------------------------------------------------------------------
@pytest.mark.parametrize("held, why", [
    ([1, 2], " is not a weight index (a JSON object with a weight_map); it holds a list"),
    ({"weight_map": {"a": None}}, "'s weight_map gives the tensor 'a' the shard null, not a file name"),
    ({"weight_map": [1]}, "'s weight_map is a list, not a mapping of tensor names to shard files"),
], ids=["a list", "a null shard", "a list of shards"])
def test_a_damaged_weight_index_is_one_line_naming_it(tmp_path, held, why):
    """An index that is no JSON object, or whose weight_map is no mapping of names to file names, was a
    traceback (AttributeError: 'list' object has no attribute 'get'; TypeError: PosixPath / NoneType)."""
    out = _output(tmp_path)
    load_transformer(out).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps(held))
    with pytest.raises(UserError) as e:
        load_transformer(tmp_path / "sharded")
    assert str(e.value) == f"{index}{why}"
