"""End-of-day reconciliation: a terminal's totals of a Tehran business day against what the
processor booked, and the auditors' list of the terminals that did not balance."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import pytest

from tests.integration.helpers import now
from tests.integration.offline import forward, offline_world, purchase
from tests.integration.terminal import Client, Terminal


@pytest.fixture
async def world(client: Client, operator: dict[str, str]) -> Any:
    return await offline_world(client, operator)


def totals(online: tuple[int, int], offline: tuple[int, int], reversals: tuple[int, int]) -> Any:
    def one(pair: tuple[int, int]) -> dict[str, int]:
        return {"count": pair[0], "amount": pair[1]}

    return {
        "online_redemptions": one(online),
        "offline_redemptions": one(offline),
        "reversals": one(reversals),
    }


async def reconcile(terminal: Terminal, day: str, sums: Any, ids: list[str] | None = None) -> Any:
    body: dict[str, Any] = {"date": day, "totals": sums}
    if ids is not None:
        body["request_ids"] = ids
    resp = await terminal.send("POST", "/v1/terminals/reconciliation", body)
    assert resp.status == 200, resp.body
    return resp.body


async def tehran_today(conn: asyncpg.Connection) -> str:
    day: dt.date = await conn.fetchval("SELECT (now() AT TIME ZONE 'Asia/Tehran')::date")
    return day.isoformat()


async def test_a_day_that_balances_and_one_that_does_not(
    world: Any, conn: asyncpg.Connection, client: Client, auditor: dict[str, str]
) -> None:
    a, b = list(world.credit)[:2]
    t = world.terminal
    await t.redeem(a, 10_000, request_id="on-1")
    await t.redeem(b, 20_000, request_id="on-2")
    await t.reverse("on-2", request_id="void-1")
    await forward(t, [purchase(1, a, 5_000, request_id="off-1")])
    # declined at posting: the processor books nothing for it
    await forward(t, [purchase(2, a, 9_000_000, request_id="off-2")])
    today = await tehran_today(conn)
    ids = ["on-1", "on-2", "void-1", "off-1"]
    right = totals((2, 30_000), (1, 5_000), (1, 20_000))
    result = await reconcile(t, today, right, ids)
    assert result["status"] == "balanced"
    assert result["differences"] == {} and result["processor_only"] == []
    assert result["processor"] == right and result["terminal"] == right
    assert (await reconcile(t, today, right))["status"] == "balanced"

    # the terminal counted its declined offline purchase and missed a reversal
    wrong = totals((2, 30_000), (2, 9_005_000), (0, 0))
    result = await reconcile(t, today, wrong, ["on-1", "on-2", "off-1", "off-2"])
    assert result["status"] == "out_of_balance"
    assert result["differences"] == {
        "offline_redemptions": {"count": -1, "amount": -9_000_000},
        "reversals": {"count": 1, "amount": 20_000},
    }
    assert result["processor_only"] == ["void-1"] and result["terminal_only"] == ["off-2"]
    # without ids, the processor lists all of its own for the terminal to compare
    result = await reconcile(t, today, wrong)
    assert sorted(result["processor_only"]) == sorted(ids) and result["terminal_only"] == []

    resp = await client.get(
        f"/v1/reconciliation?date={today}&status=out_of_balance", headers=auditor
    )
    assert resp.status == 200
    listed = (await resp.json())["terminals"]
    assert [x["terminal_id"] for x in listed] == [t.terminal_id]
    assert listed[0]["processor_only"] == 4 and listed[0]["differences"]["reversals"] == {
        "count": 1,
        "amount": 20_000,
    }
    resp = await client.get(f"/v1/reconciliation?date={today}&status=balanced", headers=auditor)
    assert (await resp.json())["terminals"] == []
    resp = await client.get("/v1/reconciliation?date=2026-13-01", headers=auditor)
    assert resp.status == 422


async def test_offline_purchases_count_on_the_day_they_were_captured(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    w = await offline_world(client, operator)
    nid = next(iter(w.credit))
    captured = now() - dt.timedelta(days=1)
    await forward(w.terminal, [purchase(1, nid, 7_000, captured, request_id="y-1")])
    yesterday = (
        await conn.fetchval("SELECT ($1::timestamptz AT TIME ZONE 'Asia/Tehran')::date", captured)
    ).isoformat()
    result = await reconcile(w.terminal, yesterday, totals((0, 0), (1, 7_000), (0, 0)), ["y-1"])
    assert result["status"] == "balanced"
    result = await reconcile(w.terminal, await tehran_today(conn), totals((0, 0), (0, 0), (0, 0)))
    assert result["status"] == "balanced"


async def test_a_bad_reconciliation_is_422(world: Any) -> None:
    for body in (
        {"date": "2026-01-01"},
        {"date": "yesterday", "totals": totals((0, 0), (0, 0), (0, 0))},
        {"date": "2026-01-01", "totals": totals((-1, 0), (0, 0), (0, 0))},
        {"date": "2026-01-01", "totals": totals((0, 0), (0, 0), (0, 0)), "request_ids": ["a b"]},
    ):
        resp = await world.terminal.send("POST", "/v1/terminals/reconciliation", body)
        assert resp.status == 422, body


async def test_a_reconciliation_nonce_is_used_once(world: Any) -> None:
    body = {"date": "2026-01-01", "totals": totals((0, 0), (0, 0), (0, 0))}
    path = "/v1/terminals/reconciliation"
    first = await world.terminal.send("POST", path, body, nonce="recon-nonce-1")
    assert first.status == 200
    again = await world.terminal.send("POST", path, body, nonce="recon-nonce-1")
    assert again.status == 401 and again.body["error"]["code"] == "nonce_reused"
    batch = {"purchases": [purchase(1, next(iter(world.credit)), 1000)]}
    first = await world.terminal.send("POST", "/v1/offline/batches", batch, nonce="batch-nonce-1")
    assert first.status == 200
    again = await world.terminal.send("POST", "/v1/offline/batches", batch, nonce="batch-nonce-1")
    assert again.status == 401 and again.body["error"]["code"] == "nonce_reused"
