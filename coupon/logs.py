"""structlog, configured once: one JSON line per event on stdout."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, BinaryIO, cast

import orjson
import structlog

from coupon import national_id

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
        lambda m: national_id.mask(m[0]) if national_id.is_valid(m[0]) else m[0], text
    )


def redact(
    logger: object, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask secrets and full national ids in every string of the event."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = _scrub(value)
    return event


class _Unflushed:
    """The log stream, minus flushing: a line goes into the stream's buffer, and a full buffer
    or flush_periodically() writes it out -- a copy per line, not a write(2)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.write = stream.write

    def flush(self) -> None:
        pass


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
    # BytesLogger writes and flushes: all it needs of a file
    target = cast(BinaryIO, _Unflushed(out)) if buffered else out
    factory = structlog.BytesLoggerFactory(target)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
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
    # the driver's pool reports reconnection failures (every node of a cluster down for a
    # moment in a failover) with a page of traceback each: one JSON line each instead
    driver = logging.getLogger("asyncpg")
    driver.handlers[:] = [_AsJsonLine()]
    driver.propagate = False


class _AsJsonLine(logging.Handler):
    """A standard-library log record as one of our JSON lines; a traceback becomes the name
    and message of its exception."""

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, str] = {"logger": record.name}
        if record.exc_info is not None and record.exc_info[1] is not None:
            failure = record.exc_info[1]
            fields["error"] = f"{type(failure).__name__}: {failure}"
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
