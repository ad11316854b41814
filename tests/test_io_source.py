"""Teacher sources checked before anything loads: what they are, their family from the config alone,
and errors that name the recipe's file:line and the path looked for (Hub teachers:
tests/test_io_source_hub.py)."""

import json

import pytest

from compress.errors import BadValue, UserError
from compress.io_source_config import source_family
from compress.io_source_recipe import checked_sources
from compress.recipe import load_recipe
from tests.conftest import tiny_flux, tiny_pixart

RECIPE = """\
model: {model}
teacher: {teacher!r}
calibration: {{source: pipeline, prompt_file: {prompts}}}
passes:
  - svd: {{targets: [mlp], ratio: 0.5}}
"""


def _recipe(folder, teacher="toy:pixart", model="pixart", prompts="prompts.txt", overrides=()):
    """A recipe in `folder` (made) with a prompt file beside it, loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.txt").write_text("a cat\n")
    path = folder / "r.yaml"
    path.write_text(RECIPE.format(model=model, teacher=teacher, prompts=prompts))
    return load_recipe(path, list(overrides))


def test_a_recipe_teacher_that_is_not_there_names_its_line_the_path_and_the_rule(tmp_path, monkeypatch):
    """A relative teacher path is taken from the current folder, not the recipe's: the error says
    so, with the absolute path looked for, and points at the recipe's folder where it is there."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    recipe = _recipe(tmp_path / "sub", teacher="./nope/there")
    with pytest.raises(UserError) as e:
        checked_sources(recipe)
    assert str(e.value) == (f"{recipe.path}:2: teacher not found: ./nope/there (there is no "
                            f"{tmp_path}/here/nope/there; a recipe's relative teacher path is taken from "
                            "the current folder, not the recipe's)")
    tiny_pixart().save_pretrained(tmp_path / "sub" / "t")
    recipe = _recipe(tmp_path / "sub", teacher="t")
    with pytest.raises(UserError, match=f"where {tmp_path}/sub/t is: give that path instead"):
        checked_sources(recipe)
    with pytest.raises(UserError, match=rf"^--teacher: teacher not found: t \(there is no {tmp_path}/here/t; a Hugging"):
        checked_sources(recipe, teacher="t")  # --teacher: its place, no recipe line, no recipe rule


