import json

import pytest
import torch

from compress import load_teacher
from compress.errors import UserError
from tests.conftest import tiny_pixart


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
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo: listed + [f"transformer/{n}" for n in shards])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, subfolder=None: str(tmp_path / "pipe" / subfolder / name))
    fetched = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, allow_patterns: fetched.extend(allow_patterns) or str(tmp_path / "pipe"))
    assert load_teacher("acme/pipevar", dtype=None).dtype == torch.float16
    assert sorted(fetched) == sorted(["transformer/config.json"] + [f"transformer/{n}" for n in shards])


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
