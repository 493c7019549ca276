"""kill -9 of every server process under load, then a restart: nothing acknowledged is lost,
nothing is applied twice, every unanswered request resolves to exactly one outcome.

The test cluster runs without fsync: that is enough here, because killing the *service* does
not touch PostgreSQL (a commit the service saw is in PostgreSQL's memory and WAL buffers,
which survive). The database's own crash is test_outage.py's job, on a durable cluster."""

from __future__ import annotations

import asyncio
import random
import statistics
from collections import Counter

import asyncpg

from tests.reliability.harness import (
    Load,
    Sent,
    Server,
    check_outcomes,
    record,
    resolve,
    seed,
    soak,
)

ROUNDS = 20 if soak() else 5
# a restart that takes this long is a hang, not slowness (the 5 s goal is checked by the soak)
RESTART_BOUND = 60.0


async def test_kill_9_under_load_loses_nothing(dsn: str, conn: asyncpg.Connection) -> None:
    world = await seed(dsn)
    server = Server(dsn, workers=2)
    rng = random.Random()
    restarts: list[float] = []
    sent: list[Sent] = []
    resolved: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    try:
        await server.start()
        for round_ in range(ROUNDS):
            async with Load(world, server.base, clients=8, tag=f"k{round_}") as load:
                await asyncio.sleep(rng.uniform(1.0, 3.0))  # a random moment
                server.kill9()
                load.stop()
            sent += load.sent
            statuses += load.statuses
            restarts.append(await server.start())
            assert restarts[-1] < RESTART_BOUND
            resolved += await resolve(server.base, [s for s in load.sent if not s.definitive])
    finally:
        await server.stop()
    figures = await check_outcomes(conn, sent)
    assert sum(resolved.values()) == sum(not s.answers[0].definitive for s in sent)
    record(
        "kill_9",
        {
            "rounds": ROUNDS,
            "requests": len(sent),
            "statuses": dict(statuses),
            "unanswered": sum(resolved.values()),
            "resolved": dict(resolved),
            **figures,
            "restart_to_serving_s": {
                "min": round(min(restarts), 2),
                "median": round(statistics.median(restarts), 2),
                "max": round(max(restarts), 2),
            },
        },
    )
    if soak():
        assert max(restarts) < 5.0, restarts
