"""Versioned migrations against a real PostgreSQL: a database made by the released 0.1.0 and
full of data migrates to exactly the catalog of a fresh one, keeping every row and a ledger that
still verifies; a failing migration leaves the previous version; the service refuses a database
that is not at its version, and a superuser login."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coupon import (
    audit,
    db,
    embedded,
    errors,
    households,
    logins,
    merchants,
    migrations,
    signing,
    tranches,
)
from coupon.config import Settings
from coupon.keyring import Keyring
from coupon.models import TrancheCreate
from coupon.provinces import iran_provinces
from tests.conftest import TEST_SHARDS, as_role
from tests.integration.helpers import households_csv, national_ids, tranche_body
from tests.integration.terminal import invariants

Factory = Callable[..., Awaitable[TestClient[Any, Any]]]
# columns migrations added to tables 0.1.0 had (their values are checked apart)
ADDED_COLUMNS = ["captured_at", "offline_allowance", "offline_max_amount", "offline_enabled"]


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
    """Row count and a digest of every row, per table of the schema (the stored answers
    change shape: _answers compares them)."""
    tables = await conn.fetch(
        "SELECT quote_ident(tablename) AS t FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename NOT IN ('schema_migrations', 'schema_meta', 'terminal_requests') "
        "ORDER BY 1"
    )
    out = {}
    for row in tables:
        t = row["t"]
        # columns added since are left out: the rows must keep every value they had
        out[t] = tuple(
            await conn.fetchrow(
                "SELECT count(*), md5(coalesce(string_agg(j::text, '|' ORDER BY j::text), '')) "
                f"FROM (SELECT to_jsonb(x) - $1::text[] AS j FROM {t} x) x",
                ADDED_COLUMNS,
            )
        )
    return out


ANSWERS_BEFORE = """
SELECT terminal_id, request_id, kind, body_hash, created_at, response->>'status' AS outcome,
       response->>'reason' AS reason,
       coalesce(response->>'redemption_id', response->>'reversal_id')::bigint AS entry_id,
       (response->>'amount')::bigint AS amount, (response->>'remaining')::bigint AS remaining,
       (response->>'tranche_id')::bigint AS tranche_id, response->>'province' AS province,
       (response->>'merchant_id')::bigint AS merchant_id
FROM terminal_requests ORDER BY terminal_id, request_id"""
ANSWERS_AFTER = """
SELECT terminal_id, request_id, kind, body_hash, created_at, outcome, reason, entry_id, amount,
       remaining, tranche_id, province, merchant_id
FROM terminal_requests ORDER BY terminal_id, request_id"""


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


# insert_tranche as 0.1.0's tranches take it: no offline columns, and no token scope (their
# values are only echoed)
RELEASED_INSERT_TRANCHE = """
INSERT INTO tranches (name, starts_at, ends_at, categories, carry_over, carried_from)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, $7::bigint AS offline_allowance, $8::bigint AS offline_max_amount,
          $9::text AS scope"""
# seal_rows as 0.1.0 sealed: its ledger has no captured_at
RELEASED_SEAL_ROWS = """
INSERT INTO ledger_seals (seq, block_no, digest)
SELECT seq, $3, ledger_digest(seq, kind, request_id, terminal_id, merchant_id, national_id,
                              province, tranche_id, amount, reverses, created_at)
