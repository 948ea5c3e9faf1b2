"""Lower CPU priority for bulk work (decoding, encoding) that must not take the core from the
event loop and the token streams it serves. Linux keeps a niceness per thread, so `task` may be
a thread's native id or a process id."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: Niceness of threads that decode and encode media. A large PNG takes ~100 ms of CPU, with
#: the GIL released; on a busy host that CPU should go to the event loop first, which every
#: client's next token waits on. On an idle host the work is as fast as before.
MEDIA_CODEC_NICENESS = 5


def nice_at_least(task: int, niceness: int) -> None:
    """Raise `task`'s niceness to `niceness` (never lower it: that needs privileges). Where the
    platform has no such priorities, or the task is gone, nothing happens."""
    try:
        os.setpriority(os.PRIO_PROCESS, task, max(os.getpriority(os.PRIO_PROCESS, task), niceness))
    except (AttributeError, OSError):
        pass


def niced_threads(workers: int, niceness: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads take `niceness` as they start. Set once per thread, for its
    life: lowering a thread's priority is always allowed, raising it back is not."""
    def lower() -> None:
        nice_at_least(threading.get_native_id(), niceness)
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=lower)
