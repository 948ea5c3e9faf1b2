"""Lower CPU priority for bulk work (decoding, encoding, a simulator's device work) that must
not take the core from the event loop and the token streams it serves.

Linux keeps a scheduling policy and a niceness per thread, so `task` may be a thread's native
id or a process id. Bulk threads run under SCHED_IDLE: the kernel runs them only on CPU time
that no ordinary thread wants, and a waking event loop takes the core from them at once. A
raised niceness alone did not do that. In bench scenario 8 (8 token streams beside 13.7 MB
image edits, a reset, a job queue and a sweep), niceness 5 and 10 gave a loaded inter-token
p99 of 4.5-7.5 ms (1.7-2.9x idle) and niceness 19 hardly better; SCHED_IDLE gave 3.3-3.9 ms
(1.1-1.6x), in four interleaved pairs. Under SCHED_IDLE a thread is not starved outright: it
keeps a small share (a weight of 3 against 1,024 for a thread at niceness 0), so an upload on
a saturated server still finishes, only later. Where the policy is missing, the threads take
BULK_NICENESS instead.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: The niceness bulk threads take where SCHED_IDLE is not available (and next to it, so that
#: `ps` and `top` show them as what they are).
BULK_NICENESS = 19


def nice_at_least(task: int, niceness: int) -> None:
    """Raise `task`'s niceness to `niceness` (never lower it: that needs privileges). Where the
    platform has no such priorities, or the task is gone, nothing happens."""
    try:
        os.setpriority(os.PRIO_PROCESS, task, max(os.getpriority(os.PRIO_PROCESS, task), niceness))
    except (AttributeError, OSError):
        pass


def run_in_background() -> None:
    """Move the calling thread to SCHED_IDLE, at BULK_NICENESS (the niceness alone where the
    policy is not available)."""
    nice_at_least(threading.get_native_id(), BULK_NICENESS)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
    except (AttributeError, OSError):
        pass


def background_threads(workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads run in the background (run_in_background) from their start,
    for life: giving up priority is always allowed, taking it back is not."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=run_in_background)
