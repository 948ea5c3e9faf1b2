"""Test support that ships with ttmedia: a real server for a test to talk to, and readers of its answers.

Runner authors test their runner behind a real ttmedia the way ttmedia's own tests do::

    from ttmedia.testing import live_server

    with live_server(env={"MODELS": "mine=my_pkg.runner:MyRunner~family=embedding"}) as server:
        ...  # HTTP to server.url

Nothing here imports the app, Connexion or uvicorn at import time: the server runs in a process
of its own (or, with `serve_in_thread`, on a thread, imported only when called).
"""

from ttmedia.testing.answers import assert_problem, metric_value
from ttmedia.testing.harness import (
    InProcessServer,
    LiveServer,
    ServerNotUp,
    free_port,
    http_status,
    live_server,
    serve_in_thread,
    start_server,
    stop_group,
    ttmedia_command,
)

__all__ = [
    "InProcessServer",
    "LiveServer",
    "ServerNotUp",
    "assert_problem",
    "free_port",
    "http_status",
    "live_server",
    "metric_value",
    "serve_in_thread",
    "start_server",
    "stop_group",
    "ttmedia_command",
]
