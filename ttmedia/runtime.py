"""The per-app runtime: settings plus the scheduler, reachable from handlers and middleware."""

from __future__ import annotations

from dataclasses import dataclass, field

from connexion import request

from ttmedia.metrics import Metrics
from ttmedia.scheduler.scheduler import Scheduler
from ttmedia.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    scheduler: Scheduler = field(init=False)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.settings)
        self.metrics = Metrics()


def current() -> Runtime:
    """The runtime of the app serving the current request (lifespan state)."""
    return request.state.runtime  # type: ignore[no-any-return]
