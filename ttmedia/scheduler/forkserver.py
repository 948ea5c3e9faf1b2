"""The forkserver every worker process is forked from.

A clean single-threaded process that imports the worker and runner modules once, so starting
eight workers costs eight forks, not eight Python start-ups with their imports. `ttmedia serve`
starts it first thing, before its own imports, so the two overlap (bench scenario 5). This
module imports nothing heavy for that reason.
"""

from __future__ import annotations

import multiprocessing

CONTEXT = multiprocessing.get_context("forkserver")

PRELOAD = ["ttmedia.scheduler.worker_main", "numpy", "PIL.Image", "ttmedia.runners.sim.llm",
           "ttmedia.runners.sim.image", "ttmedia.runners.sim.embedding", "ttmedia.runners.sim.cnn",
           "ttmedia.runners.sim.whisper", "ttmedia.runners.sim.tts", "ttmedia.runners.sim.video",
           "ttmedia.runners.sim.trainer", "ttmedia.media.images", "ttmedia.media.audio"]


def start_forkserver() -> None:
    """Start the forkserver now (idempotent), in a thread so the caller goes on at once."""
    from ttmedia.internals.multiprocessing import start_forkserver_soon

    start_forkserver_soon(PRELOAD)
