"""Bearer API-key check (the spec's `x-bearerInfoFunc`) and the auth start-up rule."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from ttmedia.settings import Settings


def bearer_info(token: str, request: Any) -> dict[str, Any] | None:
    """Accept the token if it equals one of the configured keys (constant-time).

    None tells Connexion the token is wrong; app.py renders that as our 401 problem.
    """
    runtime = getattr(request.state, "runtime", None)
    keys = runtime.settings.accepted_api_keys if runtime else ()
    return {"sub": "api-key"} if key_accepted(token, keys) else None


def key_accepted(token: str, keys: tuple[str, ...]) -> bool:
    token_bytes = token.encode()
    # Compare against every key, so timing does not reveal which key nearly matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token_bytes, key.encode())
    return matched


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, settings: Settings) -> None:
    """Refuse to serve an open API beyond this machine unless the operator says so."""
    if not is_loopback(host) and not settings.auth_enabled and not settings.no_auth:
        raise SystemExit(
            f"Refusing to listen on {host} without an API key. Set API_KEY (or API_KEYS), "
            "or set NO_AUTH=1 to serve without authentication on purpose."
        )
