"""The terminal path's invariants under real concurrency: many requests in flight at once
through the HTTP server, each on its own pooled database connection."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from coupon.app import create_app
from coupon.config import Settings
from tests.integration.terminal import Client, Terminal, invariants, make_terminal, make_world


async def test_200_concurrent_redemptions_against_credit_for_10(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=1, members=1)  # 5,000,000 rials
    nid = next(iter(world.credit))
    price = world.credit[nid] // 10
    results = await asyncio.gather(*(world.terminal.redeem(nid, price) for _ in range(200)))
    statuses = Counter(r.status for r in results)
    assert statuses == {201: 10, 402: 190}
    assert {r.body["reason"] for r in results if r.status == 402} == {"insufficient_balance"}
    assert sorted(r.body["remaining"] for r in results if r.status == 201) == [
        price * k for k in range(10)
    ]
    assert await conn.fetchval("SELECT balance FROM entitlements") == 0
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 10
    await invariants(conn)


async def test_a_remainder_survives_concurrent_partial_approvals(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=1, members=1)
    nid = next(iter(world.credit))
    price = 1_500_000  # 5,000,000 = 3 * 1,500,000 + 500,000
    results = await asyncio.gather(
        *(world.terminal.redeem(nid, price, allow_partial=True) for _ in range(50))
    )
    approved = sorted(r.body["amount"] for r in results if r.status == 201)
    assert approved == [500_000, 1_500_000, 1_500_000, 1_500_000]
    assert await conn.fetchval("SELECT balance FROM entitlements") == 0
    await invariants(conn)


async def test_50_concurrent_copies_of_one_request(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=1)
    nid = next(iter(world.credit))
    results = await asyncio.gather(
        *(world.terminal.redeem(nid, 123_000, request_id="dup") for _ in range(50))
    )
    assert len({(r.status, repr(r.body)) for r in results}) == 1
    assert results[0].status == 201
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in results) == 49
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 1
    assert await conn.fetchval("SELECT count(*) FROM terminal_requests") == 1
    await invariants(conn)


async def test_concurrent_copies_of_a_reversal_and_of_a_decline(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=1)
    nid = next(iter(world.credit))
    await world.terminal.redeem(nid, 1000, request_id="orig")
    reversals = await asyncio.gather(
        *(world.terminal.reverse("orig", request_id="void") for _ in range(30))
    )
    assert {(r.status, repr(r.body)) for r in reversals} == {
        (reversals[0].status, repr(reversals[0].body))
    }
    others = await asyncio.gather(*(world.terminal.reverse("orig") for _ in range(10)))
    assert {r.status for r in others} == {409}
    declines = await asyncio.gather(
        *(world.terminal.redeem(nid, 10**12, request_id="huge") for _ in range(30))
    )
    assert {(r.status, r.body["reason"]) for r in declines} == {(402, "insufficient_balance")}
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 2
    await invariants(conn)


@pytest.mark.parametrize("seed", range(5))
async def test_reversal_racing_its_original_always_nets_to_zero(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection, seed: int
) -> None:
    world = await make_world(client, operator, n=4)
    rng = random.Random(seed)
    tasks = []
    for i, nid in enumerate(world.credit):
        pair = [
            world.terminal.redeem(nid, 10_000 + i, request_id=f"o{i}"),
            world.terminal.reverse(f"o{i}", request_id=f"v{i}"),
        ]
        rng.shuffle(pair)
        tasks.extend(pair)
    results = await asyncio.gather(*tasks)
    for r in results:
        assert r.status in (201, 202, 402), r.body
    # every pair nets to zero: approved then reversed, or tombstoned then declined "reversed"
    assert await conn.fetchval("SELECT coalesce(sum(balance), 0) FROM entitlements") == sum(
        world.credit.values()
    )
    for i in range(len(world.credit)):
        kinds = [
            r["kind"]
            for r in await conn.fetch(
                "SELECT kind FROM ledger WHERE request_id IN ($1, $2) ORDER BY seq",
                f"o{i}",
                f"v{i}",
            )
        ]
        assert kinds in ([], ["redemption", "reversal"])
    figures = await invariants(conn)
    assert all(c["transactions"] == 0 and c["served"] == 0 for c in figures["counters"].values())


async def test_random_mixed_workload_keeps_every_invariant(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(
        client, operator, n=40, members=1, provinces=("IR-15", "IR-23", "IR-01", "IR-30", "IR-11")
    )
    terminals = [world.terminal] + [await make_terminal(client, operator) for _ in range(3)]
    ids = list(world.credit)

    async def pos(t: Terminal, rng: random.Random) -> Counter[str]:
        seen: Counter[str] = Counter()
        mine: list[str] = []
        for step in range(40):
            roll = rng.random()
            nid = rng.choice(ids)
            if roll < 0.55 or not mine:
                rid = f"t{t.terminal_id}-{step}"
                r = await t.redeem(
                    nid,
                    rng.choice((100_000, 700_000, 2_000_000)),
                    request_id=rid,
                    allow_partial=rng.random() < 0.3,
                )
                mine.append(rid)
            elif roll < 0.7:
                r = await t.reverse(rng.choice(mine))
            elif roll < 0.8:  # a retry of an earlier request, same body
                r = await t.reverse(mine[-1], request_id=f"t{t.terminal_id}-retry-{step}")
                r = await t.reverse(mine[-1], request_id=f"t{t.terminal_id}-retry-{step}")
            elif roll < 0.9:  # a reversal that arrives first
                rid = f"t{t.terminal_id}-early-{step}"
                r = await t.reverse(rid)
                mine.append(rid)
            else:
                r = await t.balance(nid)
            assert r.status < 500, r.body
            seen[str(r.status)] += 1
        return seen

    outcomes = await asyncio.gather(
        *(pos(t, random.Random(k)) for k in range(3) for t in terminals)
    )
    total = sum(outcomes, Counter())
    assert total["201"] > 50
    await invariants(conn)
    # stats as served over HTTP agree with the ledger too
    stats = await (
        await client.get(f"/v1/stats?tranche_id={world.tranche_id}", headers=operator)
    ).json()
    ledger_net = await conn.fetchval(
        "SELECT coalesce(sum(CASE kind WHEN 'redemption' THEN amount ELSE -amount END), 0) "
        "FROM ledger"
    )
    assert stats["totals"]["amount"] == ledger_net


async def test_a_nonce_is_refused_by_another_server_process_and_after_a_restart(
    client: Client,
    operator: dict[str, str],
    settings: Settings,
    dsn: str,
    aiohttp_client: Any,
    conn: asyncpg.Connection,
) -> None:
    world = await make_world(client, operator, n=1)
    nid = next(iter(world.credit))
    first = await world.terminal.send("GET", f"/v1/households/{nid}/balance", nonce="n-12345678")
    assert first.status == 200
    other: TestClient[Any, Any] = await aiohttp_client(create_app(settings, dsn))
    twin = Terminal(
        other, world.terminal.terminal_id, world.terminal.secret, world.terminal.merchant_id
    )
    replay = await twin.send("GET", f"/v1/households/{nid}/balance", nonce="n-12345678")
    assert replay.status == 401 and replay.body["error"]["code"] == "nonce_reused"
    await other.close()  # "restart": a new process with a fresh cache
    again: TestClient[Any, Any] = await aiohttp_client(create_app(settings, dsn))
    twin.client = again
    replay = await twin.send("GET", f"/v1/households/{nid}/balance", nonce="n-12345678")
    assert replay.status == 401
    assert await conn.fetchval("SELECT count(*) FROM terminal_nonces") == 1