def test_a_recipe_teacher_read_as_a_hub_id_that_is_a_path_from_the_recipes_folder_is_warned(
        tmp_path, monkeypatch, capsys):
    """'models/t' is OWNER/NAME, so missing here it is a Hub id (no error before the fetch); where it
    is a folder beside the recipe, the user meant that: a warning names it and the rule."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    tiny_pixart().save_pretrained(tmp_path / "sub" / "models" / "t")
    config = dict(tiny_pixart().config, _class_name="PixArtTransformer2DModel")
    monkeypatch.setattr("compress.io_source_config.hub_config", lambda repo: config)  # no network
    checked_sources(_recipe(tmp_path / "sub", teacher="models/t"))
    said = " ".join(capsys.readouterr().err.split())
    assert f"r.yaml:2: teacher models/t is read as a Hugging Face id: there is no {tmp_path}/here/models/t" in said
    assert f"but there is {tmp_path}/sub/models/t: give that path to use it" in said
    checked_sources(_recipe(tmp_path / "sub", teacher="models/other"))  # not there either: a Hub id, no warning
    checked_sources(_recipe(tmp_path / "sub", teacher="models/t"), teacher="models/t")  # --teacher: cwd only
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("teacher, model, words", [
    ("", "pixart", ":2: the teacher is empty; give toy:pixart, toy:flux, a Hugging Face id (OWNER/NAME), "
                   "or a local folder or checkpoint file"),
    ("toy:pixar", "pixart", ":2: unknown toy teacher 'toy:pixar'; did you mean 'toy:pixart'? (the toy "
                            "teachers: toy:pixart, toy:flux)"),
    ("toy:pixart", "flux", ":1: model is 'flux' but the teacher toy:pixart is a PixArtTransformer2DModel "
                           "(pixart); set model: pixart or give a flux teacher"),
])
def test_a_recipe_teacher_error_names_the_recipe_line(tmp_path, teacher, model, words):
    recipe = _recipe(tmp_path, teacher=teacher, model=model)
    with pytest.raises(UserError) as e:
        checked_sources(recipe)
    assert str(e.value) == f"{recipe.path}{words}"


def test_a_teacher_set_on_the_command_line_is_named_as_such(tmp_path):
    recipe = _recipe(tmp_path, overrides=["teacher=toy:flx"])
    with pytest.raises(UserError, match=r"r.yaml \(--set teacher\): unknown toy teacher 'toy:flx'; did you mean"):
        checked_sources(recipe)


def test_a_missing_prompt_file_names_its_line_and_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path / "sub", prompts="nope.txt")
    with pytest.raises(UserError) as e:
        checked_sources(recipe)
    assert str(e.value) == (f"{recipe.path}:3: calibration.prompt_file nope.txt not found: {tmp_path}/sub/nope.txt "
                            "(a relative prompt_file is taken from the recipe's folder)")


def test_a_missing_prompt_file_points_at_the_one_beside_the_links_target_or_in_the_current_folder(tmp_path,
                                                                                                  monkeypatch):
    """A recipe reached through a link looks beside the link (the rule stays); the prompt file beside its
    target, or one a --set named in the current folder, was not pointed at (the teacher's words do so)."""
    real = _recipe(tmp_path / "real")  # prompts.txt beside it
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "r.yaml").symlink_to(real.path)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(UserError) as e:
        checked_sources(load_recipe(tmp_path / "links" / "r.yaml"))
    assert str(e.value) == (f"{tmp_path}/links/r.yaml:3: calibration.prompt_file prompts.txt not found: "
                            f"{tmp_path}/links/prompts.txt (a relative prompt_file is taken from the recipe's "
                            f"folder: the link {tmp_path}/links/r.yaml's, not its target's, where "
                            f"{tmp_path}/real/prompts.txt is: give that path instead)")
    (tmp_path / "here" / "mine.txt").write_text("a dog\n")
    with pytest.raises(UserError) as e:
        checked_sources(load_recipe(real.path, ["calibration.prompt_file=mine.txt"]))
    assert str(e.value) == (f"{real.path} (--set calibration.prompt_file): calibration.prompt_file mine.txt not "
                            f"found: {tmp_path}/real/mine.txt (a relative prompt_file is taken from the recipe's "
                            f"folder, not the current folder, where {tmp_path}/here/mine.txt is: give that path "
                            "instead)")
    assert checked_sources(_recipe(tmp_path / "sub")).source == "toy:pixart"  # prompts.txt beside the recipe


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), "has neither model_index.json nor config.json"),
    (lambda p: (p.mkdir(), (p / "notes.md").write_text("x")), "has neither model_index.json nor config.json"),
    (lambda p: (p.mkdir(), (p / "model_index.json").write_text("{}")), "is a pipeline folder without transformer/"),
    (lambda p: p.write_text("hello\n"), "is not a checkpoint: no file type; a teacher is a folder or a checkpoint"),
])
def test_something_that_is_not_a_teacher_says_what_it_is(tmp_path, make, words):
    make(tmp_path / "x")
    recipe = _recipe(tmp_path / "r", teacher=str(tmp_path / "x"))
    with pytest.raises(UserError, match=f"^{recipe.path}:2: {tmp_path}/x {words}"):
        checked_sources(recipe)


def test_a_safetensors_file_tells_its_family_from_its_header(tmp_path):
    from safetensors.torch import save_file

    save_file(tiny_flux().state_dict(), str(tmp_path / "f.safetensors"))
    assert source_family(str(tmp_path / "f.safetensors")) == ("flux", "FluxTransformer2DModel")
    (tmp_path / "g.safetensors").write_bytes(b"\0" * 64)  # unreadable: said at once, before its loader
    with pytest.raises(UserError, match=r"g.safetensors is not a readable safetensors file \("):
        source_family(str(tmp_path / "g.safetensors"))


@pytest.mark.parametrize("calibration, warned", [
    ("{source: synthetic, prompt_file: p.txt, height: 512}", ["r.yaml:3: calibration.prompt_file: only a pipeline "
                                                             "source reads it; the synthetic source ignores it",
                                                             "calibration.height: only a pipeline"]),
    ("\n  source: toy\n  prompts: [a, b]\n", ["r.yaml:5: calibration.prompts: only a pipeline source reads it; the "
                                            "toy source ignores it"]),
    ("{source: synthetic, timesteps: 4}", []),
])
def test_calibration_keys_a_source_does_not_read_are_warned_at_their_line(tmp_path, capsys, calibration, warned):
    """prompt_file, height, width, ... did nothing with a toy or synthetic source, without a word."""
    path = tmp_path / "r.yaml"
    path.write_text(f"model: pixart\nteacher: toy:pixart\ncalibration: {calibration}\npasses:\n  - distill: {{steps: 1}}\n")
    checked_sources(load_recipe(path))
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("warning:") == len(warned) and all(w in said for w in warned), said


