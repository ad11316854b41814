"""What differs between rank 0's run and a follower's, in words (compress.runner_ranks_words)."""

from compress.runner_ranks_words import WORDS


def _identity(prompts: list[str]) -> dict:
    """A pipeline source's inputs_identity for `prompts`, as PipelineSource.inputs_identity makes it."""
    import hashlib
    import json

    return {"prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16], "pipeline": None}


def test_other_prompts_read_are_worded_for_inline_prompts_and_a_prompt_file_alike():
    """The identities hold a digest of the prompts read, not the keys that gave them: the words said
    'calibration.prompt_file holds other lines' where the prompts were given inline (prompts:) and
    no prompt_file was set. They name both keys, neither as the one that differs."""
    inline = WORDS["inputs"](_identity(["a cat", "a dog"]), _identity(["a cat", "a cow"]))  # prompts: [...]
    from_file = WORDS["inputs"](_identity(["a cat"]), _identity(["a cow"]))  # prompt_file's lines
    assert inline == from_file == ("the calibration prompts read here differ from rank 0's (calibration.prompts, "
                                   "or the lines calibration.prompt_file holds here)")
    assert "holds other lines" not in inline


def test_the_same_prompts_read_name_the_pipelines_files():
    theirs, mine = _identity(["a cat"]), _identity(["a cat"])
    theirs["pipeline"], mine["pipeline"] = {"tokenizer/spiece.model": "x"}, {"tokenizer/spiece.model": "y"}
    said = "the calibration pipeline's tokenizer/spiece.model differs here from rank 0's"  # one file: differs
    assert WORDS["inputs"](theirs, mine) == said
    theirs["pipeline"]["vae/config.json"] = "z"
    assert WORDS["inputs"](theirs, mine) == said.replace("model differs", "model, vae/config.json differ")
