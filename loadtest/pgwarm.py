"""What a cold connection costs: the terminal path's first calls on a new connection (PL/pgSQL
compiles each function and plans its statements) against the same calls once warm.

    python -m loadtest.pgwarm --connections 20

Each connection calls balance_inquiry(), redeem_many() (one approval) and reverse() in a
transaction that is rolled back, twice; the backend's own CPU (from /proc, summed over the
connections) and the wall-clock time are per connection. Why the service's pool is opened whole
before serving and warms each new connection (coupon/db.py, warm_up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid

import asyncpg
import psutil

from coupon import db
from loadtest import traffic
from loadtest.common import bench_database, print_result


async def calls(conn: asyncpg.Connection, pop: traffic.Population, k: int) -> None:
    nid, province = pop.households[k % len(pop.households)]
    terminal = next(t.terminal_id for t in pop.terminals if t.province == province)
    rid = uuid.uuid4().hex
    async with conn.transaction():
        await conn.fetchrow(db.q("balance_inquiry"), terminal, uuid.uuid4().hex, nid)
        await conn.fetch(
            db.q("redeem_many"), [terminal], [uuid.uuid4().hex], [rid], [b"h"], [nid], [1000],
            [""], [False], 16,
        )  # fmt: skip
        await conn.fetchrow(db.q("reverse"), terminal, uuid.uuid4().hex, rid + "r", b"h", rid, 16)
        raise _Rollback


class _Rollback(Exception):
    pass


def backend_cpu(conns: list[asyncpg.Connection]) -> float:
    total = 0.0
    for c in conns:
        t = psutil.Process(c.get_server_pid()).cpu_times()
        total += t.user + t.system
    return total


async def run(args: argparse.Namespace) -> dict[str, object]:
    async with bench_database("coupon_bench_pgwarm") as dsn:
        pop = await traffic.seed(dsn, 20_000, 64)
        figures: dict[str, object] = {"connections": args.connections}
        # fresh connections, and fresh ones that the pool's warm-up has been through
        for warmed in (False, True):
            conns = [await asyncpg.connect(dsn) for _ in range(args.connections)]
            if warmed:
                for c in conns:
                    await db.warm_up(c)
            try:
                await measure(conns, pop, figures, "_after_warm_up" if warmed else "")
            finally:
                for c in conns:
                    await c.close()
    return figures


async def measure(
    conns: list[asyncpg.Connection], pop: traffic.Population, figures: dict[str, object], tag: str
) -> None:
    for label in ("first_calls", "warm_calls"):
        cpu0, t0 = backend_cpu(conns), time.perf_counter()
        for k, c in enumerate(conns):
            with contextlib.suppress(_Rollback):
                await calls(c, pop, k)
        wall, cpu = time.perf_counter() - t0, backend_cpu(conns) - cpu0
        figures[label + tag] = {
            "wall_ms_per_connection": round(1000 * wall / len(conns), 2),
            "backend_cpu_ms_per_connection": round(1000 * cpu / len(conns), 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=20)
    print_result("loadtest.pgwarm", asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