def test_more_timesteps_than_sampler_steps_are_warned(tmp_path, capsys):
    recipe = _recipe(tmp_path, overrides=["calibration.timesteps=50", "calibration.sample_steps=4"])
    checked_sources(recipe)
    said = " ".join(capsys.readouterr().err.split())
    assert "(--set calibration.timesteps): calibration.timesteps: 50 timesteps of a 4-step sampler: only 4 are " \
           "captured" in said


@pytest.mark.parametrize("weights, config", [("flux", "pixart"), ("pixart", "flux")])
def test_a_single_file_with_a_config_of_the_other_family_says_so_before_loading(tmp_path, monkeypatch, weights,
                                                                                config):
    """Flux weights with a PixArt config (or the reverse): whichever model the recipe names, the
    check says what the file's header and the config each describe, before any tensor is read."""
    from safetensors.torch import save_file

    import compress.io_tensors

    make = {"pixart": tiny_pixart, "flux": tiny_flux}
    save_file(make[weights]().state_dict(), str(tmp_path / "t.safetensors"))
    make[config]().save_config(tmp_path / "cfg")
    monkeypatch.setattr(compress.io_tensors, "read_state_dict", lambda *a, **k: pytest.fail("read the tensors"))
    for model in ("pixart", "flux"):
        recipe = _recipe(tmp_path / model, model=model)
        with pytest.raises(UserError) as e:
            checked_sources(recipe, teacher=str(tmp_path / "t.safetensors"), config=str(tmp_path / "cfg"))
        assert str(e.value) == (f"--teacher: {tmp_path}/t.safetensors: the checkpoint's weights are a {weights} transformer "
                                f"while the config in {tmp_path}/cfg describes a {config} one; give the config of "
                                f"its own transformer (--teacher-config)")


@pytest.mark.parametrize("weights, config", [("flux", "pixart"), ("pixart", "flux")])
def test_a_folder_whose_config_json_is_of_the_other_family_says_so_before_loading(tmp_path, weights, config):
    """A folder of PixArt weights with a Flux config.json said 'model is pixart but the teacher t is a
    FluxTransformer2DModel (flux); set model: flux', and with model: flux 'the weights do not match
    config.json: missing ...': whichever model the recipe names, what the weights' headers and the
    config each describe, as of a single file (sharded weights read from every shard's header)."""
    import shutil

    make = {"pixart": tiny_pixart, "flux": tiny_flux}
    make[weights]().save_pretrained(tmp_path / "t", max_shard_size="40KB")
    make[config]().save_config(tmp_path / "cfg")
    shutil.copy(tmp_path / "cfg" / "config.json", tmp_path / "t" / "config.json")
    named = {"pixart": "PixArtTransformer2DModel", "flux": "FluxTransformer2DModel"}
    for model in ("pixart", "flux"):
        recipe = _recipe(tmp_path / model, teacher=str(tmp_path / "t"), model=model)
        with pytest.raises(UserError) as e:
            checked_sources(recipe)
        assert str(e.value) == (f"{recipe.path}:2: {tmp_path}/t: its weights are a {weights} transformer while its "
                                f"config.json describes a {config} one ({named[config]}): fix its _class_name (a "
                                f"{weights} transformer's is {named[weights]}) or give the right folder")


def _counting(monkeypatch):
    """(sources checked, configs read) from here on: lists that grow with each call."""
    import compress.io
    import compress.io_single_config
    import compress.io_source
    import compress.io_source_config

    checked, read = [], []
    check, read_config = compress.io_source.check_source, compress.io.read_config
    config_or_why = compress.io_single_config._config_or_why  # a teacher's own config.json is read by it

    def counted(*a, **k):
        return checked.append(a[0]) or check(*a, **k)

    monkeypatch.setattr(compress.io_source, "check_source", counted)  # what io.py, lora.py import in a call
    monkeypatch.setattr(compress.io_source_config, "check_source", counted)  # what `checked` calls
    monkeypatch.setattr(compress.io, "read_config", lambda p: read.append(p) or read_config(p))
    monkeypatch.setattr(compress.io_single_config, "_config_or_why", lambda p: read.append(p) or config_or_why(p))
    return checked, read


def test_checked_sources_checks_the_teacher_and_reads_its_config_once(tmp_path, monkeypatch):
    tiny_pixart().save_pretrained(tmp_path / "t")
    recipe = _recipe(tmp_path / "r", teacher=str(tmp_path / "t"), overrides=["calibration={source: synthetic}"])
    checked, read = _counting(monkeypatch)
    assert checked_sources(recipe).source == str(tmp_path / "t")
    assert checked == [str(tmp_path / "t")] and read == [tmp_path / "t" / "config.json"]


