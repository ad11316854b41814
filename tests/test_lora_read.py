"""lora_read: a Hub LoRA read from its file (hub_lora): the one the Hugging Face cache holds, or the one
named as ORG/NAME/FILE.safetensors; offline, with no listing of the repo (diffusers' guess of the name)."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from compress.errors import UserError
from compress.lora import merge_lora
from tests.conftest import tiny_flux, tiny_pixart
from tests.test_lora import _lora
from tests.test_lora_teacher import _offline_hub

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*invalid shape")]

TARGETS = {"flux": ["to_q", "proj_mlp", "ff.net.0.proj"], "pixart": ["to_q", "ff.net.0.proj", "adaln_single.linear"]}


def _model(family: str):
    return tiny_flux() if family == "flux" else tiny_pixart()


def _no_listing(monkeypatch):
    """diffusers' guess of a Hub LoRA's file name lists the repo (model_info: ~17 s of retries without a
    network, refused offline): a LoRA the cache holds is read without it."""
    import diffusers.loaders.lora_base as lora_base

    def listing(*args, **kwargs):
        raise AssertionError("the Hub was asked for the repo's files")
    monkeypatch.setattr(lora_base, "model_info", listing)


def _merged(family: str, lora) -> dict:
    model = _model(family)
    merge_lora(model, lora)
    return model.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_a_cached_hub_lora_is_read_offline_from_its_cached_file(tmp_path, monkeypatch, family):
    """HF_HUB_OFFLINE=1 and the LoRA in the Hugging Face cache: a Flux one was refused ("When using the
    offline mode, you must specify a `weight_name`"), a PixArt one said "diffusers has no Hub LoRA loader";
    both merge as their local file does, without listing the repo."""
    _lora(_model(family), tmp_path / "lora", TARGETS[family])
    _offline_hub(monkeypatch, tmp_path, {"acme/lora": tmp_path / "lora"})
    _no_listing(monkeypatch)
    assert _same(_merged(family, "acme/lora"), _merged(family, tmp_path / "lora"))


def test_a_cached_hub_lora_with_no_network_is_not_listed(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset and no network: the cached LoRA's file is fetched by its name (hf_hub_download
    checks the Hub for a newer copy and falls back to the cache at once), not after diffusers' listing of
    the repo (~17 s of retries, then ConnectError)."""
    import huggingface_hub

    _lora(tiny_flux(), tmp_path / "lora", TARGETS["flux"])
    _offline_hub(monkeypatch, tmp_path, {"acme/lora": tmp_path / "lora"})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    fetched = []

    def hf_hub_download(repo_id, filename, **kwargs):  # the network is down: the cached copy
        fetched.append((repo_id, filename))
        return huggingface_hub.try_to_load_from_cache(repo_id, filename)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    _no_listing(monkeypatch)
    assert _same(_merged("flux", "acme/lora"), _merged("flux", tmp_path / "lora"))
    assert fetched == [("acme/lora", "pytorch_lora_weights.safetensors")]


def test_a_hub_loras_file_is_named_as_org_name_file(tmp_path, monkeypatch):
    """A repo whose cache holds several LoRA files: the plain id names them and the way to name one
    (ORG/NAME/FILE.safetensors), which is then read (was: the same weight_name error, offline)."""
    _lora(tiny_flux(), tmp_path / "one", TARGETS["flux"])
    _lora(tiny_flux(), tmp_path / "two", ["to_k"])
    (tmp_path / "repo").mkdir()
    shutil.copy(tmp_path / "one" / "pytorch_lora_weights.safetensors", tmp_path / "repo" / "style.safetensors")
    shutil.copy(tmp_path / "two" / "pytorch_lora_weights.safetensors", tmp_path / "repo" / "subject.safetensors")
    _offline_hub(monkeypatch, tmp_path, {"acme/loras": tmp_path / "repo"})
    _no_listing(monkeypatch)
    with pytest.raises(UserError, match=r"^acme/loras: the Hugging Face cache holds 2 \.safetensors files of it "
                                        r"\(style\.safetensors, subject\.safetensors\): name the LoRA's, as "
                                        r"acme/loras/style\.safetensors$"):
        merge_lora(tiny_flux(), "acme/loras")
    assert _same(_merged("flux", "acme/loras/subject.safetensors"), _merged("flux", tmp_path / "two"))


def test_an_uncached_hub_lora_offline_says_the_cache_lacks_it(tmp_path, monkeypatch):
    """Offline, a Hub LoRA the cache does not hold: said so, naming the cache searched (was diffusers'
    'you must specify a `weight_name`', which no option passes)."""
    _offline_hub(monkeypatch, tmp_path, {})
    (tmp_path / "hub").mkdir(exist_ok=True)
    for family in ("flux", "pixart"):
        with pytest.raises(UserError, match=rf"^acme/none: cannot fetch it from the Hugging Face Hub offline "
                                            rf"\(HF_HUB_OFFLINE\), and the Hugging Face cache \({tmp_path}/hub\) "
                                            r"holds no LoRA file of it: fetch it once online"):
            merge_lora(_model(family), "acme/none")


def test_eval_takes_a_cached_hub_lora_offline(tmp_path, monkeypatch):
    """A student that took a Hub LoRA online is compared offline with its teacher taking the same LoRA
    (eval's replay, io_teacher_of.load_teacher_of: the same reader)."""
    from compress.io_teacher_of import load_teacher_of
    from tests.test_lora import _student

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", TARGETS["flux"])
    _offline_hub(monkeypatch, tmp_path, {"acme/lora": tmp_path / "lora"})
    _no_listing(monkeypatch)
    merge_lora(student, "acme/lora")
    assert student.compression_meta["loras"][0]["source"] == "acme/lora"
    merge_lora(teacher, tmp_path / "lora")
    replayed = load_teacher_of(student, str(tmp_path / "teacher"))
    assert _same(replayed.state_dict(), teacher.state_dict())


@pytest.mark.parametrize("name, said", [
    ("README.md", "README.md is not a safetensors LoRA: a LoRA is a .safetensors file, a folder holding one, "
                  "or a peft adapter folder"),
    ("cut.safetensors", "cut.safetensors is not a safetensors file: its header does not read (damaged, or "
                        "another format under that name)")])
def test_a_file_that_is_no_safetensors_is_said_to_be_none(tmp_path, name, said):
    """T2 stop 52 #11: `lora OUT README.md NEW` said 'README.md: not a LoRA .safetensors file (SafetensorError:
    Error while deserializing header: header too large)', the library's words passed through. Now a file
    safetensors cannot read the header of is said to be no safetensors LoRA (another suffix) or no
    safetensors file (a .safetensors one, damaged)."""
    file = tmp_path / name
    file.write_text("# A model card\n\nNothing of a LoRA here.\n" * 20)
    with pytest.raises(UserError) as refused:
        merge_lora(tiny_pixart(), file)
    assert str(refused.value) == f"{file.parent}/{said}"
