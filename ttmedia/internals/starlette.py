"""Starlette 1.10.0 internals ttmedia relies on (pinned in ttmedia.internals.WRITTEN_AGAINST)."""

from __future__ import annotations

import typing as t

from starlette._utils import get_route_path
from starlette.types import Scope

from ttmedia.internals import require

require("starlette.py")  # before anything here is used: it relies on that version


def route_path(scope: Scope) -> str:
    """The path a router matches (the request path without its root_path), as Starlette's own
    Router computes it. It lives in the private `starlette._utils`; computing it ourselves could
    route a mounted app's request differently from the router we stand in front of."""
    return get_route_path(scope)


def seed_form(request: t.Any, form: t.Any) -> None:
    """Make a Starlette Request's `form()` return a form parsed before (its cache `_form`):
    parsing the body again would need the bytes, which were streamed to the parser once."""
    request._form = form
