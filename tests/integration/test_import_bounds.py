"""The household import under hostile input: a header line that never ends, a million bad
lines, and a 2 GB stream. The answer stays small, the full list of rejections streams, the
server's memory stays within a fixed bound and /healthz keeps answering."""

from __future__ import annotations

import asyncio
import http.client
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.integration.terminal import Client
from tests.reliability.harness import Server

CSV = {"Content-Type": "text/csv"}
HEADER = b"national_id,province,members,decile\n"
# the server's resident memory may grow by this much at most while it imports 2 GB
RSS_BOUND_MB = 64


async def post(
    client: Client, operator: dict[str, str], data: bytes, query: str = ""
) -> tuple[int, bytes]:
    resp = await client.post(
        f"/v1/admin/households/import{query}", data=io.BytesIO(data), headers={**operator, **CSV}
    )
    return resp.status, await resp.read()


async def test_a_header_line_that_never_ends_is_refused_early(
    client: Client, operator: dict[str, str]
) -> None:
    for body in (b"x" * (8 << 20), b"national_id," * 400 + b"\nrest"):
        status, answer = await post(client, operator, body)
        assert status == 422, answer
        assert b"header line is longer than 4096 bytes" in answer


async def test_a_million_bad_lines_answer_the_first_thousand_and_exact_counts(
    client: Client, operator: dict[str, str]
) -> None:
    bad = 1_048_575
    body = HEADER + b"x,\n" * (bad // 2) + b"1,2,3\n" * (bad - bad // 2)
    started = time.perf_counter()
    status, answer = await post(client, operator, body)
    assert status == 200
    result = orjson.loads(answer)
    assert len(answer) < 200_000  # not 55 MB
    assert result["rejected_count"] == bad and len(result["rejected"]) == 1000
    assert result["rejected"][0] == {"line": 2, "error": "expected 4 fields, found 2"}
    assert result["rejected_by_reason"] == {
        "expected N fields, found N": bad // 2 + (bad - bad // 2)
    }
    assert time.perf_counter() - started < 30


async def test_every_rejection_streams_on_request(client: Client, operator: dict[str, str]) -> None:
    body = HEADER + b"x,\n" * 60_000 + b"0084575948,IR-15,2,2\n" + b"0084575948,IR-15,2,2\n"
    status, answer = await post(client, operator, body, "?rejections=all")
    assert status == 200
    result = orjson.loads(answer)
    assert result["imported"] == 1 and result["rejected_count"] == 60_001
    assert [r["line"] for r in result["rejected"]] == [*range(2, 60_002), 60_003]
    assert result["rejected"][-1]["error"] == "duplicate of line 60002"
    assert result["rejected_by_reason"] == {
        "expected N fields, found N": 60_000,
        "duplicate of line N": 1,
    }
    # nothing rejected: the ordinary answer
    status, answer = await post(client, operator, HEADER, "?rejections=all")
    assert status == 200 and orjson.loads(answer)["rejected"] == []


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _stream(total: int) -> Iterator[bytes]:
    """A CSV of `total` bytes, made on the fly: long lines the import rejects."""
    line = b"a" * 1023 + b"\n"  # lines this long go through the database fastest
    block = line * 1024  # 1 MiB
    yield HEADER
    sent = len(HEADER)
    while sent + len(block) <= total:
        yield block
        sent += len(block)


def _upload(port: int, token: str, total: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request(
        "POST",
        "/v1/admin/households/import",
        body=_stream(total),
        headers={"Authorization": f"Bearer {token}", **CSV, "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    try:
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.timeout(300)
async def test_a_2gb_import_keeps_memory_bounded_and_health_answering(
    dsn: str, operator: dict[str, str]
) -> None:
    total = int(os.environ.get("COUPON_IMPORT_TEST_BYTES", 2_000_000_000))
    server = Server(dsn, workers=1)
    await server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        async with aiohttp.ClientSession() as session:
            for _ in range(20):  # warm: pool, routes, the first answers
                async with session.get(server.base + "/healthz") as resp:
                    await resp.read()
            baseline = _rss_kb(pid, "VmRSS")
            token = operator["Authorization"].split()[1]
            upload = asyncio.ensure_future(asyncio.to_thread(_upload, server.port, token, total))
            latencies: list[float] = []
            while not upload.done():
                started = time.perf_counter()
                async with session.get(server.base + "/healthz") as resp:
                    assert resp.status == 200
                    await resp.read()
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.05)
            status, answer = await upload
        peak = _rss_kb(pid, "VmHWM")
    finally:
        await server.stop()
    assert status == 200, answer[:300]
    result = orjson.loads(answer)
    lines = (total - len(HEADER)) // (1 << 20) * 1024
    assert result["rejected_count"] == lines and len(result["rejected"]) == 1000
    growth_mb = (peak - baseline) / 1024
    print(
        f"\n{total / 1e9:.1f} GB: peak RSS {peak / 1024:.0f} MB (+{growth_mb:.0f} MB), "
        f"{len(latencies)} /healthz, slowest {max(latencies) * 1000:.0f} ms"
    )
    assert growth_mb < RSS_BOUND_MB
    assert len(latencies) > 10 and max(latencies) < 1.0
