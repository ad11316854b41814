"""`convert_file`: a single-file checkpoint as a diffusers transformer folder, tensor by tensor."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress import load_teacher
from compress.errors import UserError
from compress.io_convert import convert_file
from tests.bfl import flux_to_bfl
from tests.conftest import forward, model_inputs, tiny_flux, tiny_pixart
from tests.test_io_single import _to_original_pixart


def _folder_tensors(folder):
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["diffusion_pytorch_model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(str(folder / f)))
    return out, files


@pytest.mark.parametrize("shard_bytes", [2**40, 20_000])  # one file; many shards and an index
def test_a_bfl_file_converts_to_the_model_it_was_written_from(tmp_path, shard_bytes):
    model = tiny_flux().to(torch.bfloat16)
    model.save_config(tmp_path / "cfg")
    save_file(flux_to_bfl(model, "model.diffusion_model."), str(tmp_path / "flux1-dev.safetensors"))
    done = convert_file(tmp_path / "flux1-dev.safetensors", tmp_path / "out", config=str(tmp_path / "cfg"),
                        shard_bytes=shard_bytes)
    saved, files = _folder_tensors(tmp_path / "out")
    want = model.state_dict()
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], v) for k, v in want.items())
    assert done["shards"] == len(files) and (len(files) == 1) == (shard_bytes == 2**40)
    assert done["dtypes"] == ["bfloat16"] and done["tensors"] == len(want)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["config.json", *files, *(["diffusion_pytorch_model.safetensors.index.json"] if len(files) > 1 else [])])
    teacher, inputs = load_teacher(str(tmp_path / "out")), model_inputs(model)  # float32, as a run loads it
    assert torch.equal(forward(teacher, inputs), forward(model.float(), inputs))


@pytest.mark.parametrize("legacy", [False, True])  # memory-mapped; torch.save's pre-zipfile format
def test_an_original_pixart_pth_converts(tmp_path, legacy):
    model = tiny_pixart()
    torch.save({"state_dict": _to_original_pixart(model.state_dict())}, tmp_path / "PixArt.pth",
               _use_new_zipfile_serialization=not legacy)
    model.save_config(tmp_path / "cfg")
    convert_file(tmp_path / "PixArt.pth", tmp_path / "out", config=str(tmp_path / "cfg"))
    teacher = load_teacher(str(tmp_path / "out"))
    inputs = model_inputs(model)
    torch.testing.assert_close(forward(teacher, inputs), forward(model, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, words", [
    (lambda sd: sd.pop("final_layer.linear.bias"), "lacks 1 tensor.*proj_out.bias"),
    (lambda sd: sd.update({"img_in.weight": sd["img_in.weight"][:, :-1].contiguous()}), "x_embedder.weight has shape"),
    (lambda sd: sd.update({"double_blocks.0.extra.weight": torch.zeros(1)}), "double_blocks.0.extra.weight"),
])
def test_a_file_that_does_not_fit_its_config_leaves_no_folder(tmp_path, change, words):
    model = tiny_flux()
    model.save_config(tmp_path)
    sd = flux_to_bfl(model, "")
    change(sd)
    save_file(sd, str(tmp_path / "f.safetensors"))
    with pytest.raises(UserError, match=words):
        convert_file(tmp_path / "f.safetensors", tmp_path / "out", shard_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "f.safetensors"]  # no temp left


def test_a_file_of_another_type_says_what_convert_reads(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(UserError) as e:
        convert_file(tmp_path / "notes.txt", tmp_path / "out")
    assert str(e.value) == (f"{tmp_path}/notes.txt is not a checkpoint: file type '.txt'; convert reads a single-file "
                            "checkpoint (.safetensors, .pth, .pt, .bin, .ckpt)")
    assert not (tmp_path / "out").exists()


def test_a_config_of_another_family_names_the_file_as_load_teacher_does(tmp_path):
    """convert's error lacked the '<path>: ' that load_teacher and run give."""
    save_file(tiny_pixart().state_dict(), str(tmp_path / "p.safetensors"))
    tiny_flux().save_config(tmp_path / "fluxcfg")
    with pytest.raises(UserError, match=rf"^{tmp_path}/p.safetensors: the checkpoint's weights are a pixart "
                                        rf"transformer while the config in {tmp_path}/fluxcfg describes a flux one"):
        convert_file(tmp_path / "p.safetensors", tmp_path / "out", config=str(tmp_path / "fluxcfg"))


