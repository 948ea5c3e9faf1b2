"""Private parts of the standard library (Python 3.11, pinned in ttmedia.internals.WRITTEN_AGAINST)
that ttmedia uses; multiprocessing's are in ttmedia.internals.multiprocessing."""

from __future__ import annotations

import atexit
import logging

from ttmedia.internals import require

require("stdlib.py")  # before anything here is used: it relies on that version



def run_exit_handlers() -> None:
    """Run the atexit handlers now (`atexit._run_exitfuncs`), before a process leaves with
    os._exit: the exit without tearing down the interpreter's modules one by one, with the
    handlers (logs, multiprocessing's temp directory) still run. atexit has no public call."""
    atexit._run_exitfuncs()


def skip_caller_lookup() -> None:
    """No stack walk per log record to find its caller (`logging._srcfile = None`, the switch the
    logging HOWTO's Optimization section names): our formats print no file, line or function."""
    logging._srcfile = None  # type: ignore[attr-defined]
