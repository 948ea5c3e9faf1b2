"""Messages between the scheduler and a device worker process, over one duplex pipe.

Messages are tuples whose first element is the kind, so pickling stays cheap on the hot path.
Requests, results and chunks are the typed objects of ttmedia.runners.types, except a stream's
tokens, which travel as bare (text, token ids) because there are thousands of them a second.

scheduler → worker (a worker runs up to max_concurrency calls; further calls wait in order):
    (RUN, call_id, [(request_id, request), ...])    non-streaming batch
    (STREAM, request_id, request)                   one streaming request
    (CANARY, call_id)                               run the runner's canary request
    (CANCEL, request_id)                            stop work for a request (client gone)
    (DROP, call_id)                                 forget a call that has not started (its clients left)
    (STOP,)                                         finish in-flight work, close, exit

worker → scheduler:
    (HELLO, pid, RunnerInfo)                        runner constructed; warmup starts
    (READY, warmup_seconds, RunnerInfo)
    (INIT_FAILED, message)
    (RESULT, request_id, result)
    (ERROR, request_id, kind, message)              kind: "request" (RunnerRejected) | "internal" (RunnerFailed)
    (DEVICE_ERROR, message, [request_id, ...])      the device broke; the worker exits next
    (CHUNK, request_id, chunk)
    (TOKEN, request_id, text, token_ids)            one TokenChunk of a stream
    (END, request_id, result)                       last message of a stream
    (PROGRESS, call_id | None, Progress)            a run() call (or, with None, the warmup) moved on
    (CANARY_RESULT, call_id, ok, message)
    (HEARTBEAT, monotonic_time)                     from a thread of its own, whatever the runner does

either way:
    (BATCH, [message, ...])                         several messages in one pipe write
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ttmedia.runners.base import RunnerContext
from ttmedia.runners.faults import Fault

if TYPE_CHECKING:
    from ttmedia.runners.base import Runner

RUN, STREAM, CANARY, CANCEL, DROP, STOP = "run", "stream", "canary", "cancel", "drop", "stop"
HELLO, READY, INIT_FAILED = "hello", "ready", "init_failed"
RESULT, ERROR, DEVICE_ERROR, CHUNK, TOKEN, END = "result", "error", "device_error", "chunk", "token", "end"
PROGRESS, CANARY_RESULT, HEARTBEAT = "progress", "canary_result", "heartbeat"
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
class RunnerInfo:
    """What a runner declares about itself, as the scheduler needs it (sent with HELLO and READY)."""

    max_concurrency: int = 1
    batch_sizes: tuple[int, ...] | None = None
    max_batch_size: int | None = None
    batch_key: tuple[str, ...] = ()
    call_timeout_s: float | None = None
    canary: bool = False
    canary_timeout_s: float = 30.0
    mesh_shape: tuple[int, int] = (1, 1)
    streams: bool = False

    @classmethod
    def of(cls, runner: Runner, devices: int) -> RunnerInfo:
        sizes = tuple(sorted({int(s) for s in runner.batch_sizes if int(s) >= 1})) if runner.batch_sizes else None
        mesh = tuple(runner.mesh_shape) if runner.mesh_shape else (1, max(1, devices))
        return cls(max(1, int(runner.max_concurrency)), sizes or None, runner.max_batch_size,
                   tuple(runner.batch_key), runner.call_timeout_s, type(runner).has_canary(),
                   float(runner.canary_timeout_s), (int(mesh[0]), int(mesh[1])), type(runner).streams())


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to start. Picklable (the worker is spawned, not forked)."""

    runner: str  # a registered name or a `module:Class` import target
    context: RunnerContext
    heartbeat_seconds: float
    faults: tuple[Fault, ...] = ()
    incarnation: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"model": self.context.model, "runner": self.runner, "devices": self.context.worker_id}
