"""SIGTERM under load: the service stops accepting, lets the requests in flight finish, closes
its pool and exits 0; nothing is half-written and nothing is answered 5xx because of it."""

from __future__ import annotations

import asyncio
import time

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
