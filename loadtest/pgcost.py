"""PostgreSQL's own cost of a redemption inside redeem_many(), without HTTP or contention.

    python -m loadtest.pgcost --batch 64 --rounds 6

One connection calls redeem_many() with B random households at a time, back to back, with
synchronous_commit off for this session only (so the figure is the backend's work, not the
wait for the WAL flush; the server itself stays durable). Prints wall-clock microseconds per
redemption per round -- the backend is busy nearly all of it. --variants names other functions
with redeem_many()'s signature (created by --setup FILE) to compare a change A/B/A/B.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import time
import uuid
from pathlib import Path

import asyncpg

from loadtest import traffic
from loadtest.common import bench_database, print_result


async def per_redemption_us(
    conn: asyncpg.Connection,
    pop: traffic.Population,
    function: str,
    batch: int,
    calls: int,
    rng: random.Random,
) -> float:
    terminals: dict[str, list[int]] = {}
    for t in pop.terminals:
        terminals.setdefault(t.province, []).append(t.terminal_id)
    query = f"SELECT n FROM {function}($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    started = time.perf_counter()
    for _ in range(calls):
        picks = sorted(rng.sample(pop.households, batch))
        request_ids = [uuid.uuid4().hex for _ in picks]
        await conn.fetch(
            query,
            [rng.choice(terminals[p]) for _, p in picks],
            [uuid.uuid4().hex for _ in picks],
            request_ids,
            [hashlib.sha256(r.encode()).digest() for r in request_ids],
            [nid for nid, _ in picks],
            [1000] * batch,
            [""] * batch,
            [False] * batch,
            16,
        )
    return (time.perf_counter() - started) / (calls * batch) * 1e6


async def run(args: argparse.Namespace) -> dict[str, object]:
    variants = args.variants.split(",")
    rounds: dict[str, list[float]] = {v: [] for v in variants}
    async with bench_database("coupon_bench_pgcost") as dsn:
        pop = await traffic.seed(dsn, args.households, 64)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SET synchronous_commit = off")
            if args.setup:
                await conn.execute(args.setup)
            rng = random.Random(1)
            await per_redemption_us(conn, pop, "redeem_many", args.batch, 20, rng)  # warm-up
            for k in range(args.rounds):
                for v in variants:
                    us = await per_redemption_us(conn, pop, v, args.batch, args.calls, rng)
                    rounds[v].append(round(us, 1))
                    print(f"round {k} {v}: {us:.1f} us/redemption", flush=True)
        finally:
            await conn.close()
    return {
        "batch": args.batch,
        "us_per_redemption": rounds,
        "median": {v: statistics.median(r) for v, r in rounds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=60, help="calls per round and variant")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--households", type=int, default=100_000)
    parser.add_argument("--variants", default="redeem_many")
    parser.add_argument("--setup", help="SQL file run first (e.g. variant functions)")
    args = parser.parse_args()
    args.setup = Path(args.setup).read_text() if args.setup else ""
    print_result("loadtest.pgcost", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
