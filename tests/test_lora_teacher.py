"""lora_teacher: the teacher a LoRA's blocks are read as where the one the model records moved away,
and the teacher the user gives instead (--teacher, teacher=): what is noted, and which model a
block-count error names."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from compress.arch import get_adapter
from compress.errors import UserError
from compress.lora import merge_lora
from tests.conftest import tiny_pixart
from tests.test_lora_chain import _base_lora, _reported_chain, _save_output
from tests.test_lora_limits import _save, _state

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*invalid shape")]


def test_a_lora_past_a_given_teachers_count_names_it_not_the_moved_recorded_one(tmp_path, capsys):
    """s removes its base's last block 5 of 6 (its report.json: 6 before); the base moved, and the
    user gives its new place (--teacher). A LoRA of a 7-block model: its block 6, past the given
    teacher's 6, was refused naming the recorded base (gone) as having 6, though the count was read
    from the given one, and saying to put the recorded one back (a note too), though the user said
    where it is. It now names the given teacher, with no word on the moved one."""
    from compress.cli import main
    from compress.io_output import load_transformer

    base = tiny_pixart(num_layers=6)
    base.save_pretrained(tmp_path / "base")
    s = copy.deepcopy(base)
    _save_output(s, tmp_path / "s", tmp_path / "base", get_adapter(s).remove_blocks(s, {"blocks": [5]}))
    (tmp_path / "s" / "report.json").write_text(json.dumps({"teacher": str((tmp_path / "base").resolve()),
                                                             "remove_blocks": {"blocks_before": {"blocks": 6}}}))
    lora = _save(_state(tiny_pixart(num_layers=7), ["to_q"]), tmp_path / "deep.safetensors")
    (tmp_path / "base").rename(tmp_path / "base-moved")
    given = str(tmp_path / "base-moved")
    capsys.readouterr()
    with pytest.raises(UserError, match=rf"adapts transformer_blocks\.6, but the base model {re.escape(given)} "
                                        r"has 6 transformer_blocks \(0 to 5\): a LoRA of another \(deeper\) model\?$"):
        merge_lora(load_transformer(tmp_path / "s"), lora, teacher=given)
    assert main(["lora", str(tmp_path / "s"), str(lora), str(tmp_path / "new"), "--teacher", given]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the base model {given} has 6 transformer_blocks" in err and not (tmp_path / "new").exists()
    assert "not there now" not in err and "put it back" not in err and "note:" not in err, err


def test_a_given_teacher_that_is_an_output_keeps_the_moved_teachers_note(tmp_path, capsys):
    """b <- a (an output, moved) <- base: given a's new place, the LoRA's blocks are still read as
    a's (its chain is not followed from the given teacher), so the note and the error's pointer to
    it stay: putting a back is what has them read as the base's."""
    from compress.io_output import load_transformer

    base, moved = _reported_chain(tmp_path, 3), (tmp_path / "a").resolve()
    lora, _ = _base_lora(base, tmp_path)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    given = str(tmp_path / "a-moved")
    capsys.readouterr()
    with pytest.raises(UserError, match=rf"adapts transformer_blocks\.5, but the base model {re.escape(given)} has "
                                        rf"5 .* Or the teacher {re.escape(str(moved))}, not there now, was itself a "
                                        r"dit-compress output: put it back \(the note above\)$"):
        merge_lora(load_transformer(tmp_path / "b"), lora, teacher=given)
    said = " ".join(capsys.readouterr().err.split())
    assert said.count(f"note: the teacher {moved} the model records is not there now") == 1


def test_a_block_map_of_one_block_and_a_dora_teacher_of_one_layer_say_it_in_the_singular(monkeypatch, capsys):
    """"whose block map has 1 blocks" and "the weight files holding the 1 adapted layers" (the note
    on a Hub teacher's download) now agree with their count."""
    from types import SimpleNamespace

    from compress import lora_teacher
    from compress.lora_teacher import composed_block_map

    with pytest.raises(UserError, match=r"whose block map has 1 block: it is not"):
        composed_block_map([{"double": [0, 2]}, {"double": [0]}], ["/c", "/b"])
    monkeypatch.setattr("compress.io_source_config.checked",
                        lambda source, config: SimpleNamespace(kind="hub", source=source, config={}))
    monkeypatch.setattr(lora_teacher, "_teacher_files", lambda src, keys: {})  # then: no weight for it
    with pytest.raises(UserError, match=r"no weight for 'x'"):
        lora_teacher._teacher_weights(torch.nn.Linear(1, 1), "owner/teacher", None, ["x"])
    said = " ".join(capsys.readouterr().err.split())
    assert re.search(r"then the weight files holding the 1 adapted layer\b(?!s)", said), said


