"""Live counters under load: stream lag, and what 500 SSE clients cost redemption throughput.

    python -m loadtest.stream --seconds 20 --phases 0,1,500,0,500 --http-clients 32 --workers 2

Seeds a fresh durable database, starts `coupon serve --workers W`, and runs phases of the same
length one after another against the same server: in each, C clients send signed
POST /v1/redemptions in a closed loop while N SSE clients (in a separate process) hold
/v1/stats/stream open. Throughput is compared between phases with 0 and with 500 clients.

Lag is measured from a redemption's answer (just after its commit) to the first event, at a
sampled SSE client, whose total transactions include it: the k-th approved redemption to be
answered is counted in the first event whose total is at least k (no reversals in this load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil

from coupon import auth, tokens
from loadtest.common import OUT, bench_database, print_result, service_dsn
from loadtest.redeem import check_invariants, free_port, seed

SAMPLED = 20  # SSE clients whose every event is recorded for the lag figures
TOTAL = re.compile(rb'"totals":\{"transactions":(\d+)')


# -- the SSE side: a separate process, so that reading 500 streams does not slow the load -------


async def sse_worker(url: str, clients: int) -> None:
    """Hold `clients` streams open; print "ready" once each has its first event, and on "stop"
    (stdin) print what the sampled clients saw: [[monotonic time, total transactions], ...]."""
    seen: list[list[tuple[float, int]]] = [[] for _ in range(min(clients, SAMPLED))]
    counts = {"events": 0, "errors": 0}
    ready = asyncio.Event()
    first = 0

    async def one(session: aiohttp.ClientSession, k: int) -> None:
        # as cheap as a client can be: raw chunks, and only sampled clients look inside
        nonlocal first
        got_first = False
        sampled = k < len(seen)
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                async for chunk in resp.content.iter_any():
                    now = time.monotonic()
                    events = chunk.count(b"event: stats")
                    counts["events"] += events
                    if sampled and events:
                        for match in TOTAL.finditer(chunk):
                            seen[k].append((now, int(match.group(1))))
                    if events and not got_first:
                        got_first = True
                        first += 1
                        if first == clients:
                            ready.set()
        except (TimeoutError, aiohttp.ClientError):
            counts["errors"] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        for k in range(clients):
            tasks.append(asyncio.create_task(one(session, k)))
            if k % 50 == 49:
                await asyncio.sleep(0.05)  # do not open 500 connections in one burst
        await asyncio.wait_for(ready.wait(), 60)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"seen": seen, **counts}), flush=True)


# -- the load side ---------------------------------------------------------------------------------


async def redeem_loop(
    base: str,
    ids: list[str],
    terminals: list[Any],
    clients: int,
    seconds: float,
    rate: float | None = None,
) -> tuple[int, list[float], dict[int, int]]:
    """Signed redemptions from `clients` closed loops, or at a fixed `rate` a second shared by
    them; (approved, sorted answer times of the approved, statuses)."""
    answered: list[float] = []
    statuses: dict[int, int] = {}
    started = time.monotonic()
    tickets = iter(range(10**9))

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        rng = random.Random(k * 7919 + int(time.time()))
        t = terminals[k % len(terminals)]
        deadline = started + seconds
        while time.monotonic() < deadline:
            if rate:
                wait = started + next(tickets) / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
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
            async with session.post(base + "/v1/redemptions", data=body, headers=headers) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
                if r.status == 201:
                    answered.append(time.monotonic())

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, k) for k in range(clients)))
    answered.sort()
    return len(answered), answered, statuses


def lags(answered: list[float], before: int, seen: list[list[tuple[float, int]]]) -> list[float]:
    """For each sampled client and approved redemption: event arrival - answer, in seconds."""
    out = []
    for events in seen:
        i = 0
        for k, at in enumerate(answered):
            needed = before + k + 1
            while i < len(events) and events[i][1] < needed:
                i += 1
            if i == len(events):
                break  # the phase ended before an event covered it
            out.append(events[i][0] - at)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return round(values[min(int(len(values) * q), len(values) - 1)] * 1000, 1)


class CpuMeter:
    """CPU seconds used by groups of processes over a phase (children found at the end count
    whole: connections opened during the phase)."""

    def __init__(self, groups: dict[str, list[psutil.Process]], alone: tuple[str, ...]) -> None:
        self.groups = groups
        self.alone = alone  # groups whose children are counted elsewhere
        self.start = {name: self._times(name, procs) for name, procs in groups.items()}

    def _expand(self, name: str, procs: list[psutil.Process]) -> list[psutil.Process]:
        if name in self.alone:
            return procs
        found = []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                found += [proc, *proc.children(recursive=True)]
        return found

    def _times(self, name: str, procs: list[psutil.Process]) -> dict[int, float]:
        times = {}
        for proc in self._expand(name, procs):
            try:
                t = proc.cpu_times()
                times[proc.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return times

    def stop(self, seconds: float) -> dict[str, float]:
        """Cores used by each group: CPU seconds / wall seconds."""
        used = {}
        for name, procs in self.groups.items():
            now = self._times(name, procs)
            spent = sum(t - self.start[name].get(pid, 0.0) for pid, t in now.items())
            used[name] = round(spent / seconds, 2)
        return used


def postmaster() -> list[psutil.Process]:
    """The benchmark's embedded PostgreSQL (none when DATABASE_URL points elsewhere)."""
    pgdata = str(OUT / "pg")
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "-D" in cmdline and any(arg.startswith(pgdata) for arg in cmdline):
            return [proc]
    return []


