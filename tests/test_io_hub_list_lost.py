"""A Hub teacher whose Hub answered its config's request, then lost a later one (the repo's file
list, or the download of the config that list places the transformer in): run's check before the
load (io_source_config.checked: io_hub.hub_config_file) and the load (load_teacher: io_hub.hub_folder)
read the same config or refuse alike, and a list lost in the check is not waited for again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import PixArtTransformer2DModel

from compress import load_teacher
from compress.errors import UserError
from tests.conftest import tiny_pixart
from tests.hub_server import COMMIT, _model_info, _reply, _serve, within
from tests.test_io_hub_cache import _cached, _pipeline
from tests.test_io_hub_place import _both

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of the test's own (conftest forgets hub_head's earlier answers)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def _hub(monkeypatch, folder: Path, repo: str, hold):
    """A Hub on 127.0.0.1 (tests/hub_server) holding `repo` with the files of `folder` (model_info,
    HEADs and GETs), that holds every request `hold(request line)` is true of unanswered;
    HF_HUB_*_TIMEOUT 1 s."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def answer(line: str) -> bytes | None:
        if "/api/agent-harnesses" in line:  # the registry (tests/hub_server)
            return _reply("404 Not Found", b"", head=True)
        if hold(line):
            return None
        if f" /api/models/{repo}" in line:
            return _model_info(line, repo, files)
        path = line.split(" ")[1]  # /REPO/resolve/REVISION/NAME
        name = path.split("/resolve/", 1)[1].split("/", 1)[1] if "/resolve/" in path else None
        if name not in files:
            return _reply("404 Not Found\r\nX-Error-Code: EntryNotFound", b"", head=line.startswith("HEAD "))
        reply = _reply("200 OK", (folder / name).read_bytes(), head=line.startswith("HEAD "))
        end = reply.index(b"\r\n\r\n")  # its blob's own name in the ETag, not in the file (a tokenizer's '"e"')
        return reply[:end].replace(b'"e"', f'"{len(files)}{files.index(name)}"'.encode()) + reply[end:]
    return _serve(monkeypatch, answer)


def _same(model, expected) -> bool:
    state = expected.state_dict()
    return model.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


LIST = "GET /api/models/acme/pix/revision/" + COMMIT


def test_a_file_list_lost_in_runs_check_is_not_waited_for_again_by_its_load(monkeypatch, tmp_path, capsys):
    """The cache holds acme/pix at the Hub's commit, the Hub holds its file list: the check waited
    HF_HUB_DOWNLOAD_TIMEOUT (1 s) for it, then the load asked it again and waited as long (2.0 s
    in all, 2 lists asked); the loss is remembered, the load reads the cache at once (1 list)."""
    from compress.io_source_config import checked

    model = tiny_pixart()
    _cached(tmp_path, "acme/pix", _pipeline(tmp_path / "pipe", model))
    hub = _hub(monkeypatch, tmp_path / "pipe", "acme/pix", lambda line: line.startswith(LIST))
    seen = next(hub)
    try:
        (config, teacher), took = within(12, lambda: (checked("acme/pix").config, load_teacher("acme/pix")))
    finally:
        next(hub, None)
    assert config["num_layers"] == model.config.num_layers and _same(teacher, model)
    assert sum(line.startswith(LIST) for line, *_ in seen) == 1, seen
    assert took < 1.8, f"{took:.1f} s for the check and the load, at 1 s timeouts"


def test_a_file_list_lost_is_said_naming_the_config_the_check_and_the_load_read(monkeypatch, tmp_path, capsys):
    """As above: the check read the cache's config without a word (the load too); now one note, said
    once, names the file both read and why."""
    from compress.io_source_config import checked

    _cached(tmp_path, "acme/pix", _pipeline(tmp_path / "pipe", tiny_pixart()))
    hub = _hub(monkeypatch, tmp_path / "pipe", "acme/pix", lambda line: line.startswith(LIST))
    next(hub)
    try:
        within(12, lambda: (checked("acme/pix").config, load_teacher("acme/pix")))
    finally:
        next(hub, None)
    config = tmp_path / "hub" / "models--acme--pix" / "snapshots" / COMMIT / "transformer" / "config.json"
    said = " ".join(capsys.readouterr().err.split())
    note = (f"note: 'acme/pix' is read from the Hugging Face cache: {config} and the weights beside it (the Hub's "
            "file list failed: ReadTimeout: timed out (no answer within 1 s; set HF_HUB_DOWNLOAD_TIMEOUT to wait longer))")
    assert said.count(note) == 1, said


def test_a_config_the_list_places_elsewhere_lost_is_refused_by_the_check_as_by_the_load(monkeypatch, tmp_path):
    """acme/both holds a config.json and weights at its root and in transformer/, no model_index.json:
    its transformer is the root's (io.transformer_place), fetched after transformer/config.json
    (io_hub.fetch_config asks that first). The Hub holds the root config's request: the load refused
    in one line, but the check read transformer/'s config (2 layers, the root's 3) without a word;
    now it refuses in the load's line, before any work."""
    from compress.io_source_config import checked

    _both(tmp_path / "repo")
    hub = _hub(monkeypatch, tmp_path / "repo", "acme/both", lambda line: f"/resolve/{COMMIT}/config.json " in line)
    next(hub)
    try:
        check, _ = within(12, lambda: checked("acme/both").config)
        load, _ = within(12, lambda: load_teacher("acme/both"))
    finally:
        next(hub, None)
    assert isinstance(load, UserError) and str(load).startswith(
        "cannot fetch 'acme/both' from the Hugging Face Hub (ReadTimeout: timed out (no answer within 1 s; set "
        "HF_HUB_ETAG_TIMEOUT to wait longer))"), load
    assert isinstance(check, UserError) and str(check) == str(load), check


