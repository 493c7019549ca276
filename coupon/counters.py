"""Live counters: per-province figures summed from the counter shards in one snapshot."""

from __future__ import annotations

from coupon import db, errors
from coupon.models import ProvinceStats, Stats, Totals


def _coverage(served: int, eligible: int) -> float:
    return round(served / eligible, 6) if eligible else 0.0


async def stats(conn: db.Connection, tranche_id: int | None) -> Stats:
    """Counters for one tranche, or for all of them (distinct households counted once)."""
    if tranche_id is not None and not await conn.fetchval(db.q("tranche_exists"), tranche_id):
        raise errors.TrancheNotFound()
    rows = await conn.fetch(db.q("stats"), tranche_id)
    # rank 1..31 by coverage; ties go to more served households, then to the province code
    ranked = sorted(
        rows,
        key=lambda r: (
            -_coverage(r["served_households"], r["eligible_households"]),
            -r["served_households"],
            r["code"],
        ),
    )
    rank = {r["code"]: i for i, r in enumerate(ranked, start=1)}
    provinces = [
        ProvinceStats(
            code=r["code"],
            name_en=r["name_en"],
            name_fa=r["name_fa"],
            transactions=r["transactions"],
            served_households=r["served_households"],
            eligible_households=r["eligible_households"],
            amount=r["amount"],
            coverage=_coverage(r["served_households"], r["eligible_households"]),
            rank=rank[r["code"]],
        )
        for r in rows
    ]
    served = sum(p.served_households for p in provinces)
    eligible = sum(p.eligible_households for p in provinces)
    totals = Totals(
        transactions=sum(p.transactions for p in provinces),
        served_households=served,
        eligible_households=eligible,
        amount=sum(p.amount for p in provinces),
        coverage=_coverage(served, eligible),
    )
    return Stats(as_of=rows[0]["as_of"], tranche_id=tranche_id, totals=totals, provinces=provinces)