FROM ledger WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $4"""


async def test_a_released_database_migrates_to_the_fresh_catalog_keeping_every_row(
    empty_database: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy = await empty_database(owner=None)
    await _released(legacy)
    # fill it through the 0.1.0 schema and its functions: households, a tranche, redemptions,
    # a reversal, sealed blocks
    conn = await asyncpg.connect(legacy)
    try:
        ids = national_ids(12, seed=4)
        csv = households_csv([(nid, "IR-15", 2, 1 + i % 3) for i, nid in enumerate(ids)])
        assert (await households.import_csv(conn, households.blocks_of(csv.encode()))).imported
        tranche = TrancheCreate.model_validate(
            tranche_body(bands=[{"up_to_decile": 3, "per_member_credit": 5_000_000}])
        )
        with monkeypatch.context() as patched:
            newest = db.q
            patched.setattr(
                db,
                "q",
                lambda name: RELEASED_INSERT_TRANCHE if name == "insert_tranche" else newest(name),
            )
            await tranches.open_tranche(conn, tranche)
        # as 0.1.0 stored a store: no category
        merchant = await conn.fetchval(
            "INSERT INTO merchants (name, province) VALUES ('Shop', 'IR-15') RETURNING id"
        )
        # as 0.1.0 stored a terminal: its secret in plain text
        secret = "ab" * 32
        terminal = await conn.fetchval(
            "INSERT INTO terminals (merchant_id, secret) VALUES ($1, $2) RETURNING id",
            merchant,
            secret,
        )
        for i, nid in enumerate(ids[:8]):
            row = await conn.fetchrow(
                "SELECT * FROM redeem($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                terminal, f"n{i}", f"r{i}", bytes(32), nid, 1_000_000 + i, [], False, TEST_SHARDS,
            )  # fmt: skip
            assert row["http_status"] == 201, row
        row = await conn.fetchrow(
            "SELECT * FROM reverse($1, $2, $3, $4, $5, $6)",
            terminal, "n-rev", "rev-1", bytes(32), "r3", TEST_SHARDS,
        )  # fmt: skip
        assert row["http_status"] == 201, row
        # sealed as 0.1.0 sealed: heads unsigned
        await conn.execute(RELEASED_SEAL_ROWS, 0, 10**9, 1, 1000)
        await conn.fetchrow(db.q("close_block"), 1, audit.GENESIS, 0)
        before = await _fingerprint(conn)
        assert before["ledger"][0] == 9
        answers = [dict(r) for r in await conn.fetch(ANSWERS_BEFORE)]
        assert len(answers) == 9

        after_release = [m.label for m in migrations.available()[1:]]
        assert await migrations.migrate(conn, TEST_SHARDS) == after_release

        after = await _fingerprint(conn)
        for new_table in (
            "ledger_block_signatures",
            "inspection_rules",
            "inspection_days",
            "offline_purchases",
            "terminal_reconciliations",
        ):
            assert after.pop(new_table)[0] == 0  # new, and empty
        assert await conn.fetchval(
            "SELECT bool_and(captured_at IS NULL) FROM ledger"
        )  # online rows, all of them
        assert await conn.fetchval(
            "SELECT bool_and(offline_allowance = 0 AND offline_max_amount IS NULL) FROM tranches"
        )
        # terminals have new columns: the old ones compared, then the secret encrypted
        assert after.pop("terminals") != before.pop("terminals")
        # so have stores: a category, the default for those that had none
        assert after.pop("merchants") != before.pop("merchants")
        assert after == before
        assert await conn.fetchval(
            "SELECT (id, name, category) = ($1, 'Shop', 'grocery') FROM merchants", merchant
        )
        assert await conn.fetchval(
            "SELECT (id, merchant_id, secret, status) = ($1, $2, $3, 'active') FROM terminals",
            terminal,
            merchant,
            secret,
        )
        keyring = Keyring.from_settings(Settings(kek_file=tmp_path / "keys"))
        assert await merchants.encrypt_plain_secrets(conn, keyring) == 1
        box = await conn.fetchval("SELECT secret_box FROM terminals WHERE secret IS NULL")
        assert keyring.open(terminal, box) == secret
        assert [dict(r) for r in await conn.fetch(ANSWERS_AFTER)] == answers
        keys = signing.SealKeys(Ed25519PrivateKey.generate())
        assert not (await audit.verify(conn, keys)).ok  # unsigned heads are not trusted...
        assert await audit.seal(conn, keys) == 0  # ...until the sealer signs them as they are
        assert (await audit.verify(conn, keys)).ok
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
