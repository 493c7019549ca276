"""Tranches: open a programme phase and credit every eligible household in one statement."""

from __future__ import annotations

from typing import Any

from coupon import db, errors
from coupon.models import TrancheCreate, TrancheCreated


async def open_tranche(
    conn: db.Connection, tranche: TrancheCreate, scope: str | None = None
) -> TrancheCreated:
    """Create the tranche, credit its households, set up its counters: all or nothing. Only a
    national token (scope None) may."""
    shards = await db.counter_shards(conn)
    async with conn.transaction():
        # crediting ~21 M households takes a while: no statement timeout for this one
        await conn.execute("SET LOCAL statement_timeout = 0")
        # room to sort the credited households by key in memory (and to keep the per-province
        # figures of RETURNING off disk); with 16 MB the planner walks the index instead
        await conn.execute("SET LOCAL work_mem = '256MB'")
        await conn.execute(db.q("lock_tranches"))
        carried_from = None
        if tranche.carry_over:
            previous = await conn.fetchrow(db.q("previous_tranche"), tranche.starts_at)
            if previous is not None:
                if previous["ends_at"] > await conn.fetchval("SELECT now()"):
                    raise errors.PreviousTrancheActive(
                        details={"previous_tranche_id": previous["id"]}
                    )
                carried_from = previous["id"]
        tranche_id: int | None = await conn.fetchval(
            db.q("insert_tranche"),
            tranche.name,
            tranche.starts_at,
            tranche.ends_at,
            list(tranche.categories),
            tranche.carry_over,
            carried_from,
            tranche.offline_allowance,
            tranche.offline_max_amount,
            scope,
        )
        if tranche_id is None:
            raise errors.NationalOnly()
        await conn.execute(
            db.q("insert_tranche_bands"),
            tranche_id,
            [b.up_to_decile for b in tranche.bands],
            [b.per_member_credit for b in tranche.bands],
            [b.opens_at or tranche.starts_at for b in tranche.bands],
        )
        by_province = await conn.fetch(
            db.q("credit_tranche"), tranche_id, carried_from, timeout=db.BULK_TIMEOUT
        )
        if carried_from is not None:
            await conn.execute(
                db.q("carry_out_balances"), tranche_id, carried_from, timeout=db.BULK_TIMEOUT
            )
        provinces = [r["province"] for r in by_province]
        await conn.execute(
            db.q("create_tranche_counters"),
            tranche_id,
            shards,
            provinces,
            [r["households"] for r in by_province],
        )
        await conn.execute(
            db.q("add_all_tranche_eligible"), provinces, [r["first_credited"] for r in by_province]
        )
        credited = sum(r["households"] for r in by_province)
        total = sum(r["total"] for r in by_province)
        await conn.execute(db.q("finish_tranche"), tranche_id, credited, total)
    return TrancheCreated(id=tranche_id, households_credited=credited, total_credit=total)


async def list_tranches(conn: db.Connection) -> list[dict[str, Any]]:
    """Every tranche, newest window first."""
    return [dict(r) for r in await conn.fetch(db.q("list_tranches"))]
