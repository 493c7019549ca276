"""structlog, configured once: one JSON line per event on stdout."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog

from coupon.households import is_valid_national_id, mask_national_id

# the last line of defence, for text nobody chose to log (an exception's message, a traceback):
# national ids, bearer tokens, 64-hex-digit strings (terminal secrets, signatures), and the
# password of a database URL
_NATIONAL_ID = re.compile(r"(?<![0-9])[0-9]{10}(?![0-9])")
_TOKEN = re.compile(r"cpn_[A-Za-z0-9_-]+")
_HEX_SECRET = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64,}(?![0-9A-Fa-f])")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


# what every match of the four above contains (ten digits are ten hex digits): a string
# without it is left as it is, at the cost of one search instead of four substitutions
_SUSPECT = re.compile(r"[0-9A-Fa-f]{10}|cpn_|://")


def _scrub(text: str) -> str:
    if _SUSPECT.search(text) is None:
        return text
    text = _URL_PASSWORD.sub(r"\1[redacted]@", text)
    text = _TOKEN.sub("cpn_[redacted]", text)
    text = _HEX_SECRET.sub("[redacted]", text)
    return _NATIONAL_ID.sub(
        lambda m: mask_national_id(m[0]) if is_valid_national_id(m[0]) else m[0], text
    )


def redact(
    logger: object, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask secrets and full national ids in every string of the event."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = _scrub(value)
    return event


class _UtcTimestamp:
    """TimeStamper(fmt="iso", utc=True) to the character ("2026-11-27T20:00:00.123456Z"),
    with the date and time formatted once per second rather than a datetime per line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: object, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        second, nanos = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        micros = nanos // 1000
        # datetime.isoformat() leaves out a zero fraction
        event["timestamp"] = f"{self._prefix}.{micros:06d}Z" if micros else f"{self._prefix}Z"
        return event


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
            _UtcTimestamp(),
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    # aiohttp's own access log would duplicate ours
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
