"""The buffered request log (COUPON_LOG_FLUSH_INTERVAL): lines wait in the buffer, none is lost."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator

import pytest
import structlog

from coupon import logs


@pytest.fixture
def raw() -> Iterator[io.BytesIO]:
    yield io.BytesIO()
    structlog.reset_defaults()


async def test_lines_wait_for_the_flush_and_all_arrive(raw: io.BytesIO) -> None:
    stream = io.BufferedWriter(raw, buffer_size=1 << 16)
    logs.configure("info", stream=stream, cache=False, buffered=True)
    flusher = asyncio.create_task(logs.flush_periodically(stream, 3600))
    await asyncio.sleep(0)  # the flusher waits in its sleep
    log = structlog.get_logger("test")
    for i in range(10):
        log.info("request", n=i)
    assert raw.getvalue() == b""  # no write(2) per line
    flusher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flusher
    lines = [json.loads(line) for line in raw.getvalue().splitlines()]
    assert [line["n"] for line in lines] == list(range(10))
