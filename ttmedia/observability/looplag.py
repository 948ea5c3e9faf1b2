"""Event-loop lag: how late the loop runs a callback that is due, sampled all the time.

Everything the server does for every request and every token runs on one event loop; a call
that blocks it (a big pickle, a synchronous subprocess, a slow log write) delays all of them.
A timer due every INTERVAL_S measures that delay; `ttmedia_event_loop_lag_seconds` is its
histogram, and /livez reports the worst recent lag (503 when the loop has been stuck).

A stall also counts the samples it kept from being taken (one per INTERVAL_S, each that much
less late): otherwise a two-second stall would be one sample among hundreds and vanish from
every percentile ("coordinated omission").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

#: Seconds between samples: 40 a second cost nothing and catch every stall of a few ms.
INTERVAL_S = 0.025
#: Seconds over which /livez reports the worst lag.
WINDOW_S = 10.0

LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LoopLag:
    def __init__(self, histogram: object | None = None) -> None:
        self._histogram = histogram  # a prometheus Histogram (observe)
        self._recent: deque[tuple[float, float]] = deque()  # (when, lag), the last WINDOW_S
        self._task: asyncio.Task[None] | None = None
        self.last_sample = time.monotonic()

    def start(self) -> None:
        self.last_sample = time.monotonic()
        self._task = asyncio.ensure_future(self._sample())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _sample(self) -> None:
        observe = getattr(self._histogram, "observe", None)
        while True:
            due = time.monotonic() + INTERVAL_S
            await asyncio.sleep(INTERVAL_S)
            now = time.monotonic()
            lag = max(now - due, 0.0)
            self.last_sample = now
            if observe is not None:
                observe(lag)
                missed = lag - INTERVAL_S
                while missed > 0:
                    observe(missed)
                    missed -= INTERVAL_S
            recent = self._recent
            if lag >= 0.001 or not recent:  # only lags worth reporting need remembering
                recent.append((now, lag))
            while recent and now - recent[0][0] > WINDOW_S:
                recent.popleft()

    def worst_recent(self) -> float:
        """The worst lag of the last WINDOW_S seconds, counting a sample that is overdue now."""
        now = time.monotonic()
        overdue = max(now - self.last_sample - INTERVAL_S, 0.0) if self._task is not None else 0.0
        recorded = max((lag for when, lag in self._recent if now - when <= WINDOW_S), default=0.0)
        return max(recorded, overdue)
