"""Log set-up: one format for ours and uvicorn's lines, written by a thread, never by the loop.

Handlers of the served loggers put records on a queue; one writer thread formats them and writes
them to stderr, every WRITE_INTERVAL_S, many lines per write. A stderr that nobody reads (a full
pipe) then stalls only that thread: the queue is bounded, lines beyond it are dropped and
counted, and the count is logged once the writer catches up.

This module imports nothing heavy: `ttmedia serve` sets up logging before the web stack loads.
"""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import time
from typing import IO, Any

import orjson

from ttmedia.internals.stdlib import skip_caller_lookup

#: Records waiting for the writer before new ones are dropped (a stalled stderr).
MAX_QUEUED = 10_000
#: How often the writer writes what has come: lines reach stderr at most this late.
WRITE_INTERVAL_S = 0.05
#: Seconds the writer may take at exit to write out what is queued.
EXIT_FLUSH_S = 2.0

#: Loggers whose lines we format; uvicorn's access log is off (the request middleware writes
#: one line per request with more in it).
SERVED_LOGGERS = ("ttmedia", "uvicorn", "uvicorn.error")
ACCESS_LOGGER = "uvicorn.access"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: what log shippers expect."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the same fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


class _Writer:
    """The thread that formats and writes queued records.

    Logging a line appends it to a deque: no lock, no system call, no thread woken. The writer
    looks every WRITE_INTERVAL_S and writes what came in one go. (A blocking queue would wake
    it for every line, and each wake-up takes the GIL from the event loop: a tenth of the
    server's time per request under load.)"""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.formatter: logging.Formatter = TextFormatter()
        self.records: collections.deque[logging.LogRecord | str] = collections.deque()
        self.dropped = 0
        self.direct = False  # after write_through(): records are written by the thread that logs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def put(self, record: logging.LogRecord | str) -> None:
        """A record to format, or a line already formatted."""
        if self.direct:
            self._write([record if isinstance(record, str) else self._format(record)])
        elif len(self.records) < MAX_QUEUED:
            self.records.append(record)
        else:
            self.dropped += 1

    def _run(self) -> None:
        while not self._stop.wait(WRITE_INTERVAL_S):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        records = self.records
        while records:
            lines: list[str] = []
            # In small pieces: formatting holds the GIL, and the event loop may be waiting for it.
            while records and len(lines) < 64:
                record = records.popleft()
                lines.append(record if isinstance(record, str) else self._format(record))
            self._write(lines)
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self._write([self.formatter.format(logging.makeLogRecord({
                "name": "ttmedia", "levelno": logging.WARNING, "levelname": "WARNING", "created": time.time(),
                "msg": "%d log lines were dropped: stderr did not keep up", "args": (dropped,)}))])

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self.formatter.format(record)
        except Exception:  # noqa: BLE001 - a bad record must not end logging
            return f"(unformattable log record from {record.name}: {record.msg!r})"

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone: nothing else to tell it to

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(EXIT_FLUSH_S)

    def write_through(self) -> None:
        """Write what is queued, then write each record at once: the process may end any moment
        (uvicorn ends it with the signal it caught, which skips exit handlers)."""
        self.close()
        if self._thread.is_alive():
            return  # stderr is stalled: writing from here would stall shutdown with it
        self.direct = True
        self._drain()


class QueuedHandler(logging.Handler):
    """Hands records to the writer thread. Only %-formatting of the message happens here (the
    arguments may change after the call); the rest of the formatting is the writer's."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        if record.args:
            record.msg, record.args = record.getMessage(), None
        self.writer.put(record)

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the queue is thread-safe, and emit does not touch shared state.
        if self.filters and not self.filter(record):
            return False
        self.emit(record)
        return True


_writer: _Writer | None = None
_handler: QueuedHandler | None = None
_OURS = logging.getLogger("ttmedia")


def uses_json(fmt: str, stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    return fmt == "json" or (fmt == "auto" and not stream.isatty())


def configure_logging(level: str, fmt: str, *, server: bool = False) -> None:
    """LOG_FORMAT: json, text, or auto (text on a terminal, JSON otherwise). Idempotent.

    `server`: this process is the server (not a test embedding the app): skip the per-record
    facts no line of ours shows (caller's file and line, thread and process names), as the
    logging documentation's "Optimization" section suggests.
    """
    global _writer, _handler
    if _writer is None:
        _writer = _Writer(sys.stderr)
        _handler = QueuedHandler(_writer)
    assert _handler is not None
    _writer.formatter = JSONFormatter() if uses_json(fmt) else TextFormatter()
    for name in SERVED_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [_handler]
        logger.propagate = False
        logger.setLevel(level.upper())
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers[:] = []
    access.propagate = False  # uvicorn writes access lines only when this logger has handlers
    # Everything else (asyncio's "Task exception was never retrieved", libraries, warnings) is
    # written the same way; handlers others put on the root logger (pytest's) stay.
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    if server:
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
        skip_caller_lookup()  # no stack walk per record


def request_line(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """The request log's line: formatted here (orjson, a few microseconds) and queued as text.
    A LogRecord would cost more than the line itself, and deferring the formatting to the
    writer thread would make the loop wait for the GIL while it formats."""
    writer = _writer
    if writer is None or _handler not in _OURS.handlers:  # logging is not set up by us: the standard way
        logger.info("request", extra={"fields": fields})
        return
    if isinstance(writer.formatter, JSONFormatter):
        line = orjson.dumps({"ts": round(time.time(), 3), "level": "info", "logger": logger.name, "msg": "request",
                             **fields}).decode()
    else:
        line = writer.formatter.format(logging.makeLogRecord({
            "name": logger.name, "levelno": logging.INFO, "levelname": "INFO", "msg": "request", "fields": fields}))
    writer.put(line)


def write_through() -> None:
    """At shutdown: write out what is queued, and every later record as it comes."""
    if _writer is not None:
        _writer.write_through()
