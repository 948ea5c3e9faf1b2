"""Image inputs by URL, through HTTP, against a local HTTP server: allowed, not allowed, too large,
a redirect to an internal address, a timeout; and loopback refused unless explicitly allowed.

The test server listens on 127.0.0.1, an internal address: the tests that fetch from it allow
loopback explicitly (MEDIA_URL_ALLOWED_NETWORKS=127.0.0.1/32), and one proves it is refused
without that setting (by IP literal and by a name that resolves to it), before any connection.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from tests.helpers import app_client
from ttmedia.testing import assert_problem
from ttmedia.web.media_urls import Policy

SDXL = "stable-diffusion-xl-base-1.0"
LIMIT = 64 * 1024


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 60, 30)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()


class _Handler(BaseHTTPRequestHandler):
    hits: Counter[str] = Counter()

    def log_message(self, *_args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: bool = True) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits[self.path] += 1
        if self.path == "/img.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif self.path == "/big-declared":
            self._send(200, b"\0" * (LIMIT + 1))
        elif self.path == "/big-streamed":  # no Content-Length: counted while it arrives
            self.send_response(200)
            self.end_headers()
            for _ in range(LIMIT // 4096 + 2):
                self.wfile.write(b"\0" * 4096)
            self.close_connection = True
        elif self.path == "/to-image":
            self._send(302, headers={"Location": "/img.png"})
        elif self.path == "/to-metadata":  # the cloud metadata service: link-local
            self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif self.path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, PNG)
        elif self.path == "/text":
            self._send(200, b"not an image at all")
        else:
            self._send(404, b"no")


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _i2i(client: Any, image: str) -> Any:
    return client.post("/v1/images/image-to-image", json={"prompt": "the same in winter", "image": image,
                                                          "num_inference_steps": 12, "seed": 3, "size": "512x512"})


ALLOWED = {"models": SDXL, "media_url_allowed_domains": "127.0.0.1,localhost,169.254.169.254",
           "media_url_allowed_networks": "127.0.0.1/32", "media_url_max_bytes": LIMIT,
           "media_url_timeout_seconds": 1.0, "media_url_max_redirects": 2}


@pytest.fixture(scope="module")
def allowed() -> Iterator[Any]:
    with app_client(**ALLOWED) as client:
        yield client


def test_allowed_url_is_fetched_and_used_like_base64(allowed: Any, origin: str) -> None:
    by_url = _i2i(allowed, f"{origin}/img.png")
    assert by_url.status_code == 200, by_url.text
    by_b64 = _i2i(allowed, base64.b64encode(PNG).decode())
    assert by_url.json()["images"] == by_b64.json()["images"]  # the fetched bytes are the image
    redirected = _i2i(allowed, f"{origin}/to-image")
    assert redirected.status_code == 200 and redirected.json()["images"] == by_b64.json()["images"]


def test_host_not_allowed_is_refused_without_a_request(origin: str) -> None:
    before = _Handler.hits["/img.png"]
    with app_client(**{**ALLOWED, "media_url_allowed_domains": "images.example.com"}) as client:
        r = _i2i(client, f"{origin}/img.png")
        assert_problem(r, 400, "media_url_refused")
        assert "127.0.0.1" in r.json()["detail"] and "MEDIA_URL_ALLOWED_DOMAINS" in r.json()["detail"]
    with app_client(models=SDXL) as off:  # the default: no URL is fetched
        assert_problem(_i2i(off, f"{origin}/img.png"), 400, "media_url_refused")
    assert _Handler.hits["/img.png"] == before


def test_loopback_is_refused_unless_explicitly_allowed(origin: str) -> None:
    before = sum(_Handler.hits.values())
    port = origin.rsplit(":", 1)[1]
    with app_client(**{**ALLOWED, "media_url_allowed_networks": ""}) as client:
        for url in (f"{origin}/img.png", f"http://localhost:{port}/img.png"):  # by IP, and by a name
            r = _i2i(client, url)
            assert_problem(r, 400, "media_url_refused")
            assert "internal address" in r.json()["detail"]
    assert sum(_Handler.hits.values()) == before  # refused before connecting


def test_too_large_is_413_declared_or_streamed(allowed: Any, origin: str) -> None:
    assert_problem(_i2i(allowed, f"{origin}/big-declared"), 413, "payload_too_large")
    assert_problem(_i2i(allowed, f"{origin}/big-streamed"), 413, "payload_too_large")


def test_redirect_to_an_internal_address_is_refused(allowed: Any, origin: str) -> None:
    r = _i2i(allowed, f"{origin}/to-metadata")  # 169.254.169.254 is listed, but it is link-local
    assert_problem(r, 400, "media_url_refused")
    assert "169.254.169.254" in r.json()["detail"]


def test_timeout_redirect_loop_http_error_and_not_an_image(allowed: Any, origin: str) -> None:
    started = time.monotonic()
    r = _i2i(allowed, f"{origin}/slow")
    assert_problem(r, 400, "media_url_failed")
    assert time.monotonic() - started < 2.5 and "1 s" in r.json()["detail"]
    assert_problem(_i2i(allowed, f"{origin}/loop"), 400, "media_url_failed")
    assert_problem(_i2i(allowed, f"{origin}/missing"), 400, "media_url_failed")
    assert_problem(_i2i(allowed, f"{origin}/text"), 422, "invalid_request")
    assert_problem(_i2i(allowed, "ftp://127.0.0.1/img.png"), 422, "invalid_request")  # not a URL we fetch


def test_address_rules() -> None:
    policy = Policy(("example.com", "*.cdn.example.net"), (ipaddress.ip_network("10.1.0.0/16"),), 1, 1.0, 1)
    assert policy.host_allowed("example.com") and policy.host_allowed("EXAMPLE.com.")
    assert not policy.host_allowed("www.example.com") and not policy.host_allowed("example.com.evil.org")
    assert policy.host_allowed("a.cdn.example.net") and not policy.host_allowed("cdn.example.net")
    for address, ok in (("93.184.216.34", True), ("127.0.0.1", False), ("10.0.0.1", False), ("10.1.2.3", True),
                        ("169.254.169.254", False), ("192.168.1.1", False), ("100.64.0.1", False),
                        ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False), ("fe80::1", False),
                        ("fd00::1", False), ("::ffff:127.0.0.1", False), ("2606:4700::1111", True)):
        assert policy.address_allowed(ipaddress.ip_address(address)) is ok, address
