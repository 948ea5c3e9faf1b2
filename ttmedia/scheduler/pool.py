"""One served model: its workers, its bounded queue, dispatch, and what happens when workers die.

The queue lives here, in the event loop, not in a multiprocessing queue: the scheduler knows
at every moment which request is waiting and which worker holds which request. That is what
makes a hard queue bound, re-dispatch after a crash and removal of abandoned requests exact.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ttmedia.runners import registry
from ttmedia.runners.types import FINAL_TYPES, Progress, TokenChunk, Tokenizer
from ttmedia.scheduler import errors
from ttmedia.scheduler import protocol as p
from ttmedia.scheduler.devices import ServedModel
from ttmedia.scheduler.protocol import RunnerInfo
from ttmedia.scheduler.readiness import ModelState, WorkerState, derive_state, retry_after
from ttmedia.scheduler.status import ModelStatus, WorkerStatus
from ttmedia.scheduler.worker import WorkerHandle
from ttmedia.settings import Settings

log = logging.getLogger("ttmedia.scheduler")

_ids = itertools.count(1)

#: Send a call ahead to a busy worker only while this model's calls take less device time.
CALL_AHEAD_BELOW_S = 1.0

#: Calls sent to a busy worker beyond its capacity. They wait inside the worker and start the
#: moment a running call ends, so the device does not idle for a round trip through the
#: scheduler between calls (bench scenario 3: 2-3 ms lost per call without it).
CALLS_AHEAD = 1


class _OpenStreams:
    """How many token streams this process is delivering right now (see ttmedia/web/fastpath.py)."""

    count = 0


OPEN_STREAMS = _OpenStreams()

#: Sentinel put on a stream's queue when the stream cannot go on.
_STREAM_FAILED = object()
#: Sentinel put on a stream's queue when its worker has sent nothing for the request timeout.
_STREAM_SILENT = object()


class StreamChunks:
    """A stream's chunks on their way from the worker to the handler: one producer (the pool),
    one consumer (the stream's iterator). asyncio.Queue's getter and putter bookkeeping and its
    waiter futures cost more than the token they carry; this is a deque and at most one future."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Any:
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class _SilenceWatch:
    """One timer per stream, not one per chunk: when nothing came for `timeout` seconds (since
    the stream opened, or since its last chunk: `Ticket.progress_at`), _STREAM_SILENT joins the
    queue. Re-arming asyncio.timeout around every chunk's wait cost a timer handle and its
    cancellation per token."""

    def __init__(self, ticket: Ticket, timeout: float) -> None:
        self.ticket, self.timeout = ticket, timeout
        self.opened = time.monotonic()
        self.loop = asyncio.get_running_loop()
        self.handle = self.loop.call_later(timeout, self._check)

    def _check(self) -> None:
        quiet_since = max(self.ticket.progress_at, self.opened)
        left = quiet_since + self.timeout - time.monotonic()
        if left > 0:
            self.handle = self.loop.call_later(left, self._check)
        elif self.ticket.chunks is not None:
            self.ticket.chunks.put_nowait(_STREAM_SILENT)

    def stop(self) -> None:
        self.handle.cancel()


@dataclass(eq=False)
class Ticket:
    """One request's journey through the scheduler."""

    request: Any  # the family's typed request (ttmedia.runners.types)
    stream: bool
    id: str = field(default_factory=lambda: f"r{next(_ids)}")
    future: asyncio.Future[Any] | None = None
    chunks: StreamChunks | None = None
    error: BaseException | None = None
    sent_to: WorkerCalls | None = None  # the worker that holds it, once dispatched
    attempts: int = 0
    started: bool = False  # a stream has produced output: it cannot be replayed
    enqueued_at: float = field(default_factory=time.monotonic)
    dispatched_at: float = 0.0
    progress_at: float = 0.0  # last sign of life from the device: dispatch, or a stream's chunk
    siblings: list[Ticket] | None = None  # requests that stand or fall together (submit_all)

    def __repr__(self) -> str:
        # Short on purpose: deque.remove() formats its argument's repr when it is not there, and
        # the generated repr walks the request, its queue and its siblings.
        return f"Ticket({self.id})"


@dataclass(eq=False)
class WorkerCalls:
    """What the pool has handed one worker, and the pool alone changes: the worker process
    (scheduler/worker.py) knows nothing of requests."""

    worker: WorkerHandle
    inflight: dict[str, Ticket] = field(default_factory=dict)  # request id → its ticket
    batches: dict[str, set[str]] = field(default_factory=dict)  # call id → its requests still out
    calls_ahead: deque[tuple[str, list[Ticket]]] = field(default_factory=deque)  # waiting in the worker
    load: int = 0  # runner calls in flight, a canary's included

    @property
    def free(self) -> bool:
        """A call sent now starts at once."""
        return self.worker.state is WorkerState.READY and self.load < self.worker.capacity

    @property
    def takes_call_ahead(self) -> bool:
        """A call sent now waits inside the worker for a running call to end."""
        return self.worker.state is WorkerState.READY and self.load < self.worker.capacity + CALLS_AHEAD

    @property
    def idle(self) -> bool:
        return self.load == 0 and not self.inflight

    def forget(self) -> list[Ticket]:
        """Everything sent to a worker that is gone; the requests it held."""
        held = list(self.inflight.values())
        self.inflight.clear()
        self.batches.clear()
        self.calls_ahead.clear()
        self.load = 0
        return held


class ModelPool:
    def __init__(self, model: ServedModel, settings: Settings, loop: asyncio.AbstractEventLoop,
                 make_worker: Any, observer: Any = None) -> None:
        self.model = model
        self.observer = observer  # metrics: told about each dispatched batch
        self.settings = settings
        self.loop = loop
        self.pending: deque[Ticket] = deque()
        self.workers: list[WorkerHandle] = [make_worker(self, group) for group in model.groups]
        self._sent = {w: WorkerCalls(w) for w in self.workers}
        self.draining = False
        self.drain_deadline = 0.0
        self.service_time_s = max(model.info.timing.base_s, 0.001)  # EWMA of per-request time
        self.call_time_s: float | None = None  # EWMA of observed device time per call
        self.idle = asyncio.Event()
        self.idle.set()
        self._pump_timer = False
        self.runner_info: RunnerInfo | None = None  # what the runner declared (HELLO / READY)
        self._tokenizer: Tokenizer | None = None
        self._tokenizer_loading: asyncio.Future[Tokenizer | None] | None = None
        self._tokenizer_done = False

    # --- state ----------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.model.name

    def calls_of(self, worker: WorkerHandle) -> WorkerCalls:
        """What this pool has sent `worker` (read it; only the pool changes it)."""
        return self._sent[worker]

    def hold_slot(self, worker: WorkerHandle) -> None:
        """A call the scheduler sends itself (a canary) takes a device slot: requests queue behind it."""
        self._sent[worker].load += 1

    def release_slot(self, worker: WorkerHandle) -> None:
        self._sent[worker].load -= 1

    def state(self) -> ModelState:
        now = time.monotonic()
        return derive_state([w.view(now) for w in self.workers], self.draining)

    def retry_after(self) -> float:
        now = time.monotonic()
        views = [w.view(now) for w in self.workers]
        state = derive_state(views, self.draining)
        # Capped: an estimate far out (a 30-minute warmup) should still have clients look again
        # soon, and HTTP clients such as the OpenAI SDK ignore Retry-After beyond a minute or two.
        return min(retry_after(views, state, self.drain_deadline - now), self.settings.retry_after_max_seconds)

    def not_ready(self, reason: str | None = None, detail: str | None = None) -> errors.NotReady:
        state = self.state()
        reason = reason or state.reason or "no_workers"
        messages = {
            "warming_up": f"Model {self.name} is warming up.",
            "no_workers": f"Model {self.name} has no ready worker; workers are restarting.",
            "init_failed": f"Model {self.name} failed: every worker failed to start or exhausted its restarts.",
            "draining": "The server is shutting down.",
            "worker_lost": f"The worker serving this request for {self.name} died.",
            "device_error": f"The device serving {self.name} failed; it is being reset.",
        }
        text = messages[reason] + (f" ({detail})" if detail else "")
        kind = {"worker_lost": errors.WorkerLost, "device_error": errors.DeviceFailed}.get(reason)
        if kind is not None:
            return kind(text, retry_after=self.retry_after(), model=self.name, state=state.value)
        return errors.NotReady(text, reason=reason, retry_after=self.retry_after(), model=self.name,
                               state=state.value)

    def check_ready(self) -> None:
        if not self.state().serving:
            raise self.not_ready()

    def status(self) -> ModelStatus:
        model = self.model
        return ModelStatus(self.name, model.family, self.state(), len(self.pending), model.runner,
                           model.runner_target, model.simulated, tuple(self._worker_status(w) for w in self.workers))

    def _worker_status(self, w: WorkerHandle) -> WorkerStatus:
        alive = w.alive
        return WorkerStatus(
            w.worker_id, w.pid if alive else None, alive, w.state, tuple(w.spec.context.device_group),
            w.info.mesh_shape, w.start_time, w.ready_time, w.restart_count, w.error_count,
            len(self._sent[w].inflight), len(self._sent[w].calls_ahead), w.last_error, w.warmup_progress, w.canary_ok_at)

    # --- the model's tokenizer (in this process: prompts, usage, context checks) ----------------

    def load_tokenizer_soon(self) -> None:
        """Start loading the runner's tokenizer in a thread (a Hugging Face one takes seconds)."""
        if self._tokenizer is None and self._tokenizer_loading is None:
            context = self.workers[0].spec.context
            runner = self.workers[0].spec.runner
            self._tokenizer_loading = asyncio.ensure_future(
                asyncio.to_thread(lambda: registry.load(runner).load_tokenizer(context)))

    async def tokenizer(self) -> Tokenizer:
        """The model's tokenizer; a model of a family that needs one (llm) must have it."""
        loaded = await self.maybe_tokenizer()
        if loaded is None:
            raise errors.RunnerIncomplete(f"runner {self.model.runner} of {self.name} provides no tokenizer "
                                    "(Runner.load_tokenizer)")
        return loaded

    async def maybe_tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer, or None for a runner that has none (an embedding model may not)."""
        if self._tokenizer is not None or self._tokenizer_done:
            return self._tokenizer
        self.load_tokenizer_soon()
        assert self._tokenizer_loading is not None
        try:
            loaded = await asyncio.shield(self._tokenizer_loading)
        except Exception as exc:
            self._tokenizer_loading = None  # the next request tries again
            log.error("the tokenizer of %s failed to load: %s: %s", self.name, type(exc).__name__, exc)
            raise self.not_ready("init_failed", detail=f"its tokenizer failed to load: {exc}") from None
        self._tokenizer, self._tokenizer_done = loaded, True
        return loaded

    # --- admission ------------------------------------------------------------------------------

    def _admit(self, request: Any, stream: bool, siblings: list[Ticket] | None = None) -> Ticket:
        self.check_ready()
        if len(self.pending) >= self.settings.max_queue_size:
            ready = sum(w.state is WorkerState.READY for w in self.workers) or 1
            wait = len(self.pending) * self.service_time_s / ready
            raise errors.QueueFull(
                f"The queue of {self.name} is full ({self.settings.max_queue_size} requests waiting).",
                retry_after=min(wait, self.settings.retry_after_max_seconds),
            )
        ticket = Ticket(request, stream, siblings=siblings)
        if stream:
            ticket.chunks = StreamChunks()
        else:
            ticket.future = self.loop.create_future()
        self.pending.append(ticket)
        self.idle.clear()
        self.pump()
        return ticket

    async def submit(self, request: Any) -> Any:
        """Run one non-streaming request; its result, or a SchedulerError if it cannot be served."""
        return (await self.submit_all([request]))[0]

    async def submit_all(self, requests: list[Any]) -> list[Any]:
        """Run requests that stand or fall together (n images, n completions): their results in
        order, or the first failure. The moment one fails, the others leave the queue, or the
        worker drops them before they start, so the device does no work nobody will use."""
        group: list[Ticket] = []
        try:
            for request in requests:
                group.append(self._admit(request, stream=False, siblings=group if len(requests) > 1 else None))
        except errors.SchedulerError as refused:
            self._withdraw(group, refused)
            raise
        timeout = self.settings.request_processing_timeout_seconds
        # Timers on the futures, rather than wait_for(): no extra task per request.
        timers = [self.loop.call_later(timeout, self._expire, ticket) for ticket in group]
        try:
            return [await ticket.future for ticket in group]  # type: ignore[misc]
        except asyncio.CancelledError:
            self._withdraw(group)  # the client left
            raise
        finally:
            for timer in timers:
                timer.cancel()

    def _withdraw(self, group: list[Ticket], failure: BaseException | None = None) -> None:
        """Give up the requests of `group` that have no answer yet (a cancelled future: its
        waiter was cancelled, and cancelled it). With `failure`, they fail with it: the caller
        still waits on them; without, nobody does."""
        waiting = [t for t in group if t.future is not None and (t.future.cancelled() or not t.future.done())]
        for ticket in waiting:
            ticket.siblings = None
            future = ticket.future
            assert future is not None
            if future.done():
                continue
            if failure is None:
                future.cancel()
            else:
                future.set_exception(failure)
                future.exception()  # retrieved: only the first one awaited is raised
        for ticket in waiting:
            self._abandon(ticket, settle=False)  # all of them gone before anything is dispatched
        if waiting:
            self._settle()

    def _expire(self, ticket: Ticket) -> None:
        if ticket.future is not None and not ticket.future.done():
            self._timed_out(ticket)
            self._fail(ticket, errors.CallTimedOut(
                f"{self.name} did not answer within {self.settings.request_processing_timeout_seconds:g} s."))

    def open_stream(self, request: Any) -> AsyncIterator[Any]:
        """Admit a streaming request now (so a full queue or an unready model is refused before
        any output), then iterate its chunks; the last item is the family's result."""
        ticket = self._admit(request, stream=True)
        return self._iterate(ticket)

    async def _iterate(self, ticket: Ticket) -> AsyncIterator[Any]:
        assert ticket.chunks is not None
        timeout = self.settings.request_processing_timeout_seconds
        finished = False
        OPEN_STREAMS.count += 1
        silence = _SilenceWatch(ticket, timeout)
        chunks = ticket.chunks
        try:
            while True:
                # Already here: no wake-up.
                chunk = chunks.get_nowait() if not chunks.empty() else await chunks.get()
                if chunk is _STREAM_SILENT:
                    self._timed_out(ticket)
                    raise errors.CallTimedOut(f"{self.name} stopped producing output for {timeout:g} s.")
                if chunk is _STREAM_FAILED:
                    finished = True
                    assert ticket.error is not None
                    raise ticket.error
                # Set before the yield: a consumer that stops at the final chunk has not abandoned
                # the stream (nothing to cancel on the worker).
                finished = isinstance(chunk, FINAL_TYPES)
                yield chunk
                if finished:
                    return
        finally:
            silence.stop()
            OPEN_STREAMS.count -= 1
            if not finished:
                self._abandon(ticket)

    # --- dispatch -------------------------------------------------------------------------------

    def pump(self) -> None:
        """Hand waiting requests to ready workers with free capacity, then one call ahead to busy ones."""
        while self.pending:
            to = min((c for c in self._sent.values() if c.free), key=lambda c: c.load, default=None)
            if to is None:
                to = self._worker_for_call_ahead()
                if to is None:
                    return
            elif self._hold_for_batch():
                return
            first = self.pending.popleft()
            if first.stream:
                self._send(to, [first], (p.STREAM, first.id, first.request))
                continue
            batch = self._batch_from(first, to.worker.info)
            batch_id = f"b{next(_ids)}"
            to.batches[batch_id] = {t.id for t in batch}
            self._send(to, batch, (p.RUN, batch_id, [(t.id, t.request) for t in batch]))

    def batch_limit(self, info: RunnerInfo | None) -> int:
        """The most requests one call takes: the model's setting, else what the runner asks for,
        never more than the largest batch size the runner accepts."""
        limit = self.model.max_batch_size or (info.max_batch_size if info else None) or 1
        if info is not None and info.batch_sizes:
            limit = min(limit, max(info.batch_sizes))
        return max(1, limit)

    def _batchable(self, first: Ticket, info: RunnerInfo | None) -> Any:
        """Whether a waiting ticket may share `first`'s call: not a stream, and equal in every
        field of the runner's batch key."""
        fields = info.batch_key if info is not None else ()
        key = tuple(getattr(first.request, f, None) for f in fields)
        return lambda t: not t.stream and (not fields or tuple(getattr(t.request, f, None) for f in fields) == key)

    def _batch_from(self, first: Ticket, info: RunnerInfo | None) -> list[Ticket]:
        """`first` and the waiting requests that may join it, in queue order, cut to the largest
        batch size the runner accepts (a smaller rest is padded by the worker)."""
        limit = self.batch_limit(info)
        batch = [first]
        if limit > 1:
            fits = self._batchable(first, info)
            index, window = 0, limit * 4  # a bounded look past requests that cannot join
            while index < len(self.pending) and len(batch) < limit and window > 0:
                window -= 1
                if fits(self.pending[index]):
                    batch.append(self.pending[index])
                    del self.pending[index]
                else:
                    index += 1
        sizes = info.batch_sizes if info is not None else None
        if sizes and len(batch) not in sizes:
            fit = max((s for s in sizes if s <= len(batch)), default=0)
            if fit:
                for ticket in reversed(batch[fit:]):
                    self.pending.appendleft(ticket)
                del batch[fit:]
        return batch

    def _worker_for_call_ahead(self) -> WorkerCalls | None:
        """A busy worker that may take the next call now, to start it when its running call ends.

        Only for short calls: there a round trip through the scheduler is a real share of device
        time, and a call committed to one worker while another frees up first waits little.
        Only whole calls: a call sent ahead cannot grow, so a partial batch waits here, where
        later requests can join it."""
        if self.call_time_s is None or self.call_time_s >= CALL_AHEAD_BELOW_S or not self._whole_call_waiting():
            return None
        return min((c for c in self._sent.values() if c.takes_call_ahead), key=lambda c: c.load, default=None)

    def _whole_call_waiting(self) -> bool:
        """The head of the queue makes a full call: a stream, or MAX_BATCH_SIZE requests that
        can share a batch."""
        size = self.batch_limit(self.runner_info)
        head = self.pending[0]
        if size <= 1 or head.stream:
            return True
        fits = self._batchable(head, self.runner_info)
        return sum(1 for t in itertools.islice(self.pending, size * 4) if fits(t)) >= size

    def _hold_for_batch(self) -> bool:
        """Wait up to the model's MAX_BATCH_DELAY_MS for a partial batch to fill, then send what there is."""
        delay = self.model.max_batch_delay_ms / 1000
        if delay <= 0 or self._whole_call_waiting():
            return False
        left = self.pending[0].enqueued_at + delay - time.monotonic()
        if left <= 0:
            return False
        if not self._pump_timer:
            self._pump_timer = True
            self.loop.call_later(left, self._timed_pump)
        return True

    def _timed_pump(self) -> None:
        self._pump_timer = False
        self.pump()

    def _send(self, to: WorkerCalls, tickets: list[Ticket], message: tuple[Any, ...]) -> None:
        ahead = not to.free
        for t in tickets:
            t.sent_to = to
            to.inflight[t.id] = t
        if ahead:
            # Not on the device yet: its clocks (service time, "no progress" in wedged_tickets,
            # queue wait) start when a running call ends and the worker starts it.
            for t in tickets:
                t.dispatched_at = t.progress_at = math.inf
            to.calls_ahead.append((message[1], tickets))
        else:
            self._on_device(tickets)
        to.load += 1
        to.worker.send_soon(message)  # a dead pipe is noticed by the reader, which re-dispatches

    def _on_device(self, tickets: list[Ticket]) -> None:
        now = time.monotonic()
        for t in tickets:
            t.dispatched_at = t.progress_at = now
        if self.observer is not None:
            self.observer.dispatched(self.name, [now - t.enqueued_at for t in tickets])

    def _finish(self, calls: WorkerCalls, ticket_id: str) -> Ticket | None:
        ticket = calls.inflight.pop(ticket_id, None)
        if ticket is None:
            return None
        for batch_id, members in list(calls.batches.items()):
            if ticket_id in members:
                members.discard(ticket_id)
                if not members:
                    del calls.batches[batch_id]
                    self._call_ended(calls, ticket)
                break
        else:  # a stream
            self._call_ended(calls, ticket)
        elapsed = time.monotonic() - ticket.dispatched_at
        if elapsed >= 0:  # not a call that ended while it waited ahead (a cancelled stream)
            self.service_time_s = 0.8 * self.service_time_s + 0.2 * elapsed
        return ticket

    def _call_ended(self, calls: WorkerCalls, last: Ticket) -> None:
        calls.load -= 1
        for call in calls.calls_ahead:
            if last in call[1]:  # it never started: the worker drops it from its queue
                calls.calls_ahead.remove(call)
                return
        elapsed = time.monotonic() - last.dispatched_at
        self.call_time_s = elapsed if self.call_time_s is None else 0.8 * self.call_time_s + 0.2 * elapsed
        # The worker starts its waiting calls as running ones end, in the order they were sent.
        while calls.calls_ahead and calls.load - len(calls.calls_ahead) < calls.worker.capacity:
            self._on_device(calls.calls_ahead.popleft()[1])

    def _drop_call_ahead(self, calls: WorkerCalls, leaving: Ticket) -> None:
        """`leaving`'s client is gone (left, or timed out). If it waits ahead in the worker and
        nobody else in its call still waits for an answer, the worker forgets the call."""
        for call_id, tickets in calls.calls_ahead:
            if leaving in tickets:
                break
        else:
            return
        if any(t is not leaving and t.future is not None and not t.future.done() for t in tickets):
            return
        calls.calls_ahead.remove((call_id, tickets))
        calls.batches.pop(call_id, None)
        for t in tickets:
            calls.inflight.pop(t.id, None)
            t.sent_to = None
        calls.load -= 1
        calls.worker.send_soon((p.DROP, call_id))

    def _settle(self) -> None:
        if not self.pending and not any(c.inflight for c in self._sent.values()):
            self.idle.set()
        self.pump()

    # --- messages from workers ------------------------------------------------------------------

    def on_result(self, worker: WorkerHandle, ticket_id: str, result: Any) -> None:
        ticket = self._finish(self._sent[worker], ticket_id)
        if ticket and ticket.future and not ticket.future.done():
            ticket.future.set_result(result)
        self._settle()

    def on_error(self, worker: WorkerHandle, ticket_id: str, kind: str, message: str) -> None:
        worker.error_count += 1
        ticket = self._finish(self._sent[worker], ticket_id)
        if ticket:
            if kind == p.ERROR_REQUEST:
                exc: errors.SchedulerError = errors.RunnerRejected(f"{self.name} rejected the request: {message}")
            else:
                exc = errors.RunnerFailed(f"{self.name} failed on this request: {message}")
            self._fail(ticket, exc)
        self._settle()

    def on_chunk(self, worker: WorkerHandle, ticket_id: str, chunk: Any) -> None:
        ticket = self._sent[worker].inflight.get(ticket_id)
        if ticket and ticket.chunks is not None:
            ticket.started = True
            ticket.progress_at = time.monotonic()
            ticket.chunks.put_nowait(chunk)

    def on_token(self, worker: WorkerHandle, ticket_id: str, text: str, token_ids: list[int]) -> None:
        self.on_chunk(worker, ticket_id, TokenChunk(text, token_ids))

    def on_progress(self, worker: WorkerHandle, call_id: str, _progress: Progress) -> None:
        """A run() call reported progress: the device is alive, whatever its requests' age."""
        now = time.monotonic()
        calls = self._sent[worker]
        for ticket_id in calls.batches.get(call_id, ()):
            ticket = calls.inflight.get(ticket_id)
            if ticket is not None and ticket.dispatched_at <= now:
                ticket.progress_at = now

    def on_end(self, worker: WorkerHandle, ticket_id: str, final: Any) -> None:
        ticket = self._finish(self._sent[worker], ticket_id)
        if ticket and ticket.chunks is not None:
            ticket.chunks.put_nowait(final)
        self._settle()

    def on_device_error(self, worker: WorkerHandle, ticket_ids: list[str], message: str) -> None:
        """The device broke under these requests: DeviceFailed for them (they are not
        replayed: the same input may break it again). The worker's exit handles the rest."""
        worker.error_count += 1
        calls = self._sent[worker]
        for ticket_id in ticket_ids:
            ticket = self._finish(calls, ticket_id)
            if ticket is not None:
                self._fail(ticket, self.not_ready("device_error", detail=message))
        self._settle()

    def on_worker_lost(self, worker: WorkerHandle) -> None:
        """A worker died holding requests: re-dispatch each once, or fail it with WorkerLost."""
        orphans = self._sent[worker].forget()
        has_ready = any(w.state is WorkerState.READY for w in self.workers if w is not worker)
        for ticket in reversed(orphans):  # reversed + appendleft keeps their order
            if ticket.future is not None and ticket.future.done():
                continue  # already answered (timed out, or its client left): nothing to redo
            if has_ready and ticket.attempts == 0 and not ticket.started and not self.draining:
                ticket.attempts += 1
                ticket.sent_to = None
                self.pending.appendleft(ticket)
            else:
                self._fail(ticket, self.not_ready("worker_lost"))
        if not has_ready:
            # Nothing can serve the queue until a worker is back: fail fast rather than hang.
            while self.pending:
                self._fail(self.pending.popleft(), self.not_ready("worker_lost"))
        self._settle()

    # --- giving up on a request -----------------------------------------------------------------

    def _fail(self, ticket: Ticket, exc: BaseException) -> None:
        if ticket.future is not None:
            if not ticket.future.done():
                ticket.future.set_exception(exc)
                ticket.future.exception()  # mark retrieved: the waiter may be gone already
            if ticket.siblings:
                # Now, before anything else is dispatched: its siblings' answers are useless.
                self._withdraw(ticket.siblings, exc)
        elif ticket.chunks is not None:
            ticket.error = exc
            ticket.chunks.put_nowait(_STREAM_FAILED)

    def progress_deadline(self, worker: WorkerHandle) -> float:
        """How long a call may show no progress before its device counts as hung: the request
        timeout, or the shorter bound the runner declares."""
        limit = self.settings.request_processing_timeout_seconds
        declared = worker.info.call_timeout_s
        return min(limit, declared) if declared else limit

    def wedged_tickets(self, worker: WorkerHandle, now: float) -> list[Ticket]:
        # 10 ms of slack: a request dispatched at admission reaches its deadline a hair early.
        limit = self.progress_deadline(worker) - 0.01
        return [t for t in self._sent[worker].inflight.values() if now - t.progress_at >= limit]

    def replace_wedged(self, worker: WorkerHandle) -> None:
        """A hang: CallTimedOut for the requests the device made no progress on, and a fresh worker."""
        limit = self.progress_deadline(worker)
        worker.last_error = f"the device showed no progress on a request for {limit:g} s; replaced as wedged"
        for ticket in self.wedged_tickets(worker, time.monotonic()):
            self._sent[worker].inflight.pop(ticket.id, None)
            self._fail(ticket, errors.CallTimedOut(f"{self.name} made no progress on this request for {limit:g} s."))
        worker.kill()  # its other requests are re-dispatched or failed when the exit is seen

    def _abandon(self, ticket: Ticket, settle: bool = True) -> None:
        """The client went away: drop a waiting request, stop a running stream."""
        try:
            self.pending.remove(ticket)
        except ValueError:
            pass
        calls = ticket.sent_to
        if calls is not None and ticket.id in calls.inflight:
            if ticket.stream:
                calls.worker.send_soon((p.CANCEL, ticket.id))  # after any queued STREAM for it
                self._finish(calls, ticket.id)
            else:
                self._drop_call_ahead(calls, ticket)
        if settle:
            self._settle()

    def _timed_out(self, ticket: Ticket) -> None:
        """The client's deadline passed. The request stays with its worker if a worker has it:
        the deadline counts queue time too, so a request dispatched late says nothing about the
        device. Whether the device is wedged is judged by `wedged_tickets` (time since the
        device last showed progress on a request), which the scheduler's watchdog checks."""
        calls = ticket.sent_to
        if calls is not None and ticket.id in calls.inflight:
            if self.wedged_tickets(calls.worker, time.monotonic()):
                self.replace_wedged(calls.worker)
            elif not ticket.stream:
                self._drop_call_ahead(calls, ticket)
        else:
            try:
                self.pending.remove(ticket)
            except ValueError:
                pass
        self._settle()
