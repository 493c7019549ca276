"""Every named statement of queries.sql prepares against the schema: broken SQL fails here."""

from __future__ import annotations

import asyncpg

from coupon import db, migrations

# statements that need the import's temporary tables, in the order the import runs them
IMPORT_STEPS = ("create_import_lines", "classify_import_lines")


async def test_every_query_prepares(conn: asyncpg.Connection) -> None:
    names = set(db.queries())
    assert {"redeem_many", "reverse", "balance_inquiry", "stats", "credit_tranche"} <= names
    async with conn.transaction():
        await conn.execute(db.q("create_import_lines"))
        await conn.execute(db.q("classify_import_lines"), 4, 1, 2, 3, 4, None, None)
        for name in sorted(names - set(IMPORT_STEPS)):
            await conn.prepare(db.q(name))


async def test_migrate_again_changes_nothing(conn: asyncpg.Connection) -> None:
    assert await migrations.migrate(conn, 4) == []
    assert await migrations.migrate(conn, 4) == []
    assert await conn.fetchval("SELECT count(*) FROM provinces") == 31
    assert await conn.fetchval("SELECT count(*) FROM province_counters_all") == 31 * 4
