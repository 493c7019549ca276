"""Redemption throughput: the SQL function alone, and signed HTTP requests end to end.

    python -m loadtest.redeem --seconds 15 --db-clients 8 --http-clients 32 --workers 2

Seeds a fresh durable database (households over the 31 provinces, an open tranche, terminals),
then runs two closed loops: `db` calls redeem() through asyncpg from N connections; `http`
starts `coupon serve --workers W` and sends signed POST /v1/redemptions from C concurrent
clients (the client shares the 2 cores with the server: the HTTP figure is a floor). After each
run it checks counters == ledger == credit minus balances.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson

from coupon import auth, demo, national_id
from coupon.config import Settings
from coupon.keyring import Keyring
from coupon.models import RedemptionRequest
from coupon.provinces import iran_provinces
from coupon.redemption import body_hash
from loadtest.common import bench_database, print_result, service_dsn

SHARDS = 16

# one redemption through the batch function, as a batch of one (categories as an array)
REDEEM_ONE = (
    "SELECT outcome FROM redeem_many(ARRAY[$1::bigint], "
    "ARRAY[$2::text], ARRAY[$3::text], ARRAY[$4::bytea], ARRAY[$5::text], ARRAY[$6::bigint], "
    "ARRAY[array_to_string($7::text[], ',')], ARRAY[$8::boolean], $9)"
)


async def seed(dsn: str, n_households: int, n_terminals: int) -> tuple[list[str], list[Any]]:
    rng = random.Random(5)
    codes = [p.code for p in iran_provinces()]
    ids = []
    step = 10**9 // n_households
    for i in range(n_households):
        ids.append(national_id.with_check_digit(f"{i * step + 1:09d}"))
    rows = [(nid, rng.choice(codes), rng.randint(1, 6), rng.randint(1, 7)) for nid in ids]
    conn = await asyncpg.connect(dsn)
    try:
        made = await demo.seed_programme(
            conn,
            rows,
            [codes[i % 31] for i in range(n_terminals)],
            # the key file of the servers the bench starts (same directory, same settings)
            keyring=Keyring.from_settings(Settings()),
            name="bench",
            up_to_decile=7,
        )
    finally:
        await conn.close()
    terminals = [created for _, created in made]
    return ids, terminals


def summary(latencies: list[float], count: int, seconds: float) -> dict[str, float]:
    latencies.sort()
    return {
        "per_s": round(count / seconds, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else 0,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else 0,
    }


async def db_loop(
    dsn: str, ids: list[str], terminals: list[Any], clients: int, seconds: float
) -> dict[str, Any]:
    async def client(k: int) -> tuple[int, list[float]]:
        conn = await asyncpg.connect(dsn)
        rng = random.Random(k)
        done, lat = 0, []
        terminal = terminals[k % len(terminals)].terminal_id
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                req = RedemptionRequest(
                    request_id=uuid.uuid4().hex,
                    national_id=rng.choice(ids),
                    amount=rng.randint(1, 50) * 1000,
                )
                t = time.perf_counter()
                await conn.fetchrow(
                    REDEEM_ONE,
                    terminal,
                    uuid.uuid4().hex,
                    req.request_id,
                    body_hash(req),
                    req.national_id,
                    req.amount,
                    [],
                    False,
                    SHARDS,
                )
                lat.append(time.perf_counter() - t)
                done += 1
        finally:
            await conn.close()
        return done, lat

    started = time.perf_counter()
    results = await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    return summary([x for _, lat in results for x in lat], sum(d for d, _ in results), elapsed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def http_loop(
    dsn: str, ids: list[str], terminals: list[Any], clients: int, seconds: float, workers: int
) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": service_dsn(dsn),
        "COUPON_LOG_LEVEL": "warning",
        "COUPON_POOL_MAX_SIZE": str(max(4, 2 * clients // workers)),
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coupon",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:
            for _ in range(100):
                try:
                    async with s.get(base + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            statuses: dict[int, int] = {}

            async def client(k: int) -> tuple[int, list[float]]:
                rng = random.Random(k)
                t = terminals[k % len(terminals)]
                done, lat = 0, []
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    body = orjson.dumps(
                        {
                            "request_id": uuid.uuid4().hex,
                            "national_id": rng.choice(ids),
                            "amount": rng.randint(1, 50) * 1000,
                        }
                    )
                    headers = auth.signed_headers(
                        t.terminal_id, t.secret, "POST", "/v1/redemptions", body, uuid.uuid4().hex
                    )
                    headers["Content-Type"] = "application/json"
                    start = time.perf_counter()
                    async with s.post(base + "/v1/redemptions", data=body, headers=headers) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                    lat.append(time.perf_counter() - start)
                    done += 1
                return done, lat

            started = time.perf_counter()
            results = await asyncio.gather(*(client(k) for k in range(clients)))
            elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=30)
    out: dict[str, Any] = summary(
        [x for _, lat in results for x in lat], sum(d for d, _ in results), elapsed
    )
    out["statuses"] = statuses
    return out


async def check_invariants(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("""
            SELECT (SELECT sum(transactions) FROM province_counters) AS counter_tx,
                   (SELECT sum(amount) FROM province_counters) AS counter_amount,
                   (SELECT count(*) FILTER (WHERE kind = 'redemption')
                         - count(*) FILTER (WHERE kind = 'reversal') FROM ledger) AS ledger_tx,
                   (SELECT coalesce(sum(CASE kind WHEN 'redemption' THEN amount
                                        ELSE -amount END), 0) FROM ledger) AS ledger_amount,
                   (SELECT sum(credit + carried_in - carried_out - balance)
                    FROM entitlements) AS spent""")
    finally:
        await conn.close()
    assert row is not None
    figures = {k: int(v) for k, v in dict(row).items()}
    assert figures["counter_tx"] == figures["ledger_tx"], figures
    assert figures["counter_amount"] == figures["ledger_amount"] == figures["spent"], figures
    return figures


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with bench_database("coupon_bench_redeem", counter_shards=SHARDS) as dsn:
        ids, terminals = await seed(dsn, args.households, args.terminals)
        result: dict[str, Any] = {}
        if args.db_clients:
            result["db"] = await db_loop(dsn, ids, terminals, args.db_clients, args.seconds)
            result["db"]["invariants"] = await check_invariants(dsn)
        if args.http_clients:
            result["http"] = await http_loop(
                dsn, ids, terminals, args.http_clients, args.seconds, args.workers
            )
            result["http"]["invariants"] = await check_invariants(dsn)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--households", type=int, default=50_000)
    parser.add_argument("--terminals", type=int, default=64)
    parser.add_argument("--db-clients", type=int, default=8)
    parser.add_argument("--http-clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_result("loadtest.redeem", result)


if __name__ == "__main__":
    main()