# ---- a tester's findings: diffusers-key Flux files, fp8, a full disk, SIGTERM, progress, a folder, wording ----
def _flux_file(folder, bfl=True, **config):
    """A tiny Flux saved as one file (BFL or diffusers keys) with its config.json beside it."""
    model = tiny_flux(**config)
    model.save_config(folder)
    sd = flux_to_bfl(model, "") if bfl else model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "f.safetensors"))
    return model


def test_a_flux_file_in_diffusers_keys_converts(tmp_path):
    """convert refused every diffusers-key Flux file: it counted BFL's double/single blocks (0 of them)."""
    model = _flux_file(tmp_path, bfl=False)
    convert_file(tmp_path / "f.safetensors", tmp_path / "out")
    saved, _ = _folder_tensors(tmp_path / "out")
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_an_fp8_flux_file_converts_and_streams(tmp_path):
    """fp8 weights passed convert, then the streamed read's NaN check crashed (no sum on float8)."""
    from compress.stream import CheckpointBlocks, empty_transformer

    model = tiny_flux()
    model.save_config(tmp_path)
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.dim() == 2 else v for k, v in flux_to_bfl(model, "").items()}
    save_file(fp8, str(tmp_path / "f.safetensors"))
    done = convert_file(tmp_path / "f.safetensors", tmp_path / "out")
    assert "float8_e4m3fn" in done["dtypes"]
    loader = CheckpointBlocks(empty_transformer(tmp_path / "out"), tmp_path / "out")
    loader.load_top()
    block = loader.read([k for k in loader.files if k.startswith("transformer_blocks.0.")])
    assert block and all(t.dtype == torch.float32 for t in block.values())


