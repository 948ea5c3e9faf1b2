"""Deprecation headers for upstream's unversioned routes (the `legacy` tag of openapi.yaml).

Upstream moved its routes under /v1 (tt-inference-server #2105, 2026-02-24) and still answers the
old paths, marking every answer on them, whatever its status: `Deprecation`, `Sunset` and a
`Link` to the successor. We do the same, in the RFC forms: `Deprecation: @<Unix seconds>` (RFC
9745) and an HTTP-date `Sunset` (RFC 8594); upstream sends `true` and a bare date.

The middleware is installed twice: outside everything that answers (routing, auth, the
readiness gate, error rendering), so a 401, 404 or 503 on a legacy path carries the headers too,
and inside response validation, which checks the headers the spec declares `required`. A
response already marked is not marked again.
"""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: When upstream deprecated the unversioned routes (the /v1 prefixes, #2105).
DEPRECATED_SINCE = dt.datetime(2026, 2, 24, tzinfo=dt.UTC)
#: Upstream's prefixes that moved under /v1, and where they went (the rest gain a /v1 prefix).
RENAMED = {"/image": "/v1/images", "/video": "/v1/videos"}
LEGACY_PREFIXES = ("/tokenize", "/detokenize", "/image/", "/cnn/", "/audio/", "/video/")


def is_legacy(path: str) -> bool:
    return path in ("/tokenize", "/detokenize") or path.startswith(LEGACY_PREFIXES[2:])


def successor(path: str) -> str:
    """The /v1 path that replaces a legacy one (upstream's rule)."""
    for old, new in RENAMED.items():
        if path == old or path.startswith(old + "/"):
            return new + path[len(old):]
    return "/v1" + path


def sunset_header(day: str) -> str:
    """`2026-06-30` → the HTTP date of the end of that day (UTC)."""
    end = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC) + dt.timedelta(days=1, seconds=-1)
    return format_datetime(end, usegmt=True)


class DeprecationHeaders:
    def __init__(self, app: ASGIApp, sunset: str) -> None:
        self.app = app
        self.fixed = [(b"deprecation", f"@{int(DEPRECATED_SINCE.timestamp())}".encode()),
                      (b"sunset", sunset_header(sunset).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not is_legacy(path):
            await self.app(scope, receive, send)
            return
        # Percent-encoded: the path is decoded, and a control character in a header value makes
        # the server drop the connection instead of answering (a fuzzed path found it).
        target = quote(successor(path), safe="/:@!$&'()*+,;=-._~")
        link = (b"link", f'<{target}>; rel="successor-version"'.encode("ascii"))

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"deprecation" for name, _ in headers):
                    message["headers"] = [*headers, *self.fixed, link]
            await send(message)

        await self.app(scope, receive, marked)
