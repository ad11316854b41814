"""io_hub_cache's one rule for a Hub repo's copy in the Hugging Face cache (cached_snapshot: refs/main's
snapshot; uncached: what the cache holds otherwise), used by teachers, outputs and LoRAs alike; and
what an online load of a cached teacher asks of the Hub (hub_head's one request, its commit pinning the load)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from compress import load_teacher, load_transformer
from compress.errors import UserError
from tests.conftest import tiny_pixart

CACHED, NEWER = "0" * 40, "1" * 40  # the commit tests.pipelines.hub_cache writes; one the Hub moved on to


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _pipeline(folder: Path, model) -> Path:
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "PixArtSigmaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    model.save_pretrained(folder / "transformer")
    return folder


def _cached(tmp_path, repo_id: str, folder: Path) -> Path:
    from tests.pipelines import hub_cache

    hub_cache(tmp_path / "hub", repo_id, folder)
    return tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"


def _pinned_only(repo: Path, ref: str = "v1") -> Path:
    """The cache's copy as `hf download --revision` leaves it: a snapshot, refs/<ref>, no refs/main."""
    (repo / "refs" / "main").rename(repo / "refs" / ref)
    return repo / "snapshots" / CACHED


class _Hub:
    """huggingface_hub's calls faked as a Hub at `commit` holding `folder`, counted in `asked`."""

    def __init__(self, monkeypatch, tmp_path, folder: Path, commit: str):
        import huggingface_hub

        self.asked, self.folder, self.commit, self.cache = [], folder, commit, tmp_path / "hub"
        self.listed = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", self.head)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.download)
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda api, repo, **kw: self.list(repo, **kw))

    def head(self, url, *args, **kwargs):
        from huggingface_hub.file_download import HfFileMetadata

        self.asked.append(("HEAD", url.split("/resolve/")[1]))
        return HfFileMetadata(commit_hash=self.commit, etag="e", location=url, size=1, xet_file_data=None)

    def _copy(self, repo_id: str, name: str) -> Path:
        """The file as huggingface_hub leaves it: in the snapshot of the Hub's commit, refs/main moved there."""
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "snapshots" / self.commit / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.folder / name, repo / "snapshots" / self.commit / name)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(self.commit)
        return repo / "snapshots" / self.commit

    def download(self, repo_id, filename, subfolder=None, **kwargs):
        name = f"{subfolder}/{filename}" if subfolder else filename
        self.asked.append(("hf_hub_download", name, kwargs.get("revision")))
        return str(self._copy(repo_id, name) / name)

    def list(self, repo_id, **kwargs):
        from tests.test_io_hub import hub_info

        assert kwargs["timeout"] > 0  # never a list that can wait forever
        self.asked.append(("model_info", kwargs.get("revision")))
        return hub_info(self.listed, self.commit)


def test_an_online_teacher_the_cache_holds_at_the_hubs_commit_asks_the_hub_once_more_only_for_its_list(
        tmp_path, monkeypatch):
    """Online, a cached teacher at the Hub's commit: was a HEAD (is the Hub there?), hf_hub_download's
    HEAD of the same config, the file list and snapshot_download (repo_info and the repo's tree), 5
    requests; now that HEAD's commit says the cache is current: the HEAD and the file list, 2."""
    model = tiny_pixart()
    folder = _pipeline(tmp_path / "pipe", model)
    _cached(tmp_path, "acme/pix", folder)
    hub = _Hub(monkeypatch, tmp_path, folder, CACHED)
    teacher = load_teacher("acme/pix")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert hub.asked == [("HEAD", "main/transformer/config.json"), ("model_info", CACHED)]


def test_an_online_teacher_the_hub_has_moved_on_from_is_fetched_at_one_commit(tmp_path, monkeypatch):
    """The Hub at a newer commit than the cache's main: the config is fetched (refs/main moves to it),
    then the list and the weights of that same commit (they were main's, whatever main was by then);
    each hf_hub_download after its HEAD without retries (io_hub_requests.download), the config of
    that commit not asked for again."""
    old, new = tiny_pixart(seed=0), tiny_pixart(seed=1)
    _cached(tmp_path, "acme/pix", _pipeline(tmp_path / "old", old))
    hub = _Hub(monkeypatch, tmp_path, _pipeline(tmp_path / "new", new), NEWER)
    teacher = load_teacher("acme/pix")
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in teacher.state_dict().items())
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert hub.asked == [("HEAD", "main/transformer/config.json"),
                         ("HEAD", "main/transformer/config.json"), ("hf_hub_download", "transformer/config.json", None),
                         ("model_info", NEWER),
                         ("HEAD", f"{NEWER}/{weights}"), ("hf_hub_download", weights, NEWER)]


