"""structlog, configured once: one JSON line per event on stdout."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, BinaryIO

import orjson
import structlog


class _BufferedLogger(structlog.BytesLogger):
    """Writes each line into the stream's buffer without flushing it: a full buffer or
    flush_periodically() flushes, so a line costs a copy, not a write(2) (issue 6)."""

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._write(message + b"\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _BufferedLoggerFactory:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _BufferedLogger:
        return _BufferedLogger(self._stream)


async def flush_periodically(stream: BinaryIO, every: float) -> None:
    """Flush the log stream every `every` seconds, and once more when cancelled."""
    try:
        while True:
            await asyncio.sleep(every)
            stream.flush()
    finally:
        stream.flush()


def configure(
    level: str = "info",
    stream: BinaryIO | None = None,
    cache: bool = True,
    buffered: bool = False,
) -> None:
    """JSON lines with a timestamp and level; context bound per request via contextvars.
    buffered: lines wait in the stream's buffer until flush_periodically() or a full buffer."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    out = stream or sys.stdout.buffer
    factory: Any = _BufferedLoggerFactory(out) if buffered else structlog.BytesLoggerFactory(out)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    # aiohttp's own access log would duplicate ours
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
