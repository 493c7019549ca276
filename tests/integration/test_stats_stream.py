"""GET /v1/stats/stream without a browser: snapshot on connect, events after changes, several
processes on one database, the listener and the publisher surviving lost connections."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from coupon import auth
from coupon.api import keys
from coupon.api import stats as stats_api
from coupon.app import create_app
from coupon.config import Settings
from coupon.models import RedemptionRequest
from coupon.redemption import body_hash
from tests.integration.helpers import tranche_body
from tests.integration.sse import Event, EventReader, numbers
from tests.integration.terminal import REDEEM_ONE, Client, World, make_world

STREAM = "/v1/stats/stream"
MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def world(client: Client, operator: dict[str, str]) -> World:
    return await make_world(client, operator)


@contextlib.asynccontextmanager
async def stream(
    client: Client, path: str = STREAM, headers: dict[str, str] | None = None
) -> AsyncIterator[EventReader]:
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    try:
        yield EventReader(resp)
    finally:
        resp.close()


async def next_stats(reader: EventReader, within: float = 5.0) -> Event:
    event = await reader.next(within)
    assert event is not None, "the stream ended"
    assert event.event == "stats"
    return event


async def wait_for(
    reader: EventReader, check: Callable[[dict[str, Any]], bool], within: float = 5.0
) -> Event:
    """The first event whose stats pass check."""
    deadline = time.monotonic() + within
    while True:
        event = await next_stats(reader, max(deadline - time.monotonic(), 0.01))
        if check(event.json()):
            return event


def province(stats: dict[str, Any], code: str) -> dict[str, Any]:
    return next(p for p in stats["provinces"] if p["code"] == code)


async def wait_until(predicate: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# -- the stream ---------------------------------------------------------------------------------


async def test_a_snapshot_on_connect_equals_get_stats(
    world: World, client: Client, operator: dict[str, str]
) -> None:
    resp = await client.get("/v1/stats", headers=operator)
    expected = await resp.json()
    async with stream(client, headers=operator) as reader:
        assert reader.response.headers["Content-Type"] == "text/event-stream"
        assert reader.response.headers["Cache-Control"] == "no-cache"
        first = await next_stats(reader)
    assert first.id is not None and int(first.id) >= 0
    assert first.retry is not None and first.retry > 0
    assert numbers(first.json()) == numbers(expected)
    assert len(first.json()["provinces"]) == 31


async def test_a_redemption_is_on_the_stream_within_a_second(
    world: World, client: Client, operator: dict[str, str]
) -> None:
    nid = next(iter(world.credit))
    code = world.province[nid]
    async with stream(client, headers=operator) as reader:
        first = await next_stats(reader)
        before = province(first.json(), code)["transactions"]
        started = time.monotonic()
        resp = await world.terminal.redeem(nid, 250_000)
        assert resp.status == 201
        committed = time.monotonic()
        event = await wait_for(
            reader, lambda s: province(s, code)["transactions"] == before + 1, within=3
        )
        lag = time.monotonic() - committed
    assert lag < 1.0, f"event {lag:.3f} s after the commit"
    assert int(event.id or 0) > int(first.id or 0), "ids increase"
    stats = event.json()
    assert province(stats, code)["amount"] == 250_000
    assert stats["totals"]["transactions"] == 1
    assert time.monotonic() - started < 3


async def test_auditors_may_use_the_query_token_and_terminals_may_not_listen(
    world: World, client: Client, auditor: dict[str, str], operator: dict[str, str]
) -> None:
    token = auditor["Authorization"].removeprefix("Bearer ")
    async with stream(client, f"{STREAM}?access_token={token}") as reader:
        assert (await next_stats(reader)).json()["totals"]["eligible_households"] == 10
    async with stream(client, headers=auditor) as reader:
        await next_stats(reader)

    resp = await client.get(STREAM)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await client.get(f"{STREAM}?access_token=not-a-token")
    assert resp.status == 401
    # a terminal's signature is no bearer token
    t = world.terminal
    headers = auth.signed_headers(t.terminal_id, t.secret, "GET", STREAM, b"", uuid.uuid4().hex)
    resp = await client.get(STREAM, headers=headers)
    assert resp.status == 401
    # only the stream reads the token from the query string
    resp = await client.get(f"/v1/stats?access_token={token}")
    assert resp.status == 401


async def test_tranche_filter(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator)
    # an earlier tranche, over before the current one started
    old = tranche_body(
        start=dt.timedelta(days=-40),
        length=dt.timedelta(days=30),
        bands=[{"up_to_decile": 1, "per_member_credit": 1_000_000}],
        name="Earlier",
    )
    resp = await client.post("/v1/admin/tranches", json=old, headers=operator)
    assert resp.status == 201, await resp.text()
    old_id = (await resp.json())["id"]
    resp = await client.get(f"{STREAM}?tranche_id=999999", headers=operator)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "tranche_not_found"
    resp = await client.get(f"{STREAM}?tranche_id=abc", headers=operator)
    assert resp.status == 422

    async with (
        stream(client, f"{STREAM}?tranche_id={old_id}", operator) as old_reader,
        stream(client, f"{STREAM}?tranche_id={world.tranche_id}", operator) as current,
    ):
        old_first = (await next_stats(old_reader)).json()
        current_first = (await next_stats(current)).json()
        assert old_first["tranche_id"] == old_id
        assert current_first["tranche_id"] == world.tranche_id
        assert old_first["totals"]["eligible_households"] == 4  # decile 1 only
        assert current_first["totals"]["eligible_households"] == 10
        resp = await world.terminal.redeem(next(iter(world.credit)), 100_000)
        assert resp.status == 201
        changed = await wait_for(current, lambda s: s["totals"]["transactions"] == 1)
        assert changed.json()["tranche_id"] == world.tranche_id
        # the other tranche's numbers did not change: its stream stays quiet
        with pytest.raises(TimeoutError):
            await old_reader.next(within=1.0)


async def test_two_processes_stream_the_same_numbers(
    world: World,
    client: Client,
    operator: dict[str, str],
    settings: Settings,
    dsn: str,
    aiohttp_client: MakeClient,
) -> None:
    # a second application on the same database stands for a second worker process
    other = await aiohttp_client(create_app(settings, dsn))
    hubs = [client.app[keys.LIVE], other.app[keys.LIVE]]
    await wait_until(lambda: _async(sum(h.publishing for h in hubs) == 1))
    async with stream(client, headers=operator) as a, stream(other, headers=operator) as b:
        await next_stats(a)
        await next_stats(b)
        for i, nid in enumerate(list(world.credit)[:3]):
            resp = await world.terminal.redeem(nid, 10_000 * (i + 1))
            assert resp.status == 201
        done = [await wait_for(r, lambda s: s["totals"]["transactions"] == 3) for r in (a, b)]
    assert numbers(done[0].json()) == numbers(done[1].json())
    assert done[0].json()["totals"]["amount"] == 60_000
    # one publisher for the database, however many processes
    assert sum(h.publishing for h in hubs) == 1


async def test_the_listener_reconnects_after_its_connection_is_killed(
    world: World, client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    async def listener_pid() -> int | None:
        pid: int | None = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'coupon-stats-listener'"
        )
        return pid

    await wait_until(lambda: _not_none(listener_pid()))
    old_pid = await listener_pid()
    async with stream(client, headers=operator) as reader:
        await next_stats(reader)
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        await wait_until(lambda: _changed(listener_pid(), old_pid), within=10)
        resp = await world.terminal.redeem(next(iter(world.credit)), 5_000)
        assert resp.status == 201
        event = await wait_for(reader, lambda s: s["totals"]["transactions"] == 1, within=5)
    assert event.json()["totals"]["amount"] == 5_000


async def test_another_process_takes_over_when_the_publisher_dies(
    world: World,
    client: Client,
    operator: dict[str, str],
    conn: asyncpg.Connection,
    settings: Settings,
    dsn: str,
    aiohttp_client: MakeClient,
) -> None:
    other = await aiohttp_client(create_app(settings, dsn))
    hubs = [client.app[keys.LIVE], other.app[keys.LIVE]]
    await wait_until(lambda: _async(any(h.publishing for h in hubs)))
    async with stream(client, headers=operator) as a, stream(other, headers=operator) as b:
        await next_stats(a)
        await next_stats(b)
        killed = await conn.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database()"
            " AND application_name = 'coupon-stats-publisher'"
            " AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)"
        )
        assert killed
        resp = await world.terminal.redeem(next(iter(world.credit)), 7_000)
        assert resp.status == 201
        for reader in (a, b):
            await wait_for(reader, lambda s: s["totals"]["amount"] == 7_000, within=8)
    assert sum(h.publishing for h in hubs) == 1


async def test_a_late_commit_of_a_lower_ledger_seq_is_not_missed(
    world: World, client: Client, operator: dict[str, str], dsn: str
) -> None:
    """Transaction A draws seq n, B draws n+1 and commits, the publisher sees n+1; when A
    commits, max(seq) does not move, yet the counters changed: the stream must say so."""
    first, second = list(world.credit)[:2]
    slow = await asyncpg.connect(dsn)
    try:
        async with stream(client, headers=operator) as reader:
            await next_stats(reader)
            tx = slow.transaction()
            await tx.start()
            req = RedemptionRequest(request_id="slow-1", national_id=first, amount=1_000)
            row = await slow.fetchrow(
                REDEEM_ONE,
                world.terminal.terminal_id,
                uuid.uuid4().hex,
                req.request_id,
                body_hash(req),
                req.national_id,
                req.amount,
                [],
                False,
                client.app[keys.SHARDS],
            )
            assert row is not None and row["outcome"] == "approved"
            resp = await world.terminal.redeem(second, 2_000)
            assert resp.status == 201
            assert resp.body["redemption_id"] > row["entry_id"]
            await wait_for(reader, lambda s: s["totals"]["amount"] == 2_000)
            await asyncio.sleep(0.3)  # the publisher has polled past the higher seq
            await tx.commit()
            committed = time.monotonic()
            await wait_for(reader, lambda s: s["totals"]["amount"] == 3_000, within=3)
            assert time.monotonic() - committed < 1.0
    finally:
        await slow.close()


async def test_a_new_tranche_is_on_the_stream(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    async with stream(client, headers=operator) as reader:
        assert (await next_stats(reader)).json()["totals"]["eligible_households"] == 0
        await make_world(client, operator)
        await wait_for(reader, lambda s: s["totals"]["eligible_households"] == 10)


async def test_heartbeat_comments_keep_a_quiet_stream_open(
    world: World, client: Client, operator: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_api, "HEARTBEAT_S", 0.2)
    async with stream(client, headers=operator) as reader:
        await next_stats(reader)
        with pytest.raises(TimeoutError):
            await reader.next(within=1.0)
    assert "ping" in reader.comments


async def test_many_clients_cost_one_computation_per_change(
    world: World, client: Client, operator: dict[str, str]
) -> None:
    hub = client.app[keys.LIVE]
    async with contextlib.AsyncExitStack() as stack:
        readers = [
            await stack.enter_async_context(stream(client, headers=operator)) for _ in range(20)
        ]
        await asyncio.gather(*(next_stats(r) for r in readers))
        assert hub.clients == 20
        metric = client.app[keys.METRICS].stats_snapshots
        before = metric._value.get()
        resp = await world.terminal.redeem(next(iter(world.credit)), 3_000)
        assert resp.status == 201
        events = await asyncio.gather(
            *(wait_for(r, lambda s: s["totals"]["transactions"] == 1) for r in readers)
        )
        assert len({e.id for e in events}) == 1
        assert metric._value.get() - before <= 2  # once per change, not once per client
    await wait_until(lambda: _async(hub.clients == 0))


async def test_shutdown_ends_open_streams_promptly(
    world: World, settings: Settings, dsn: str, operator: dict[str, str]
) -> None:
    from aiohttp import web

    app = create_app(settings, dsn)
    runner = web.AppRunner(app, shutdown_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{STREAM}", headers=operator) as resp,
    ):
        reader = EventReader(resp)
        await next_stats(reader)
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 5
        with contextlib.suppress(aiohttp.ClientPayloadError):
            assert await reader.next(within=1) is None


async def _async(value: bool) -> bool:
    return value


async def _not_none(value: Awaitable[Any]) -> bool:
    return await value is not None


async def _changed(value: Awaitable[Any], old: Any) -> bool:
    new = await value
    return new is not None and new != old
