"""kill -9 of every server process while terminals forward offline batches, then a restart and
the batches sent again: every purchase is posted exactly once, every answer a terminal heard is
the one the database keeps, and the counters equal the ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import orjson

from tests.integration.terminal import invariants
from tests.reliability.harness import Pos, Sent, Server, World, record, seed, send, soak

ROUNDS = 10 if soak() else 3
PATH = "/v1/offline/batches"


class Forwarder:
    """A terminal back online, forwarding what it captured offline, batch after batch."""

    def __init__(self, pos: Pos, world: World, rng: random.Random) -> None:
        self.pos, self.world, self.rng = pos, world, rng
        self.seq = 0
        self.batches: list[Sent] = []

    def batch(self) -> Sent:
        purchases = []
        captured = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
        for _ in range(self.rng.randrange(100, 300)):
            self.seq += 1
            purchases.append(
                {
                    "offline_seq": self.seq,
                    "request_id": f"o{self.pos.terminal_id}-{self.seq}",
                    "captured_at": captured.isoformat(),
                    "national_id": self.rng.choice(self.world.ids),
                    "amount": self.rng.randrange(1, 40) * 5_000,
                }
            )
        sent = Sent(
            self.pos, f"batch-{uuid.uuid4().hex[:8]}", orjson.dumps({"purchases": purchases})
        )
        self.batches.append(sent)
        return sent

    async def run(self, session: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            answer = await send(session, base, self.batch(), PATH)
            if answer.status is None:  # the server is gone
                return


def _outcomes(body: Any) -> dict[int, tuple[str, str | None, int | None]]:
    return {
        r["offline_seq"]: (r["status"], r["reason"], r["redemption_id"]) for r in body["results"]
    }


async def test_kill_9_while_forwarding_offline_batches(dsn: str, conn: asyncpg.Connection) -> None:
    world = await seed(dsn, n_households=200, n_terminals=4)
    await conn.execute("UPDATE tranches SET offline_allowance = 2000000")
    await conn.execute("UPDATE terminals SET offline_enabled = true")
    server = Server(dsn, workers=2)
    rng = random.Random(18)
    forwarders = [Forwarder(pos, world, rng) for pos in world.terminals]
    statuses: Counter[str] = Counter()
    try:
        await server.start()
        for _ in range(ROUNDS):
            stop = asyncio.Event()
            async with aiohttp.ClientSession() as session:
                tasks = [asyncio.create_task(f.run(session, server.base, stop)) for f in forwarders]
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                server.kill9()
                stop.set()
                await asyncio.gather(*tasks)
            await server.start()
        # every batch again, until each has a definitive answer: unanswered ones post now or
        # replay what had committed, answered ones replay
        async with aiohttp.ClientSession() as session:
            for f in forwarders:
                for sent in f.batches:
                    first = next((a for a in sent.answers if a.definitive), None)
                    for _ in range(100):
                        if (await send(session, server.base, sent, PATH)).definitive:
                            break
                        await asyncio.sleep(0.1)
                    final = sent.final
                    assert final is not None and final.status == 200, final
                    statuses[str(first.status) if first else "unanswered"] += 1
                    if first is None:  # committed before the kill, or never
                        replayed = all(r["replayed"] for r in final.body["results"])
                        statuses[
                            "unanswered_then_replayed" if replayed else "unanswered_then_posted"
                        ] += 1
                    assert all(r["replayed"] for r in final.body["results"]) or first is None
                    if first is not None:
                        assert _outcomes(final.body) == _outcomes(first.body)
    finally:
        await server.stop()

    purchases = sum(len(orjson.loads(s.body)["purchases"]) for f in forwarders for s in f.batches)
    assert await conn.fetchval("SELECT count(*) FROM offline_purchases") == purchases
    assert await conn.fetchval("SELECT count(*) FROM terminal_requests") == purchases
    doubles = await conn.fetchval(
        "SELECT count(*) FROM (SELECT FROM ledger GROUP BY terminal_id, request_id "
        "HAVING count(*) > 1) d"
    )
    assert doubles == 0
    heard = {
        (f.pos.terminal_id, r["request_id"]): r
        for f in forwarders
        for s in f.batches
        for r in s.final.body["results"]  # type: ignore[union-attr]
    }
    rows = await conn.fetch(
        "SELECT terminal_id, request_id, seq, captured_at IS NOT NULL AS offline FROM ledger"
    )
    assert len(rows) == sum(r["status"] == "approved" for r in heard.values())
    for row in rows:
        answer = heard[(row["terminal_id"], row["request_id"])]
        assert (answer["status"], answer["redemption_id"], row["offline"]) == (
            "approved",
            row["seq"],
            True,
        )
    await invariants(conn)
    record(
        "offline_kill_9",
        {
            "rounds": ROUNDS,
            "batches": sum(len(f.batches) for f in forwarders),
            "purchases": purchases,
            "first_answers": dict(statuses),
        },
    )
