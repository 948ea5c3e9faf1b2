"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import app_client


@pytest.fixture(scope="session")
def media_client() -> Iterator[Any]:
    """One app with every implemented family (DEFAULT_MODELS: six workers), shared by the route tests.

    Session-scoped because spawning six workers on a two-core machine is the expensive part.
    """
    with app_client(models="") as client:
        yield client
