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


# --- a real PostgreSQL for the job-store tests -----------------------------------------------------

@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL 16 (PyPI `pgserver`: bundled binaries, initdb in a temp directory),
    started once per session and stopped at its end."""
    import shutil
    import tempfile
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        import pgserver

        pgdata = tempfile.mkdtemp(prefix="ttmedia-pg-")
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()  # stops PostgreSQL ("stop": pgserver leaves its data directory)
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """A fresh, empty database on the session's PostgreSQL: its URL (JOB_STORE_URL)."""
    import uuid

    import psycopg

    name = f"ttmedia_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return str(postgres.get_uri(name))
