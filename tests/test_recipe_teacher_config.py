"""A recipe's `teacher_config:` (recipe_teacher_config): the diffusers config of a single-file teacher read
from the recipe, as --teacher-config gives it, which replaces it; the output's recipe.yaml names it (absolute)
as a key, so that it reruns by itself."""

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from compress.cli import main
from compress.errors import UserError
from compress.passes import build_passes
from compress.plan import make_plan
from compress.recipe import load_recipe, parse_recipe
from compress.runner import Runner
from compress.runner_resume import recipe_changes
from tests.conftest import tiny_pixart
from tests.runner_helpers import one_svd, run_recipe

RECIPE = one_svd("teacher_config: {config}")


def single_file(tmp_path):
    """A tiny PixArt saved as one .safetensors (no config.json beside it: tmp_path/pix.safetensors) and its
    config in tmp_path/cfg; the model returned."""
    model = tiny_pixart()
    save_file(model.state_dict(), str(tmp_path / "pix.safetensors"))
    model.save_config(tmp_path / "cfg")
    return model


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- the key as a recipe reads it ---------------------------------------------------------------
def test_teacher_config_is_a_recipe_key_of_a_path_or_null():
    recipe = parse_recipe(RECIPE.format(teacher="pix.safetensors", config="cfg"), "r.yaml")
    assert recipe.teacher_config == "cfg" and recipe.raw["teacher_config"] == "cfg"
    assert parse_recipe(RECIPE.format(teacher="pix.safetensors", config="null"), "r.yaml").teacher_config is None
    without = RECIPE.format(teacher="toy:pixart", config="x").replace("teacher_config: x\n", "")
    assert parse_recipe(without, "r.yaml").teacher_config is None
    assert parse_recipe(without, "r.yaml", ["teacher_config=c"]).teacher_config == "c"


@pytest.mark.parametrize("value, words", [("[cfg]", "must be a string or null, not a list"),
                                          ("5", "must be a string or null, not 5"),
                                          ("{a: 1}", "must be a string or null, not a mapping"),
                                          ('""', "is empty: give the diffusers config of a single-file teacher "
                                                 "or a Hugging Face id (a folder, a pipeline folder or a JSON file")])
def test_a_teacher_config_of_another_type_is_one_line_at_its_line(value, words):
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE.format(teacher="pix.safetensors", config=value), "r.yaml")
    assert str(e.value).startswith(f"r.yaml:3: teacher_config {words}") and "\n" not in str(e.value)


def test_a_teacher_config_that_is_not_there_is_one_line_at_its_line(tmp_path, monkeypatch, capsys):
    """A relative path from the current folder, as teacher: is: one not there is refused by plan at the key's
    line, naming the path looked for, and the one beside the recipe where that is there."""
    single_file(tmp_path)
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text(RECIPE.format(teacher=tmp_path / "pix.safetensors", config="nope.json"))
    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"dit-compress plan: error: {path}:3: teacher_config nope.json not found: {tmp_path / 'nope.json'} "
                   "(a relative teacher_config is taken from the current folder, as teacher: is)\n")
    (tmp_path / "recipes" / "nope.json").write_text((tmp_path / "cfg" / "config.json").read_text())
    with pytest.raises(UserError, match=f"^{path}:3: teacher_config nope.json not found: .*; there is "
                                        f"{tmp_path / 'recipes' / 'nope.json'}: give that path\\)$"):
        make_plan(load_recipe(path))


