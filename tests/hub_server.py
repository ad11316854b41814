"""A Hub on 127.0.0.1 that answers a HEAD and then holds every other request without an answer
(`hanging_hub`, conftest's fixture of that name), and a load run with a bound on its time (`within`).
Imported by tests/conftest.py before any test patches huggingface_hub: the real HfApi methods and
snapshot_download are kept here for the server's loads."""

from __future__ import annotations

import socket
import threading
import time

import huggingface_hub
import pytest

BLOCKED = ("list_repo_files", "list_repo_tree", "repo_info")  # no timeout: never called by our code
HF_API = {name: getattr(huggingface_hub.HfApi, name) for name in BLOCKED}  # the real ones, for a live Hub
SNAPSHOT_DOWNLOAD = huggingface_hub.snapshot_download


def hanging_hub(monkeypatch):
    """A Hub on 127.0.0.1 that answers a HEAD of model_index.json (pipeline_keywords' reachability
    request: the Hub answers, diffusers loads) and of other files with 404, and holds every other
    request (diffusers' model_info, …) without an answer; HF_HUB_*_TIMEOUT 1 s. Its answers name the
    commit tests.pipelines.hub_cache writes (huggingface_hub points the cache's refs/main at the
    commit a HEAD's answer names, a 404's too). Yields the requests it saw: (request line, its
    headers, seconds since the server started)."""
    from huggingface_hub import constants

    for name, method in HF_API.items():  # diffusers' own requests are what this Hub is for
        monkeypatch.setattr(huggingface_hub.HfApi, name, method)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", SNAPSHOT_DOWNLOAD)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", huggingface_hub.file_download.get_hf_file_metadata)
    server, held, seen, start = socket.create_server(("127.0.0.1", 0)), [], [], time.monotonic()

    def answer(conn):
        data = b""
        while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
            data += chunk
        line, *headers = data.decode("latin-1").split("\r\n\r\n")[0].split("\r\n")
        seen.append((line, {h.split(":")[0].lower(): h.split(":", 1)[1].strip() for h in headers},
                     time.monotonic() - start))
        status = "200 OK" if "/model_index.json " in line else "404 Not Found\r\nX-Error-Code: EntryNotFound"
        if line.startswith("HEAD ") or "/api/agent-harnesses" in line:  # the registry: no 3 s wait
            conn.sendall(f"HTTP/1.1 {status}\r\nX-Repo-Commit: {'0' * 40}\r\nETag: \"e\"\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
            conn.close()
        else:
            held.append(conn)  # never answered

    def serve():
        while True:
            try:
                conn = server.accept()[0]
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

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