def _no_space(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _progress_lines(err: str) -> tuple[list[str], str]:
    """(the progress lines convert logs off a terminal, the rest of stderr)."""
    lines = err.splitlines(keepends=True)
    progress = [line for line in lines if re.fullmatch(r"convert \S+ \d+/\d+ \(\d+:\d\d\)\n", line)]
    return progress, "".join(line for line in lines if line not in progress)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """A full disk during convert was safetensors' traceback (exit 1) and no word of where. Its line has
    the run's shape (runner_failures.disk_full_line): where, why, during what, what to do."""
    from compress.cli import main

    _flux_file(tmp_path)
    monkeypatch.setattr("safetensors.torch.save_file", _no_space)
    assert main(["convert", str(tmp_path / "f.safetensors"), str(tmp_path / "out")]) == 1
    progress, err = _progress_lines(capsys.readouterr().err)
    assert progress and progress[-1].startswith("convert f.safetensors ")  # (off a terminal) how far it got
    assert err == (f"dit-compress: cannot write: {tmp_path}/out: no space left on the device, during the conversion "
                   f"of {tmp_path}/f.safetensors; free space there, or give an output folder on another disk "
                   "(nothing was left there)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "f.safetensors"]


def test_convert_takes_the_output_lock_a_run_takes(tmp_path):
    """A run's start removes the temp folders beside its free --out that killed writers left: convert
    wrote one unlocked, which a run starting on the same folder would have removed mid-write."""
    from compress.runner_lock import hold_output

    _flux_file(tmp_path)
    with hold_output(tmp_path / "out"):
        with pytest.raises(UserError, match="is to be written by another dit-compress run"):
            convert_file(tmp_path / "f.safetensors", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "f.safetensors"]
    convert_file(tmp_path / "f.safetensors", tmp_path / "out")  # free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "f.safetensors", "out"]


def test_convert_warns_first_when_the_disk_has_less_free_than_the_file(tmp_path, monkeypatch, capsys):
    """Sizes under 1 MiB in KiB and bytes (calib_footprint.human_size): both read '0.0 GiB'."""
    from compress.calib_footprint import human_size

    _flux_file(tmp_path)
    monkeypatch.setattr("compress.runner_memory.free_bytes", lambda folder: 1000)
    convert_file(tmp_path / "f.safetensors", tmp_path / "out")
    err = " ".join(capsys.readouterr().err.split())
    size = human_size((tmp_path / "f.safetensors").stat().st_size)
    assert size.endswith(" KiB") and f"warning: the converted folder takes about {size} (the size of " \
           f"f.safetensors) and 1000 bytes are free under {tmp_path}; give an output folder on a bigger disk" in err
    assert (tmp_path / "out" / "config.json").is_file()  # a warning: it still converts


def test_a_failed_convert_removes_the_folders_it_made_and_keeps_the_others(tmp_path, monkeypatch, capsys):
    """A full disk said '(nothing was left there)' and left the missing parents of OUT it had made."""
    from compress.cli import main

    _flux_file(tmp_path)
    (tmp_path / "kept").mkdir()
    monkeypatch.setattr("safetensors.torch.save_file", _no_space)
    assert main(["convert", str(tmp_path / "f.safetensors"), str(tmp_path / "kept" / "new" / "deeper" / "out")]) == 1
    assert capsys.readouterr().err.endswith("(nothing was left there)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "f.safetensors", "kept"]
    assert not any((tmp_path / "kept").iterdir())


def test_the_disk_warning_names_the_folder_measured(tmp_path, monkeypatch, capsys):
    """The warning named OUT's parent, which did not exist yet: the free space is its nearest existing one's."""
    _flux_file(tmp_path)
    measured = []
    monkeypatch.setattr("compress.runner_memory.free_bytes", lambda folder: measured.append(folder) or 1000)
    convert_file(tmp_path / "f.safetensors", tmp_path / "n" / "out")
    err = " ".join(capsys.readouterr().err.split())
    assert measured == [tmp_path] and f"1000 bytes are free under {tmp_path}; give an output folder" in err
    assert (tmp_path / "n" / "out" / "config.json").is_file()


def test_sigterm_during_convert_leaves_no_partial_folder(tmp_path):
    """SIGTERM (timeout, kill, SLURM) left a hidden .out.tmp-XXXX folder of partial shards; Ctrl-C did not.
    The status is SIGTERM's, 143, as a shell gives a process the signal killed (it was 130, a Ctrl-C's)."""
    import signal
    import subprocess
    import sys
    import textwrap

    _flux_file(tmp_path)
    slow = textwrap.dedent(f'''
        import sys, time, safetensors.torch as st
        def slow(*a, **k): print("writing", flush=True); time.sleep(60)
        st.save_file = slow
        sys.argv = ["dit-compress", "convert", "{tmp_path}/f.safetensors", "{tmp_path}/out"]
        from compress.cli_entry import main; sys.exit(main())''')
    p = subprocess.Popen([sys.executable, "-c", slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "writing\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143 and "interrupted" in p.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "f.safetensors"]


def test_convert_shows_a_bar_of_the_tensors_on_a_terminal(tmp_path, monkeypatch):
    import io

    from rich.console import Console
    from safetensors import safe_open

    _flux_file(tmp_path)
    shown = io.StringIO()
    monkeypatch.setattr("compress.report.console", Console(file=shown, force_terminal=True, width=120))
    convert_file(tmp_path / "f.safetensors", tmp_path / "out")
    with safe_open(str(tmp_path / "f.safetensors"), "pt") as f:
        n = len(list(f.keys()))
    assert "convert f.safetensors" in shown.getvalue() and f"{n}/{n}" in shown.getvalue()


def test_convert_of_a_long_file_name_shows_its_bar_whole_at_80_columns(tmp_path, monkeypatch):
    """'convert NAME' took the file's name whole: a long one (58 characters here) cut the label at its
    end, the extension first. Now the name is shortened in its middle to a label of at most 40
    characters (progress.shortened), whole at 80 columns with the count and times."""
    import io

    from rich.console import Console

    from tests.test_progress import _drawn

    _flux_file(tmp_path)
    name = "flux1-dev-fp8-e4m3fn-with-its-text-encoders-merged.safetensors"
    (tmp_path / "f.safetensors").rename(tmp_path / name)
    shown = io.StringIO()
    monkeypatch.setattr("compress.report.console", Console(file=shown, force_terminal=True, width=80))
    convert_file(tmp_path / name, tmp_path / "out")
    label = "convert flux1-dev-fp8…merged.safetensors"
    assert label in shown.getvalue(), shown.getvalue()
    line = _drawn(label, 1442, 700)  # Flux.1-dev's tensors
    assert line.startswith(label + " ") and line.endswith(" 700/1442 0:00:00 -:--:--") and len(line) <= 80, line


def test_a_folder_holding_a_single_file_names_it(tmp_path, monkeypatch, capsys):
    """`convert FOLDER` said a folder is what stream reads, and streaming it said it held no diffusers
    weights: the user went round in circles with the layout docs/STREAMING.md gives (the file, config.json beside)."""
    from compress.cli import main
    from compress.stream_files import checkpoint_of

    _flux_file(tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "weights", "out"]) == 2
    assert capsys.readouterr().err == ("dit-compress convert: error: weights: a folder; convert reads a single-file checkpoint: "
                                       "give the file in it, weights/f.safetensors\n")
    with pytest.raises(UserError, match=r"no diffusers weights to read there; it holds the single file "
                                        r"weights/f.safetensors: write it once as a folder with `dit-compress "
                                        r"convert weights/f.safetensors FOLDER`, then stream --teacher FOLDER$"):
        checkpoint_of("weights")


@pytest.mark.parametrize("layout", [
    ["diffusion_pytorch_model.safetensors"],  # save_pretrained's one file
    ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors",
     "diffusion_pytorch_model.safetensors.index.json"],  # and its shards
    ["diffusion_pytorch_model.fp16.safetensors"],  # a variant's
    ["transformer/diffusion_pytorch_model.safetensors", "model_index.json"],  # a pipeline
    ["diffusion_pytorch_model.safetensors", "flux1-dev.safetensors"]])  # and a single file beside
def test_a_diffusers_folder_is_what_stream_reads_not_a_file_in_it(tmp_path, capsys, layout):
    """`convert` on a diffusers folder said 'give the file in it, .../diffusion_pytorch_model.safetensors'
    (on a sharded one a shard): converting diffusers' own weights is no way to read their folder."""
    from compress.cli import main

    for name in layout:
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({"w": torch.zeros(2)}, str(tmp_path / "d" / name)) if name.endswith(".safetensors") else \
            (tmp_path / "d" / name).write_text("{}")
    assert main(["convert", str(tmp_path / "d"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"dit-compress convert: error: {tmp_path / 'd'}: a folder; convert reads a single-file "
                                       "checkpoint (a folder is already what stream: true reads)\n")


@pytest.mark.parametrize("shards", [
    ["diffusion_pytorch_model-00001-of-00002.safetensors"],  # its index not downloaded
    ["diffusion_pytorch_model-00001-of-00002.fp16.safetensors"],  # a variant's
    # diffusers' save_pretrained(variant="fp16") writes the variant before the shard suffix
    ["diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
     "diffusion_pytorch_model.fp16-00002-of-00002.safetensors"]])
def test_streaming_a_folder_of_shards_without_index_names_no_shard_to_convert(tmp_path, capsys, shards):
    """A folder of shards whose index is missing said 'it holds the single file ...-00001-of-00002...:
    write it once as a folder with dit-compress convert': a shard is no checkpoint. A single file
    beside them is still named where convert is given the folder."""
    from compress.cli import main
    from compress.stream_files import checkpoint_of

    tiny_pixart().save_config(tmp_path / "d")
    for name in shards:
        save_file({"w": torch.zeros(2)}, str(tmp_path / "d" / name))
    with pytest.raises(UserError, match=r"no diffusers weights to read there$"):
        checkpoint_of(str(tmp_path / "d"))
    assert main(["convert", str(tmp_path / "d"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.endswith("(a folder is already what stream: true reads)\n")
    (tmp_path / "e").mkdir()
    for name in shards + ["pixart.safetensors"]:
        save_file({"w": torch.zeros(2)}, str(tmp_path / "e" / name))
    assert main(["convert", str(tmp_path / "e"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.endswith(f"give the file in it, {tmp_path / 'e' / 'pixart.safetensors'}\n")


def test_an_empty_output_path_says_so(tmp_path, capsys):
    """`convert f ""` said ' exists' (Path('') is the current folder)."""
    from compress.cli import main

    _flux_file(tmp_path)
    assert main(["convert", str(tmp_path / "f.safetensors"), ""]) == 2
    assert capsys.readouterr().err == "dit-compress convert: error: OUT '' names no folder (dit-compress convert FILE OUT)\n"


def test_a_schnell_file_with_a_dev_config_names_guidance_embeds(tmp_path):
    _flux_file(tmp_path, guidance_embeds=False)
    tiny_flux(guidance_embeds=True).save_config(tmp_path / "dev")
    with pytest.raises(UserError, match=r"lacks 4 tensor\(s\) .*guidance_embedder.*; they are the guidance embedder, "
                                        r"which the config has \(guidance_embeds: true\): a file without one "
                                        r"\(FLUX.1-schnell\) needs a config with guidance_embeds: false$"):
        convert_file(tmp_path / "f.safetensors", tmp_path / "out", config=str(tmp_path / "dev"))
    tiny_flux(guidance_embeds=False).save_config(tmp_path / "schnell")
    _flux_file(tmp_path / "devfile", guidance_embeds=True)
    with pytest.raises(UserError, match=r"guidance_embedder.* is not in the config's model: the file has a guidance "
                                        r"embedder \(FLUX.1-dev\) and the config says guidance_embeds: false"):
        convert_file(tmp_path / "devfile" / "f.safetensors", tmp_path / "out", config=str(tmp_path / "schnell"))


def test_an_outputs_own_weight_file_is_refused_before_its_config_is_read(tmp_path, caplog):
    """convert of an output's weight file printed diffusers' page of warnings about the config's
    compression section, then failed on a factorized key; one line says it is an output already."""
    from compress import save_compressed
    from tests.conftest import factorize

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], 4), tmp_path / "out")
    with pytest.raises(UserError, match=r"is a weight file of the dit-compress output .*already a diffusers folder"):
        convert_file(out / "diffusion_pytorch_model.safetensors", tmp_path / "new")
    assert not (tmp_path / "new").exists() and "compression" not in caplog.text  # diffusers logs its page


def test_an_output_saved_again_with_save_pretrained_is_refused_before_its_config_is_read(tmp_path, caplog):
    """save_pretrained writes a plain header: convert printed diffusers' page about the config's
    compression section, then blamed a factorized key on 'another model or config'. The config.json
    beside the file (or a --teacher-config) with a compression section is an output's, said in one line."""
    from compress import load_transformer, save_compressed
    from tests.conftest import factorize

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], 4), tmp_path / "out")
    load_transformer(out).save_pretrained(tmp_path / "saved")
    weights = tmp_path / "saved" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(UserError, match=r"saved/diffusion_pytorch_model.safetensors is a weight file of the "
                                        r"dit-compress output .*saved, which is already a diffusers folder"):
        convert_file(weights, tmp_path / "new")
    (tmp_path / "alone").mkdir()
    weights.rename(tmp_path / "alone" / weights.name)
    with pytest.raises(UserError, match=r"^--teacher-config .*saved: .*config.json is the config of a dit-compress "
                                        r"output .*already a diffusers folder"):
        convert_file(tmp_path / "alone" / weights.name, tmp_path / "new", config=str(tmp_path / "saved"))
    assert not (tmp_path / "new").exists() and "config attributes" not in caplog.text  # diffusers logs its page


@pytest.mark.parametrize("layout", ["one file", "sharded", "transformers' names", "no index"])
def test_a_folder_of_bin_weights_converts_whole(tmp_path, capsys, layout):
    """`convert FOLDER` of a save_pretrained(safe_serialization=False) folder in shards said 'a folder;
    convert reads a single-file checkpoint: give one of the files in it (…-00001-of-00005.bin, …)', and a
    shard given is a part of the weights. Now the folder converts whole: every shard its index lists
    (diffusers' or transformers' pytorch_model.bin.index.json), or NAME-0000i-of-0000N.bin shards without an
    index, into a folder that streams the model's tensors; a shard missing is named."""
    from compress.cli import main
    from compress.stream_files import checkpoint_of

    model = tiny_pixart()
    folder = tmp_path / "t"
    model.save_pretrained(folder, safe_serialization=False, **({} if layout == "one file" else {"max_shard_size": "30KB"}))
    index = folder / "diffusion_pytorch_model.bin.index.json"
    if layout == "transformers' names":
        data = json.loads(index.read_text())
        data["weight_map"] = {k: v.replace("diffusion_pytorch_model", "pytorch_model") for k, v in data["weight_map"].items()}
        index.unlink()
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(data))
        for shard in folder.glob("diffusion_pytorch_model-*.bin"):
            shard.rename(folder / shard.name.replace("diffusion_pytorch_model", "pytorch_model"))
    elif layout == "no index":
        index.unlink()
    shards = sorted(folder.glob("*.bin"))
    assert len(shards) == 1 if layout == "one file" else len(shards) > 2
    assert main(["convert", str(folder), str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'out'}: a diffusers PixArtTransformer2DModel folder "
                                              "(78 tensors, float32, 1 shard)")
    config, files = checkpoint_of(str(tmp_path / "out"))
    streamed = {k: v for f in set(files.values()) for k, v in load_file(f).items()}
    expected = model.state_dict()
    assert config["_class_name"] == "PixArtTransformer2DModel"
    assert streamed.keys() == expected.keys() and all(streamed[k].equal(expected[k]) for k in expected)
    if layout != "one file":
        shards[1].unlink()
        assert main(["convert", str(folder), str(tmp_path / "out2")]) == 2
        said = capsys.readouterr().err
        assert shards[1].name in said and "(an incomplete download?)" in said and not (tmp_path / "out2").exists(), said


def test_convert_of_an_output_resaved_as_bin_says_it_is_an_output_in_one_line(tmp_path, capsys):
    """It printed diffusers' warning that the config attributes {'compression': ...} were ignored, then
    'tensor transformer_blocks.0.ff.net.2.down.weight is not in the config's model (another model or config?)'."""
    from compress import load_transformer
    from compress.cli import main
    from tests.test_io_output_paths import _output

    load_transformer(_output(tmp_path)).save_pretrained(tmp_path / "bin", safe_serialization=False)
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "bin"), str(tmp_path / "conv")]) != 0
    err = capsys.readouterr().err
    assert err.strip() == (f"dit-compress convert: error: {tmp_path / 'bin'} is a dit-compress output (its config.json has a compression "
                           "section), already a diffusers folder: nothing to convert; load it with "
                           "compress.load_transformer (convert is for teachers' checkpoints)")
    assert not (tmp_path / "conv").exists()