# ---- a single-file teacher run through it ---------------------------------------------------------
def test_a_single_file_teacher_runs_with_the_recipes_teacher_config_and_its_output_reruns_by_itself(
        tmp_path, monkeypatch, capsys):
    """No --teacher-config: plan and run read the recipe's teacher_config (relative, from the current folder);
    the output records it absolute, its recipe.yaml names it as a key (no comment asking to give it again),
    and that recipe.yaml plans alone from another folder."""
    model = single_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    text = RECIPE.format(teacher=tmp_path / "pix.safetensors", config="cfg")
    assert make_plan(parse_recipe(text, str(tmp_path / "r.yaml")))["params_before"] == params(model)
    out = run_recipe(tmp_path, text, "r")
    report = json.loads((out / "report.json").read_text())
    assert report["teacher_config"] == str(tmp_path / "cfg")
    written = (out / "recipe.yaml").read_text()
    assert yaml.safe_load(written)["teacher_config"] == str(tmp_path / "cfg")
    assert f"teacher_config: {tmp_path / 'cfg'}\n" in written  # given: no '# default'
    assert "--teacher-config" not in written and "# teacher_config:" not in written
    monkeypatch.chdir("/")
    again = load_recipe(out / "recipe.yaml")
    assert again.teacher_config == str(tmp_path / "cfg")
    assert make_plan(again)["params_before"] == params(model)
    capsys.readouterr()
    assert main(["plan", str(out / "recipe.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_before"] == params(model)
    assert main(["eval", str(out), "--json"]) == 0  # the recorded config
    assert json.loads(capsys.readouterr().out)["pred_rel_error"] == pytest.approx(report["stages"][-1]["relative_error"])


def test_teacher_config_flag_wins_over_the_recipes_key(tmp_path, monkeypatch):
    """--teacher-config replaces the recipe's teacher_config, as --teacher replaces teacher: (a recipe's one
    that is not there is not read, so not refused); the output names the one read, the recipe's in a comment."""
    model = single_file(tmp_path)
    tiny_pixart(num_layers=3).save_config(tmp_path / "other")  # another model's config: plan tells them apart
    text = RECIPE.format(teacher=tmp_path / "pix.safetensors", config=tmp_path / "other")
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    assert make_plan(recipe)["params_before"] == params(tiny_pixart(num_layers=3))
    assert make_plan(recipe, teacher_config=str(tmp_path / "cfg"))["params_before"] == params(model)
    missing = parse_recipe(RECIPE.format(teacher=tmp_path / "pix.safetensors", config="nope"), "r.yaml")
    assert make_plan(missing, teacher_config=str(tmp_path / "cfg"))["params_before"] == params(model)
    out = run_recipe(tmp_path, text, "r", teacher_config=str(tmp_path / "cfg"))
    assert json.loads((out / "report.json").read_text())["teacher_config"] == str(tmp_path / "cfg")
    written = (out / "recipe.yaml").read_text()
    assert yaml.safe_load(written)["teacher_config"] == str(tmp_path / "cfg")
    assert f"# teacher_config: the one the run read (the recipe's was {tmp_path / 'other'})" in written
    monkeypatch.chdir("/")
    assert make_plan(load_recipe(out / "recipe.yaml"))["params_before"] == params(model)


def test_importance_reads_the_recipes_teacher_config(tmp_path, monkeypatch, capsys):
    single_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher="pix.safetensors", config="cfg"))
    assert main(["importance", "r.yaml", "--png", str(tmp_path / "i.png"), "--json", "-"]) == 0
    assert len(json.loads(capsys.readouterr().out)["blocks"]) == tiny_pixart().config.num_layers


