"""Stop work for a client that has gone away.

Starlette notices a disconnect only while it streams a response. A client that gives up on a
slow image generation would otherwise leave its request queued, and later run, on a device.
Once the request's body has been read, a watcher task waits for the `http.disconnect` message
and cancels the request's task if no response has started. The cancellation
reaches the scheduler, which drops a queued request and tells a worker to stop a stream.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The status recorded (never sent) for a request whose client disconnected first (nginx's code).
CLIENT_CLOSED = 499
#: Seconds a request runs before a watcher looks for its client leaving.
WATCH_AFTER_S = 0.02


async def run_until_disconnect(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> bool:
    """Run the app; return False if the client disconnected before a response started."""
    body_done = asyncio.Event()
    disconnected = asyncio.Event()
    response_started = False

    async def guarded_receive() -> Message:
        if body_done.is_set():
            # The watcher owns the real channel now; hand the disconnect on to whoever asks.
            await disconnected.wait()
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
        elif not message.get("more_body", False):
            body_done.set()
        return message

    async def tracking_send(message: Message) -> None:
        nonlocal response_started
        if message["type"] == "http.response.start":
            response_started = True
        await send(message)

    # The app runs in this task (a task of its own per request costs more than the watcher);
    # the watcher cancels this task, and the cancellation is taken back here. The watcher
    # itself starts only for a request still running after WATCH_AFTER_S: most answer sooner,
    # and a disconnect that came meanwhile waits for it in the receive channel.
    task = asyncio.current_task()
    assert task is not None
    cancelled_by_watcher = False
    watcher: asyncio.Future[None] | None = None

    async def watch() -> None:
        nonlocal cancelled_by_watcher
        await body_done.wait()
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            if not response_started:
                cancelled_by_watcher = True
                task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    try:
        await app(scope, guarded_receive, tracking_send)
        return True
    except asyncio.CancelledError:
        if disconnected.is_set() and not response_started:
            if cancelled_by_watcher:
                task.uncancel()
            return False
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
