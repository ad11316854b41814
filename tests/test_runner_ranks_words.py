"""What differs between rank 0's run and a follower's, in words (compress.runner_ranks_words)."""

from compress.runner_ranks_words import WORDS


def _identity(prompts: list[str]) -> dict:
    """A pipeline source's inputs_identity for `prompts`, as PipelineSource.inputs_identity makes it."""
    import hashlib
    import json

    return {"prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16], "pipeline": None}


def test_other_prompts_read_of_the_same_recipe_are_worded_as_its_prompt_files_lines():
    """A follower compares the inputs read once prepared, after its recipe was found rank 0's (the
    prompts inline, prompt_file, num_prompts with it): the prompts read then differ only where the
    prompt file holds other lines there. The words named 'calibration.prompts, or the lines
    calibration.prompt_file holds here' whatever the recipe reads, though inline prompts cannot differ
    by then (calib_prompts.prompts_in_words names the keys a recipe reads its prompts from)."""
    said = WORDS["inputs"](_identity(["a cat", "a dog"]), _identity(["a cat", "a cow"]))
    assert said == ("the calibration prompts read here differ from rank 0's: the recipe is the same, so the lines "
                    "its calibration.prompt_file holds here differ (a relative prompt_file is read beside each "
                    "process's recipe)")
    assert "calibration.prompts," not in said and "holds other lines" not in said


def test_the_same_prompts_read_name_the_pipelines_files():
    theirs, mine = _identity(["a cat"]), _identity(["a cat"])
    theirs["pipeline"], mine["pipeline"] = {"tokenizer/spiece.model": "x"}, {"tokenizer/spiece.model": "y"}
    said = "the calibration pipeline's tokenizer/spiece.model differs here from rank 0's"  # one file: differs
    assert WORDS["inputs"](theirs, mine) == said
    theirs["pipeline"]["vae/config.json"] = "z"
    assert WORDS["inputs"](theirs, mine) == said.replace("model differs", "model, vae/config.json differ")


def test_a_teacher_config_is_the_same_as_rank_0s_where_it_names_the_same_file(tmp_path, monkeypatch):
    """A launch's --teacher-config and teacher identity were compared as strings: cfgA (the folder holding
    config.json) on rank 0 and cfgA/config.json, or a link to it, on a follower were 'another
    --teacher-config'. They are compared as --resume compares them (runner_teacher_id.same_config / same_teacher,
    78e24d4): the same file named is the same config; another file, or none where rank 0 gave one, is not."""
    from compress.runner_ranks_words import same_as_rank_0

    monkeypatch.chdir(tmp_path)
    for folder, held in (("cfgA", "{}"), ("cfgB", '{"norm_eps": 1e-05}')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(held)
    (tmp_path / "link").symlink_to(tmp_path / "cfgA")
    for given in ("cfgA", "cfgA/config.json", "link", str(tmp_path / "link" / "config.json")):
        assert same_as_rank_0("--teacher-config", "cfgA", given)
    assert not same_as_rank_0("--teacher-config", "cfgA", "cfgB")
    assert not same_as_rank_0("--teacher-config", "cfgA", None)
    assert same_as_rank_0("--teacher-config", None, None)
    assert not same_as_rank_0("--teacher", "cfgA", "cfgA/config.json")  # any other key: as written

    def teacher(config, checksum="a"):
        return {"source": "/p", "config": config, "checksum": checksum, "checksum_of": "w"}

    abs_a = str(tmp_path / "cfgA")
    assert same_as_rank_0("teacher", teacher(abs_a), teacher(f"{abs_a}/config.json"))
    assert not same_as_rank_0("teacher", teacher(abs_a), teacher(f"{abs_a}/config.json", "b"))  # other weights
    assert not same_as_rank_0("teacher", teacher(abs_a), teacher(str(tmp_path / "cfgB")))
    said = WORDS["teacher"](teacher(abs_a), teacher(f"{abs_a}/config.json", "b"))  # the config is not what differs
    assert said == "the teacher /p holds other weights or config here than on rank 0"
    assert WORDS["teacher"](teacher(abs_a), teacher(str(tmp_path / "cfgB"))) == (
        f"--teacher-config is {abs_a} on rank 0, {tmp_path / 'cfgB'} here")
    moved = {**teacher(abs_a), "source": "/q"}
    assert WORDS["teacher"](teacher(abs_a), moved) == "the teacher is /p on rank 0, /q here"


def test_a_copy_of_rank_0s_teacher_config_elsewhere_is_the_same_config(tmp_path, monkeypatch):
    """A follower's --teacher-config a byte-identical copy of rank 0's at another path is the same config
    (as --resume compares a teacher's config by what it holds, runner_resume.CONFIG_SUM); one holding
    other values is not, said so where it is the same file."""
    from compress.runner_config_sum import CONFIG_SUM
    from compress.runner_teacher_id import named_teacher
    from compress.runner_ranks_words import same_as_rank_0

    monkeypatch.chdir(tmp_path)
    for folder, held in (("cfgA", '{"norm_eps": 1e-06}'), ("copy", '{"norm_eps": 1e-06}'), ("cfgB", '{"norm_eps": 1e-05}')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(held)
    assert same_as_rank_0("--teacher-config", "cfgA", "copy/config.json")
    assert not same_as_rank_0("--teacher-config", "cfgA", "cfgB")
    a, copy, b = (dict(named_teacher("/p.safetensors", c), checksum="w") for c in ("cfgA", "copy", "cfgB"))
    assert a[CONFIG_SUM] == copy[CONFIG_SUM] != b[CONFIG_SUM]
    assert same_as_rank_0("teacher", a, copy) and not same_as_rank_0("teacher", a, b)
    assert WORDS["teacher"](a, b) == f"--teacher-config is {a['config']} on rank 0, {b['config']} here"
    assert WORDS["teacher"](a, dict(a, **{CONFIG_SUM: "other"})) == (
        f"the teacher's config {a['config']} holds other values here than on rank 0")
