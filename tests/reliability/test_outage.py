"""The database goes away under load -- stopped, black-holed, its backends killed around
COMMIT -- and comes back: clients get 503 service_unavailable with Retry-After within a bounded
time (never a 500, never a hang), the service reconnects by itself, and every outcome a client
did not hear is recovered by resending the same request."""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from coupon import logins, migrations
from coupon.config import Settings
from coupon.embedded import EmbeddedPostgres
from tests.conftest import PASSWORDS, TEST_SHARDS, as_role
from tests.faultproxy import FaultProxy
from tests.reliability.harness import (
    Answer,
    Load,
    check_outcomes,
    free_port,
    in_process,
    record,
    redemption,
    resolve,
    seed,
    send,
    soak,
    upstream,
    via,
)


def bound(settings: Settings) -> float:
    """The longest a request may wait for its answer while the database misbehaves: an acquire,
    a statement and a release each give up after db_timeout; the rest is slack for a loaded
    machine. A hang would run into the client's own 30 s."""
    return 4 * settings.db_timeout + 5.0


def app_settings(dsn: str, **change: object) -> Settings:
    values: dict[str, object] = {
        "database_url": dsn,
        "pool_min_size": 1,
        "pool_max_size": 8,
        "counter_shards": TEST_SHARDS,
        "db_timeout": 2.0,
    }
    values.update(change)
    return Settings.model_validate(values)


# -- PostgreSQL stopped (immediate: crash recovery on start) -----------------------------------


@pytest.fixture
def durable_cluster() -> Iterator[EmbeddedPostgres]:
    """A throwaway durable cluster of this test's own (the shared test cluster is never
    stopped), on a fixed port so that the service's DSN survives its restarts."""
    home = Path(tempfile.mkdtemp(prefix="coupon-outage-", dir=tempfile.gettempdir()))
    home.chmod(0o755)  # the unprivileged server user must reach it
    server = EmbeddedPostgres(
        home, durable=True, settings={"port": str(free_port()), "shared_buffers": "32MB"}
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def durable_dsn(durable_cluster: EmbeddedPostgres) -> AsyncIterator[str]:
    admin = durable_cluster.dsn
    conn = await asyncpg.connect(admin)
    try:
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        for statement in logins.role_statements(PASSWORDS):
            await conn.execute(statement)
        await conn.execute(f"CREATE DATABASE outage OWNER {logins.OWNER}")
    finally:
        await conn.close()
    dsn = logins.dsn_for(admin, database="outage")
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn, TEST_SHARDS)
    finally:
        await conn.close()
    yield as_role(dsn, logins.WRITER)


async def test_postgres_stopped_and_started_under_load(
    durable_cluster: EmbeddedPostgres, durable_dsn: str
) -> None:
    world = await seed(durable_dsn)
    settings = app_settings(durable_dsn)
    outage = 10.0 if soak() else 2.0
    async with in_process(settings, durable_dsn) as base:
        async with Load(world, base, clients=8, tag="pg") as load:
            await asyncio.sleep(1.0)
            down_at = time.monotonic()
            await asyncio.to_thread(durable_cluster.stop, "immediate")
            await asyncio.sleep(outage)
            started = time.monotonic()
            await asyncio.to_thread(durable_cluster.start)  # crash recovery from the WAL
            up_at = time.monotonic()
            await asyncio.sleep(5.0 if soak() else 2.0)
        answers = [a for s in load.sent for a in s.answers]
        async with aiohttp.ClientSession() as session, session.get(base + "/healthz") as resp:
            assert resp.status == 200
        pending = [s for s in load.sent if not s.definitive]
        resolved = await resolve(base, pending)
    assert set(load.statuses) <= {"201", "402", "503"}, load.statuses  # no 500, no silence
    unavailable = [a for a in answers if a.status == 503]
    assert unavailable, "the outage was not seen"
    slowest = max(a.latency for a in answers)
    assert slowest < bound(settings), slowest
    # while PostgreSQL is down, a connection is refused at once: the 503 comes fast
    during = [a for a in unavailable if down_at < a.sent_at < started]
    assert statistics.median(a.latency for a in during) < settings.db_timeout
    # it reconnected by itself: approvals after PostgreSQL came back
    after = sorted(a.sent_at + a.latency for a in answers if a.status == 201 and a.sent_at > up_at)
    assert after, "no approval after the database came back"
    conn = await asyncpg.connect(durable_dsn)
    try:
        figures = await check_outcomes(conn, load.sent)
    finally:
        await conn.close()
    record(
        "postgres_outage",
        {
            "outage_s": outage,
            "recovery_start_s": round(up_at - started, 2),
            "first_approval_after_up_s": round(after[0] - up_at, 2),
            "requests": len(load.sent),
            "statuses": dict(load.statuses),
            "503_during_outage": len(during),
            "503_median_ms": round(statistics.median(a.latency for a in during) * 1000, 1),
            "slowest_answer_s": round(slowest, 2),
            "resolved": dict(resolved),
            **figures,
        },
    )


# -- a network that stops answering (the fault proxy) --------------------------------------