async def transactions(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        total: int = await conn.fetchval(
            "SELECT coalesce(sum(transactions), 0) FROM province_counters"
        )
        return total
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    phases = [int(p) for p in args.phases.split(",")]
    async with bench_database("coupon_bench_stream", counter_shards=16) as dsn:
        ids, terminals = await seed(dsn, args.households, args.terminals)
        conn = await asyncpg.connect(dsn)
        try:
            token = await tokens.create_token(conn, "operator", "bench")
        finally:
            await conn.close()
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": service_dsn(dsn),
            "COUPON_LOG_LEVEL": "warning",
            # every stream of the bench shares one token
            "COUPON_MAX_STREAMS_PER_TOKEN": "100000",
            "COUPON_MAX_STREAMS": "100000",
            "COUPON_MAX_CONNECTIONS_PER_CLIENT": "100000",
            "COUPON_POOL_MAX_SIZE": str(max(4, 2 * args.http_clients // args.workers)),
        }
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coupon", "serve", "--port", str(port),
            "--workers", str(args.workers), env=env, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        results = []
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(100):
                    try:
                        async with s.get(base + "/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            groups = {"server": [psutil.Process(server.pid)], "postgres": postmaster()}
            for n in phases:
                results.append(await phase(args, dsn, base, token, ids, terminals, n, groups))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), timeout=30)
        invariants = await check_invariants(dsn)
    without = [r["per_s"] for r in results if r["sse_clients"] == 0]
    with_max = [r["per_s"] for r in results if r["sse_clients"] == max(phases)]
    summary = {
        "per_s_without_clients": round(sum(without) / len(without), 1) if without else None,
        "per_s_with_clients": round(sum(with_max) / len(with_max), 1) if with_max else None,
    }
    if without and with_max:
        summary["throughput_cost_pct"] = round(
            100 * (1 - summary["per_s_with_clients"] / summary["per_s_without_clients"]), 1
        )
    return {"phases": results, "summary": summary, "invariants": invariants}


async def phase(
    args: argparse.Namespace,
    dsn: str,
    base: str,
    token: str,
    ids: list[str],
    terminals: list[Any],
    clients: int,
    groups: dict[str, list[psutil.Process]],
) -> dict[str, Any]:
    worker = None
    if clients:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.stream", "--sse-worker",
            f"{base}/v1/stats/stream?access_token={token}", str(clients),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert worker.stdout is not None and worker.stdin is not None
        line = await asyncio.wait_for(worker.stdout.readline(), 90)
        assert line.strip() == b"ready", line
        await asyncio.sleep(1)
    before = await transactions(dsn)
    meter = CpuMeter(
        {
            **groups,
            "load": [psutil.Process()],
            "sse_clients": [psutil.Process(worker.pid)] if worker else [],
        },
        alone=("load",),
    )
    machine_before = psutil.cpu_times()
    started = time.monotonic()
    approved, answered, statuses = await redeem_loop(
        base, ids, terminals, args.http_clients, args.seconds, args.rate
    )
    elapsed = time.monotonic() - started
    machine_after = psutil.cpu_times()
    busy = sum(machine_after) - machine_after.idle - (sum(machine_before) - machine_before.idle)
    out: dict[str, Any] = {
        "sse_clients": clients,
        "per_s": round(approved / elapsed, 1),
        "statuses": statuses,
        "cores_used": {**meter.stop(elapsed), "whole_machine": round(busy / elapsed, 2)},
    }
    if worker is not None:
        await asyncio.sleep(1.5)  # let the last events arrive
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(b"stop\n")
        await worker.stdin.drain()
        report = json.loads((await asyncio.wait_for(worker.stdout.read(), 60)).decode())
        await worker.wait()
        measured = lags(answered, before, report["seen"])
        out.update(
            {
                "lag_p50_ms": pct(measured, 0.5),
                "lag_p99_ms": pct(measured, 0.99),
                "lag_max_ms": pct(measured, 1.0),
                "lag_samples": len(measured),
                "events_per_client_s": round(report["events"] / clients / args.seconds, 1),
                "stream_errors": report["errors"],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--phases", default="0,1,500,0,500", help="SSE clients in each phase")
    parser.add_argument("--households", type=int, default=50_000)
    parser.add_argument("--terminals", type=int, default=64)
    parser.add_argument("--http-clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rate", type=float, default=None, help="a fixed offered load (open loop), requests/s"
    )
    parser.add_argument("--sse-worker", nargs=2, metavar=("URL", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sse_worker:
        asyncio.run(sse_worker(args.sse_worker[0], int(args.sse_worker[1])))
        return
    result = asyncio.run(run(args))
    print_result("loadtest.stream", result)


if __name__ == "__main__":
    main()
