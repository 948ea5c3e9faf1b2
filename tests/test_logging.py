"""Logs as a service writes them: one JSON object per line, one line per request (probes too),
uvicorn's lines in the same format, no access log, and a stalled stderr never stalls serving."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import live_server, wait_until

pytestmark = pytest.mark.timeout(180)

PNG_8x8 = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8EaDBgA0wYRUdtBIA/ygBUMG5Z0IAAAAASU"
           "VORK5CYII=")


def _ready(url: str, *models: str) -> bool:
    try:
        info = httpx.get(url + "/v1/models", timeout=5).json()["data"]
    except httpx.HTTPError:
        return False
    return all(any(m["id"] == name and m["ready"] for m in info) for name in models)


def _chunked_post(url: str, path: str, body: bytes, request_id: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Transfer-Encoding: chunked\r\nX-Request-ID: {request_id}\r\nConnection: close\r\n\r\n")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        sock.sendall(head.encode() + chunks + b"0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_one_json_object_per_request_and_no_other_lines(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    env = {"MODELS": "Qwen3-8B;resnet-50;whisper-large-v3~warmup=600", "LOG_LEVEL": "info", "LOG_FORMAT": "json"}
    sent: dict[str, int] = {}
    with open(log_path, "wb") as log, live_server(env, cli=True, wait_ready=False, stderr=log) as server:
        assert wait_until(lambda: _ready(server.url, "Qwen3-8B", "resnet-50"), 60)
        with server.client() as c:
            def call(method: str, path: str, **kw: Any) -> None:
                request_id = f"t-{len(sent)}"
                r = c.request(method, path, headers={"X-Request-ID": request_id, **kw.pop("headers", {})}, **kw)
                sent[request_id] = r.status_code

            call("GET", "/health")  # 503: whisper warms
            call("GET", "/livez")
            call("GET", "/metrics")
            call("GET", "/v2/health/live")
            call("GET", "/tt-liveness")
            call("POST", "/v1/completions", json={"prompt": "log me", "max_tokens": 2})
            call("POST", "/v1/completions", json={"prompt": 1})
            call("DELETE", "/health")
            call("GET", "/nope")
            call("POST", "/v1/completions/", json={"prompt": "slash"})
            # Multipart and JSON both accepted: Connexion used to warn on every such request.
            call("POST", "/v1/cnn/search-image", files={"file": ("x.png", __import__("base64").b64decode(PNG_8x8),
                                                                  "image/png")})
            call("POST", "/v1/cnn/search-image", json={"prompt": PNG_8x8})
            call("POST", "/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF", "audio/wav")})
            call("GET", "/openapi.json")
        sent["t-chunked"] = _chunked_post(server.url, "/v1/completions", b'{"prompt": "chunks", "max_tokens": 2}',
                                          "t-chunked")
        time.sleep(0.2)
    lines = _lines(log_path)
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object, uvicorn's included
        assert isinstance(entry, dict), line
        entries.append(entry)
    requests = [e for e in entries if e["logger"] == "ttmedia.request"]
    ours = {}
    for entry in requests:
        assert entry["request_id"] not in ours, f"two lines for one request: {entry}"
        ours[entry["request_id"]] = entry
    for request_id, status in sent.items():
        assert request_id in ours, f"no line for {request_id} ({status})"
        assert ours[request_id]["status"] == status, (ours[request_id], status)
    assert sent["t-chunked"] == 200 and ours["t-chunked"]["operation"] == "create_completion"
    assert ours["t-1"]["operation"] == "get_livez"  # probes are logged
    assert ours["t-5"]["model"] == "Qwen3-8B"
    assert sent["t-9"] == 404 and ours["t-9"]["reason"] == "not_found"
    assert not [e for e in entries if e["logger"] == "uvicorn.access"], "uvicorn's access log is on"
    assert any(e["logger"] == "uvicorn.error" and "Started server process" in e["msg"] for e in entries)
    assert not [e for e in entries if "multiple content types" in e["msg"]]
    assert any(e["logger"] == "ttmedia" and e["msg"].startswith("serving ") for e in entries)


@pytest.mark.parametrize(("mode", "logged", "not_logged"), [
    ("probes", ["/health-503", "/v1/completions-200", "/v1/completions-422"], ["/livez-200", "/metrics-200"]),
    ("errors", ["/health-503", "/v1/completions-422"], ["/livez-200", "/v1/completions-200"]),
    ("all", ["/livez-200", "/metrics-200", "/v1/completions-200"], []),
])
def test_log_requests_drops_what_it_says(mode: str, logged: list[str], not_logged: list[str],
                                         tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    env = {"MODELS": "Qwen3-8B;bge-m3~warmup=600", "LOG_LEVEL": "info", "LOG_FORMAT": "json", "LOG_REQUESTS": mode}
    with open(log_path, "wb") as log, live_server(env, cli=True, wait_ready=False, stderr=log) as server:
        assert wait_until(lambda: _ready(server.url, "Qwen3-8B"), 60)
        with server.client() as c:
            assert c.get("/livez").status_code == 200
            assert c.get("/metrics").status_code == 200
            assert c.get("/health").status_code == 503
            assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
            assert c.post("/v1/completions", json={"prompt": 1}).status_code == 422
        time.sleep(0.2)
    seen = {f"{e['path']}-{e['status']}" for e in map(json.loads, _lines(log_path)) if e["logger"] == "ttmedia.request"}
    assert set(logged) <= seen, seen
    assert not set(not_logged) & seen, seen


def test_a_stalled_stderr_does_not_stall_serving() -> None:
    """Nobody reads the server's stderr pipe: after ~64 KB of log lines the pipe is full, and a
    server that wrote its log on the loop would stop answering."""
    import subprocess

    env = {"MODELS": "Qwen3-8B", "LOG_LEVEL": "info", "LOG_FORMAT": "json"}
    with live_server(env, cli=True, stderr=subprocess.PIPE) as server:
        with server.client(timeout=10) as c:
            for i in range(1500):  # ~300 bytes of log each: far more than a pipe holds
                assert c.get("/livez", headers={"X-Request-ID": f"stall-{i}"}).status_code == 200
            assert c.post("/v1/completions", json={"prompt": "still here", "max_tokens": 2}).status_code == 200
        # Stopping waits for the log writer a bounded time, not for a reader that never comes.
        assert server.stop(grace=15) == 0
