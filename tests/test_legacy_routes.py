"""Upstream's unversioned routes: deprecated aliases in the spec that stay in step with their /v1
successors, answered by the same handlers, every answer marked Deprecation/Sunset/Link."""

from __future__ import annotations

import copy
from typing import Any

import httpx

from tests.helpers import app_client, live_server
from ttmedia.web.app import load_spec
from ttmedia.web.deprecation import is_legacy, successor

SPEC = load_spec()
LEGACY = [(path, method, op) for path, item in SPEC["paths"].items() for method, op in item.items()
          if isinstance(op, dict) and "legacy" in op.get("tags", [])]


def _comparable(op: dict[str, Any]) -> dict[str, Any]:
    """What must equal between an alias and its successor (not names, prose or extra headers)."""
    op = copy.deepcopy(op)
    for key in ("operationId", "tags", "summary", "description", "deprecated", "x-ttmedia-successor"):
        op.pop(key, None)
    for code, response in op.get("responses", {}).items():
        if str(code).startswith("2"):
            op["responses"][code] = {"content": response.get("content")} if "content" in response else {}
    return op


def _resolved_2xx(op: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(op)
    for code, response in out["responses"].items():
        if str(code).startswith("2") and "$ref" in response:
            out["responses"][code] = copy.deepcopy(SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]])
    return out


def test_every_upstream_legacy_route_is_an_alias_of_its_successor() -> None:
    paths = {path for path, _, _ in LEGACY}
    assert paths == {"/tokenize", "/detokenize", "/image/generations", "/image/image-to-image", "/image/edits",
                     "/cnn/search-image", "/audio/transcriptions", "/audio/translations", "/audio/speech",
                     "/video/generations", "/video/generations/i2v", "/video/generations/i2v/upload",
                     "/video/generations/{job_id}", "/video/generations/{job_id}/download",
                     "/video/generations/{job_id}/cancel", "/video/jobs"}
    for path, method, op in LEGACY:
        assert is_legacy(path.replace("{job_id}", "x")) and op["deprecated"] is True
        new = op["x-ttmedia-successor"]
        assert new == successor(path), path
        v1 = SPEC["paths"][new][method]
        assert op["operationId"] == "legacy_" + v1["operationId"]
        assert _comparable(op) == _comparable(_resolved_2xx(v1)), f"{method} {path} drifted from {new}"
        for code, response in op["responses"].items():
            if str(code).startswith("2"):
                assert set(response["headers"]) >= {"Deprecation", "Sunset", "Link"}, (path, code)


def test_legacy_routes_answer_like_v1_and_are_marked_even_on_errors() -> None:
    with app_client(api_key="k") as c:
        auth = {"Authorization": "Bearer k"}
        r = c.post("/tokenize", json={"prompt": "the device"})  # upstream's prompt_client calls this
        assert r.status_code == 200 and r.json() == c.post("/v1/tokenize", json={"prompt": "the device"}).json()
        assert r.headers["deprecation"].startswith("@") and r.headers["sunset"] == "Tue, 30 Jun 2026 23:59:59 GMT"
        assert r.headers["link"] == '</v1/tokenize>; rel="successor-version"'
        r = c.post("/image/generations", json={"prompt": "a fox", "num_inference_steps": 12, "size": "512x512"},
                   headers=auth)
        assert r.status_code == 200 and r.json()["images"]
        assert r.headers["link"] == '</v1/images/generations>; rel="successor-version"'
        unauthorized = c.post("/image/generations", json={"prompt": "a fox"})
        assert unauthorized.status_code == 401 and "deprecation" in unauthorized.headers
        missing = c.get("/video/generations/3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e", headers=auth)
        assert missing.status_code == 404
        assert missing.headers["link"] == ('</v1/videos/generations/3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e>; '
                                           'rel="successor-version"')
        v1 = c.post("/v1/tokenize", json={"prompt": "x"})
        assert "deprecation" not in v1.headers and "sunset" not in v1.headers


def test_a_control_character_in_a_legacy_path_is_answered_not_dropped() -> None:
    # The Link header carries the successor path; decoded, a %18 would be a control character in
    # a header value, which uvicorn refuses to send: the client saw a dropped connection.
    with live_server() as server:
        r = httpx.get(server.url + "/video/generations/%18abc", timeout=10)
    assert r.status_code == 404
    assert r.headers["link"] == '</v1/videos/generations/%18abc>; rel="successor-version"'
