"""Facts about the request being served, shared by layers that do not call each other.

The request middleware opens a note per request; the scheduler records which model served it
and the error renderer records the problem's reason; the middleware then logs and counts them.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any


@dataclass
class RequestNote:
    request_id: str
    model: str | None = None
    reason: str | None = None


current_note: contextvars.ContextVar[RequestNote | None] = contextvars.ContextVar("ttmedia_request", default=None)


def note(**facts: Any) -> None:
    """Record facts about the current request; a no-op outside a request."""
    current = current_note.get()
    if current is not None:
        for key, value in facts.items():
            setattr(current, key, value)