def test_a_snapshot_of_another_revision_is_named_by_teachers_outputs_and_loras_alike(tmp_path, monkeypatch):
    """`hf download ORG/NAME --revision v1` writes refs/v1, no refs/main: the teacher offline, plan, a
    Hub id given to load_transformer and a Hub LoRA offline all said the cache held no copy (or told to
    download it); each now names the snapshot it holds, which loads as a local folder."""
    from huggingface_hub import constants

    from compress.io_source_config import checked
    from compress.lora_read import hub_lora
    from tests.test_io_output_paths import _output

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    snapshot = _pinned_only(_cached(tmp_path, "acme/pix", _pipeline(tmp_path / "pipe", tiny_pixart())))
    out = _pinned_only(_cached(tmp_path, "acme/out", _output(tmp_path)))
    held = r"no copy of its main revision, only the snapshot {} \(v1\) \(pass a snapshot folder as a local one\)"
    pix, out_held = held.format(snapshot), held.format(out)
    said = {  # each caller: what it says
        lambda: load_teacher("acme/pix"): rf"^cannot fetch 'acme/pix' offline \(HF_HUB_OFFLINE\), and the Hugging "
                                          rf"Face cache \S+ \(HF_HUB_CACHE, else HF_HOME/hub\) holds {pix}",
        lambda: checked("acme/pix", hub=False).config: rf"the cache holds {pix}; pass --teacher-config",
        lambda: load_transformer("acme/out"): rf"^acme/out: no such output folder, and the Hugging Face cache \S+ "
                                              rf"holds {out_held}: load_transformer takes a local dit-compress output "
                                              rf"folder, not a Hub id; download",
        lambda: hub_lora("acme/pix"): rf"^acme/pix: cannot fetch it from the Hugging Face Hub offline "
                                      rf"\(HF_HUB_OFFLINE\), and the Hugging Face cache \(\S+\) holds {pix}",
    }
    for call, words in said.items():
        with pytest.raises(UserError, match=words):
            call()
    assert load_transformer(out).transformer_blocks[0].ff.net[2].rank == 2  # the folder named loads
    assert load_teacher(str(snapshot)).config.num_layers == 3


def test_the_snapshot_refs_main_names_is_the_one_teachers_and_outputs_read(tmp_path, monkeypatch):
    """Two snapshots of a repo in the cache: refs/main's is the one both callers take (the teacher read
    offline, the folder load_transformer's error gives), not the other or the newest on disk."""
    from huggingface_hub import constants

    from compress.io_hub import cached_config
    from compress.io_hub_cache import cached_snapshot
    from tests.test_io_output_paths import _output

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    repo = _cached(tmp_path, "acme/out", _output(tmp_path))
    shutil.copytree(repo / "snapshots" / CACHED, repo / "snapshots" / NEWER)  # not main's
    assert cached_snapshot("acme/out") == repo / "snapshots" / CACHED
    assert cached_snapshot("acme/out", NEWER) == repo / "snapshots" / NEWER
    with pytest.raises(UserError, match=rf"holds it: give {re.escape(str(repo / 'snapshots' / CACHED))}$"):
        load_transformer("acme/out")
    assert cached_config("acme/out") == (repo / "snapshots" / CACHED / "config.json", "")  # a teacher's config
    (repo / "refs" / "main").write_text(NEWER)
    with pytest.raises(UserError, match=rf"holds it: give {re.escape(str(repo / 'snapshots' / NEWER))}$"):
        load_transformer("acme/out")
    assert cached_config("acme/out") == (repo / "snapshots" / NEWER / "config.json", "")
    assert cached_snapshot("acme/pxi") is None and cached_snapshot("acme/out@v1") is None


