"""Connections that never send a request, or send it a byte at a time, and a token that opens
stream after stream: each is refused or dropped past its cap or deadline, while a normal client
keeps being served as fast as before."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

from coupon import tokens
from coupon.app import create_app
from coupon.config import Settings
from tests.integration.terminal import Client

Factory = Callable[..., Awaitable[Client]]

LIMITS = {
    "header_timeout": 1.0,
    "idle_timeout": 3.0,
    "body_timeout": 1.0,
    "max_connections": 100,
    "max_connections_per_client": 40,
    "max_streams": 5,
    "max_streams_per_token": 2,
}


async def connect(client: Client, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from another loopback address: another client, as the server sees it."""
    assert client.server.port is not None
    return await asyncio.open_connection("127.0.0.1", client.server.port, local_addr=(source, 0))


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """What the server sent before closing; fails if it keeps the connection open."""
    return await asyncio.wait_for(reader.read(), within)


async def response(reader: asyncio.StreamReader, within: float) -> bytes:
    """One whole response (its head, and its body by Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), within)


async def healthz_latencies(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url + "/healthz") as resp:
            assert resp.status == 200
            await resp.read()
        out.append(time.perf_counter() - started)
    return out


async def slowloris(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    i = 0
    while not stop.is_set():
        try:
            writer.write(b"X-Slow-%d: y\r\n" % i)
            await writer.drain()
        except ConnectionError:
            return
        i += 1
        await asyncio.sleep(0.2)


async def test_slow_and_silent_connections_past_the_caps_leave_a_normal_client_served(
    settings: Settings, dsn: str, aiohttp_client: Factory
) -> None:
    client = await aiohttp_client(create_app(settings.model_copy(update=LIMITS), dsn))
    url = str(client.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as normal:
        usual = statistics.median(await healthz_latencies(normal, url, 30))
        # 40 silent connections from one address, 40 slowloris from another: each at its cap
        silent = [await connect(client, "127.0.0.2") for _ in range(40)]
        slow = [await connect(client, "127.0.0.3") for _ in range(40)]
        stop = asyncio.Event()
        trickles = [asyncio.create_task(slowloris(w, stop)) for _, w in slow]
        # past the per-client cap: refused at once, politely
        extra_reader, _extra = await connect(client, "127.0.0.2")
        refused = await closed_by_server(extra_reader, 2)
        assert refused.startswith(b"HTTP/1.1 503") and b'"service_unavailable"' in refused
        # the normal client, on its kept-alive connection, as fast as before
        during = await healthz_latencies(normal, url, 30)
        assert statistics.median(during) < 3 * usual + 0.02, (usual, during)
        # past the global cap (20 more from a third address fill it): refused too
        third = [await connect(client, "127.0.0.4") for _ in range(19)]
        over_reader, _over = await connect(client, "127.0.0.5")
        assert (await closed_by_server(over_reader, 2)).startswith(b"HTTP/1.1 503")
        # the head deadline drops the silent and the slow alike, though the slow keep sending
        started = time.perf_counter()
        for reader, _ in [*silent, *slow, *third]:
            assert await closed_by_server(reader, 3) == b""
        assert time.perf_counter() - started < 3
        stop.set()
        await asyncio.gather(*trickles)
        # and the service takes new clients again
        assert len(await healthz_latencies(normal, url, 5)) == 5
        fresh_reader, fresh = await connect(client, "127.0.0.2")
        fresh.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await closed_by_server(fresh_reader, 3)).startswith(b"HTTP/1.1 200")
        for _, writer in [*silent, *slow, *third, (None, _extra), (None, _over), (None, fresh)]:
            writer.close()


async def test_a_body_that_stops_arriving_is_408(
    settings: Settings, dsn: str, aiohttp_client: Factory, operator: dict[str, str]
) -> None:
    client = await aiohttp_client(create_app(settings.model_copy(update=LIMITS), dsn))
    reader, writer = await connect(client, "127.0.0.1")
    writer.write(
        b"POST /v1/admin/merchants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: " + operator["Authorization"].encode() + b"\r\n"
        b'Content-Length: 100\r\n\r\n{"name": '
    )
    started = time.perf_counter()
    answer = await response(reader, 5)
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer
    assert time.perf_counter() - started < 3
    writer.close()
    # the import's streamed body too
    reader, writer = await connect(client, "127.0.0.1")
    writer.write(
        b"POST /v1/admin/households/import HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        b"Authorization: " + operator["Authorization"].encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"24\r\nnational_id,province,members,decile\n\r\n"
    )
    answer = await response(reader, 5)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    writer.close()


async def test_streams_are_capped_per_token_and_in_all(
    settings: Settings, dsn: str, aiohttp_client: Factory, conn: asyncpg.Connection
) -> None:
    client = await aiohttp_client(create_app(settings.model_copy(update=LIMITS), dsn))
    greedy = {"Authorization": "Bearer " + await tokens.create_token(conn, "auditor", "g")}
    others = [
        {"Authorization": "Bearer " + await tokens.create_token(conn, "auditor", f"o{i}")}
        for i in range(3)
    ]
    opened: list[Any] = []

    async def open_stream(headers: dict[str, str]) -> int:
        resp = await client.get("/v1/stats/stream", headers=headers)
        if resp.status == 200:
            opened.append(resp)
            await resp.content.readany()  # the first event: the stream is up
        else:
            await resp.read()
        return resp.status

    assert [await open_stream(greedy) for _ in range(3)] == [200, 200, 429]
    assert [await open_stream(others[0]) for _ in range(2)] == [200, 200]
    # five open in all: the next token is refused too
    assert await open_stream(others[1]) == 200
    assert await open_stream(others[2]) == 429
    # a stream that ends gives its slot back
    opened.pop(0).close()
    for _ in range(50):
        if await open_stream(greedy) == 200:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the closed stream's slot never came back")
    for resp in opened:
        resp.close()
