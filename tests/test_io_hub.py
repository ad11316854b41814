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
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    response = httpx2.Response(401, request=httpx2.Request("HEAD", "https://huggingface.co/org/model"))
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
    """What HfApi.model_info answers (io_hub_requests.repo_names reads the repo's files from it)."""
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
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    response = httpx2.Response(404, request=httpx2.Request("HEAD", "https://huggingface.co/org/unet"))
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


def _no_network(monkeypatch, tmp_path, repo_id: str, folder):
    """`folder` cached as `repo_id`, HF_HUB_OFFLINE unset, and no network: the one request io_hub
    makes to find that out fails at once; any other Hub call fails the test (huggingface_hub would
    retry it for about 23 s)."""
    import httpx2
    import huggingface_hub

    _hub_cache(monkeypatch, tmp_path, repo_id, folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def unreachable(url, *args, **kwargs):
        asked.append(url)
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, lambda *a, name=name, **k: pytest.fail(f"{name} {a} {k}"))
    for name in ("list_repo_files", "model_info"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, lambda *a, **k: pytest.fail("listed the repo"))
    return asked


@pytest.mark.parametrize("layout", ["transformer-only", "pipeline"])
def test_a_cached_hub_teacher_loads_without_network_and_without_retries(tmp_path, monkeypatch, capsys, layout):
    """No network, HF_HUB_OFFLINE unset: a transformer-only repo failed 'cannot fetch' after 27 s
    (its root config.json, cached, was never tried), a pipeline repo loaded after 35 s of silent
    retries (the file list). Now one quick request, a note, and the cache."""
    model = tiny_pixart()
    if layout == "pipeline":
        _pipeline_with(tmp_path / "repo", model.save_pretrained)
    else:
        model.save_pretrained(tmp_path / "repo")
    asked = _no_network(monkeypatch, tmp_path, "acme/cached", tmp_path / "repo")
    teacher = load_teacher("acme/cached")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert len(asked) == 1
    assert (f"note: 'acme/cached' is read from the Hugging Face cache {tmp_path / 'hub'} (the Hugging Face Hub "
            "cannot be reached: ConnectError: [Errno -3] Temporary failure in name resolution); set "
            "HF_HUB_OFFLINE=1 to skip the Hub") in " ".join(capsys.readouterr().err.split())


def test_a_cache_holding_only_the_config_without_network_blames_the_cache(tmp_path, monkeypatch):
    """'acme/pix (transformer/) holds no diffusion_pytorch_model.safetensors' was untrue: the repo
    was not listed, the cache was."""
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    tiny_pixart().save_config(tmp_path / "pipe" / "transformer")
    _no_network(monkeypatch, tmp_path, "acme/pix", tmp_path / "pipe")
    with pytest.raises(UserError, match=r"^the Hugging Face cache holds no weights of 'acme/pix' \(transformer/\) "
                                        r"beside its config.json \(the Hugging Face Hub cannot be reached: "
                                        r"ConnectError: .*\): fetch it once online"):
        load_teacher("acme/pix")


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


def test_a_cached_hub_teacher_is_fetched_from_the_hub_where_it_answers(tmp_path, monkeypatch):
    """The cache answers alone only where the Hub cannot be reached: online, a cached repo is asked
    for its files as before (a newer revision is downloaded)."""
    import huggingface_hub

    model = tiny_pixart()
    _pipeline_with(tmp_path / "pipe", model.save_pretrained)
    _hub_cache(monkeypatch, tmp_path, "acme/pix", tmp_path / "pipe")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, *a, **k: object())
    listed = ["model_index.json"] + [f"transformer/{f.name}" for f in (tmp_path / "pipe" / "transformer").iterdir()]
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, timeout: hub_info(listed))
    fetched = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, subfolder=None: fetched.append(
        f"{subfolder}/{name}") or str(tmp_path / "pipe" / subfolder / name))
    load_teacher("acme/pix")
    assert sorted(fetched) == ["transformer/config.json", "transformer/config.json",
                               "transformer/diffusion_pytorch_model.safetensors"]  # its config, then the files


def test_a_hub_id_the_cache_lacks_fails_at_once_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    """No network, HF_HUB_OFFLINE unset, an id not in the cache (a typo): the error came after
    huggingface_hub's ~23 s of retries; one quick request tells now, and the cache folder is named."""
    asked = _no_network(monkeypatch, tmp_path, "acme/cached", tiny_pixart_folder(tmp_path))
    with pytest.raises(UserError) as e:
        load_teacher("acme/cahced")
    assert len(asked) == 1
    assert str(e.value) == ("cannot fetch 'acme/cahced' from the Hugging Face Hub (ConnectError: [Errno -3] Temporary "
                            f"failure in name resolution), and the Hugging Face cache {tmp_path / 'hub'} (HF_HUB_CACHE, "
                            "else HF_HOME/hub) holds no copy of it; pass a local folder or file, or check your network")


