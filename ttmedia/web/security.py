"""Bearer API-key check (the spec's `x-bearerInfoFunc`), and the rule about where an open
(key-less) server may listen.

One decision for every caller: the early readiness gate and Connexion's security middleware
both ask `header_authorized`, so a header accepted by one is accepted by the other.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from ttmedia.settings import Settings


def bearer_info(token: str, request: Any) -> dict[str, Any] | None:
    """Accept the request if its Authorization header carries one of the configured keys.

    Connexion hands over the token as it split it; the header itself is read again, so the
    answer is the early gate's (`header_authorized`). None tells Connexion the key is wrong;
    app.py renders that as our 401 problem.
    """
    runtime = getattr(request.state, "runtime", None)
    keys = runtime.settings.accepted_api_keys if runtime else ()
    header = request.headers.get("authorization")
    return {"sub": "api-key"} if header_authorized(header, keys) else None


def bearer_token(header: str | bytes | None) -> str | None:
    """The token of `Bearer <token>` (scheme in any case, surrounding whitespace ignored)."""
    if header is None:
        return None
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    parts = text.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    token = parts[1].strip()
    return token or None


def header_authorized(header: str | bytes | None, keys: tuple[str, ...]) -> bool:
    token = bearer_token(header)
    return token is not None and key_accepted(token, keys)


def key_accepted(token: str, keys: tuple[str, ...]) -> bool:
    token_bytes = token.encode()
    # Compare against every key, so timing does not reveal which key nearly matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token_bytes, key.encode())
    return matched


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BindRefused(ValueError):
    """An open server (no API key) asked to listen beyond this machine."""


def check_bind_allowed(host: str, settings: Settings) -> None:
    """Refuse to serve an open API beyond this machine unless the operator says so.

    `ttmedia serve` asks before it binds; the app factory asks with the host of the uvicorn
    server that calls it (ttmedia.web.app), so both entry points refuse the same way.
    """
    if not is_loopback(host) and not settings.auth_enabled and not settings.no_auth:
        raise BindRefused(
            f"refusing to listen on {host} without an API key: set API_KEY (or API_KEYS), "
            "or NO_AUTH=1 to serve without authentication on purpose"
        )
