"""io_hub_pipeline: a Hub id as a pipeline (load_pipeline's base, calibration's pipeline) offline,
with the Hub unreachable, or with a Hub that answers and then stops answering: read from the
Hugging Face cache (offline without diffusers' "couldn't connect" warning), and one the cache
lacks, or holds in part, said in one line naming the cache."""

from __future__ import annotations

import pytest

from compress import load_pipeline
from compress.errors import UserError
from tests.conftest import diffusers_log

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from tests.pipelines import pixart_pipeline

    root = tmp_path_factory.mktemp("pipelines")
    return pixart_pipeline(root / "pipe")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, pipe):
    """`pipe` cached as acme/pix, HF_HUB_OFFLINE set; a compressed output of its transformer."""
    from diffusers import PixArtTransformer2DModel
    from huggingface_hub import constants

    from compress import save_compressed
    from tests.conftest import factorize
    from tests.pipelines import hub_cache

    hub_cache(tmp_path / "hub", "acme/pix", pipe)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    model = PixArtTransformer2DModel.from_pretrained(pipe / "transformer")
    return save_compressed(factorize(model, ["transformer_blocks.0.ff.net.2"], 2), tmp_path / "out",
                           extra={"teacher": "acme/pix"})


def test_a_cached_hub_base_loads_offline_without_a_could_not_connect_warning(offline_cache):
    """diffusers logged "Couldn't connect to the Hub: … offline mode is enabled … Will try to load
    from local cache." for a base the user had asked to read offline."""
    with diffusers_log() as logged:
        pipeline = load_pipeline(offline_cache)
    assert type(pipeline).__name__ == "PixArtSigmaPipeline"
    assert not [line for line in logged if "connect" in line], logged


def test_an_uncached_hub_pipeline_offline_is_one_line_naming_the_cache(offline_cache, tmp_path):
    """Was "cannot load base pipeline 'acme/pxi': Cannot load model acme/pxi: the model is not fully
    cached locally (Cannot find an appropriate cached snapshot folder … pass 'local_files_only=False'
    …) … Please check out the root cause in the stacktrace above."."""
    from compress.calib_pipeline import load_pipeline_for
    from compress.io_output import load_transformer

    cache = f"the Hugging Face cache {tmp_path / 'hub'} \\(HF_HUB_CACHE, else HF_HOME/hub\\) holds no copy of it"
    with pytest.raises(UserError, match=rf"^cannot load base pipeline 'acme/pxi' offline \(HF_HUB_OFFLINE\): {cache}; "
                                        r"check the id, fetch it once online, or pass a local pipeline folder$"):
        load_pipeline(offline_cache, base="acme/pxi")
    with pytest.raises(UserError, match=rf"^cannot load calibration pipeline 'acme/pxi' offline \(HF_HUB_OFFLINE\): "
                                        rf"{cache}; "):
        load_pipeline_for(load_transformer(offline_cache), "acme/pxi")


def test_a_hub_pipeline_loads_without_huggingface_hubs_local_dir_use_symlinks_warning(offline_cache):
    """huggingface_hub 2.4 warns "The `local_dir_use_symlinks` argument is deprecated" on each
    hf_hub_download diffusers 0.42's load_config makes with a Hub id (it passes the argument, we do
    not): load_pipeline's base and the calibration pipeline printed it. quiet_hub drops that one."""
    import warnings

    from compress.calib_pipeline import load_pipeline_for
    from compress.io_hub import quiet_hub
    from compress.io_output import load_transformer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_pipeline(offline_cache)
        load_pipeline_for(load_transformer(offline_cache), "acme/pix")
        with quiet_hub():
            warnings.warn("another warning")  # said as before
    said = [str(w.message) for w in caught]
    assert not [w for w in said if "local_dir_use_symlinks" in w], said
    assert "another warning" in said


