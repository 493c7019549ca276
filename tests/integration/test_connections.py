"""The terminal path's connections: its statements probe keys, never read a hot
table whole, and the service's pool is opened whole, each connection warmed, before it
serves."""

from __future__ import annotations

import uuid

import asyncpg

from coupon import db
from coupon.config import Settings
from tests.conftest import _with_database
from tests.integration.terminal import Client, make_world

HOT_TABLES = (
    "households",
    "entitlements",
    "terminal_requests",
    "terminal_nonces",
    "ledger",
    "terminals",
    "merchants",
    "pending_reversals",
)
HOT_FUNCTIONS = ("redeem_many", "reverse", "balance_inquiry")


async def test_the_terminal_path_reads_no_hot_table_whole(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    """One plan per statement and connection, made when the stored answers and the ledger were
    analysed empty, must still probe keys once they have grown: a plan chosen on those
    statistics alone reads them whole on every batch."""
    for name in HOT_FUNCTIONS:
        config = await conn.fetchval(
            "SELECT proconfig FROM pg_proc WHERE oid = to_regproc('public.' || $1)", name
        )
        assert set(config) >= {
            "plan_cache_mode=force_generic_plan",
            "enable_seqscan=off",
            "enable_hashjoin=off",
            "enable_mergejoin=off",
        }, (name, config)

    world = await make_world(client, operator, n=30_000, members=1)
    await conn.execute("ANALYZE")  # terminal_requests, terminal_nonces, ledger: empty
    tid = world.terminal.terminal_id
    nids = list(world.credit)

    async def redeem(size: int) -> list[str]:
        picks = [nids.pop() for _ in range(size)]
        rids = [uuid.uuid4().hex for _ in picks]
        answers = await conn.fetch(
            db.q("redeem_many"), [tid] * size, [uuid.uuid4().hex for _ in picks], rids,
            [b"h"] * size, picks, [1000] * size, [""] * size, [False] * size, 4,
        )  # fmt: skip
        assert {a["outcome"] for a in answers} == {"approved"}
        return rids

    async with conn.transaction():  # the scan counts below are this transaction's
        for size in (1, 8, 64, 1, 64, *[64] * 15):
            rids = await redeem(size)
            reversed_ = await conn.fetchrow(
                db.q("reverse"), tid, uuid.uuid4().hex, rids[0] + "-r", b"h", rids[0], 4
            )
            assert reversed_["outcome"] == "reversed"
            balance = await conn.fetchrow(db.q("balance_inquiry"), tid, uuid.uuid4().hex, nids[0])
            assert balance["outcome"] == "balance"
        scans = await conn.fetch(
            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE seq_scan > 0"
        )
        whole = {r["relname"]: r["seq_scan"] for r in scans if r["relname"] in HOT_TABLES}
        assert whole == {}, f"read whole on the terminal path: {whole}"


async def test_the_pool_is_opened_whole_and_warmed_before_it_serves(
    settings: Settings, conn: asyncpg.Connection
) -> None:
    fixed = settings.model_copy(update={"pool_min_size": None, "pool_max_size": 3})
    pool = (await db.create_pool(settings.database_url or "", fixed)).asyncpg
    try:
        assert pool.get_size() == 3  # opened whole, not on demand
        held = [await pool.acquire() for _ in range(3)]
        try:
            for c in held:
                prepared = {
                    r["statement"]
                    for r in await c.fetch("SELECT statement FROM pg_prepared_statements")
                }
                for name in HOT_FUNCTIONS:
                    assert db.q(name) in prepared, (name, prepared)
        finally:
            for c in held:
                await pool.release(c)
    finally:
        await pool.close()
    # the warm-up's calls were rolled back: no nonce, answer or pending reversal is left
    for table in ("terminal_nonces", "terminal_requests", "pending_reversals", "ledger"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_a_database_without_the_schema_still_gets_a_pool(
    admin_dsn: str, settings: Settings
) -> None:
    """The warm-up finds no functions to call; the pool opens, and the service's own start-up
    check is left to say what is missing."""
    name = "t_empty_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        empty = _with_database(admin_dsn, name)
        pool = await db.create_pool(empty, settings.model_copy(update={"pool_max_size": 2}))
        try:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
        finally:
            await pool.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
