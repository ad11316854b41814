"""io_hub: a Hub id as a teacher: one quiet line where the Hub is unreachable (nothing cached), gated or
lacks the repo or its config; a transformer-only repo or one variant loaded, only the files from_pretrained
reads downloaded; a source that is no Hub id, and an offline cache that lacks weights, a shard or the id,
said so. A cached teacher with the Hub unreachable or answering, and a main moved past the cache:
test_io_hub_unreachable.py."""

import json
import os
import re

import pytest
import torch

from compress import load_teacher
from compress.errors import UserError
from tests.conftest import tiny_pixart


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of the test's own and HF_HUB_OFFLINE unset, whatever the machine's:
    a test that wants a cached repo or offline sets it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _hub_failure(error: Exception):
    """A stand-in for hf_hub_download / snapshot_download: logs a retry warning as
    huggingface_hub does for each try, then fails."""
    import logging

    def fetch(*args, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise error
    return fetch


def _offline_error():
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            raise OSError("[Errno -2] Name or service not known")
        except OSError as cause:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file") from cause
    except LocalEntryNotFoundError as e:
        return e


@pytest.mark.parametrize("stream", [False, True])
def test_an_unreachable_hub_is_one_quiet_line_naming_the_cause(monkeypatch, caplog, capsys, stream):
    """No network: huggingface_hub's retry warnings stay quiet, and the error names the network's
    error (not only LocalEntryNotFoundError) for the resident and the streamed loader."""
    import logging

    import huggingface_hub

    from compress.stream_files import checkpoint_of

    level = logging.getLogger("huggingface_hub").level
    for name in ("snapshot_download", "hf_hub_download"):  # both loaders fetch the config first (io_hub.hub_folder)
        monkeypatch.setattr(huggingface_hub, name, _hub_failure(_offline_error()))
    with pytest.raises(UserError, match=r"cannot fetch 'org/model' from the Hugging Face Hub "
                                         r"\(OSError: \[Errno -2\] Name or service not known\)"):
        checkpoint_of("org/model") if stream else load_teacher("org/model")
    assert "Retrying" not in caplog.text + capsys.readouterr().err
    assert logging.getLogger("huggingface_hub").level == level  # restored


def test_a_gated_or_missing_hub_repo_says_what_to_do(monkeypatch):
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    response = httpx.Response(401, request=httpx.Request("HEAD", "https://huggingface.co/org/model"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _hub_failure(GatedRepoError("401", response=response)))
    with pytest.raises(UserError, match=r"'org/model' is gated .* https://huggingface.co/org/model and log in"):
        load_teacher("org/model")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        _hub_failure(RepositoryNotFoundError("404", response=response)))
    with pytest.raises(UserError, match=r"'org/model' is not on the Hugging Face Hub"):
        load_teacher("org/model")


def _hub_cache(monkeypatch, tmp_path, repo_id: str, folder):
    """`folder` as the cached snapshot of `repo_id` in an offline huggingface_hub."""
    from huggingface_hub import constants

    from tests.pipelines import hub_cache

    cache = tmp_path / "hub"
    hub_cache(cache, repo_id, folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_a_transformer_only_hub_repo_loads_as_its_local_folder_does(tmp_path, monkeypatch):
    """config.json and weights at the repo's root (as fine-tunes are shared): 'cannot fetch
    model_index.json' before."""
    model = tiny_pixart()
    model.save_pretrained(tmp_path / "t")
    _hub_cache(monkeypatch, tmp_path, "acme/tiny-transformer", tmp_path / "t")
    teacher = load_teacher("acme/tiny-transformer")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())


def hub_info(files: list[str], sha: str | None = None):
    """What HfApi.model_info answers (io_hub_requests.repo_files reads the repo's files from it)."""
    from types import SimpleNamespace

    return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in files], sha=sha)


def _pipeline_with(folder, save) -> None:
    """A pipeline folder (model_index.json) whose transformer/ `save` writes."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "PixArtSigmaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    save(folder / "transformer")


def test_a_hub_pipeline_whose_transformer_holds_one_variant_loads_it(tmp_path, monkeypatch):
    """transformer/ with only .fp16.safetensors: 'no file named diffusion_pytorch_model.bin' before."""
    model = tiny_pixart().half()
    _pipeline_with(tmp_path / "pipe", lambda f: model.save_pretrained(f, variant="fp16"))
    _hub_cache(monkeypatch, tmp_path, "acme/pipevar", tmp_path / "pipe")
    teacher = load_teacher("acme/pipevar", dtype=None)
    assert teacher.dtype == torch.float16
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())


def test_a_hub_teacher_downloads_the_variant_its_file_list_names_and_nothing_else(tmp_path, monkeypatch):
    """Online, the repo's file list says which files from_pretrained would read: one variant's
    shards and index and the transformer's config, not the pipeline's other components."""
    import huggingface_hub

    model = tiny_pixart().half()
    _pipeline_with(tmp_path / "pipe", lambda f: model.save_pretrained(f, variant="fp16", max_shard_size="10KB"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    shards = sorted(f.name for f in (tmp_path / "pipe" / "transformer").iterdir() if f.name != "config.json")
    assert len(shards) > 2
    listed = ["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
              "transformer/config.json", "transformer/diffusion_pytorch_model.bin"]  # not fetched: safetensors first
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, repo, timeout: hub_info(listed + [f"transformer/{n}" for n in shards]))
    fetched = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, subfolder=None: fetched.append(
        f"{subfolder}/{name}") or str(tmp_path / "pipe" / subfolder / name))
    assert load_teacher("acme/pipevar", dtype=None).dtype == torch.float16
    assert sorted(set(fetched)) == sorted(["transformer/config.json"] + [f"transformer/{n}" for n in shards])


def test_a_hub_repo_without_a_transformer_config_says_so(tmp_path, monkeypatch):
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    response = httpx.Response(404, request=httpx.Request("HEAD", "https://huggingface.co/org/unet"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _hub_failure(RemoteEntryNotFoundError("404", response=response)))
    with pytest.raises(UserError, match=r"^'org/unet' has neither transformer/config.json nor config.json: "):
        load_teacher("org/unet")


def test_an_offline_cache_holding_only_the_config_blames_the_cache_not_the_repo(tmp_path, monkeypatch):
    """plan leaves transformer/config.json alone in the cache; offline, the repo's files are the
    cache's: 'acme/pix holds no weights' was untrue."""
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    tiny_pixart().save_config(tmp_path / "pipe" / "transformer")
    _hub_cache(monkeypatch, tmp_path, "acme/pix", tmp_path / "pipe")
    with pytest.raises(UserError, match=r"^the Hugging Face cache holds no weights of 'acme/pix' \(transformer/\) "
                                        r"beside its config.json \(offline: HF_HUB_OFFLINE\): fetch it once online"):
        load_teacher("acme/pix")