async def test_a_blackholed_database_is_503_within_the_bound(
    dsn: str, conn: asyncpg.Connection
) -> None:
    world = await seed(dsn, n_households=50, n_terminals=2)
    proxy = FaultProxy(*upstream(dsn))
    pdsn = via(dsn, await proxy.start())
    settings = app_settings(pdsn, pool_max_size=4, db_timeout=1.0, seal_interval=3600)
    rng = random.Random(3)
    holes = 3 if soak() else 1
    batches = []
    try:
        async with in_process(settings, pdsn) as base, aiohttp.ClientSession() as session:
            warm = redemption(world, rng, "warm")
            assert (await send(session, base, warm)).status == 201
            for hole in range(holes):
                proxy.blackhole()
                # more requests than pool connections: some wait for the pool, some for a
                # connection attempt, some for an answer on a connection already open
                batch = [redemption(world, rng, f"bh{hole}") for _ in range(12)]
                answers: list[Answer] = await asyncio.gather(
                    *(send(session, base, s) for s in batch)
                )
                async with session.get(base + "/healthz") as resp:
                    health = resp.status
                proxy.heal()
                assert [a.status for a in answers] == [503] * len(batch)
                assert max(a.latency for a in answers) < bound(settings)
                assert health == 503
                batches.append((batch, answers))
            resolved = await resolve(base, [s for b, _ in batches for s in b])
    finally:
        await proxy.stop()
    figures = await check_outcomes(conn, [warm, *(s for b, _ in batches for s in b)])
    record(
        "blackhole",
        {
            "db_timeout_s": settings.db_timeout,
            "holes": holes,
            "requests": sum(len(b) for b, _ in batches),
            "answers_503": sum(len(b) for b, _ in batches),
            "slowest_503_s": round(max(a.latency for _, ans in batches for a in ans), 2),
            "resolved": dict(resolved),
            **figures,
        },
    )


# -- backends killed around COMMIT ---------------------------------------------------------

TERMINATE_ONE = """
    SELECT count(*) FROM (
        SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'coupon'
          AND state = 'active' AND pid <> pg_backend_pid()
        ORDER BY random() LIMIT 1) killed"""


async def test_backends_terminated_under_load(dsn: str, conn: asyncpg.Connection) -> None:
    world = await seed(dsn)
    settings = app_settings(dsn)
    rng = random.Random()
    killed = 0
    async with in_process(settings, dsn) as base:
        async with Load(world, base, clients=8, tag="term") as load:
            deadline = time.monotonic() + (20.0 if soak() else 2.5)
            while time.monotonic() < deadline:
                killed += await conn.fetchval(TERMINATE_ONE)
                await asyncio.sleep(rng.uniform(0.005, 0.05))
        pending = [s for s in load.sent if not s.definitive]
        resolved = await resolve(base, pending)
    assert set(load.statuses) <= {"201", "402", "503"}, load.statuses
    assert killed > 0
    figures = await check_outcomes(conn, load.sent)
    record(
        "pg_terminate_backend",
        {
            "terminated": killed,
            "requests": len(load.sent),
            "statuses": dict(load.statuses),
            "resolved": dict(resolved),
            **figures,
        },
    )


async def test_an_answer_lost_after_commit_is_replayed(dsn: str, conn: asyncpg.Connection) -> None:
    """The commit happens, the answer never reaches the service: 503, and the resend gets the
    stored answer -- the one the ledger has."""
    world = await seed(dsn, n_households=20, n_terminals=1)
    proxy = FaultProxy(*upstream(dsn))
    pdsn = via(dsn, await proxy.start())
    # one connection, its redeem statement already prepared by the warm-up: the next thing
    # it sends is the redemption itself
    # no live-counters connections either: the lost reply must be the redemption's
    settings = app_settings(
        pdsn, pool_min_size=1, pool_max_size=1, seal_interval=3600, live_counters=False
    )
    rng = random.Random(5)
    try:
        async with in_process(settings, pdsn) as base, aiohttp.ClientSession() as session:
            warm = redemption(world, rng, "warm")
            assert (await send(session, base, warm)).status == 201
            proxy.lose_next_reply()
            lost = redemption(world, rng, "lost")
            first = await send(session, base, lost)
            assert first.status == 503
            assert proxy.stats.lost_replies == 1
            row = await conn.fetchrow(
                "SELECT seq, amount FROM ledger WHERE request_id = $1", lost.request_id
            )
            assert row is not None  # committed although nobody heard of it
            again = await send(session, base, lost)
    finally:
        await proxy.stop()
    assert again.status == 201 and again.replayed
    assert (again.body["redemption_id"], again.body["amount"]) == (row["seq"], row["amount"])
    stored = await conn.fetchrow(
        "SELECT outcome, entry_id, amount FROM terminal_requests WHERE request_id = $1",
        lost.request_id,
    )
    assert tuple(stored) == ("approved", row["seq"], row["amount"])
    await check_outcomes(conn, [warm, lost])


async def test_a_backend_killed_during_commit_applies_nothing(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Killed while committing (a deferred trigger holds the COMMIT open): 503, nothing
    recorded, and the resend applies the redemption for the first time."""
    world = await seed(dsn, n_households=20, n_terminals=1)
    await conn.execute("""
        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON ledger
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();""")
    rng = random.Random(6)
    async with in_process(app_settings(dsn), dsn) as base, aiohttp.ClientSession() as session:
        victim = redemption(world, rng, "commit")
        victim_body = orjson.loads(victim.body)
        victim_body["amount"] = 1000  # approved, so it writes the ledger
        victim.body = orjson.dumps(victim_body)
        task = asyncio.create_task(send(session, base, victim))
        pid = None
        for _ in range(400):
            pid = await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'coupon' AND wait_event = 'PgSleep'"
            )
            if pid is not None:
                break
            await asyncio.sleep(0.01)
        assert pid is not None, "the redemption never reached its COMMIT"
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        first = await task
        assert first.status == 503
        assert await conn.fetchval("SELECT count(*) FROM ledger") == 0
        assert await conn.fetchval("SELECT count(*) FROM terminal_requests") == 0
        await conn.execute("DROP TRIGGER slow_commit ON ledger")
        again = await send(session, base, victim)
    assert again.status == 201 and not again.replayed
    await check_outcomes(conn, [victim])
