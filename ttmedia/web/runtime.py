"""The per-app runtime: settings plus the scheduler, reachable from handlers and middleware."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from ttmedia.internals.connexion import current_scope

from ttmedia.jobs.manager import JobManager
from ttmedia.observability.looplag import LoopLag
from ttmedia.observability.metrics import Metrics
from ttmedia.scheduler.scheduler import Scheduler
from ttmedia.settings import Settings


@dataclass(eq=False)  # identity semantics: runtimes live in a WeakSet
class Runtime:
    settings: Settings
    scheduler: Scheduler = field(init=False)
    metrics: Metrics = field(init=False)
    jobs: JobManager = field(init=False)
    loop_lag: LoopLag = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.settings)
        self.metrics = Metrics()
        self.loop_lag = LoopLag(self.metrics.loop_lag)
        self.jobs = JobManager(self.settings, self.scheduler)
        _ACTIVE.add(self)


_ACTIVE: weakref.WeakSet[Runtime] = weakref.WeakSet()


def begin_drain() -> None:
    """SIGTERM: every model answers 503 `draining` from now on, while in-flight work finishes."""
    for runtime in list(_ACTIVE):
        runtime.scheduler.begin_drain()


def current() -> Runtime:
    """The runtime of the app serving the current request (lifespan state), read from the
    request's scope: `connexion.request.state` builds two request objects on every access."""
    return current_scope()["state"]["runtime"]  # type: ignore[no-any-return]
