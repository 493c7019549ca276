"""Offline batches from several terminals racing online redemptions of the same households,
all through the HTTP server at once: no balance goes below zero, every answer fits one serial
order of the requests, the offline allowance holds, and the counters equal the ledger."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import asyncpg

from tests.integration.offline import CREDIT, enable_offline, forward, offline_world, purchase
from tests.integration.terminal import Client, Terminal, invariants, make_terminal

ALLOWANCE = 6_000_000


async def test_offline_uploads_racing_online_redemptions(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await offline_world(client, operator, n=8, allowance=ALLOWANCE, max_amount=None)
    ids = list(world.credit)
    online = [world.terminal] + [await make_terminal(client, operator) for _ in range(3)]
    forwarders = [await make_terminal(client, operator) for _ in range(4)]
    for t in forwarders:
        await enable_offline(client, operator, t)
    rng = random.Random(5)
    # every answer: (household, amount, channel, outcome, reason, remaining)
    answers: list[tuple[str, int, str, str, str | None, int | None]] = []

    async def shop_online(t: Terminal) -> None:
        for _ in range(25):
            nid, amount = rng.choice(ids), rng.randrange(2, 30) * 100_000
            resp = await t.redeem(nid, amount)
            assert resp.status in (201, 402), resp.body
            ok = resp.status == 201
            answers.append(
                (
                    nid,
                    amount,
                    "online",
                    "approved" if ok else "declined",
                    None if ok else resp.body["reason"],
                    resp.body["remaining"] if ok else None,
                )
            )

    async def forward_batches(t: Terminal) -> None:
        seq = 0
        for _ in range(4):
            batch = []
            for _ in range(rng.randrange(3, 12)):
                seq += 1
                batch.append(purchase(seq, rng.choice(ids), rng.randrange(2, 30) * 100_000))
            resp = await forward(t, batch)
            assert resp.status == 200, resp.body
            for p, r in zip(batch, resp.body["results"], strict=True):
                answers.append(
                    (
                        p["national_id"],
                        p["amount"],
                        "offline",
                        r["status"],
                        r["reason"],
                        r["remaining"],
                    )
                )
            # and once again, while the others go on: the same answers
            again = await forward(t, batch)
            assert [(r["status"], r["reason"]) for r in again.body["results"]] == [
                (r["status"], r["reason"]) for r in resp.body["results"]
            ]

    await asyncio.gather(
        *(shop_online(t) for t in online), *(forward_batches(t) for t in forwarders)
    )

    by_household: dict[str, list[Any]] = defaultdict(list)
    for a in answers:
        by_household[a[0]].append(a)
    balances = dict(await conn.fetch("SELECT national_id, balance FROM entitlements"))
    reasons = {a[4] for a in answers if a[3] == "declined"}
    assert reasons <= {"insufficient_balance", "offline_allowance_exceeded"}, reasons
    assert "insufficient_balance" in reasons  # the race was real: credit ran out
    for nid, mine in by_household.items():
        approved = [a for a in mine if a[3] == "approved"]
        # one serial order: approvals, by the balance each left, spend the credit one by one
        approved.sort(key=lambda a: -a[5])
        left = CREDIT
        for a in approved:
            left -= a[1]
            assert a[5] == left, (nid, approved)
        assert left == balances[nid] >= 0
        # ... and each decline fits after them: the credit, or the offline allowance, was short
        offline_spent = sum(a[1] for a in approved if a[2] == "offline")
        assert offline_spent <= ALLOWANCE
        for a in mine:
            if a[4] == "insufficient_balance":
                assert a[1] > left, (nid, a, left)
            elif a[4] == "offline_allowance_exceeded":
                assert offline_spent + a[1] > ALLOWANCE, (nid, a, offline_spent)
    assert await conn.fetchval("SELECT count(*) FROM ledger") == sum(
        a[3] == "approved" for a in answers
    )
    await invariants(conn)
