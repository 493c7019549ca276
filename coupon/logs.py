"""structlog, configured once: one JSON line per event on stdout."""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO

import orjson
import structlog


def configure(level: str = "info", stream: BinaryIO | None = None, cache: bool = True) -> None:
    """JSON lines with a timestamp and level; context bound per request via contextvars."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(stream or sys.stdout.buffer),
        cache_logger_on_first_use=cache,
    )
    # aiohttp's own access log would duplicate ours
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