def test_a_toy_teacher_names_the_recipes_unread_teacher_config_at_its_line(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text("{}")
    recipe = parse_recipe(RECIPE.format(teacher="toy:pixart", config=tmp_path / "cfg.json"), "r.yaml")
    make_plan(recipe)
    err = " ".join(capsys.readouterr().err.split())
    assert f"r.yaml:3: teacher_config {tmp_path / 'cfg.json'} is not read: teacher toy:pixart is a toy teacher " \
           "(teacher_config is the diffusers config of a single-file teacher or a Hugging Face id)" in err


# ---- --resume compares it as the teacher, not as written ------------------------------------------
def test_resume_compares_teacher_config_as_the_teacher_not_as_written(tmp_path):
    """The recipe's teacher_config, --teacher-config (no key) and the output's absolute path are one run:
    recipe_changes leaves the key to the teacher's identity (which compares the config by what it holds)."""
    key = parse_recipe(RECIPE.format(teacher="pix.safetensors", config="cfg"), "r.yaml")
    flag = parse_recipe(RECIPE.format(teacher="pix.safetensors", config="null"), "r.yaml")
    saved = {k: v for k, v in flag.raw.items() if k != "teacher_config"}  # a run folder saved before the key
    absolute = parse_recipe(RECIPE.format(teacher="pix.safetensors", config=Path("cfg").resolve()), "r.yaml")
    for before in (flag.raw, saved, absolute.raw):
        assert recipe_changes(before, key.raw, build_passes(key)) == []


def test_resume_takes_the_recipes_teacher_config_for_the_flag_it_was_run_with(tmp_path, monkeypatch):
    """A run with --teacher-config, resumed with the recipe's teacher_config naming the same config (relative):
    one teacher (runner_teacher_id compares what the config holds); one holding another config is refused."""
    single_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    plain = RECIPE.format(teacher="pix.safetensors", config="null")
    run_recipe(tmp_path, plain, "r", teacher_config=str(tmp_path / "cfg"))
    keyed = parse_recipe(RECIPE.format(teacher="pix.safetensors", config="cfg"), str(tmp_path / "r.yaml"))
    Runner(keyed, tmp_path / "again", tmp_path / "run-r", resume=True).run()
    assert json.loads((tmp_path / "again" / "report.json").read_text())["teacher_config"] == str(tmp_path / "cfg")
    edited = json.loads((tmp_path / "cfg" / "config.json").read_text())
    (tmp_path / "cfg2").mkdir()
    (tmp_path / "cfg2" / "config.json").write_text(json.dumps({**edited, "norm_eps": 2e-6}))
    other = parse_recipe(RECIPE.format(teacher="pix.safetensors", config="cfg2"), str(tmp_path / "r.yaml"))
    with pytest.raises(UserError, match=f"the teacher changed since .* \\(teacher_config \\({tmp_path / 'r.yaml'}:3\\) "
                                        "was .*cfg, now .*cfg2\\)"):  # the key gave it: named, at its line
        Runner(other, tmp_path / "third", tmp_path / "run-r", resume=True).run()
    with pytest.raises(UserError, match="the teacher changed since .* \\(--teacher-config was .*cfg, now .*cfg2\\)"):
        Runner(keyed, tmp_path / "third", tmp_path / "run-r", resume=True, teacher_config=str(tmp_path / "cfg2")).run()


def test_an_output_over_the_recipes_teacher_config_names_the_key(tmp_path, monkeypatch):
    """--out naming the folder of the config the recipe's teacher_config gives is refused naming the key at
    its line; it said 'the --teacher-config prev', a flag not given."""
    from compress.io_export import save_compressed

    single_file(tmp_path)
    save_compressed(tiny_pixart(), tmp_path / "prev")  # an earlier output, which --overwrite may replace
    monkeypatch.chdir(tmp_path)
    recipe = parse_recipe(RECIPE.format(teacher="pix.safetensors", config="prev"), str(tmp_path / "r.yaml"))
    with pytest.raises(UserError, match=f"^--out prev is the folder of the teacher_config prev \\({tmp_path / 'r.yaml'}:3\\); "
                                        "name an output folder that does not hold it$"):
        Runner(recipe, Path("prev"), tmp_path / "run", overwrite=True).prepare()
    with pytest.raises(UserError, match="^--out prev is the folder of the --teacher-config prev; name"):
        Runner(recipe, Path("prev"), tmp_path / "run", overwrite=True, teacher_config="prev").prepare()


# ---- a teacher that reads no config; a config under ~ ------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "toy"])
def test_a_teacher_reading_no_config_warns_of_the_recipes_teacher_config_not_found(tmp_path, monkeypatch, capsys, kind):
    """--teacher naming a folder or toy teacher: the recipe's teacher_config, not there from the current folder,
    is warned of as not read (and not found) by plan, run and importance; they refused it as not found."""
    tiny_pixart().save_pretrained(tmp_path / "pixdir")
    teacher = str(tmp_path / "pixdir") if kind == "folder" else "toy:pixart"
    (tmp_path / "cfg").mkdir()  # beside the recipe, not in the current folder
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(teacher="pix.safetensors", config="cfg"))
    (tmp_path / "else").mkdir()
    monkeypatch.chdir(tmp_path / "else")
    what = "a folder with its own config.json" if kind == "folder" else "a toy teacher"
    warning = (f"{path}:3: teacher_config cfg is not read (nor found: {tmp_path / 'else' / 'cfg'}): teacher {teacher} "
               f"is {what} (teacher_config is the diffusers config of a single-file teacher or a Hugging Face id)")
    assert main(["plan", str(path), "--teacher", teacher]) == 0
    assert warning in " ".join(capsys.readouterr().err.split())
    out = run_recipe(tmp_path, path.read_text(), "r", teacher=teacher)
    assert warning in " ".join(capsys.readouterr().err.split())
    assert "teacher_config" not in json.loads((out / "report.json").read_text())
    assert main(["importance", str(path), "--teacher", teacher, "--png", str(tmp_path / "i.png"), "--json", "-"]) == 0
    assert warning in " ".join(capsys.readouterr().err.split())


