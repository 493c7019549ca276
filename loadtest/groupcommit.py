"""What group commit gives at the database alone: B redemptions per redeem_many() call (the
service's statement), in one round trip and one commit.

    python -m loadtest.groupcommit --batches 1,8,32,1 --seconds 10

From 8 connections, each transaction redeems B households in one statement, so B redemptions
share one round trip and one WAL flush. B = 1 is one redemption per transaction. Prints
redemptions/s per B in the same database, one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import time
import uuid
from typing import Any

import asyncpg

from loadtest import traffic
from loadtest.common import bench_database, machine
from loadtest.redeem import check_invariants

SHARDS = 16
BATCH = """
SELECT outcome FROM redeem_many($1::bigint[], $2::text[], $3::text[], $4::bytea[],
                                    $5::text[], $6::bigint[], $7::text[], $8::boolean[], $9)
ORDER BY n
"""


async def loop(
    dsn: str, pop: traffic.Population, batch: int, clients: int, seconds: float
) -> dict[str, Any]:
    by_province: dict[str, list[traffic.Terminal]] = {}
    for t in pop.terminals:
        by_province.setdefault(t.province, []).append(t)

    async def client(k: int) -> tuple[int, int, int]:
        rng = random.Random(k * 7919 + batch)
        conn = await asyncpg.connect(dsn)
        approved = deadlocks = calls = 0
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                picks = sorted(rng.sample(pop.households, batch))
                terms = [rng.choice(by_province[p]).terminal_id for _, p in picks]
                rids = [uuid.uuid4().hex for _ in picks]
                try:
                    rows = await conn.fetch(
                        BATCH,
                        terms,
                        [uuid.uuid4().hex for _ in picks],
                        rids,
                        [hashlib.sha256(r.encode()).digest() for r in rids],
                        [nid for nid, _ in picks],
                        [rng.randint(1, 50) * 1000 for _ in picks],
                        [""] * batch,
                        [False] * batch,
                        SHARDS,
                    )
                except asyncpg.DeadlockDetectedError:
                    deadlocks += 1
                    continue
                calls += 1
                approved += sum(1 for r in rows if r["outcome"] == "approved")
        finally:
            await conn.close()
        return approved, deadlocks, calls

    started = time.perf_counter()
    results = await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "redemptions_per_s": round(sum(r[0] for r in results) / elapsed, 1),
        "commits_per_s": round(sum(r[2] for r in results) / elapsed, 1),
        "deadlocks": sum(r[1] for r in results),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with bench_database("coupon_bench_group", counter_shards=SHARDS) as dsn:
        pop = await traffic.seed(dsn, args.households, args.terminals)
        out = []
        for b in (int(x) for x in args.batches.split(",")):
            out.append(await loop(dsn, pop, b, args.clients, args.seconds))
            print(json.dumps(out[-1]), flush=True)
        return {"machine": machine(), "runs": out, "invariants": await check_invariants(dsn)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1,8,32,1,8,32")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--households", type=int, default=100_000)
    parser.add_argument("--terminals", type=int, default=64)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