def test_a_hub_pipeline_the_hub_does_not_answer_is_read_from_the_cache_or_refused_at_once(
        offline_cache, tmp_path, monkeypatch, capsys):
    """HF_HUB_OFFLINE unset and a Hub that accepts the connection and never answers: diffusers'
    model_info and snapshot_download for a Hub pipeline send no timeout, so load_pipeline and the
    calibration pipeline hung. One bounded request (io_hub.hub_head) finds that out: a cached
    pipeline is read from the cache (a note says so), an uncached one is one line naming the id
    and the variable that lengthens the wait."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    import huggingface_hub
    from huggingface_hub import constants

    import diffusers.pipelines.pipeline_utils as pipeline_utils
    from compress.calib_pipeline import load_pipeline_for
    from compress.io_output import load_transformer

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 4)
    waits = []

    def head(url, timeout=None, **kwargs):
        waits.append(timeout)
        raise httpx.ReadTimeout("The read operation timed out", request=httpx.Request("HEAD", url))
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", head)
    monkeypatch.setattr(pipeline_utils, "model_info", lambda *a, **k: pytest.fail("diffusers' model_info"))
    real = pipeline_utils.snapshot_download
    monkeypatch.setattr(pipeline_utils, "snapshot_download", lambda *a, **k: real(*a, **k) if k.get(
        "local_files_only") else pytest.fail("diffusers' snapshot_download asked the Hub"))  # would wait forever
    assert type(load_pipeline(offline_cache)).__name__ == "PixArtSigmaPipeline"
    assert waits == [4]
    assert "'acme/pix' is read from the Hugging Face cache" in " ".join(capsys.readouterr().err.split())
    timed_out = ("the Hugging Face Hub cannot be reached (ReadTimeout: The read operation timed out (no answer within "
                 f"4 s; set HF_HUB_ETAG_TIMEOUT to wait longer)), and the Hugging Face cache {tmp_path / 'hub'} "
                 "(HF_HUB_CACHE, else HF_HOME/hub) holds no copy of it; check your network, or pass a local "
                 "pipeline folder")
    with pytest.raises(UserError) as e:
        load_pipeline(offline_cache, base="acme/other")
    assert str(e.value) == f"cannot load base pipeline 'acme/other': {timed_out}"
    with pytest.raises(UserError) as e:
        load_pipeline_for(load_transformer(offline_cache), "acme/other")
    assert str(e.value) == f"cannot load calibration pipeline 'acme/other': {timed_out}"


STOPPED = ("the Hugging Face Hub answered, then stopped answering: ReadTimeout: timed out (no answer to 2 requests "
           "within 1 s each, 2 s from the first to the last; set HF_HUB_DOWNLOAD_TIMEOUT to wait longer)")


def test_a_cached_hub_pipeline_whose_hub_stops_answering_is_read_from_the_cache_with_one_note(
        offline_cache, hanging_hub, tmp_path, monkeypatch, capsys):
    """A Hub that answered pipeline_keywords' HEAD and then held diffusers' requests: load_pipeline's
    base failed with the timeout though the cache held the whole pipeline. It is read from the cache
    (io_hub_pipeline.hub_or_cache), one note saying why; the calibration pipeline loaded next reads
    the cache at once (the Hub taken as unreachable a while), no request held, and no second note (it
    said 'cannot be reached' with the first load's numbers, as if it had waited again)."""
    from huggingface_hub import constants

    from compress import load_pipeline
    from compress.calib_pipeline import load_pipeline_for
    from compress.io_output import load_transformer
    from tests.hub_server import held, within

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    pipeline, took = within(30, lambda: load_pipeline(offline_cache, base="acme/pix"))
    assert type(pipeline).__name__ == "PixArtSigmaPipeline", pipeline
    assert 2 <= took < 10 and len(held(hanging_hub)) == 2
    said = " ".join(capsys.readouterr().err.split())
    note = (f"'acme/pix' is read from the Hugging Face cache {tmp_path / 'hub'} ({STOPPED}); "
            "set HF_HUB_OFFLINE=1 to skip the Hub")
    assert note in said and said.count("is read from the Hugging Face cache") == 1, said
    pipeline, took = within(30, lambda: load_pipeline_for(load_transformer(offline_cache), "acme/pix"))
    assert type(pipeline).__name__ == "PixArtSigmaPipeline", pipeline
    assert took < 2 and len(held(hanging_hub)) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "is read from the Hugging Face cache" not in said, said


def test_a_hub_pipeline_whose_hub_stops_answering_and_the_cache_holds_in_part_names_both(
        offline_cache, hanging_hub, tmp_path, monkeypatch):
    """Where the cache's snapshot lacks a part the pipeline lists, the timeout stays an error: one
    line naming the timeout and the part the snapshot lacks, with the download that fetches it."""
    import shutil

    from huggingface_hub import constants

    from compress import load_pipeline
    from tests.hub_server import within

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    snapshot = tmp_path / "hub" / "models--acme--pix" / "snapshots" / ("0" * 40)
    shutil.rmtree(snapshot / "vae")
    error, took = within(30, lambda: load_pipeline(offline_cache, base="acme/pix"))
    assert isinstance(error, UserError), error
    assert str(error).startswith(f"cannot load base pipeline 'acme/pix': the Hugging Face Hub did not answer "
                                 f"(ReadTimeout: timed out (no answer to 2 requests within 1 s each, 2 s from "
                                 f"the first to the last; set HF_HUB_DOWNLOAD_TIMEOUT to wait longer)), and the "
                                 f"Hugging Face cache's snapshot {snapshot} of it: "), error
    assert "vae" in str(error) and f"hf download acme/pix --include 'vae/*' --revision {'0' * 40}" in str(error)
    assert 2 <= took < 10


@pytest.mark.parametrize("removed, part, lacks, cls", [
    ("scheduler/scheduler_config.json", "scheduler", "scheduler_config.json", "DPMSolverMultistepScheduler"),
    ("tokenizer/tokenizer.json", "tokenizer", "spiece.model (or tokenizer.json)", "T5Tokenizer"),
    ("text_encoder/config.json", "text_encoder", "config.json", "T5EncoderModel"),
    ("tokenizer/tokenizer_config.json", "tokenizer", "tokenizer_config.json", None)])  # None: the cache lists it
def test_a_cached_hub_pipeline_lacking_a_file_of_a_part_names_it_and_its_download(
        offline_cache, tmp_path, monkeypatch, removed, part, lacks, cls):
    """A snapshot whose part folder is there but lacks the file its class reads (an interrupted
    download), read offline or with the Hub unreachable: the scheduler's ended in "acme/pix does not
    appear to have a file named scheduler_config.json." (or diffusers' "Error no file named …"), a
    text encoder's config in a RuntimeError traceback, a tokenizer without its vocabulary loaded
    without a word (every word one unknown id), and a file the cache's list of the commit names in
    huggingface_hub's "The cached snapshot … is incomplete". One line names the file and the hf download."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    import huggingface_hub
    from huggingface_hub import constants

    from compress.calib_pipeline_load import load_pipeline_for, scheduler_config
    from compress.io_output import load_transformer

    import json

    snapshot = tmp_path / "hub" / "models--acme--pix" / "snapshots" / ("0" * 40)
    if cls is None:  # the commit's file list an online snapshot_download caches: huggingface_hub's own line
        (snapshot.parent.parent / "trees").mkdir()
        (snapshot.parent.parent / "trees" / f"{'0' * 40}.json").write_text(json.dumps({"format_version": 1, "files": {
            f.relative_to(snapshot).as_posix(): {"size": 1, "blob_id": "0" * 40} for f in snapshot.rglob("*")
            if f.is_file()}}))
    (snapshot / removed).unlink()
    (snapshot / part / "README.md").write_text("a file the part does not read")
    reads = f"which {cls} reads" if cls else "which the cache's file list of the commit names and diffusers reads"
    said = (f"the Hugging Face cache's snapshot {snapshot} of it: its {part}/ lacks {lacks}, {reads}; download "
            f"it online (hf download acme/pix --include '{part}/*' --revision {'0' * 40})")
    with pytest.raises(UserError) as e:
        load_pipeline(offline_cache)
    assert str(e.value) == f"cannot load base pipeline 'acme/pix': {said}"
    with pytest.raises(UserError) as e:
        load_pipeline_for(load_transformer(offline_cache), "acme/pix")
    assert str(e.value) == f"cannot load calibration pipeline 'acme/pix': {said}"
    with pytest.raises(UserError) as e:
        scheduler_config("acme/pix")
    assert str(e.value) == f"cannot load calibration pipeline 'acme/pix': {said}"

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the Hub unreachable: the same line
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **k: (_ for _ in ()).throw(
        httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("HEAD", url))))
    with pytest.raises(UserError) as e:
        load_pipeline(offline_cache)
    assert str(e.value) == f"cannot load base pipeline 'acme/pix': {said}"


def test_a_hub_pipeline_whose_hub_stops_answering_and_whose_snapshot_lacks_a_file_names_both(
        offline_cache, hanging_hub, tmp_path, monkeypatch):
    """As where it lacks a part: the timeout and the file the snapshot lacks, with its download."""
    from huggingface_hub import constants

    from tests.hub_server import within

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    snapshot = tmp_path / "hub" / "models--acme--pix" / "snapshots" / ("0" * 40)
    (snapshot / "tokenizer" / "tokenizer.json").unlink()
    error, took = within(30, lambda: load_pipeline(offline_cache, base="acme/pix"))
    assert isinstance(error, UserError), error
    assert str(error).startswith("cannot load base pipeline 'acme/pix': the Hugging Face Hub did not answer "), error
    assert str(error).endswith(f", and the Hugging Face cache's snapshot {snapshot} of it: its tokenizer/ lacks "
                               "spiece.model (or tokenizer.json), which T5Tokenizer reads; download it online (hf "
                               f"download acme/pix --include 'tokenizer/*' --revision {'0' * 40})"), error
    assert 2 <= took < 10


NEWER = "1" * 40  # a commit main moved to on the Hub, of which the cache has no snapshot


@pytest.fixture
def moved_hub(monkeypatch):
    """A Hub on 127.0.0.1 (tests.hub_server) whose HEADs answer that main is at NEWER (huggingface_hub
    moves the cache's refs/main to it, a 404's too) and which holds every other request."""
    from tests import hub_server

    def answer(line: str) -> bytes | None:
        status = "200 OK" if "/model_index.json " in line else "404 Not Found\r\nX-Error-Code: EntryNotFound"
        if line.startswith("HEAD ") or "/api/agent-harnesses" in line:
            return (f"HTTP/1.1 {status}\r\nX-Repo-Commit: {NEWER}\r\nETag: \"e\"\r\nContent-Length: 0\r\n"
                    "Connection: close\r\n\r\n").encode()
        return None
    yield from hub_server._serve(monkeypatch, answer)


def test_a_hub_pipeline_whose_main_moved_on_and_whose_hub_stops_answering_names_both_commits(
        offline_cache, moved_hub, tmp_path, monkeypatch):
    """The Hub answered a HEAD that main is at a commit the cache has no snapshot of, then held the
    load's other requests: the fall-back said the cache 'holds no copy of its main revision', as if
    it held nothing of main, though the snapshot main named before this load is cached. huggingface_hub
    and diffusers read refs/main's commit alone offline (LocalEntryNotFoundError: 'Cannot find an
    appropriate cached snapshot folder for the specified revision'), so the cache's older snapshot,
    another pipeline, is not read in its place either: the line names main's commit, the one refs/main
    named before the load, the snapshot the cache holds (to pass as a local folder), and that
    HF_HUB_OFFLINE=1 does not read it. Offline the same words, without this load's move."""
    from huggingface_hub import constants

    from tests.hub_server import within

    repo = tmp_path / "hub" / "models--acme--pix"
    error, took = within(30, lambda: load_pipeline(offline_cache, base="acme/pix"))
    assert isinstance(error, UserError), error
    assert (repo / "refs" / "main").read_text() == NEWER  # huggingface_hub moved it
    snapshot = f"the snapshot {repo / 'snapshots' / ('0' * 40)} (pass a snapshot folder as load_pipeline's base)"
    held = (f"holds no snapshot of main's commit {NEWER}, which its refs/main names{{}}, only {snapshot}; offline "
            "(HF_HUB_OFFLINE=1) reads refs/main's commit too, as huggingface_hub does")
    moved = f" (this load's request to the Hub moved it from {'0' * 40})"
    assert str(error).startswith("cannot load base pipeline 'acme/pix': the Hugging Face Hub did not answer ("), error
    assert str(error).endswith(f"(HF_HUB_CACHE, else HF_HOME/hub) {held.format(moved)}; check your network, or pass a "
                               "local pipeline folder"), error
    assert 2 <= took < 10
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as e:
        load_pipeline(offline_cache, base="acme/pix")
    assert str(e.value) == (f"cannot load base pipeline 'acme/pix' offline (HF_HUB_OFFLINE): the Hugging Face cache "
                            f"{tmp_path / 'hub'} (HF_HUB_CACHE, else HF_HOME/hub) {held.format('')}; check the "
                            "id, fetch it once online, or pass a local pipeline folder")
    assert (type(load_pipeline(offline_cache, base=str(repo / "snapshots" / ("0" * 40)))).__name__
            == "PixArtSigmaPipeline")


def test_a_moved_main_whose_empty_snapshot_folder_exists_still_names_the_move(offline_cache, moved_hub, tmp_path):
    """huggingface_hub makes the snapshot folder of the commit a HEAD answered (its SUB/ folders,
    empty) before its GET fails: io_hub_pipeline's own `held` took that folder as main's snapshot
    and fell back to io_hub_cache.uncached without `before`, so the line lost 'this load's request to the
    Hub moved it from OLD'. It reads io_hub's moved_main now, which takes an empty folder as none."""
    from tests.hub_server import within

    repo = tmp_path / "hub" / "models--acme--pix"
    (repo / "snapshots" / NEWER / "transformer").mkdir(parents=True)  # what hf_hub_download leaves
    error, _ = within(30, lambda: load_pipeline(offline_cache, base="acme/pix"))
    assert isinstance(error, UserError), error
    assert (repo / "refs" / "main").read_text() == NEWER
    snapshot = f"the snapshot {repo / 'snapshots' / ('0' * 40)} (pass a snapshot folder as load_pipeline's base)"
    assert str(error).endswith(
        f"(HF_HUB_CACHE, else HF_HOME/hub) holds no snapshot of main's commit {NEWER}, which its refs/main names "
        f"(this load's request to the Hub moved it from {'0' * 40}), only {snapshot}; offline (HF_HUB_OFFLINE=1) "
        "reads refs/main's commit too, as huggingface_hub does; check your network, or pass a local pipeline "
        "folder"), error


@pytest.mark.parametrize("held", [["config.json", "diffusion_pytorch_model.safetensors"], None])
def test_a_hub_base_the_hub_answers_is_no_pipeline_is_said_in_one_line(tmp_path, monkeypatch, held, caplog):
    """load_pipeline(out, base=acme/pixt) online, the cache holding nothing of it: the Hub's 404 Entry Not
    Found for model_index.json (a transformer's repo) came out as "cannot load base pipeline 'acme/pixt': 404
    Client Error.", a repo the Hub does not hold as diffusers' "…: Cannot load model acme/pixt: the model is
    not fully cached locally (…) and an error occurred while trying to fetch metadata from the Hub. Please check
    out the root cause in the stacktrace above.", after diffusers' own warning "Couldn't connect to the Hub: 404
    Client Error. Repository Not Found for url: … Will try to load from local cache." (6 lines; now dropped,
    io_hub_pipeline.hub_or_cache)."""
    from huggingface_hub import constants

    from compress import save_compressed
    from tests import hub_server
    from tests.conftest import factorize, tiny_pixart

    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.ff.net.2"], 2), tmp_path / "out",
                          extra={"teacher": "x"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    served = hub_server.answering_repo(monkeypatch, "acme/pixt", held)
    next(served)
    try:
        error, took = hub_server.within(30, lambda: load_pipeline(out, base="acme/pixt"))
    finally:
        next(served, None)
    assert isinstance(error, UserError) and took < 10, error
    assert str(error) == ("cannot load base pipeline 'acme/pixt': a base is a whole pipeline (model_index.json and "
                          "its parts), and acme/pixt is a Hub repo without model_index.json (the Hugging Face Hub "
                          "answered 404 Entry Not Found for it); pass base= the pipeline of its teacher's family (a "
                          "Hugging Face id such as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, a pipeline folder, or "
                          "toy:NAME)" if held else
                          "cannot load base pipeline 'acme/pixt': 'acme/pixt' is not on the Hugging Face Hub (or is "
                          "private: log in); check the id, or pass base= a pipeline folder or toy:NAME")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("diffusers")] == []


def test_diffusers_hub_warning_is_dropped_only_where_the_hub_answered_no_pipeline(caplog):
    """hub_or_cache holds diffusers' "Couldn't connect to the Hub: …" while a pipeline loads: a load that
    goes on (from the cache) or fails otherwise logs it as diffusers did; its filter is gone after."""
    import logging

    from compress.io_hub_pipeline import _hub_answer_said

    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    filters = list(logger.filters)
    with _hub_answer_said():
        logger.warning("Couldn't connect to the Hub: 500 Server Error.\nWill try to load from local cache.")
        logger.warning("another warning")
    with pytest.raises(OSError), _hub_answer_said():
        logger.warning("Couldn't connect to the Hub: 503.\nWill try to load from local cache.")
        raise OSError("not the Hub's answer")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "another warning", "Couldn't connect to the Hub", "Couldn't connect to the Hub"]
    assert logger.filters == filters