def test_a_teacher_config_under_home_is_recorded_expanded(tmp_path, monkeypatch):
    """teacher_config: ~/cfg (and teacher: ~/pix.safetensors) are recorded absolute, as ./cfg is: the output's
    recipe.yaml kept '~/cfg' with a comment saying the recipe's was ~/cfg, and report.json '~/cfg'."""
    single_file(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    out = run_recipe(tmp_path, RECIPE.format(teacher="~/pix.safetensors", config="~/cfg"), "r")
    report = json.loads((out / "report.json").read_text())
    assert (report["teacher"], report["teacher_config"]) == (str(tmp_path / "pix.safetensors"), str(tmp_path / "cfg"))
    written = (out / "recipe.yaml").read_text()
    assert yaml.safe_load(written)["teacher_config"] == str(tmp_path / "cfg") and "# teacher_config:" not in written
    assert json.loads((out / "config.json").read_text())["compression"]["teacher_config"] == str(tmp_path / "cfg")


@pytest.mark.parametrize("kind", ["folder", "toy"])
def test_the_flag_not_found_is_refused_for_a_teacher_reading_no_config_saying_why(tmp_path, monkeypatch, capsys, kind):
    """Unlike the recipe's key (warned, above), --teacher-config not there is refused whatever the teacher, a
    toy or folder one too (typed for this command): one line saying so, by plan, importance and run (the
    Runner's check, for the Python API too); the refusal gave no reason there before."""
    tiny_pixart().save_pretrained(tmp_path / "pixdir")
    teacher = str(tmp_path / "pixdir") if kind == "folder" else "toy:pixart"
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(teacher=teacher, config="null"))
    monkeypatch.chdir(tmp_path)
    why = ("; the flag is checked whatever the teacher, as given for this command: leave it out for a toy or folder "
           "teacher, which reads none (a recipe's teacher_config: not there is only warned of there)")
    for argv in (["plan", str(path)], ["importance", str(path), "--png", "i.png"], ["run", str(path)]):
        assert main(argv + ["--teacher-config", "nocfg"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.strip().endswith(why), err
        assert "--teacher-config 'nocfg': no such file or folder (the diffusers config of a single-file" in err


def test_reads_no_config_one_rule_as_given_and_as_recorded(tmp_path, monkeypatch):
    """recipe_teacher_config.reads_no_config, the one rule of teacher_config_of (a source as given) and of
    runner_teacher_id (`recorded`: a folder only where absolute, so a Hub id recorded that is a folder of the
    current one is still read as a Hub id); not a string: False."""
    from compress.recipe_teacher_config import reads_no_config
    from compress.runner_teacher_id import as_compared, named_now

    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "file.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    cases = {"toy:pixart": (True, True), str(tmp_path / "org" / "name"): (True, True), "org/name": (True, False),
             "file.safetensors": (False, False), str(tmp_path / "file.safetensors"): (False, False),
             "nowhere/model": (False, False), None: (False, False)}
    for source, (given, recorded) in cases.items():
        assert (reads_no_config(source), reads_no_config(source, recorded=True)) == (given, recorded), source
    assert as_compared({"source": "org/name", "config": "c"}) == {"source": "org/name", "config": "c"}
    assert as_compared({"source": str(tmp_path / "org" / "name"), "config": "c"})["config"] is None
    assert named_now("org/name", "c")["config"] is None  # named: made absolute where it is there, then read


def test_the_flag_not_found_is_said_as_fits_each_command_that_takes_it(tmp_path, monkeypatch, capsys):
    """The refusal of a --teacher-config not there ended, for every command, in "...leave it out for a toy or folder
    teacher, which reads none (a recipe's teacher_config: not there is only warned of there)": eval, bench and lora
    read no recipe, and convert has no teacher (its file's config, else the config.json beside the file)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(teacher="toy:pixart", config="null"))
    teacher = "a single-file teacher or a Hugging Face id: a folder, a pipeline folder or a JSON file such as config.json)"
    why = "; the flag is checked whatever the teacher, as given for this command: leave it out for a toy or folder "
    ends = {("plan", str(path)): f"{teacher}{why}teacher, which reads none (a recipe's teacher_config: not there is "
                                 "only warned of there)",
            ("eval", "out"): f"{teacher}{why}teacher, which reads none",
            ("bench", "out"): f"{teacher}{why}teacher, which reads none",
            ("lora", "out", "l.safetensors", "new"): f"{teacher.replace('teacher', '--teacher', 1)}{why}teacher, "
                                                     "which reads none",
            ("convert", "f.safetensors", "o"): "the file's transformer: a folder, a pipeline folder or a JSON file "
                                               "such as config.json); leave it out to read the config.json beside "
                                               "the file"}
    for argv, end in ends.items():
        assert main([*argv, "--teacher-config", "nocfg"]) == 2, argv
        err = capsys.readouterr().err
        said = "--teacher-config 'nocfg': no such file or folder (the diffusers config of "
        assert err == f"dit-compress {argv[0]}: error: {said}{end}\n", argv


def test_the_flag_not_found_is_said_as_fits_the_teacher_given(tmp_path, monkeypatch, capsys):
    """With a --teacher, the refusal of a --teacher-config not there fits it: a single file, which reads the flag,
    is named and not told to leave it out for a toy or folder teacher; a toy or folder --teacher is named, as
    the 'not read' warning names it; and the flag is, as that warning says, the diffusers config of a single-file
    teacher or a Hugging Face id (the refusal said 'of a single-file teacher' alone)."""
    monkeypatch.chdir(tmp_path)
    tiny_pixart().save_pretrained(tmp_path / "pixdir")
    (tmp_path / "t.safetensors").write_bytes(b"")
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(teacher="toy:pixart", config="null"))
    said = "dit-compress {}: error: --teacher-config 'nocfg': no such file or folder (the diffusers config of "
    kinds = " a folder, a pipeline folder or a JSON file such as config.json)"
    checked = "; the flag is checked whatever the teacher, as given for this command: leave it out: teacher "
    recipe = " (a recipe's teacher_config: not there is only warned of there)"
    for argv, recipe_note in ((["plan", str(path)], recipe), (["eval", "out"], ""), (["bench", "out"], "")):
        assert main([*argv, "--teacher", "t.safetensors", "--teacher-config", "nocfg"]) == 2
        assert capsys.readouterr().err == f"{said.format(argv[0])}the single-file teacher t.safetensors:{kinds}\n", argv
        for teacher, what in (("toy:pixart", "a toy teacher"), ("pixdir", "a folder with its own config.json")):
            assert main([*argv, "--teacher", teacher, "--teacher-config", "nocfg"]) == 2
            assert capsys.readouterr().err == (f"{said.format(argv[0])}a single-file teacher or a Hugging Face id:{kinds}{checked}"
                                               f"{teacher} is {what}, which reads none{recipe_note}\n"), argv
    assert main(["eval", "out", "--teacher", "acme/pix", "--teacher-config", "nocfg"]) == 2  # a Hub id reads it
    assert capsys.readouterr().err == f"{said.format('eval')}a single-file teacher or a Hugging Face id:{kinds}\n"


def _line_of(text: str, key: str) -> int:
    """The line of the recipe `text` that sets the top-level `key` (1 the first)."""
    return 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith(f"{key}:"))


@pytest.mark.parametrize("config", ["flux", "junk"])
def test_a_recipes_teacher_config_not_of_its_files_transformer_is_said_at_its_line(tmp_path, monkeypatch, capsys,
                                                                                  config):
    """A single-file teacher's config of the other family (or of no transformer), given by the recipe's
    teacher_config:, is refused at that key's line and the advice names that key; given by
    --teacher-config, at the teacher's line naming the flag, as before."""
    from tests.conftest import tiny_flux

    single_file(tmp_path)
    if config == "flux":
        tiny_flux().save_config(tmp_path / "bad")
        words = ("the checkpoint's weights are a pixart transformer while the config in "
                 f"{tmp_path / 'bad'} describes a flux one; give the config of its own transformer")
    else:
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "config.json").write_text('{"in_channels": 4}')
        words = (f"the config in {tmp_path / 'bad'} has no _class_name, not a PixArt/Flux transformer config; "
                 "give the config of its own transformer")
    monkeypatch.chdir(tmp_path)
    text = RECIPE.format(teacher=tmp_path / "pix.safetensors", config=tmp_path / "bad")
    (tmp_path / "r.yaml").write_text(text)
    key_line, teacher_line = _line_of(text, "teacher_config"), _line_of(text, "teacher")
    for command in (["plan", "r.yaml"], ["run", "r.yaml", "--out", "o", "--run-dir", "w"]):
        assert main(command) != 0
        assert capsys.readouterr().err.strip().endswith(
            f"error: r.yaml:{key_line}: {tmp_path / 'pix.safetensors'}: {words} (teacher_config)")
    tiny_pixart().save_config(tmp_path / "good")
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher=tmp_path / "pix.safetensors", config=tmp_path / "good"))
    assert main(["plan", "r.yaml", "--teacher-config", str(tmp_path / "bad")]) != 0
    assert capsys.readouterr().err.strip().endswith(
        f"error: r.yaml:{teacher_line}: {tmp_path / 'pix.safetensors'}: {words} (--teacher-config)")


