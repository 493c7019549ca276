"""Versioned migrations against a real PostgreSQL: a database made by the released 0.1.0 and
full of data migrates to exactly the catalog of a fresh one, keeping every row and a ledger that
still verifies; a failing migration leaves the previous version; the service refuses a database
that is not at its version, and a superuser login."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from coupon import audit, db, embedded, errors, logins, migrations, tokens
from coupon.app import create_app
from coupon.config import Settings
from coupon.provinces import iran_provinces
from tests.conftest import TEST_SHARDS, as_role
from tests.integration.terminal import invariants, make_world

Factory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def _released(dsn: str) -> None:
    """What `coupon db init` of 0.1.0 did: schema.sql (now migration 0001) applied by the
    superuser, provinces loaded, the schema's digest recorded."""
    first = migrations.available()[0]
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT current_setting('server_version_num')::int") < 160000:
            pytest.skip("0.1.0 ran on PostgreSQL 16+ only (pg_input_is_valid): no such database")
        async with conn.transaction():
            await conn.execute(first.sql)
            await conn.executemany(
                db.q("upsert_province"), [(p.code, p.name_en, p.name_fa) for p in iran_provinces()]
            )
            await conn.execute(db.q("set_meta"), "counter_shards", str(TEST_SHARDS))
            await conn.execute(db.q("create_all_tranche_counters"), TEST_SHARDS)
            await conn.execute(db.q("set_meta"), "schema_sha256", first.checksum)
    finally:
        await conn.close()


async def _fingerprint(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    """Row count and a digest of every row, per table of the schema."""
    tables = await conn.fetch(
        "SELECT quote_ident(tablename) AS t FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename NOT IN ('schema_migrations', 'schema_meta') ORDER BY 1"
    )
    out = {}
    for row in tables:
        t = row["t"]
        out[t] = tuple(
            await conn.fetchrow(
                f"SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) "
                f"FROM {t} x"
            )
        )
    return out


def _schema_dump(dsn: str) -> str:
    """pg_dump --schema-only, less what names the database or the dump itself."""
    out = subprocess.run(
        [str(embedded.client_tool("pg_dump")), "--schema-only", "--no-comments", dsn],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return "\n".join(
        line
        for line in out.splitlines()
        if line and not line.startswith(("--", "\\restrict", "\\unrestrict"))
    )


async def test_a_released_database_migrates_to_the_fresh_catalog_keeping_every_row(
    empty_database: Callable[..., Any], aiohttp_client: Factory
) -> None:
    legacy = await empty_database(owner=None)
    await _released(legacy)
    # fill it through the 0.1.0 schema: households, a tranche, redemptions, a reversal, seals
    settings = Settings(database_url=legacy, pool_min_size=1, counter_shards=TEST_SHARDS)
    conn = await asyncpg.connect(legacy)
    try:
        operator = {"Authorization": "Bearer " + await tokens.create_token(conn, "operator", "t")}
        client = await aiohttp_client(create_app(settings, as_role(legacy, logins.WRITER)))
        world = await make_world(client, operator, n=12)
        for i, nid in enumerate(list(world.credit)[:8]):
            resp = await world.terminal.redeem(nid, 1_000_000 + i, request_id=f"r{i}")
            assert resp.status == 201, resp.body
        assert (await world.terminal.reverse("r3")).status == 201
        await client.close()
        assert await audit.seal(conn) == 9
        before = await _fingerprint(conn)
        assert before["ledger"][0] == 9

        after_release = [m.label for m in migrations.available()[1:]]
        assert await migrations.migrate(conn, TEST_SHARDS) == after_release

        assert await _fingerprint(conn) == before
        assert (await audit.verify(conn)).ok
        await invariants(conn)
        state = await migrations.status(conn)
        assert state.current
        assert [a.applied_as for a in state.applied] == ["adopted"] + ["migration"] * len(
            after_release
        )
    finally:
        await conn.close()

    fresh = await empty_database()
    conn = await asyncpg.connect(fresh)
    try:
        assert await migrations.migrate(conn, TEST_SHARDS) == ["schema.sql"]
    finally:
        await conn.close()
    migrated_dump, fresh_dump = await asyncio.gather(
        asyncio.to_thread(_schema_dump, legacy), asyncio.to_thread(_schema_dump, fresh)
    )
    assert "CREATE FUNCTION public.redeem_many(" in fresh_dump
    assert "SECURITY DEFINER" in fresh_dump and "OWNER TO coupon_owner" in fresh_dump
    assert migrated_dump == fresh_dump


async def test_a_failing_migration_leaves_the_previous_version(
    empty_database: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = await empty_database()
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn, TEST_SHARDS)
        shipped = migrations.available()
        broken = migrations.Migration(
            len(shipped) + 1,
            "broken",
            "ALTER TABLE households ADD COLUMN note text; SELECT 1 / 0;",
        )
        monkeypatch.setattr(migrations, "available", lambda: (*shipped, broken))
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrations.migrate(conn, TEST_SHARDS)
        state = await migrations.status(conn)
        assert [m.version for m in state.pending] == [broken.version]
        assert state.applied[-1].version == shipped[-1].version
        assert not await conn.fetchval(
            "SELECT EXISTS (SELECT FROM information_schema.columns "
            "WHERE table_name = 'households' AND column_name = 'note')"
        )
        with pytest.raises(errors.SchemaMismatch, match="run `coupon db migrate`"):
            await migrations.check_current(conn)
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(empty_database: Callable[..., Any]) -> None:
    dsn = await empty_database()
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c, TEST_SHARDS) for c in conns))
        assert sorted(results) == [[], [], [], ["schema.sql"]]
        assert len((await migrations.status(conns[0])).applied) == len(migrations.available())
    finally:
        for c in conns:
            await c.close()


async def test_the_service_refuses_a_database_not_at_its_version(
    empty_database: Callable[..., Any],
) -> None:
    dsn = await empty_database()
    writer = as_role(dsn, logins.WRITER)
    with pytest.raises(errors.SchemaMismatch, match="no schema"):
        await migrations.preflight(writer)
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn, TEST_SHARDS)
        await migrations.preflight(writer)  # current: no complaint
        await conn.execute(db.q("record_migration"), 9999, "from_the_future", "x", "migration")
        with pytest.raises(errors.SchemaMismatch, match="newer than this code"):
            await migrations.preflight(writer)
        await conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
        await conn.execute("UPDATE schema_migrations SET checksum = 'x', applied_as = 'migration'")
        with pytest.raises(errors.SchemaMismatch, match="differs"):
            await migrations.preflight(writer)
    finally:
        await conn.close()
    with pytest.raises(errors.UnsafeLogin, match="superuser"):
        await migrations.preflight(dsn)


async def test_a_database_of_something_else_is_not_touched(
    empty_database: Callable[..., Any],
) -> None:
    dsn = await empty_database()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE households (id int)")
        with pytest.raises(errors.SchemaMismatch, match=r"not a 0\.1\.0 database"):
            await migrations.migrate(conn, TEST_SHARDS)
        assert await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL")
    finally:
        await conn.close()
