"""Tranche opening on the released 0.1.0 schema against the newest one, head to head.

    python -m loadtest.schema_ab --households 1000000 --rounds 5

One durable embedded cluster, two databases: one made as 0.1.0 made it (migration 0001 applied
whole by the superuser), one migrated to head by coupon_owner. The same households are
imported into both, then a tranche is opened and rolled back (and the tables vacuumed) in each,
alternating, so both see the same moments of a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time

import asyncpg

from coupon import db, households, logins, migrations, tranches
from coupon.embedded import EmbeddedPostgres
from coupon.models import Band, TrancheCreate
from coupon.provinces import iran_provinces
from loadtest.bulk import file_blocks, generate_csv
from loadtest.common import OUT, print_result

SHARDS = 16


async def _released(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await conn.execute(migrations.available()[0].sql)
    provinces = [(p.code, p.name_en, p.name_fa) for p in iran_provinces()]
    await conn.executemany(db.q("upsert_province"), provinces)
    await conn.execute(db.q("set_meta"), "counter_shards", str(SHARDS))
    await conn.execute(db.q("create_all_tranche_counters"), SHARDS)
    return conn


async def run(args: argparse.Namespace) -> dict[str, object]:
    OUT.mkdir(parents=True, exist_ok=True)
    OUT.chmod(0o755)
    server = EmbeddedPostgres(OUT / "pg", durable=True)
    admin = server.start()
    try:
        path = OUT / f"households-{args.households}.csv"
        if not path.exists():
            path.write_text(generate_csv(args.households))
        conn = await asyncpg.connect(admin)
        try:
            for statement in logins.role_statements(logins.new_passwords()):
                await conn.execute(statement)
            for name in ("coupon_ab_released", "coupon_ab_head"):
                await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await conn.execute("CREATE DATABASE coupon_ab_released")
            await conn.execute(f"CREATE DATABASE coupon_ab_head OWNER {logins.OWNER}")
        finally:
            await conn.close()
        released = await _released(logins.dsn_for(admin, database="coupon_ab_released"))
        head = await asyncpg.connect(logins.dsn_for(admin, database="coupon_ab_head"))
        await migrations.migrate(head, SHARDS)
        conns = {"released": released, "head": head}
        for conn in conns.values():
            await households.import_csv(conn, file_blocks(path))
            await conn.execute("VACUUM ANALYZE")
        now = dt.datetime.now(dt.UTC)
        tranche = TrancheCreate(
            name="ab",
            starts_at=now,
            ends_at=now + dt.timedelta(days=30),
            categories=["rice"],
            carry_over=False,
            bands=[
                Band(up_to_decile=3, per_member_credit=5_000_000),
                Band(up_to_decile=7, per_member_credit=3_500_000),
            ],
        )
        rates: dict[str, list[float]] = {name: [] for name in conns}
        for round_ in range(args.rounds):
            order = list(conns) if round_ % 2 == 0 else list(reversed(conns))
            for name in order:
                conn = conns[name]
                tx = conn.transaction()
                await tx.start()
                started = time.perf_counter()
                created = await tranches.open_tranche(conn, tranche)
                rates[name].append(created.households_credited / (time.perf_counter() - started))
                await tx.rollback()
                await conn.execute("VACUUM entitlements, province_counters, province_counters_all")
        for conn in conns.values():
            await conn.close()
    finally:
        server.stop()
    return {
        "households": args.households,
        **{f"{name}_households_per_s": [round(r) for r in v] for name, v in rates.items()},
        **{f"{name}_median": round(statistics.median(v)) for name, v in rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--households", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    print_result("loadtest.schema_ab", asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