def test_a_recipes_teacher_config_not_of_its_pickles_transformer_is_said_at_its_line_as_it_loads(tmp_path, monkeypatch,
                                                                                                 capsys):
    """S47: a .pth teacher's family shows only as it loads (its names are not read before), where a Flux
    config given by the recipe's teacher_config: for its PixArt weights was refused at the teacher: line,
    advising '(--teacher-config)', a flag never given (8978e52 mended the check before loading, which a
    .safetensors file meets). Now run and importance say it at the teacher_config: line, naming that key;
    given by --teacher-config, at the teacher's line naming the flag, as before."""
    import torch

    from tests.conftest import tiny_flux

    torch.save(tiny_pixart().state_dict(), tmp_path / "pix.pth")
    tiny_flux().save_config(tmp_path / "bad")
    tiny_flux().save_config(tmp_path / "bad2")
    monkeypatch.chdir(tmp_path)
    text = RECIPE.format(teacher=tmp_path / "pix.pth", config=tmp_path / "bad")
    (tmp_path / "r.yaml").write_text(text)
    key_line, teacher_line = _line_of(text, "teacher_config"), _line_of(text, "teacher")

    def words(config: str) -> str:
        return (f"{tmp_path / 'pix.pth'}: the checkpoint's weights are a pixart transformer while the config in "
                f"{tmp_path / config} describes a flux one; give the config of its own transformer")

    for command in (["run", "r.yaml", "--out", "o", "--run-dir", "w"], ["importance", "r.yaml"]):
        assert main(command) != 0
        assert capsys.readouterr().err.strip().endswith(f"error: r.yaml:{key_line}: {words('bad')} (teacher_config)")
    assert main(["run", "r.yaml", "--out", "o", "--run-dir", "w", "--teacher-config", str(tmp_path / "bad2")]) != 0
    assert capsys.readouterr().err.strip().endswith(f"error: r.yaml:{teacher_line}: {words('bad2')} (--teacher-config)")
