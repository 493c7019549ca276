"""The terminal path through signed HTTP: every SPEC behaviour, good and bad."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import asyncpg
import pytest

from tests.integration.terminal import (
    Client,
    invariants,
    make_terminal,
    make_world,
    valid_id_not_in,
)


@pytest.fixture
async def world(client: Client, operator: dict[str, str]) -> Any:
    return await make_world(client, operator)


# -- authentication ---------------------------------------------------------------------------


async def test_a_signed_redemption_is_approved(world: Any, conn: asyncpg.Connection) -> None:
    nid = next(iter(world.credit))
    resp = await world.terminal.redeem(nid, 1_200_000, request_id="pos-1")
    assert resp.status == 201, resp.body
    body = resp.body
    assert set(body) == {
        "redemption_id",
        "request_id",
        "status",
        "national_id",
        "amount",
        "remaining",
        "tranche_id",
        "province",
        "merchant_id",
        "terminal_id",
        "created_at",
    }
    assert body["status"] == "approved" and body["request_id"] == "pos-1"
    assert body["amount"] == 1_200_000
    assert body["remaining"] == world.credit[nid] - 1_200_000
    assert body["tranche_id"] == world.tranche_id
    assert body["province"] == world.province[nid]
    assert body["terminal_id"] == world.terminal.terminal_id
    assert body["merchant_id"] == world.terminal.merchant_id
    dt.datetime.fromisoformat(body["created_at"])
    row = await conn.fetchrow("SELECT * FROM ledger")
    assert (row["seq"], row["kind"], row["amount"], row["national_id"]) == (
        body["redemption_id"],
        "redemption",
        1_200_000,
        nid,
    )
    await invariants(conn)


async def test_unsigned_and_badly_signed_requests_are_401_and_change_nothing(
    world: Any, conn: asyncpg.Connection, client: Client
) -> None:
    t = world.terminal
    nid = next(iter(world.credit))
    payload = {"request_id": "x1", "national_id": nid, "amount": 1000}
    resp = await client.post("/v1/redemptions", json=payload)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_signature"
    cases = [
        ({"sign_body": b"{}"}, "bad_signature"),  # MAC over another body
        ({"timestamp": int(time.time()) - 301}, "timestamp_out_of_window"),
        ({"timestamp": int(time.time()) + 301}, "timestamp_out_of_window"),
        ({"headers": {"X-Signature": "0" * 64}}, "bad_signature"),
        ({"headers": {"X-Signature": "ABC"}}, "bad_signature"),
        ({"headers": {"X-Terminal-Id": "999999"}}, "bad_signature"),  # not "no such terminal"
        ({"headers": {"X-Nonce": "short"}}, "bad_signature"),
    ]
    for kwargs, code in cases:
        resp = await t.send("POST", "/v1/redemptions", payload, **kwargs)
        assert resp.status == 401, (kwargs, resp.body)
        assert resp.body["error"]["code"] == code, kwargs
    # one byte of the body changed after signing
    good = await t.send("POST", "/v1/redemptions", payload, sign_body=b'{"request_id":"x1"}')
    assert good.status == 401
    # a nonce is accepted once
    first = await t.send("POST", "/v1/redemptions", payload, nonce="nonce-12345678")
    assert first.status == 201
    again = await t.send(
        "POST", "/v1/redemptions", {**payload, "request_id": "x2"}, nonce="nonce-12345678"
    )
    assert again.status == 401 and again.body["error"]["code"] == "nonce_reused"
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 1
    assert await conn.fetchval("SELECT count(*) FROM terminal_requests") == 1


async def test_a_signature_covers_the_query_string(world: Any) -> None:
    nid = next(iter(world.credit))
    t = world.terminal
    resp = await t.send("GET", f"/v1/households/{nid}/balance?x=1")
    assert resp.status == 200
    from coupon import auth

    headers = auth.signed_headers(
        t.terminal_id, t.secret, "GET", f"/v1/households/{nid}/balance", b"", t.nonce()
    )
    resp2 = await t.client.get(f"/v1/households/{nid}/balance?x=1", headers=headers)
    assert resp2.status == 401


async def test_operator_tokens_do_not_open_terminal_endpoints(
    world: Any, client: Client, operator: dict[str, str]
) -> None:
    nid = next(iter(world.credit))
    resp = await client.get(f"/v1/households/{nid}/balance", headers=operator)
    assert resp.status == 401


# -- balance ----------------------------------------------------------------------------------


async def test_balance_inquiry(world: Any, client: Client, operator: dict[str, str]) -> None:
    nid = next(iter(world.credit))
    resp = await world.terminal.balance(nid)
    assert resp.status == 200
    assert resp.body["eligible"] is True and resp.body["reason"] is None
    assert resp.body["remaining"] == world.credit[nid]
    assert resp.body["tranche_id"] == world.tranche_id and resp.body["ends_at"]
    await world.terminal.redeem(nid, 1000)
    assert (await world.terminal.balance(nid)).body["remaining"] == world.credit[nid] - 1000

    resp = await world.terminal.balance(valid_id_not_in(world.credit))
    assert resp.status == 404 and resp.body["error"]["code"] == "household_not_found"
    resp = await world.terminal.balance("0084575947")
    assert resp.status == 422 and resp.body["error"]["code"] == "invalid_national_id"

    await client.patch(
        f"/v1/admin/households/{nid}", json={"status": "suspended"}, headers=operator
    )
    resp = await world.terminal.balance(nid)
    assert resp.body["eligible"] is False and resp.body["reason"] == "household_suspended"


# -- declines ---------------------------------------------------------------------------------


async def declined(world: Any, nid: str, amount: int = 1000, **extra: Any) -> str:
    resp = await world.terminal.redeem(nid, amount, **extra)
    assert resp.status == 402, resp.body
    assert set(resp.body) == {"status", "reason", "request_id"}
    assert resp.body["status"] == "declined"
    reason: str = resp.body["reason"]
    return reason


async def test_every_decline_reason(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=6, categories=["rice", "dairy"])
    ids = list(world.credit)
    assert await declined(world, valid_id_not_in(world.credit)) == "household_not_found"
    await client.patch(
        f"/v1/admin/households/{ids[0]}", json={"status": "suspended"}, headers=operator
    )
    assert await declined(world, ids[0]) == "household_suspended"
    assert await declined(world, ids[1], amount=world.credit[ids[1]] + 1) == (
        "insufficient_balance"
    )
    items = [{"category": "caviar", "amount": 1000}]
    resp = await world.terminal.redeem(ids[1], 1000, items=items)
    assert resp.status == 422  # not a category at all
    items = [{"category": "tea", "amount": 1000}]
    assert await declined(world, ids[1], items=items) == "category_not_allowed"

    # a household above the bands, and one whose band opens later
    from tests.integration.helpers import households_csv, national_ids

    extra = national_ids(30, seed=5)[-2:]
    await client.post(
        "/v1/admin/households/import",
        headers={**operator, "Content-Type": "text/csv"},
        data=households_csv([(extra[0], "IR-15", 1, 9), (extra[1], "IR-15", 1, 5)]),
    )
    await conn.execute(
        "DELETE FROM entitlements WHERE tranche_id = $1 AND national_id = ANY($2)",
        world.tranche_id,
        extra,
    )  # fresh households have no credit yet
    assert await declined(world, extra[0]) == "not_eligible"
    await conn.execute(
        "INSERT INTO entitlements (national_id, tranche_id, province, credit, balance, opens_at)"
        " VALUES ($1, $2, 'IR-15', 100, 100, now() + interval '2 days')",
        extra[1],
        world.tranche_id,
    )
    assert await declined(world, extra[1], amount=10) == "not_open_yet"

    # store and terminal suspended
    await client.patch(
        f"/v1/admin/merchants/{world.terminal.merchant_id}",
        json={"status": "suspended"},
        headers=operator,
    )
    assert await declined(world, ids[2]) == "merchant_suspended"
    await client.patch(
        f"/v1/admin/terminals/{world.terminal.terminal_id}",
        json={"status": "suspended"},
        headers=operator,
    )
    assert await declined(world, ids[2]) == "terminal_suspended"
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 0
    await invariants(conn)


async def test_no_active_tranche(client: Client, operator: dict[str, str]) -> None:
    world = await make_world(client, operator, n=2, start=dt.timedelta(days=-40))
    assert await declined(world, next(iter(world.credit))) == "no_active_tranche"
    resp = await world.terminal.balance(next(iter(world.credit)))
    assert resp.body["reason"] == "no_active_tranche" and resp.body["tranche_id"] is None


async def test_partial_approval(world: Any, conn: asyncpg.Connection) -> None:
    nid = next(iter(world.credit))
    credit = world.credit[nid]
    resp = await world.terminal.redeem(nid, credit + 250_000, allow_partial=True)
    assert resp.status == 201
    assert resp.body["amount"] == credit and resp.body["requested_amount"] == credit + 250_000
    assert resp.body["remaining"] == 0
    assert await declined(world, nid, allow_partial=True) == "insufficient_balance"
    await invariants(conn)


async def test_items_must_add_up(world: Any, conn: asyncpg.Connection) -> None:
    nid = next(iter(world.credit))
    items = [{"category": "rice", "amount": 600}, {"category": "dairy", "amount": 400}]
    assert (await world.terminal.redeem(nid, 1000, items=items)).status == 201
    resp = await world.terminal.redeem(nid, 1001, items=items)
    assert resp.status == 422 and resp.body["error"]["code"] == "invalid_request"
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 1


# -- idempotency ------------------------------------------------------------------------------


async def test_a_repeated_request_gets_the_stored_answer(
    world: Any, conn: asyncpg.Connection
) -> None:
    nid = next(iter(world.credit))
    first = await world.terminal.redeem(nid, 5000, request_id="same")
    again = await world.terminal.redeem(nid, 5000, request_id="same")
    assert (again.status, again.body) == (first.status, first.body)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    other = await world.terminal.redeem(nid, 6000, request_id="same")
    assert other.status == 409 and other.body["error"]["code"] == "idempotency_conflict"
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 1
    # declines are stored too: the same retry stays declined even after credit appears
    poor = await world.terminal.redeem(nid, 10**11, request_id="big")
    assert poor.status == 402
    assert (await world.terminal.redeem(nid, 10**11, request_id="big")).body == poor.body
    await invariants(conn)


# -- reversals --------------------------------------------------------------------------------


async def test_reversal_returns_the_credit(world: Any, conn: asyncpg.Connection) -> None:
    nid = next(iter(world.credit))
    await world.terminal.redeem(nid, 700_000, request_id="buy-1")
    resp = await world.terminal.reverse("buy-1", request_id="void-1")
    assert resp.status == 201, resp.body
    assert resp.body == {
        "status": "reversed",
        "reversal_id": resp.body["reversal_id"],
        "request_id": "void-1",
        "original_request_id": "buy-1",
        "amount": 700_000,
        "remaining": world.credit[nid],
    }
    again = await world.terminal.reverse("buy-1", request_id="void-1")
    assert again.body == resp.body and again.headers.get("Idempotent-Replayed") == "true"
    second = await world.terminal.reverse("buy-1", request_id="void-2")
    assert second.status == 409 and second.body["error"]["code"] == "already_reversed"
    kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM ledger ORDER BY seq")]
    assert kinds == ["redemption", "reversal"]
    figures = await invariants(conn)
    assert figures["counters"][world.province[nid]]["transactions"] == 0
    assert figures["counters"][world.province[nid]]["served"] == 0


async def test_reversal_before_its_original(world: Any, conn: asyncpg.Connection) -> None:
    nid = next(iter(world.credit))
    resp = await world.terminal.reverse("late-1", request_id="void-early")
    assert resp.status == 202
    assert resp.body == {
        "status": "pending_original",
        "request_id": "void-early",
        "original_request_id": "late-1",
    }
    late = await world.terminal.redeem(nid, 1000, request_id="late-1")
    assert late.status == 402 and late.body["reason"] == "reversed"
    again = await world.terminal.reverse("late-1", request_id="void-early")
    assert again.status == 202 and again.headers.get("Idempotent-Replayed") == "true"
    other = await world.terminal.reverse("late-1", request_id="void-other")
    assert other.status == 409 and other.body["error"]["code"] == "already_reversed"
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 0
    await invariants(conn)


async def test_reversal_rules(
    world: Any, client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    nid = next(iter(world.credit))
    await world.terminal.redeem(nid, 1000, request_id="mine")
    other = await make_terminal(client, operator)
    resp = await other.reverse("mine")
    assert resp.status == 403 and resp.body["error"]["code"] == "not_your_transaction"
    # older than 24 h
    await world.terminal.redeem(nid, 1000, request_id="old")
    await conn.execute("ALTER TABLE ledger DISABLE TRIGGER USER")
    await conn.execute(
        "UPDATE ledger SET created_at = now() - interval '25 hours' WHERE request_id = 'old'"
    )
    resp = await world.terminal.reverse("old")
    assert resp.status == 422 and resp.body["error"]["code"] == "reversal_window_closed"
    # a declined original has nothing to reverse
    await world.terminal.redeem(nid, 10**11, request_id="too-much")
    resp = await world.terminal.reverse("too-much")
    assert resp.status == 422 and resp.body["error"]["code"] == "original_declined"
    # a reversal's request_id reused as a redemption's
    rev = await world.terminal.reverse("mine", request_id="rv")
    assert rev.status == 201
    resp = await world.terminal.redeem(nid, 1000, request_id="rv")
    assert resp.status == 409 and resp.body["error"]["code"] == "idempotency_conflict"
    await invariants(conn)


# -- counters ---------------------------------------------------------------------------------


async def test_stats_follow_the_ledger(
    world: Any,
    client: Client,
    operator: dict[str, str],
    auditor: dict[str, str],
) -> None:
    ids = list(world.credit)
    a, b = ids[0], ids[1]
    await world.terminal.redeem(a, 1000, request_id="s1")
    await world.terminal.redeem(a, 2000, request_id="s2")
    await world.terminal.redeem(b, 4000, request_id="s3")
    await world.terminal.reverse("s3")
    resp = await client.get(f"/v1/stats?tranche_id={world.tranche_id}", headers=auditor)
    assert resp.status == 200
    stats = await resp.json()
    assert len(stats["provinces"]) == 31
    assert sorted(p["rank"] for p in stats["provinces"]) == list(range(1, 32))
    by_code = {p["code"]: p for p in stats["provinces"]}
    pa = by_code[world.province[a]]
    assert (pa["transactions"], pa["amount"], pa["served_households"]) == (2, 3000, 1)
    pb = by_code[world.province[b]]
    assert (pb["transactions"], pb["amount"], pb["served_households"]) == (0, 0, 0)
    totals = stats["totals"]
    assert (totals["transactions"], totals["amount"], totals["served_households"]) == (2, 3000, 1)
    assert totals["eligible_households"] == 10
    assert pa["coverage"] == pytest.approx(1 / pa["eligible_households"])
    assert pa["rank"] == 1
    assert by_code["IR-15"]["name_fa"] == "لرستان" and by_code["IR-23"]["name_en"] == "Tehran"

    all_tranches = await (await client.get("/v1/stats", headers=operator)).json()
    assert all_tranches["totals"] == totals

    assert (await client.get("/v1/stats?tranche_id=999", headers=operator)).status == 404
    assert (await client.get("/v1/stats?tranche_id=x", headers=operator)).status == 422
    assert (await client.get("/v1/stats")).status == 401