def _config_alone(tmp_path) -> Path:
    """acme/pix cached at the Hub's commit with its transformer's config and no weights."""
    repo = _cached(tmp_path, "acme/pix", _pipeline(tmp_path / "pipe", tiny_pixart()))
    for weights in (repo / "snapshots").glob("*/transformer/*.safetensors"):
        weights.unlink()
    return repo


def test_a_load_refused_after_a_lost_list_asks_it_again_once_the_network_is_back(monkeypatch, tmp_path):
    """A notebook: the cache holds the config, not the weights; the Hub holds the list, so the load
    reads the cache and is refused. The network back, the retry within the minute was refused again
    in 0.00 s without asking (the loss remembered); now it asks the list again, fetches and loads."""
    seen = _refused_then_retried(monkeypatch, tmp_path, LIST)
    assert sum(line.startswith(LIST) for line, *_ in seen) == 2, seen


def _refused_then_retried(monkeypatch, tmp_path, held: str) -> list:
    """acme/pix's config cached without weights, the Hub holding requests starting `held`: the load
    refused; then the network back, the retry loads the Hub's weights. The requests the Hub saw."""
    _config_alone(tmp_path)
    lost = [True]
    hub = _hub(monkeypatch, tmp_path / "pipe", "acme/pix", lambda line: lost[0] and line.startswith(held))
    seen = next(hub)
    try:
        first, _ = within(12, lambda: load_teacher("acme/pix"))
        lost[0] = False  # the network is back
        second, _ = within(12, lambda: load_teacher("acme/pix"))
    finally:
        next(hub, None)
    assert isinstance(first, UserError) and "holds no weights" in str(first), first
    assert not isinstance(second, Exception), second
    assert _same(second, PixArtTransformer2DModel.from_pretrained(tmp_path / "pipe" / "transformer"))
    return seen


def test_a_load_refused_on_the_checks_lost_list_says_it_was_not_asked_again(monkeypatch, tmp_path):
    """run's check lost the list, the load read the cache without asking it (1 list) and was refused
    in the check's words as if it had asked; now they say it was not asked again."""
    from compress.io_source_config import checked

    _config_alone(tmp_path)
    hub = _hub(monkeypatch, tmp_path / "pipe", "acme/pix", lambda line: line.startswith(LIST))
    seen = next(hub)
    try:
        load, _ = within(12, lambda: (checked("acme/pix").config, load_teacher("acme/pix")))
    finally:
        next(hub, None)
    assert isinstance(load, UserError), load
    assert sum(line.startswith(LIST) for line, *_ in seen) == 1, seen
    assert re.search(r"\(the Hub's file list failed: ReadTimeout: timed out \(no answer within 1 s; set "
                     r"HF_HUB_DOWNLOAD_TIMEOUT to wait longer\), (under 1|\d+) s before; not asked again\)",
                     " ".join(str(load).split())), load


def test_a_list_lost_under_a_second_before_is_not_said_as_0_s_before(monkeypatch):
    """A list lost less than half a second before (run's load just after its check lost it, having
    waited 1 s for it) was said '…, 0 s before; not asked again'; now 'under 1 s before'. A second
    and later: its whole seconds, as before."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    from huggingface_hub import constants

    from compress.io_hub_requests import ListLost, cause_line

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    lost = httpx.ReadTimeout("timed out", request=httpx.Request("GET", "https://huggingface.co/api/models/acme/pix"))
    words = ("ReadTimeout: timed out (no answer within 1 s; set HF_HUB_DOWNLOAD_TIMEOUT to wait longer), {} before; "
             "not asked again")
    for ago, said in ((0.3, "under 1 s"), (0.7, "under 1 s"), (1.0, "1 s"), (12.4, "12 s"), (59.6, "60 s")):
        assert cause_line(ListLost(lost, ago)) == words.format(said), ago


def test_a_list_lost_is_asked_again_once_its_wait_is_raised(monkeypatch, tmp_path, capsys):
    """run's check lost the list at HF_HUB_DOWNLOAD_TIMEOUT 1 s; the user raises it to 2 s, as the words
    advise, and loads within the minute: the load asked nothing and said 'no answer within 2 s' (the
    remembered error's words recomputed); now it asks again (2 lists), waits 2 s and says so."""
    from huggingface_hub import constants

    from compress.io_source_config import checked

    _cached(tmp_path, "acme/pix", _pipeline(tmp_path / "pipe", tiny_pixart()))
    hub = _hub(monkeypatch, tmp_path / "pipe", "acme/pix", lambda line: line.startswith(LIST))
    seen = next(hub)
    try:
        within(12, lambda: checked("acme/pix").config)
        monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
        _, took = within(12, lambda: load_teacher("acme/pix"))
    finally:
        next(hub, None)
    said = " ".join(capsys.readouterr().err.split())
    assert sum(line.startswith(LIST) for line, *_ in seen) == 2, seen
    assert took >= 2, f"{took:.2f} s"
    assert "(the Hub's file list failed: ReadTimeout: timed out (no answer within 2 s; set" in said, said


def test_a_load_refused_after_the_hub_was_unreachable_asks_again_once_the_network_is_back(monkeypatch, tmp_path):
    """The notebook above, the Hub unreachable (its HEAD held): the load reads the cache's config and is refused.
    The network back, the retry within the minute was refused again without asking (hub_head's loss
    remembered); now it asks again, fetches the weights and loads."""
    seen = _refused_then_retried(monkeypatch, tmp_path, "HEAD ")
    assert sum(line.startswith("HEAD ") for line, *_ in seen) >= 2, seen
