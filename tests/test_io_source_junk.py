"""A teacher that is junk (a text file named .safetensors, tensors of no transformer, weights of other
shapes than its config's, a teacher config that is no JSON) or a Hub id mistyped offline: one line,
said where the user gave it, before what a good teacher would be told about its calibration."""

import codecs
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compress.errors import UserError
from compress.io_source_config import typos_of
from compress.io_source_recipe import checked_sources
from compress.plan import make_plan
from compress.recipe import parse_recipe
from tests.conftest import tiny_pixart
from tests.test_io_source import _recipe

SYNTHETIC = ("model: pixart\nteacher: {teacher}\n{config}calibration: {{source: synthetic}}\n"
             "passes:\n  - svd: {{ratio: 0.5}}\n")


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as e:
        call(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_an_offline_hub_typo_is_placed_once_and_told_the_known_id(tmp_path, monkeypatch):
    """'r.yaml:2: r.yaml:2: cannot find a config ...' before, and no word of the shipped id it lists."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    recipe = _recipe(tmp_path / "r", teacher="PixArt-alpha/PixArt-Sigma-XL-2-1024-MSS")
    said = _refused(checked_sources, recipe, hub=False)
    assert said.startswith(f"{recipe.path}:2: cannot find a config for teacher "
                           "'PixArt-alpha/PixArt-Sigma-XL-2-1024-MSS'")
    assert said.count("r.yaml:2") == 1
    assert said.endswith("config.json; did you mean 'PixArt-alpha/PixArt-Sigma-XL-2-1024-MS'?")
    other = _refused(checked_sources, _recipe(tmp_path / "s", teacher="black-forest-labs/FLUX.1-schnell"), hub=False)
    assert "did you mean" not in other  # another model, not a typo of FLUX.1-dev


def test_typos_of_are_a_few_letters_case_aside():
    known = ["PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "black-forest-labs/FLUX.1-dev"]
    assert typos_of("pixart-alpha/pixart-sigma-xl-2-1024-ms", known) == known[:1]
    assert typos_of("black-forest-labs/FLUX1-dev", known) == known[1:]
    assert typos_of("black-forest-labs/FLUX.1-Fill-dev", known) == []
    assert typos_of("PixArt-alpha/PixArt-XL-2-1024-MS", known) == []


def test_a_teacher_config_that_is_no_json_is_named_where_given(tmp_path, monkeypatch):
    """'cannot read cfg.txt: Expecting value: line 1 column 1 (char 0)' before: no line, decoder words."""
    monkeypatch.chdir(tmp_path)
    model = tiny_pixart()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "t.safetensors")
    (tmp_path / "cfg.txt").write_text("my notes\n")
    recipe = parse_recipe(SYNTHETIC.format(teacher="t.safetensors", config="teacher_config: cfg.txt\n"), "r.yaml")
    assert _refused(make_plan, recipe) == ("r.yaml:3: teacher_config cfg.txt is not a JSON config (line 1, column 1: "
                                           "Expecting value); give the diffusers config of the transformer (its "
                                           "config.json, or the folder holding it)")
    recipe = parse_recipe(SYNTHETIC.format(teacher="t.safetensors", config=""), "r.yaml")
    assert _refused(make_plan, recipe, teacher_config="cfg.txt").startswith(
        "--teacher-config cfg.txt is not a JSON config (line 1, column 1: Expecting value); ")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_bytes(b'{"a": "\xff"}')
    assert _refused(make_plan, recipe, teacher_config="d").startswith(
        "--teacher-config d: d/config.json is not a JSON config (not UTF-8 text); ")


def _wrong_shapes(folder):
    tiny_pixart().save_pretrained(folder)
    config = folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "attention_head_dim": 4}))
    return folder


def test_weights_of_other_shapes_are_said_where_given_before_the_calibration(tmp_path):
    """Refused over calibration.source 'pipeline' first before (a transformer folder samples in no
    pipeline), then, with source: synthetic, without the recipe's place."""
    teacher = _wrong_shapes(tmp_path / "t")
    recipe = _recipe(tmp_path / "r", teacher=str(teacher))
    assert _refused(checked_sources, recipe).startswith(
        f"{recipe.path}:2: teacher {teacher}: its weights do not match its config.json: ")
    assert _refused(checked_sources, _recipe(tmp_path / "s"), teacher=str(teacher)).startswith(
        f"--teacher: teacher {teacher}: its weights do not match its config.json: ")


@pytest.mark.parametrize("junk, words", [
    (lambda p: p.write_text("hello, I am text pretending\n"), " is not a readable safetensors file (Error while "
                                                             "deserializing header: header too large)"),
    (lambda p: save_file({"foo.weight": torch.zeros(2)}, p),
     ": cannot tell the model family from the checkpoint keys (first: ['foo.weight'])"),
])
def test_a_junk_safetensors_teacher_is_said_junk_before_its_calibration_or_config(tmp_path, junk, words):
    """Told to set calibration.pipeline, then to add a config.json, before it was said junk."""
    junk(tmp_path / "t.safetensors")
    recipe = _recipe(tmp_path / "r", teacher=str(tmp_path / "t.safetensors"))
    assert _refused(checked_sources, recipe).startswith(f"{recipe.path}:2: {tmp_path}/t.safetensors{words}")


def test_a_single_file_teacher_whose_names_do_not_tell_its_family_is_planned_by_its_config(tmp_path, monkeypatch):
    """A toy Flux of no single blocks (its tensor names say no family) with its config.json beside it
    was refused 'cannot tell the model family from the checkpoint keys'; its config tells (R2's f0)."""
    from safetensors.torch import load_file

    from compress.toy.weights import toy_files

    monkeypatch.chdir(tmp_path)
    config, weights = toy_files("flux")
    config = {**json.loads(Path(config).read_text()), "num_single_layers": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("single_transformer_blocks.")},
              "t.safetensors")
    recipe = parse_recipe("model: flux\nteacher: t.safetensors\ncalibration: {source: synthetic, num_prompts: 2}\n"
                          "passes:\n  - svd: {targets: [mlp], ratio: 0.5}\n", "r.yaml")
    assert make_plan(recipe)["passes"]


