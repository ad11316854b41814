"""A Hub on 127.0.0.1 that answers a HEAD and then holds every other request without an answer
(`hanging_hub`, conftest's fixture of that name), one that answers a pipeline's model_info, file
tree and model_index.json and holds its other files (`holding_files`), one that holds a repo
without the files asked for, or none (`answering_repo`: 404s), and a load run with a bound on its
time (`within`).
Imported by tests/conftest.py before any test patches huggingface_hub: the real HfApi methods and
snapshot_download are kept here for the server's loads."""

from __future__ import annotations

import importlib
import socket
import threading
import time

import huggingface_hub
import pytest

BLOCKED = ("list_repo_files", "list_repo_tree", "repo_info")  # no timeout: never called by our code
HF_API = {name: getattr(huggingface_hub.HfApi, name) for name in BLOCKED}  # the real ones, for a live Hub
SNAPSHOT_DOWNLOAD = huggingface_hub.snapshot_download
importlib.import_module("diffusers.pipelines.pipeline_utils")  # its snapshot_download: first imported in a test, the test's patch


def hanging_hub(monkeypatch):
    """A Hub on 127.0.0.1 that answers a HEAD of model_index.json (pipeline_keywords' reachability
    request: the Hub answers, diffusers loads) and of other files with 404, and holds every other
    request (diffusers' model_info, …) without an answer; HF_HUB_*_TIMEOUT 1 s. Its answers name the
    commit tests.pipelines.hub_cache writes (huggingface_hub points the cache's refs/main at the
    commit a HEAD's answer names, a 404's too). Yields the requests it saw: (request line, its
    headers, seconds since the server started)."""
    def answer(line: str) -> bytes | None:
        status = "200 OK" if "/model_index.json " in line else "404 Not Found\r\nX-Error-Code: EntryNotFound"
        if line.startswith("HEAD ") or "/api/agent-harnesses" in line:  # the registry: no 3 s wait
            return _reply(status, b"", head=True)
        return None
    yield from _serve(monkeypatch, answer)


def holding_files(monkeypatch, repo: str, index: bytes, files: list[str]):
    """A Hub on 127.0.0.1 that answers the pipeline `repo`'s model_info (siblings: `files`), its file
    tree and its model_index.json (`index`, a HEAD and a GET), and holds every other request (the
    other files' HEADs: hf_hub_download asks each again 6 times) without an answer; as hanging_hub
    otherwise."""
    def answer(line: str) -> bytes | None:
        if "/model_index.json " in line:
            return _reply("200 OK", index, head=line.startswith("HEAD "))
        if f" /api/models/{repo}" in line:  # model_info (of main, of revision/main), the tree
            return _model_info(line, repo, files)
        if "/api/agent-harnesses" in line:
            return _reply("404 Not Found", b"", head=True)
        return None
    yield from _serve(monkeypatch, answer)


def answering_repo(monkeypatch, repo: str, files: list[str] | None):
    """A Hub on 127.0.0.1 that holds the repo `repo` with `files` (its model_info, its file tree) and
    answers 404 Entry Not Found for any file (their contents are never asked for in the tests: a
    repo without model_index.json), or with `files` None, Repository Not Found for every request;
    as hanging_hub otherwise."""
    def answer(line: str) -> bytes | None:
        if "/api/agent-harnesses" in line:
            return _reply("404 Not Found", b"", head=True)
        if files is not None and f" /api/models/{repo}" in line:
            return _model_info(line, repo, files)
        error = "EntryNotFound" if files is not None else "RepoNotFound"
        return _reply(f"404 Not Found\r\nX-Error-Code: {error}", b"", head=line.startswith("HEAD "))
    yield from _serve(monkeypatch, answer)


COMMIT = "0" * 40  # tests.pipelines.hub_cache's


def _model_info(line: str, repo: str, files: list[str]) -> bytes:
    """The answer to the request `line` for the model_info of `repo` (of main, of revision/main; its
    siblings: `files`), or for its file tree."""
    import json

    if "/tree/" in line:
        return _reply("200 OK", json.dumps([{"type": "file", "path": f, "size": 100, "oid": "0" * 40}
                                            for f in files]).encode(), json=True)
    return _reply("200 OK", json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "tags": [],
                                        "siblings": [{"rfilename": f} for f in files]}).encode(), json=True)


def _reply(status: str, body: bytes, head: bool = False, json: bool = False) -> bytes:
    kind = "Content-Type: application/json\r\n" if json else ""
    return (f"HTTP/1.1 {status}\r\nX-Repo-Commit: {COMMIT}\r\nETag: \"e\"\r\n{kind}Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + (b"" if head else body)


def _serve(monkeypatch, answer):
    """The server: `answer(request line)` gives the bytes to answer, None to hold it."""
    from huggingface_hub import constants

    for name, method in HF_API.items():  # diffusers' own requests are what this Hub is for
        monkeypatch.setattr(huggingface_hub.HfApi, name, method)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", SNAPSHOT_DOWNLOAD)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", huggingface_hub.file_download.get_hf_file_metadata)
    server, held, seen, start = socket.create_server(("127.0.0.1", 0)), [], [], time.monotonic()

    def reply(conn):
        data = b""
        while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
            data += chunk
        line, *headers = data.decode("latin-1").split("\r\n\r\n")[0].split("\r\n")
        seen.append((line, {h.split(":")[0].lower(): h.split(":", 1)[1].strip() for h in headers},
                     time.monotonic() - start))
        if (answered := answer(line)) is None:
            held.append(conn)  # never answered
        else:
            conn.sendall(answered)
            conn.close()

    def serve():
        while True:
            try:
                conn = server.accept()[0]
            except OSError:
                return
            threading.Thread(target=reply, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)  # model_info's, made at import
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield seen
    server.close()
    for conn in held:  # a load still waiting (before the fix) gets its answer: the connection closed
        conn.close()


def held(seen) -> list[str]:
    """The request lines hanging_hub held without an answer (its registry request left out)."""
    return [line for line, *_ in seen if not line.startswith("HEAD ") and "agent-harnesses" not in line]


def within(seconds: float, load):
    """(what `load` returned or the error it raised, seconds it took); the test fails, not hangs,
    where it runs longer."""
    outcome, start = [], time.monotonic()

    def run():
        try:
            outcome.append(load())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the load still waits after {seconds} s")
    return outcome[0], time.monotonic() - start