def test_an_outputs_weight_file_is_refused_with_its_folder_named(tmp_path, capsys):
    """Given where a teacher or a model goes, an output's weight file (its header records the
    compression) is one line naming the folder to give instead, for plan's checks and eval alike;
    a plain diffusers weight file beside a plain config is still a teacher."""
    from compress.cli import main
    from compress.io_source import check_source
    from compress.io_export import save_compressed

    out = save_compressed(tiny_pixart(), tmp_path / "out")
    weights = out / "diffusion_pytorch_model.safetensors"
    with pytest.raises(UserError) as e:
        check_source(str(weights), "r.yaml:3: ")
    assert str(e.value) == (f"r.yaml:3: {weights} is a weight file of the dit-compress output {out}: give that "
                            "folder, which loads it with its ranks and block map")
    assert main(["eval", str(weights)]) == 2
    err = capsys.readouterr().err
    assert f"is a weight file of the dit-compress output {out}" in err and "Traceback" not in err
    tiny_pixart().save_pretrained(tmp_path / "plain")
    assert check_source(str(tmp_path / "plain" / "diffusion_pytorch_model.safetensors")) == "file"
    copied = tmp_path / "copied.safetensors"  # out of its folder: '… of the dit-compress output {tmp_path}' was false
    copied.write_bytes(weights.read_bytes())
    with pytest.raises(UserError) as e:
        check_source(str(copied), "r.yaml:3: ")
    assert str(e.value) == (f"r.yaml:3: {copied} is the weight file of a dit-compress output, copied out of its "
                            "folder: give the output folder it came from, which loads it with its ranks and block map")


def test_a_streamed_runs_output_weight_file_says_the_folder_does_not_stream_either(tmp_path):
    """A streamed run given an output's weight file (a shard) was told to give the folder, which was
    then refused as not streamable: one message says both, for the folder and for a copy out of it;
    a resident run's says only the folder."""
    from compress.io_export import save_compressed

    out = save_compressed(tiny_pixart(), tmp_path / "out")
    weights = out / "diffusion_pytorch_model.safetensors"
    copied = tmp_path / "copied.safetensors"
    copied.write_bytes(weights.read_bytes())
    resident = (", and compress it further resident (stream: false in the recipe, or --set stream=false): its "
                "factorized layers are not the dense per-block tensors stream: true reads a block at a time")
    recipe = load_recipe(_recipe(tmp_path / "r").path, ["stream=true", "calibration.source=synthetic"])
    with pytest.raises(UserError) as e:
        checked_sources(recipe, str(weights))
    assert str(e.value) == (f"--teacher: {weights} is a weight file of the dit-compress output {out}: give that "
                            f"folder, which loads it with its ranks and block map{resident}")
    with pytest.raises(UserError) as e:
        checked_sources(recipe, str(copied))
    assert str(e.value).endswith(f"give the output folder it came from, which loads it with its ranks and block "
                                 f"map{resident}")
    with pytest.raises(UserError) as e:
        checked_sources(load_recipe(recipe.path, ["calibration.source=synthetic"]), str(weights))
    assert str(e.value).endswith("which loads it with its ranks and block map")


def test_an_output_saved_again_is_still_an_outputs_weight_file(tmp_path):
    """save_pretrained of a loaded output writes a plain header; the config.json beside the file
    keeps the compression section, which says whose weight file it is (convert, bench, importance
    and a teacher source read this); a file whose config has none, or no config, is no output's."""
    from compress import load_transformer
    from compress.io_export import save_compressed
    from compress.io_source import output_record
    from tests.conftest import factorize

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], 4), tmp_path / "out")
    load_transformer(out).save_pretrained(tmp_path / "saved")
    weights = tmp_path / "saved" / "diffusion_pytorch_model.safetensors"
    assert output_record(weights)["ranks"] == {"transformer_blocks.0.attn1.to_q": 4}
    (tmp_path / "saved" / "config.json").write_text("[1, 2]")
    assert output_record(weights) is None
    (tmp_path / "saved" / "config.json").unlink()
    assert output_record(weights) is None