@pytest.mark.parametrize("options", [{}, {"use_dora": True}], ids=["lora", "dora"])
def test_a_given_teacher_that_is_not_there_is_one_line_whatever_the_lora(tmp_path, capsys, options):
    """`dit-compress lora OUT LORA NEW --teacher /nope` wrote NEW for a plain LoRA, --teacher silently
    dropped (a DoRA said the teacher was not found); now both refuse it in one line, writing nothing."""
    from compress.cli import main
    from compress.io_export import save_compressed
    from compress.toy import load_toy_teacher
    from tests.test_lora import _lora

    out = save_compressed(load_toy_teacher("flux"), tmp_path / "out", extra={"teacher": "toy:flux"})
    _lora(load_toy_teacher("flux"), tmp_path / "lora", **options)
    capsys.readouterr()
    nope = str(tmp_path / "nope")
    assert main(["lora", str(out), str(tmp_path / "lora"), str(tmp_path / "new"), "--teacher", nope]) == 2
    err = capsys.readouterr().err
    assert err == f"dit-compress lora: error: teacher not found: {nope} (there is no {nope})\n", err
    assert not (tmp_path / "new").exists()


def test_a_given_teacher_a_plain_lora_does_not_read_is_noted(tmp_path, capsys):
    """A --teacher given with a LoRA holding no DoRA magnitudes was dropped without a word: a note now
    says its weights are not read (only a DoRA's norms need them); the merge is the one without it."""
    from compress.cli import main
    from compress.io_export import save_compressed
    from compress.io_output import load_transformer
    from compress.toy import load_toy_teacher
    from tests.test_lora import _lora

    out = save_compressed(load_toy_teacher("flux"), tmp_path / "out", extra={"teacher": "toy:flux"})
    _lora(load_toy_teacher("flux"), tmp_path / "lora")
    load_toy_teacher("flux").save_pretrained(tmp_path / "teacher")
    capsys.readouterr()
    given = str(tmp_path / "teacher")
    assert main(["lora", str(out), str(tmp_path / "lora"), str(tmp_path / "new"), "--teacher", given]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (f"note: the given teacher {given}: its weights are not read, as the LoRA is no DoRA (only a DoRA's "
            "norms need the teacher's weights)") in err, err
    assert main(["lora", str(out), str(tmp_path / "lora"), str(tmp_path / "plain")]) == 0
    assert "not read" not in capsys.readouterr().err  # no teacher given: nothing to say
    with_teacher, without = load_transformer(tmp_path / "new"), load_transformer(tmp_path / "plain")
    assert all(torch.equal(v, without.state_dict()[k]) for k, v in with_teacher.state_dict().items())


def test_a_mistyped_teacher_is_refused_before_the_output_loads(tmp_path, monkeypatch):
    """`dit-compress lora OUT LORA NEW --teacher /nope` loaded OUT (GBs for a real model) before saying
    the teacher is not there: the check comes first now."""
    from compress import commands_lora
    from compress.cli import main

    def loaded(*_, **__):
        raise AssertionError("the output loaded before --teacher was checked")

    monkeypatch.setattr(commands_lora, "load_transformer", loaded)
    nope = str(tmp_path / "nope")
    assert main(["lora", str(tmp_path / "out"), str(tmp_path / "lora"), str(tmp_path / "new"), "--teacher", nope]) == 2


def _offline_hub(monkeypatch, tmp_path, repos: dict):
    """{repo id: folder} as the cached snapshots of an offline huggingface_hub (HF_HUB_OFFLINE, HF_HUB_CACHE)."""
    from huggingface_hub import constants

    from tests.pipelines import hub_cache

    for repo_id, folder in repos.items():
        hub_cache(tmp_path / "hub", repo_id, folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "one-file"])
def test_a_doras_transformer_only_hub_teacher_is_read_from_its_root(tmp_path, monkeypatch, sharded):
    """A Hub DoRA teacher whose config.json and weights are at the repo's root (a transformer-only
    repo, as fine-tunes are shared), cached, offline: its weights are read from the root, as
    io_hub.hub_config_file finds the config there (was: FileNotFoundError '<snapshot>/transformer'),
    and the merged student is the one the same teacher's local folder gives."""
    from tests.conftest import forward, model_inputs
    from tests.test_lora import _lora, _student

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", use_dora=True)
    teacher.save_pretrained(tmp_path / "repo", **({"max_shard_size": "40KB"} if sharded else {}))
    _offline_hub(monkeypatch, tmp_path, {"acme/tonly": tmp_path / "repo"})
    local = copy.deepcopy(student)
    merge_lora(local, tmp_path / "lora")  # the teacher the student records: the local folder
    merge_lora(student, tmp_path / "lora", teacher="acme/tonly")
    inputs = model_inputs(student)
    assert torch.equal(forward(student, inputs), forward(local, inputs))


