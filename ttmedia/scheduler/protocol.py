"""Messages between the scheduler and a device worker process, over one duplex pipe.

Messages are tuples whose first element is the kind, so pickling stays cheap on the hot path.

scheduler → worker (a worker runs up to max_concurrency calls; further calls wait in order):
    (RUN, batch_id, [(request_id, payload), ...])   non-streaming batch
    (STREAM, request_id, payload)                   one streaming request
    (CANCEL, request_id)                            stop work for a request (client gone)
    (DROP, batch_id)                                forget a batch that has not started (its clients left)
    (STOP,)                                         finish in-flight work, close, exit

worker → scheduler:
    (HELLO, pid, max_concurrency)                   process is up; warmup starts
    (READY, warmup_seconds)
    (INIT_FAILED, message)
    (RESULT, request_id, result)
    (ERROR, request_id, kind, message)              kind: "request" (422) | "internal" (500)
    (CHUNK, request_id, chunk)
    (END, request_id, final)                        last message of a stream
    (HEARTBEAT, monotonic_time)

either way:
    (BATCH, [message, ...])                         several messages in one pipe write
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ttmedia.runners.base import RunnerContext
from ttmedia.runners.faults import Fault

RUN, STREAM, CANCEL, DROP, STOP = "run", "stream", "cancel", "drop", "stop"
HELLO, READY, INIT_FAILED = "hello", "ready", "init_failed"
RESULT, ERROR, CHUNK, END, HEARTBEAT = "result", "error", "chunk", "end", "heartbeat"
BATCH = "batch"

ERROR_REQUEST, ERROR_INTERNAL = "request", "internal"


class Outbox:
    """Messages queued in one loop iteration leave as one pipe write, a BATCH if there are several.

    With many streams in flight, tokens of different streams become due together: one pickled
    batch costs far less than a write (and a wake-up of the other side) per token.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, write: Callable[[tuple[Any, ...]], Any]) -> None:
        self.loop, self.write = loop, write
        self._messages: list[tuple[Any, ...]] = []

    def put(self, message: tuple[Any, ...]) -> None:
        self._messages.append(message)
        if len(self._messages) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        box, self._messages = self._messages, []
        if box:
            self.write(box[0] if len(box) == 1 else (BATCH, box))


def unbatch(messages: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """The messages as sent, with each BATCH opened up."""
    for message in messages:
        if message[0] == BATCH:
            yield from message[1]
        else:
            yield message


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to start. Picklable (the worker is spawned, not forked)."""

    runner: str
    context: RunnerContext
    heartbeat_seconds: float
    faults: tuple[Fault, ...] = ()
    incarnation: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"model": self.context.model, "runner": self.runner, "devices": self.context.worker_id}