def test_a_hub_id_spelt_in_other_letters_than_the_cache_holds_is_named(tmp_path, monkeypatch):
    """The Hub finds ACME/PIX as acme/pix; the cache only in the letters it was downloaded with:
    offline, 'holds no copy of it' said nothing of the copy it holds."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _cached(tmp_path, "acme/pix", _pipeline(tmp_path / "pipe", tiny_pixart()))
    with pytest.raises(UserError, match=r"holds no copy of it \(it holds acme/pix, spelt otherwise: give that id\): "):
        load_teacher("ACME/Pix")
    with pytest.raises(UserError, match=r"holds no copy of it: "):
        load_teacher("acme/pixx")


def test_lora_given_a_hub_id_as_its_output_says_so_as_eval_does(tmp_path, monkeypatch, capsys):
    """`dit-compress lora ORG/NAME LORA NEW` said "ORG/NAME is not a dit-compress output folder (needs
    config.json …)", though the cache held that output: it names the snapshot folder to give, as eval does."""
    from huggingface_hub import constants

    from compress.cli import main
    from tests.test_io_output_paths import _output

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    repo = _cached(tmp_path, "acme/out", _output(tmp_path))
    capsys.readouterr()
    assert main(["lora", "acme/out", "acme/lora", "new"]) == 2
    assert capsys.readouterr().err == ("dit-compress lora: error: acme/out: lora takes a local dit-compress output folder, "
                                       f"not a Hub id; the Hugging Face cache holds it: give {repo / 'snapshots' / CACHED}\n")
    assert not (tmp_path / "new").exists()


def test_eval_given_a_hub_id_in_other_letters_reads_the_cached_snapshot_not_the_id(tmp_path, monkeypatch, capsys):
    """`eval ACME/Out` where the cache holds acme/out said "give that id" (acme/out), which eval then
    refused as it refused every Hub id; eval now reads a cached output as inspect and bench do
    (0c47f21): the snapshot of acme/out is what it reads (this fake output has no recipe.yaml, which
    eval names at the snapshot's path, not the id's)."""
    from huggingface_hub import constants

    from compress.cli import main
    from tests.test_io_output_paths import _output

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    repo = _cached(tmp_path, "acme/out", _output(tmp_path))
    capsys.readouterr()
    assert main(["eval", "ACME/Out"]) == 2
    note, error = capsys.readouterr().err.splitlines()  # the id as given, noted once read from the cache (fee6a45)
    assert note == f"note: ACME/Out: reading the Hugging Face cache's copy of it, {repo / 'snapshots' / CACHED}"
    assert error.startswith(
        f"dit-compress eval: error: {repo / 'snapshots' / CACHED} has no recipe.yaml, whose calibration settings give eval")


def test_held_otherwise_is_none_where_the_cache_holds_nothing_of_the_repo(tmp_path):
    """Callers asked uncached(...) == 'no copy of it' to tell 'nothing' from other revisions or
    spellings; held_otherwise says None then, and uncached's words otherwise."""
    from compress.io_hub_cache import held_otherwise, uncached

    assert held_otherwise("acme/pix") is None and uncached("acme/pix") == "no copy of it"
    repo = _cached(tmp_path, "acme/pix", _pipeline(tmp_path / "pipe", tiny_pixart()))
    assert held_otherwise("acme/pixx") is None and held_otherwise("not an id") is None
    assert held_otherwise("ACME/Pix") == "no copy of it (it holds acme/pix, spelt otherwise: give that id)"
    snapshot = _pinned_only(repo)
    assert held_otherwise("acme/pix") == uncached("acme/pix") == (
        f"no copy of its main revision, only the snapshot {snapshot} (v1) (pass a snapshot folder as a local one)")


@pytest.mark.parametrize("cached", [True, False])
def test_a_runs_source_check_and_load_send_the_hubs_head_once(tmp_path, monkeypatch, cached):
    """A run checks its Hub teacher's config (io_source) before it loads it: each asked the Hub
    (get_hf_file_metadata) whether it answers and at which commit, 2 HEADs; the answer is kept. The
    other HEADs are io_hub_requests.download's, one before each hf_hub_download."""
    from compress.io_source_config import checked

    model = tiny_pixart()
    folder = _pipeline(tmp_path / "pipe", model)
    if cached:
        _cached(tmp_path, "acme/pix", folder)
    hub = _Hub(monkeypatch, tmp_path, folder, CACHED)
    assert checked("acme/pix").config["num_layers"] == 3
    teacher = load_teacher("acme/pix")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())
    heads = [a for a in hub.asked if a[0] == "HEAD"]
    assert heads[0] == ("HEAD", f"main/{'transformer/' if cached else ''}config.json") not in heads[1:]
    assert len(heads) - 1 == len([a for a in hub.asked if a[0] == "hf_hub_download"]), hub.asked
