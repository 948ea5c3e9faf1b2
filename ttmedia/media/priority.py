"""Lower CPU priority for bulk work (decoding, encoding) that must not take the core from the
event loop and the token streams it serves. Linux keeps a niceness per thread, so `task` may be
a thread's native id or a process id."""

from __future__ import annotations

import os


def nice_at_least(task: int, niceness: int) -> None:
    """Raise `task`'s niceness to `niceness` (never lower it: that needs privileges). Where the
    platform has no such priorities, or the task is gone, nothing happens."""
    try:
        os.setpriority(os.PRIO_PROCESS, task, max(os.getpriority(os.PRIO_PROCESS, task), niceness))
    except (AttributeError, OSError):
        pass