def test_a_teacher_config_a_toy_or_folder_does_not_read_is_said(tmp_path, capsys):
    """--teacher-config with a toy or folder teacher was dropped without a word."""
    from compress.io_source_config import checked

    tiny_pixart().save_pretrained(tmp_path / "t")
    for source in ("toy:pixart", str(tmp_path / "t")):
        checked(source, str(tmp_path / "t"))
        assert f"--teacher-config {tmp_path / 't'} is not read: teacher {source}" in capsys.readouterr().err
    checked("toy:pixart")
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("overrides, teacher, given", [
    (["teacher=toy:flux"], None, " (--set teacher)"),
    (["teacher=toy:flux"], "toy:flux", " (--teacher)"),  # --teacher is what the run uses
    ([], "toy:flux", " (--teacher)"),
])
def test_a_teacher_of_another_family_names_the_set_or_option_that_gave_it(tmp_path, overrides, teacher, given):
    """The mismatch is said at the file's model: line, and names the --set teacher (as --teacher)
    that gave the teacher, not the file's teacher: line alone (the file says toy:pixart)."""
    recipe = _recipe(tmp_path, overrides=overrides)
    with pytest.raises(UserError) as e:
        checked_sources(recipe, teacher=teacher)
    assert str(e.value) == (f"{recipe.path}:1: model is 'pixart' but the teacher toy:flux{given} is a "
                            "FluxTransformer2DModel (flux); set model: flux or give a pixart teacher")


def test_a_model_set_on_the_command_line_is_named_in_the_mismatch(tmp_path):
    recipe = _recipe(tmp_path, overrides=["model=flux"])
    with pytest.raises(UserError, match=r"^\S*r.yaml \(--set model\): model is 'flux' but the teacher toy:pixart "
                                        r"is a PixArtTransformer2DModel"):
        checked_sources(recipe)


def test_a_pickle_teacher_of_another_family_names_the_set_that_gave_it(tmp_path):
    """A pickle's family comes from its config only as plan builds it: that mismatch names the --set too."""
    from compress.plan import make_plan

    tiny_flux().save_config(tmp_path / "t")
    (tmp_path / "t" / "model.ckpt").write_bytes(b"")  # never read: the plan builds from the config
    recipe = _recipe(tmp_path / "r", overrides=[f"teacher={tmp_path}/t/model.ckpt", "calibration={source: synthetic}"])
    with pytest.raises(UserError, match=rf"r.yaml:1: model is 'pixart' but the config {tmp_path}/t/config.json beside "
                                        rf"the teacher {tmp_path}/t/model.ckpt \(--set teacher\) describes a "
                                        r"FluxTransformer2DModel \(flux\); set model: flux or give the config of its "
                                        r"own transformer$"):
        make_plan(recipe)


@pytest.mark.parametrize("config, what", [({"_class_name": "AutoencoderKL"}, "describes AutoencoderKL"),
                                          ({"svd": {"method": "whitened"}}, "has no _class_name")])
def test_a_pickle_teachers_config_of_no_transformer_is_said_before_loading(tmp_path, config, what):
    """plan read a report.json given as --teacher-config as a class named '<missing _class_name>'."""
    import torch

    from compress.plan import make_plan

    torch.save(tiny_pixart().state_dict(), tmp_path / "t.pth")
    (tmp_path / "c.json").write_text(json.dumps(config))
    recipe = _recipe(tmp_path / "r")
    for check in (lambda: checked_sources(recipe, teacher=str(tmp_path / "t.pth"), config=str(tmp_path / "c.json")),
                  lambda: make_plan(recipe, teacher=str(tmp_path / "t.pth"), teacher_config=str(tmp_path / "c.json"))):
        with pytest.raises(UserError) as e:
            check()
        assert str(e.value) == (f"--teacher: {tmp_path}/t.pth: the config in {tmp_path}/c.json {what}, not a PixArt/Flux "
                                "transformer config; give the config of its own transformer (--teacher-config)")


def test_a_prefixed_error_keeps_its_class_and_an_empty_where_adds_nothing():
    """R1: io_source.prefixed raised a plain UserError: a subclass's class, exit code and label (and what a
    caller catches it by, as runner_setup does io_single.OtherFamily) were lost, also where `where` was ''."""
    from compress.io_source import prefixed
    from compress.runner_failures import OutOfMemory

    def refuse(error):
        raise error

    with pytest.raises(OutOfMemory) as caught:
        prefixed("--teacher: ", refuse, OutOfMemory("no room"))
    assert str(caught.value) == "--teacher: no room" and caught.value.exit_code == 1  # a UserError's is 2
    with pytest.raises(BadValue) as caught:
        prefixed("", refuse, BadValue("ratio", "too big", reads=("energy",)))
    assert str(caught.value) == "too big" and caught.value.key == "ratio" and caught.value.reads == ("energy",)
