"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import app_client


@pytest.fixture(scope="session")
def media_client() -> Iterator[Any]:
    """One app with every family's default model, simulated, shared by the route tests.

    The simulated stand-ins even where the `cpu` extra makes the default a real model: these
    tests pin the HTTP contract on fast, deterministic models (the real ones have their own
    tests, tests/test_cpu_runners.py and tests/test_real_models_http.py). Session-scoped because
    spawning a worker per family on a two-core machine is the expensive part.
    """
    from ttmedia.scheduler.devices import DEFAULT_MODELS

    with app_client(models=";".join(stand_in or name for name, stand_in in DEFAULT_MODELS)) as client:
        yield client
