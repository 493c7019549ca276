"""SIGTERM under load: the service stops accepting, lets the requests in flight finish, closes
its pool and exits 0; nothing is half-written and nothing is answered 5xx because of it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg

from tests.faultproxy import FaultProxy
from tests.reliability.harness import (
    Load,
    Server,
    check_outcomes,
    record,
    resolve,
    seed,
    upstream,
    via,
)


async def coupon_backends(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'coupon'"
    )
    return count


async def test_sigterm_under_load_finishes_what_is_in_flight(
    dsn: str, conn: asyncpg.Connection
) -> None:
    world = await seed(dsn)
    # 20 ms each way between the service and PostgreSQL: every request is in flight for a
    # while, so the signal always lands on some
    proxy = FaultProxy(*upstream(dsn), latency=0.02)
    server = Server(via(dsn, await proxy.start()), workers=2)
    try:
        await server.start()
        async with Load(world, server.base, clients=16, tag="term") as load:
            await asyncio.sleep(1.5)
            signalled = time.monotonic()
            code = await server.sigterm()
            stopped = time.monotonic() - signalled
            load.stop()
        assert code == 0
        answers = [a for s in load.sent for a in s.answers]
        server_errors = [a for a in answers if a.status is not None and a.status >= 500]
        assert server_errors == []
        # requests that were in flight when the signal came, answered in full after it
        finished = [
            a for a in answers if a.definitive and a.sent_at < signalled < a.sent_at + a.latency
        ]
        assert finished, "no request was in flight at SIGTERM"
        for _ in range(100):  # the pool closed: its backends go away
            if await coupon_backends(conn) == 0:
                break
            await asyncio.sleep(0.05)
        assert await coupon_backends(conn) == 0
        await server.start()
        unanswered = [s for s in load.sent if not s.definitive]
        resolved = await resolve(server.base, unanswered)
    finally:
        await server.stop()
        await proxy.stop()
    figures = await check_outcomes(conn, load.sent)
    record(
        "sigterm",
        {
            "requests": len(load.sent),
            "statuses": dict(load.statuses),
            "in_flight_finished": len(finished),
            "server_errors": len(server_errors),
            "exit_code": code,
            "stop_s": round(stopped, 2),
            "resolved": dict(resolved),
            **figures,
        },
    )


def running(pid: int) -> bool:
    """Alive, and not a zombie waiting for whoever inherited it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X")


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


async def test_a_dead_worker_is_replaced_and_orphans_stop(dsn: str) -> None:
    """kill -9 of one worker: the supervisor starts another. kill -9 of the supervisor alone:
    its workers notice and stop, rather than serve on with nobody to stop them."""
    server = Server(dsn, workers=2)
    try:
        await server.start()
        assert server.proc is not None
        parent = server.proc.pid
        for _ in range(100):  # the arbiter forks them one after another
            workers = children(parent)
            if len(workers) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(workers) == 2
        os.kill(next(iter(workers)), signal.SIGKILL)
        for _ in range(200):
            now = children(parent)
            if len(now) == 2 and now != workers:
                break
            await asyncio.sleep(0.05)
        assert len(now) == 2 and now != workers
        async with aiohttp.ClientSession() as session, session.get(server.base + "/healthz") as r:
            assert r.status == 200
        os.kill(parent, signal.SIGKILL)
        await asyncio.to_thread(server.proc.wait, 30)
        for _ in range(300):  # they check on their parent every second
            alive = [p for p in now if running(p)]
            if not alive:
                break
            await asyncio.sleep(0.05)
        assert not alive
    finally:
        await server.stop()