@pytest.fixture
def flux_output(tmp_path, capsys):
    """(output folder, plain LoRA folder) of the toy Flux teacher."""
    from compress.io_export import save_compressed
    from compress.toy import load_toy_teacher
    from tests.test_lora import _lora

    out = save_compressed(load_toy_teacher("flux"), tmp_path / "out", extra={"teacher": "toy:flux"})
    _lora(load_toy_teacher("flux"), tmp_path / "lora")
    capsys.readouterr()
    return out, tmp_path / "lora"


@pytest.mark.parametrize("given, words", [
    ("toy:nope", "unknown toy teacher 'toy:nope' (the toy teachers: toy:pixart, toy:flux)"),
    ("acme/pix@v2", "teacher not found: acme/pix@v2 (there is no "),
    ("{tmp}/empty", "{tmp}/empty has neither model_index.json nor config.json"),
    ("{tmp}/recipe.yaml", "{tmp}/recipe.yaml is not a checkpoint: file type '.yaml'")])
def test_a_given_teacher_that_is_no_teacher_is_refused_whatever_the_lora(tmp_path, capsys, flux_output, given,
                                                                         words):
    """`dit-compress lora OUT LORA NEW --teacher toy:nope` (or a folder or file that is no teacher, or no
    Hugging Face id) wrote NEW for a plain LoRA, with only a note that the teacher's weights are not read."""
    from compress.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "recipe.yaml").write_text("passes: []\n")
    out, lora = flux_output
    given, words = given.format(tmp=tmp_path), words.format(tmp=tmp_path)
    assert main(["lora", str(out), str(lora), str(tmp_path / "new"), "--teacher", given]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dit-compress lora: error: {words}") and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match=re.escape(words)):
        merge_lora(torch.nn.Linear(1, 1), {}, teacher=given)  # before anything of the model or LoRA is read


def test_a_given_hub_teacher_of_a_plain_lora_is_not_fetched(tmp_path, capsys, monkeypatch, flux_output):
    """A valid Hugging Face id is taken as given (a plain LoRA reads no teacher weights: no request is
    made to tell whether it exists); the note says its weights are not read."""
    import huggingface_hub

    from compress.cli import main

    def fetched(*_, **__):
        raise AssertionError("the Hub was asked")

    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, fetched)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, lora = flux_output
    assert main(["lora", str(out), str(lora), str(tmp_path / "new"), "--teacher", "acme/nothing-here"]) == 0
    assert "the given teacher acme/nothing-here: its weights are not read" in " ".join(capsys.readouterr().err.split())


def test_a_given_known_hub_teacher_offline_is_not_noted_as_planned(tmp_path, capsys, monkeypatch):
    """lora --teacher black-forest-labs/FLUX.1-dev, offline with the cache lacking it, where its block count
    bounds a LoRA's blocks past the block map's last (an output recording no teacher), printed plan's note
    twice: 'teacher black-forest-labs/FLUX.1-dev is planned from the config shipped with dit-compress; offline
    (HF_HUB_OFFLINE) with no copy of it in the Hugging Face cache ..., run would refuse it: ...'. lora plans
    nothing and runs no teacher: its count is read from that config, without the note."""
    import huggingface_hub

    from compress.cli import main
    from compress.io_export import save_compressed
    from tests.conftest import tiny_flux

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = save_compressed(tiny_flux(num_layers=1), tmp_path / "out", extra={"block_map": {"double": [0]}})
    lora = _save(_state(tiny_flux(num_layers=2), ["to_q"]), tmp_path / "l.safetensors")  # double block 1: past the map
    capsys.readouterr()
    given = "black-forest-labs/FLUX.1-dev"
    assert main(["lora", str(out), str(lora), str(tmp_path / "new"), "--teacher", given]) == 0
    said = capsys.readouterr()
    err = " ".join(said.err.split())
    assert "planned" not in err and "run would refuse" not in err
    assert f"the given teacher {given}: its weights are not read" in err and "transformer_blocks.1" in said.out
