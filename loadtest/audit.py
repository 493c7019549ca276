"""Audit at scale: 10,000,000 ledger rows generated set-based, then sealing, filtered pages,
CSV export, verification, and what sealing costs redemption throughput.

    python -m loadtest.audit --rows 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import time
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coupon import audit, signing
from coupon.config import Settings
from coupon.models import LedgerFilters
from loadtest import redeem
from loadtest.common import bench_database, print_result

# the bench's own signing key: its ledgers live as long as the run
KEYS = signing.SealKeys(Ed25519PrivateKey.generate())

GENERATE = """
INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, province,
                    tranche_id, amount, reverses, created_at)
SELECT CASE WHEN i % 33 = 0 THEN 'reversal' ELSE 'redemption' END,
       'g' || i, 1000 + (i * 7919) % 40000, 1 + (i * 7919) % 40000 / 2,
       lpad(((i::bigint * 2654435761) % 2000003)::text, 10, '0'),
       'IR-' || lpad(((i * 31337) % 31)::text, 2, '0'),
       1, 1000 * (1 + (i * 104729) % 5000),
       CASE WHEN i % 33 = 0 THEN i - 1 END,
       timestamptz '2026-03-21 00:00:00+03:30' + i * interval '120 milliseconds'
FROM generate_series($1::bigint, $2::bigint) AS i
"""


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(samples[len(samples) // 2] * 1000, 2),
        "p95_ms": round(samples[int(len(samples) * 0.95)] * 1000, 2),
        "max_ms": round(samples[-1] * 1000, 2),
    }


async def timed_pages(conn: asyncpg.Connection, filters: list[LedgerFilters]) -> dict[str, float]:
    samples = []
    for where in filters:
        started = time.perf_counter()
        entries, _ = await audit.ledger_page(conn, where, 0, 100)
        samples.append(time.perf_counter() - started)
        assert entries or where.since is not None
    return percentiles(samples)


async def run(rows: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": rows}
    if rows:
        out.update(await at_scale(rows))
    out.update(await sealing_cost(seconds))
    return out


async def at_scale(rows: int) -> dict[str, Any]:
    """Generate the ledger, then time sealing, pages, CSV and verification on it."""
    out: dict[str, Any] = {}
    async with bench_database("coupon_bench_audit") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            started = time.perf_counter()
            step = 1_000_000
            for first in range(1, rows + 1, step):
                await conn.execute(GENERATE, first, min(first + step - 1, rows))
            await conn.execute("ANALYZE ledger")
            out["generate_s"] = round(time.perf_counter() - started, 1)

            started = time.perf_counter()
            sealed = await audit.seal(conn, KEYS)
            seal_s = time.perf_counter() - started
            out["seal_rows_per_s"] = round(sealed / seal_s)

            rng = random.Random(1)
            sample = await conn.fetch(
                "SELECT national_id, merchant_id, province, created_at FROM ledger "
                "WHERE seq = ANY($1::bigint[])",
                [rng.randrange(1, rows) for _ in range(200)],
            )
            out["page_by_household"] = await timed_pages(
                conn, [LedgerFilters(national_id=r["national_id"]) for r in sample]
            )
            out["page_by_merchant"] = await timed_pages(
                conn, [LedgerFilters(merchant_id=r["merchant_id"]) for r in sample]
            )
            out["page_by_province_and_day"] = await timed_pages(
                conn,
                [
                    LedgerFilters.model_validate(
                        {
                            "province": r["province"],
                            "from": r["created_at"],
                            "to": r["created_at"] + dt.timedelta(days=1),
                        }
                    )
                    for r in sample
                ],
            )

            written = 0

            async def sink(chunk: bytes) -> None:
                nonlocal written
                written += chunk.count(b"\n")

            started = time.perf_counter()
            await audit.export_csv(conn, LedgerFilters(), sink)
            csv_s = time.perf_counter() - started
            out["csv_rows"] = written - 1
            out["csv_rows_per_s"] = round((written - 1) / csv_s)

            started = time.perf_counter()
            result = await audit.verify(conn, KEYS)
            verify_s = time.perf_counter() - started
            assert result.ok, result
            out["verify_rows_per_s"] = round(result.entries / verify_s)
        finally:
            await conn.close()
    return out


async def sealing_cost(seconds: float, rounds: int = 4) -> dict[str, Any]:
    """What sealing costs redemptions: the same closed loop without and with a sealer running,
    alternated in short rounds so that the machine's drifting load hits both sides alike."""
    async with bench_database("coupon_bench_seal", counter_shards=redeem.SHARDS) as dsn:
        ids, terminals = await redeem.seed(dsn, 20_000, 32)
        sealer_conn = await asyncpg.connect(dsn)
        counts = {"without": 0.0, "with": 0.0}
        try:
            for _ in range(rounds):
                for side in ("without", "with"):
                    await audit.seal(sealer_conn, KEYS)
                    task = asyncio.create_task(sealer(sealer_conn)) if side == "with" else None
                    result = await redeem.db_loop(dsn, ids, terminals, 8, seconds / rounds)
                    if task:
                        task.cancel()
                    counts[side] += result["per_s"] / rounds
        finally:
            await sealer_conn.close()
    return {
        "redemptions_per_s_without_sealer": round(counts["without"], 1),
        "redemptions_per_s_with_sealer": round(counts["with"], 1),
        "sealing_cost_pct": round(100 * (1 - counts["with"] / counts["without"]), 1),
    }


async def sealer(conn: asyncpg.Connection) -> None:
    while True:
        await asyncio.sleep(Settings().seal_interval)
        await audit.seal(conn, KEYS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=10_000_000,
        help="ledger rows to generate; 0 measures only the sealing cost",
    )
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    result = asyncio.run(run(args.rows, args.seconds))
    print_result("loadtest.audit", result)


if __name__ == "__main__":
    main()