def test_a_hub_repo_of_another_model_names_the_repo_its_cached_folder_and_what_it_holds(tmp_path, monkeypatch):
    """A cached config of an AutoencoderKL said "unsupported model class 'AutoencoderKL'; supported: ..."
    naming no path, where a local folder of one is named (8d744d5); then it named the cache's snapshot folder
    alone ('<cache>/models--acme--vae/snapshots/SHA/transformer holds an AutoencoderKL ...: give the pipeline
    folder or its transformer/ folder', F10 stop 51): the repo id the user typed comes first now, the
    cached folder beside it, and what to give is a Hub id (or a local folder)."""
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    (tmp_path / "pipe" / "transformer" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    _hub_cache(monkeypatch, tmp_path, "acme/vae", tmp_path / "pipe")
    with pytest.raises(UserError, match=r"^'acme/vae' \(transformer/, in the Hugging Face cache at \S+/models--acme--vae/"
                                        r"snapshots/\w+/transformer\) holds an AutoencoderKL \(not a PixArt or Flux "
                                        r"transformer\): give the Hub id of a PixArt or Flux pipeline or transformer, "
                                        r"or a local folder$"):
        load_teacher("acme/vae")


@pytest.mark.parametrize("source, words", [
    ("acme/pix@v2", r"a revision is not given with @: pin one by giving its snapshot folder as a local teacher "
                    r"\(\S+/models--acme--pix/snapshots/COMMIT, once downloaded\)"),
    ("acme/pix/x", r"a Hugging Face id is OWNER/NAME, with one '/'"),
    ("acme/pix/", r"a Hugging Face id is OWNER/NAME, with one '/'"),
])
def test_a_source_that_is_no_hub_id_says_so_not_your_network(tmp_path, monkeypatch, source, words):
    """'cannot fetch … (HFValidationError …); check the id and your network': nothing was fetched."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError

    from compress.io_hub import hub_error

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(UserError, match=rf"^teacher not found: {source} \(there is no {os.path.abspath(source)}, and it "
                                        rf"is not a Hugging Face id: {words}\)$"):
        load_teacher(source)
    error = str(hub_error(source, HFValidationError("Repo id must be …"), "a local LoRA file"))
    assert "network" not in error and re.match(rf"'{source}' is not a Hugging Face id: {words}; pass a local", error)


def test_an_uncached_hub_id_offline_names_the_cache_looked_in(tmp_path, monkeypatch):
    """Offline, a mistyped or never downloaded id said 'OfflineModeIsEnabled: Cannot reach https://…'."""
    _hub_cache(monkeypatch, tmp_path, "acme/pix", tmp_path)  # another repo
    with pytest.raises(UserError, match=rf"^cannot fetch 'acme/pxi' offline \(HF_HUB_OFFLINE\), and the Hugging Face "
                                        rf"cache {tmp_path}/hub \(HF_HUB_CACHE, else HF_HOME/hub\) holds no copy of it: "
                                        "check the id, fetch it once online"):
        load_teacher("acme/pxi")


def test_a_shard_missing_from_the_cache_is_named_as_stream_names_it(tmp_path, monkeypatch):
    """The resident loader said diffusers' '<snapshot>/transformer/ does not appear to have a file
    named <full path>'; stream says which shard the index lists and the folder lacks."""
    model = tiny_pixart()
    _pipeline_with(tmp_path / "pipe", lambda f: model.save_pretrained(f, max_shard_size="40KB"))
    shards = sorted((tmp_path / "pipe" / "transformer").glob("*-of-*.safetensors"))
    shards[1].unlink()
    _hub_cache(monkeypatch, tmp_path, "acme/cut", tmp_path / "pipe")
    folder = tmp_path / "hub" / "models--acme--cut" / "snapshots" / ("0" * 40) / "transformer"
    with pytest.raises(UserError) as e:
        load_teacher("acme/cut")
    assert str(e.value) == (f"{folder}/diffusion_pytorch_model.safetensors.index.json lists 1 shard(s) not in "
                            f"{folder}: {shards[1].name} (an incomplete download?)")


def test_cache_only_says_offline_only_where_hf_hub_offline_is_set(monkeypatch):
    """plan reads a Hub id's config from the cache alone and said it found none 'offline' where
    HF_HUB_OFFLINE was unset and no request was made (reachable Hub or not): cache_only words it."""
    import huggingface_hub

    from compress.io_hub import cache_only

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert cache_only("plan") == "without the Hugging Face Hub, which plan does not ask"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert cache_only("plan") == "offline (HF_HUB_OFFLINE)"
