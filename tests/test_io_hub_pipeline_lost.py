"""io_hub_pipeline: a Hub pipeline whose Hub answered hub_head's one request and then could not be
reached by diffusers' model_info (a connection refused), with the Hugging Face cache lacking it: one
line of ours, without diffusers' "Couldn't connect to the Hub" warning (io_hub_pipeline.unreached)."""

from __future__ import annotations

import logging
import time

import pytest

from compress import load_pipeline, save_compressed
from compress.errors import UserError
from tests.conftest import factorize
from tests.test_io_hub_unreachable import _unreachable

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def lost_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, HF_HUB_OFFLINE unset, hub_head's request answered (the Hub reached)
    and every later request refused (the Hub's address a port nothing listens on); a compressed toy
    PixArt output."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    import huggingface_hub

    out = _hub_lost_after_head(tmp_path, monkeypatch)
    refused = lambda url, **k: (_ for _ in ()).throw(  # noqa: E731 - huggingface_hub's retries: 23 s
        httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("HEAD", url)))
    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", refused)
    return out


def _hub_lost_after_head(tmp_path, monkeypatch):
    """lost_hub without its quick refusal: huggingface_hub's own requests go to the closed port."""
    from huggingface_hub import constants

    import compress.io_hub_pipeline as io_hub_pipeline
    from compress.toy import load_toy_teacher

    _unreachable(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(io_hub_pipeline, "hub_head", lambda repo_id, name: (None, None))
    model = factorize(load_toy_teacher("pixart"), ["transformer_blocks.0.ff.net.2"], rank=8)
    return save_compressed(model, tmp_path / "out", extra={"teacher": "toy:pixart"})


def test_a_base_pipeline_the_hub_stops_being_reached_for_fails_without_huggingface_hubs_retries(tmp_path, monkeypatch):
    """Every request after hub_head's refused, none faked (conftest's get_hf_file_metadata put back):
    the base's transformer config check (_check_base: diffusers' load_config, hf_hub_download's HEAD
    retried 5 times, 1+2+4+8+8 s of sleeps) held the load 23 s before its one line; now its one
    request without retries finds the Hub gone and from_pretrained says it at once."""
    import huggingface_hub
    from huggingface_hub import constants

    out = _hub_lost_after_head(tmp_path, monkeypatch)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", huggingface_hub.file_download.get_hf_file_metadata)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        load_pipeline(out, base="acme/pix")
    took = time.monotonic() - start
    assert str(e.value).startswith("cannot load base pipeline 'acme/pix': the Hugging Face Hub cannot be reached "
                                   "(ConnectError: [Errno 111] Connection refused), and the Hugging Face cache "), e.value
    assert took < 5, f"{took:.1f} s"


def test_a_hub_pipeline_the_hub_stops_being_reached_for_is_one_line_without_diffusers_warning(
        lost_hub, tmp_path, caplog):
    """Was diffusers' "Couldn't connect to the Hub: [Errno 111] Connection refused. / Will try to load
    from local cache." then "cannot load base pipeline 'acme/pix': Cannot load model acme/pix: the model
    is not fully cached locally (…) … Please check out the root cause in the stacktrace above." (no
    stacktrace shown); calibration.pipeline alike."""
    from compress.calib_pipeline_load import load_pipeline_for
    from compress.io_output import load_transformer

    cache = f"the Hugging Face cache {tmp_path / 'hub'} (HF_HUB_CACHE, else HF_HOME/hub) holds no copy of it"
    for what, load in (("base pipeline", lambda: load_pipeline(lost_hub, base="acme/pix")),
                       ("calibration pipeline", lambda: load_pipeline_for(load_transformer(lost_hub), "acme/pix"))):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="diffusers"), pytest.raises(UserError) as e:
            load()
        said = str(e.value)
        assert said.startswith(f"cannot load {what} 'acme/pix': the Hugging Face Hub cannot be reached (Connect"), said
        assert said.endswith(f"), and {cache}; check your network, or pass a local pipeline folder"), said
        assert "stacktrace" not in said and "\n" not in said, said
        assert not [r for r in caplog.records if "connect" in r.getMessage()], caplog.records


def test_the_could_not_connect_warning_is_logged_where_the_load_fails_otherwise():
    """The hold drops diffusers' warning only where the caller's line says it (`said`)."""
    from compress.io_hub_pipeline import _hub_answer_said

    logger, seen = logging.getLogger("diffusers.pipelines.pipeline_utils"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        for said in (True, False):
            with pytest.raises(OSError), _hub_answer_said(lambda e: said):
                logger.warning("Couldn't connect to the Hub: refused.\nWill try to load from local cache.")
                raise OSError("another failure")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Couldn't connect to the Hub: refused.\nWill try to load from local cache."]


@pytest.mark.parametrize("hold", ["all", "after its HEAD"])
def test_a_base_pipeline_refused_without_the_hub_asks_again_once_the_network_is_back(tmp_path, monkeypatch, hold):
    """A notebook: acme/pix not in the cache, the Hub unreachable (every request held), or answering
    pipeline_keywords' HEAD and then holding diffusers' requests: load_pipeline refused in one line.
    The network back, the retry within the minute was refused again at once without asking (hub_head's
    'cannot be reached' remembered, or stopped_answering's); now it asks the Hub, fetches and loads."""
    from diffusers import PixArtTransformer2DModel
    from huggingface_hub import constants

    from tests.hub_server import within
    from tests.pipelines import pixart_pipeline
    from tests.test_io_hub_list_lost import _hub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = pixart_pipeline(tmp_path / "pipe")
    model = PixArtTransformer2DModel.from_pretrained(pipe / "transformer")
    out = save_compressed(factorize(model, ["transformer_blocks.0.ff.net.2"], 2), tmp_path / "out")
    head = lambda line: line.startswith("HEAD ") and "/model_index.json " in line  # noqa: E731
    lost = [True]
    hub = _hub(monkeypatch, pipe, "acme/pix", lambda line: lost[0] and (hold == "all" or not head(line)))
    seen = next(hub)
    try:
        first, _ = within(30, lambda: load_pipeline(out, base="acme/pix"))
        lost[0] = False  # the network is back
        heads = sum(map(head, (line for line, *_ in seen)))
        second, _ = within(60, lambda: load_pipeline(out, base="acme/pix"))
    finally:
        next(hub, None)
    assert isinstance(first, UserError) and "holds no copy of it" in str(first), first
    assert type(second).__name__ == "PixArtSigmaPipeline", second
    assert sum(map(head, (line for line, *_ in seen))) > heads, seen  # the retry asked the Hub