def tiny_pixart_folder(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "repo")
    return tmp_path / "repo"


def test_cache_only_says_offline_only_where_hf_hub_offline_is_set(monkeypatch):
    """plan reads a Hub id's config from the cache alone and said it found none 'offline' where
    HF_HUB_OFFLINE was unset and no request was made (reachable Hub or not): cache_only words it."""
    import huggingface_hub

    from compress.io_hub import cache_only

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert cache_only("plan") == "without the Hugging Face Hub, which plan does not ask"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert cache_only("plan") == "offline (HF_HUB_OFFLINE)"



NEWER = "1" * 40  # a commit main moved to on the Hub, of which the cache has no snapshot


@pytest.fixture
def moved_hub(monkeypatch):
    """A Hub on 127.0.0.1 (tests.hub_server) whose HEADs answer a 500-byte file at main's commit
    NEWER (hf_hub_download moves the cache's refs/main to it and makes the snapshot's SUB/ folder)
    and which holds every other request (the GET that follows); yields the requests it saw."""
    from tests import hub_server

    def answer(line: str) -> bytes | None:
        if line.startswith("HEAD ") or "/api/agent-harnesses" in line:
            return (f"HTTP/1.1 200 OK\r\nX-Repo-Commit: {NEWER}\r\nETag: \"e\"\r\nContent-Length: 500\r\n"
                    "Connection: close\r\n\r\n").encode()
        return None
    yield from hub_server._serve(monkeypatch, answer)


def _unreachable(monkeypatch) -> None:
    """The Hub's address made a port nothing listens on (connection refused), and hub_head's answers
    forgotten (a later process)."""
    import socket

    import huggingface_hub

    import compress.io_hub_requests as io_hub_requests

    server = socket.create_server(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(io_hub_requests, "_HEADS", {})


def test_a_hub_teacher_whose_main_moved_past_the_cache_names_both_commits(tmp_path, monkeypatch, moved_hub):
    """The Hub answered hf_hub_download's HEAD of the teacher's config that main is at a commit the
    cache has no snapshot of (huggingface_hub moved refs/main to it and made its empty transformer/
    folder), then held the GET: the error said only the timeout. Then, the Hub unreachable, the cache
    'holds no copy of its main revision, only the snapshots OLD, NEWER (main)', and offline 'a copy of
    it without transformer/config.json or config.json'. huggingface_hub reads refs/main's commit alone
    offline, so the older snapshot is not read in its place: each line names main's commit, the
    commit refs/main named before (where this load moved it) and the snapshot held, which loads as a
    local teacher (pinned)."""
    from huggingface_hub import constants

    from tests.hub_server import within

    model = tiny_pixart()
    _pipeline_with(tmp_path / "pipe", model.save_pretrained)
    _hub_cache(monkeypatch, tmp_path, "acme/pix", tmp_path / "pipe")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.3)  # huggingface_hub asks the GET 6 times
    repo, old = tmp_path / "hub" / "models--acme--pix", "0" * 40
    error, took = within(60, lambda: load_teacher("acme/pix"))
    assert (repo / "refs" / "main").read_text() == NEWER  # huggingface_hub moved it
    assert (repo / "snapshots" / NEWER).is_dir()  # its transformer/ folder, empty
    held = (f"(HF_HUB_CACHE, else HF_HOME/hub) holds no snapshot of main's commit {NEWER}, which its refs/main names{{}}, "
            f"only the snapshot {repo / 'snapshots' / old} (pass a snapshot folder as a local one); offline "
            "(HF_HUB_OFFLINE=1) reads refs/main's commit too, as huggingface_hub does")
    assert isinstance(error, UserError), error
    assert re.fullmatch(re.escape("cannot fetch 'acme/pix' from the Hugging Face Hub (ReadTimeout: ") + ".*" + re.escape(
        f"), and the Hugging Face cache {tmp_path / 'hub'} "
        + held.format(f" (this load's request to the Hub moved it from {old})")
        + "; pass a local folder or file, or check your network"), str(error)), error
    _unreachable(monkeypatch)
    error, took = within(60, lambda: load_teacher("acme/pix"))
    assert re.fullmatch(re.escape("cannot fetch 'acme/pix' from the Hugging Face Hub (ConnectError: ") + ".*" + re.escape(
        f"), and the Hugging Face cache {tmp_path / 'hub'} {held.format('')}; pass a local folder or file, or check "
        "your network"), str(error)), error
    assert took < 5  # one request (hub_head's), not huggingface_hub's retries
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as e:
        load_teacher("acme/pix")
    assert str(e.value) == (f"cannot fetch 'acme/pix' offline (HF_HUB_OFFLINE), and the Hugging Face cache "
                            f"{tmp_path / 'hub'} {held.format('')}: check the id, fetch it once online, or pass a "
                            "local folder or file")
    teacher = load_teacher(str(repo / "snapshots" / old))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())