BOM = "a UTF-8 byte-order mark before its JSON, which diffusers refuses"
JUNK = {"not JSON": ("my notes\n", "line 1, column 1: Expecting value"), "a list": ("[1, 2]\n", "an array, not a JSON object"),
        "empty": ("", "an empty file"),  # below: the teacher's good config.json (its text) so written
        "a byte-order mark": (lambda good: codecs.BOM_UTF8 + good.encode(), BOM),
        "UTF-16": (lambda good: good.encode("utf-16"), "not UTF-8 text")}
FOLDER_FIX = "put its transformer's diffusers config there (save_pretrained writes it)"


def _junk_teachers(tmp_path, junk: str) -> dict[str, str]:
    """A transformer folder, a pipeline folder and a single file, each with a config.json of `junk`:
    teacher -> what the error calls that config.json."""
    model = tiny_pixart()
    folder, pipe, single = tmp_path / "t", tmp_path / "p", tmp_path / "f"
    model.save_pretrained(folder)
    model.save_pretrained(pipe / "transformer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline",
                                                      "transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    single.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, single / "t.safetensors")
    content, good = JUNK[junk][0], (folder / "config.json").read_text()
    for config in (folder / "config.json", pipe / "transformer" / "config.json", single / "config.json"):
        config.write_bytes(content(good)) if callable(content) else config.write_text(content)
    return {str(folder): f"its config.json is not a JSON config ({JUNK[junk][1]}); {FOLDER_FIX}",
            str(pipe): f"its transformer/config.json is not a JSON config ({JUNK[junk][1]}); {FOLDER_FIX}",
            str(single / "t.safetensors"): f"the config.json beside it ({single}/config.json) is not a JSON config "
                                           f"({JUNK[junk][1]}); give its transformer's diffusers config with "
                                           "--teacher-config, or put it there"}


@pytest.mark.parametrize("junk", list(JUNK))
def test_a_teachers_own_config_json_that_is_junk_is_said_in_one_line_where_given(tmp_path, junk):
    """A teacher folder (or a pipeline's transformer/, or the config.json beside a single file) whose
    config.json is no JSON object said the decoder's words with no place: 'cannot read t/config.json:
    Expecting value: line 1 column 1 (char 0)', 't/config.json is not a diffusers config (a JSON object);
    it holds a list'. Now in teacher_config's words ('is not a JSON config (...)'), naming the teacher,
    at the recipe's teacher: line, or after --teacher."""
    recipe_dir = tmp_path / "r"
    for teacher, words in _junk_teachers(tmp_path, junk).items():
        recipe = _recipe(recipe_dir, teacher=teacher, overrides=["calibration={source: synthetic}"])
        assert _refused(checked_sources, recipe) == f"{recipe.path}:2: teacher {teacher}: {words}"
        assert _refused(checked_sources, _recipe(recipe_dir), teacher=teacher) == f"--teacher: teacher {teacher}: {words}"
        assert _refused(make_plan, _recipe(recipe_dir), teacher=teacher) == f"--teacher: teacher {teacher}: {words}"


@pytest.mark.parametrize("junk", ["a byte-order mark", "UTF-16"])
def test_a_config_json_diffusers_cannot_read_is_refused_by_plan_as_by_run(tmp_path, monkeypatch, junk):
    """A config.json starting with a UTF-8 byte-order mark (or in UTF-16) was read by plan (json.loads of its
    bytes takes both) and refused by run's loader only: 'p.yaml:3: cannot read tf_bom/config.json: Unexpected
    UTF-8 BOM (decode using utf-8-sig): ...'. diffusers' from_pretrained refuses it too, so plan and run
    (checked_sources, before loading) now refuse it alike, as a teacher's own config (the test above) and
    as --teacher-config."""
    from diffusers import PixArtTransformer2DModel

    monkeypatch.chdir(tmp_path)
    _junk_teachers(tmp_path, junk)
    with pytest.raises(OSError, match="is not a valid JSON file"):  # diffusers' own reading of it
        PixArtTransformer2DModel.load_config(tmp_path / "t")
    recipe = parse_recipe(SYNTHETIC.format(teacher="f/t.safetensors", config=""), "r.yaml")
    assert _refused(make_plan, recipe, teacher_config="t") == (
        f"--teacher-config t: t/config.json is not a JSON config ({JUNK[junk][1]}); give the diffusers config "
        "of the transformer (its config.json, or the folder holding it)")


def test_a_teacher_config_of_a_list_is_said_as_no_json_config(tmp_path, monkeypatch):
    """--teacher-config of a JSON list said 'cfg.json is not a diffusers config (a JSON object); it holds a
    list', in other words than one that is no JSON, and with no --teacher-config before it."""
    monkeypatch.chdir(tmp_path)
    model = tiny_pixart()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "t.safetensors")
    (tmp_path / "cfg.json").write_text("[1, 2]\n")
    recipe = parse_recipe(SYNTHETIC.format(teacher="t.safetensors", config=""), "r.yaml")
    assert _refused(make_plan, recipe, teacher_config="cfg.json").startswith(
        "--teacher-config cfg.json is not a JSON config (an array, not a JSON object); ")


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "teacher not found: {t} (there is no "),
    (lambda p: p.with_suffix(".txt").write_text("x"), "{t} is not a checkpoint: file type '.txt'"),
    (lambda p: p.mkdir(), "{t} has neither model_index.json nor config.json"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("x")), "teacher {t}: its config.json is not a JSON config"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))),
     "{t} holds an AutoencoderKL (not a PixArt or Flux transformer)"),
])
def test_a_teacher_given_with_dash_dash_teacher_is_placed_there_once(tmp_path, make, words):
    """An error about the --teacher teacher carried no place (the weight mismatch alone said '--teacher: '),
    where the recipe's say 'r.yaml:2: '. Now '--teacher: ' first, once, and the recipe's line once."""
    make(tmp_path / "t")
    teacher = str(next((p for p in tmp_path.iterdir() if p.name.startswith("t")), tmp_path / "t"))
    recipe = _recipe(tmp_path / "r", overrides=["calibration={source: synthetic}"])
    for check in (lambda: checked_sources(recipe, teacher=teacher), lambda: make_plan(recipe, teacher=teacher)):
        said = _refused(check)
        assert said.startswith("--teacher: " + words.format(t=teacher)) and said.count("--teacher: ") == 1, said
    recipe = _recipe(tmp_path / "s", teacher=teacher, overrides=["calibration={source: synthetic}"])
    said = _refused(checked_sources, recipe)
    assert said.startswith(f"{recipe.path}:2: " + words.format(t=teacher)) and said.count("r.yaml:2") == 1, said
    assert "--teacher" not in said.split(";")[0]


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_eval_and_bench_place_their_dash_dash_teacher_s_errors(tmp_path, capsys, command):
    """eval's and bench's --teacher not there, or of a junk config.json, said no place ('teacher not found:
    ...'); now '--teacher: ' first, once, as a recipe command's."""
    from compress.cli import main
    from compress.io_export import save_compressed
    from tests.conftest import factorize

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], rank=2), tmp_path / "out")
    (out / "recipe.yaml").write_text(SYNTHETIC.format(teacher="toy:pixart", config=""))
    tiny_pixart().save_pretrained(tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text("[]")
    extra = ["--repeats", "1", "--device", "cpu"] if command == "bench" else []
    for teacher, words in ((tmp_path / "none", f"teacher not found: {tmp_path}/none (there is no "),
                           (tmp_path / "t", f"teacher {tmp_path}/t: its config.json is not a JSON config (an array")):
        capsys.readouterr()
        assert main([command, str(out), "--teacher", str(teacher), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"dit-compress {command}: error: --teacher: {words}") and err.count("--teacher: ") == 1, err


def test_a_checkpoint_given_as_teacher_config_is_told_without_reading_it_whole(tmp_path, monkeypatch):
    """R1: given_config read the whole --teacher-config file (a multi-GB checkpoint given there by mistake
    too), and a good config was parsed twice. A checkpoint is told by its first bytes, a file over
    CONFIG_MOST (4 MiB) by its size; a config is parsed once."""
    from compress.io_single_config import given_config

    monkeypatch.chdir(tmp_path)
    weights = {k: v.contiguous() for k, v in tiny_pixart().state_dict().items()}
    save_file(weights, "t.safetensors")
    torch.save(weights, "t.pth")
    torch.save(weights, "old.pth", _use_new_zipfile_serialization=False)
    with open("big.json", "wb") as f:
        f.truncate(64 * 2**20)  # sparse: 64 MiB of zeros
    told = {"t.safetensors": "a safetensors file of weights", "t.pth": "a zip archive, as torch.save writes a "
            "checkpoint", "old.pth": "a pickle, as an older torch.save writes a checkpoint",
            "big.json": "a file of 64 MiB; a config is a few KB"}
    for name, why in told.items():
        assert _refused(given_config, Path(name), name) == (
            f"--teacher-config {name} is not a JSON config ({why}); give the diffusers config of the transformer "
            "(its config.json, or the folder holding it)")
    parsed = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **k: parsed.append(a) or loads(*a, **k))
    Path("c.json").write_text(json.dumps(tiny_pixart().config))
    assert given_config(Path("c.json"), "c.json")["num_layers"] == tiny_pixart().config["num_layers"]
    assert len(parsed) == 1


@pytest.mark.parametrize("big", ["5 MiB", "safetensors"])
def test_a_teachers_own_config_json_that_is_big_or_a_checkpoint_is_told_without_reading_it(tmp_path, monkeypatch,
                                                                                           big):
    """A config.json beside a single file, or a folder's, that is a 5 MiB file or a safetensors checkpoint
    was read whole (read_config) before being told no config; now told by its first bytes and its size,
    as --teacher-config's is (io_single_config._config_or_why), in the same one line."""
    from compress import io as compress_io

    model = tiny_pixart()
    folder, single = tmp_path / "t", tmp_path / "f"
    model.save_pretrained(folder)
    single.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, single / "t.safetensors")
    for config in (folder / "config.json", single / "config.json"):
        if big == "5 MiB":
            config.write_text(json.dumps({"_class_name": "PixArtTransformer2DModel", "pad": "x" * 5 * 2**20}))
        else:
            save_file({"w": torch.zeros(4)}, str(config))
    why = "a file of 5 MiB; a config is a few KB" if big == "5 MiB" else "a safetensors file of weights"
    reads = []
    monkeypatch.setattr(compress_io, "read_config", lambda path: reads.append(path) or {})
    recipe_dir = tmp_path / "r"
    said = {str(folder): f"its config.json is not a JSON config ({why}); {FOLDER_FIX}",
            str(single / "t.safetensors"): f"the config.json beside it ({single}/config.json) is not a JSON config "
                                           f"({why}); give its transformer's diffusers config with --teacher-config, "
                                           "or put it there"}
    for teacher, words in said.items():
        recipe = _recipe(recipe_dir, teacher=teacher, overrides=["calibration={source: synthetic}"])
        assert _refused(checked_sources, recipe) == f"{recipe.path}:2: teacher {teacher}: {words}"
    assert reads == []


@pytest.mark.parametrize("single", [False, True])
def test_a_teachers_own_good_config_json_is_opened_once(tmp_path, monkeypatch, single):
    """A teacher's own config.json (a folder's, or the one beside a single file) was opened twice: its first
    bytes glanced at (ea4bb82), then read whole (read_config); now read once, as --teacher-config's is
    (io_single_config._config_or_why), and the same config."""
    import builtins
    import io

    from compress.io_single_config import own_config

    model = tiny_pixart()
    model.save_pretrained(tmp_path / "t")
    file = tmp_path / "t" / "config.json"
    source = str(tmp_path / "t" / "diffusion_pytorch_model.safetensors") if single else str(tmp_path / "t")
    expected, opened, real = json.loads(file.read_text()), [], builtins.open

    def counted(path, *a, **k):
        if str(path) == str(file):
            opened.append(path)
        return real(path, *a, **k)
    monkeypatch.setattr(builtins, "open", counted)
    monkeypatch.setattr(io, "open", counted)  # pathlib's read_text
    assert own_config(file, source, "file" if single else "folder") == expected
    assert len(opened) == 1
