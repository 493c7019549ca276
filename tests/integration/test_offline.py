"""Offline store-and-forward through signed HTTP: forwarding, each rule of the allowance,
idempotent re-sends, gaps, the ledger and its chain, settlement, and reconciliation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import pytest

from coupon import audit
from coupon.api.keys import SEAL_KEYS
from tests.integration.helpers import now
from tests.integration.offline import enable_offline, forward, offline_world, purchase
from tests.integration.terminal import Client, invariants, make_terminal, valid_id_not_in


@pytest.fixture
async def world(client: Client, operator: dict[str, str]) -> Any:
    return await offline_world(client, operator)


async def test_a_forwarded_purchase_posts_once_with_its_capture_time(
    world: Any, conn: asyncpg.Connection, auditor: dict[str, str], client: Client
) -> None:
    nid = next(iter(world.credit))
    captured = now() - dt.timedelta(hours=3)
    p = purchase(1, nid, 1_500_000, captured, items=[{"category": "rice", "amount": 1_500_000}])
    resp = await forward(world.terminal, [p])
    assert resp.status == 200, resp.body
    body = resp.body
    assert (body["approved"], body["declined"], body["rejected"]) == (1, 0, 0)
    assert body["gaps"] == [] and body["last_offline_seq"] == 1
    (result,) = body["results"]
    assert result["status"] == "approved" and result["reason"] is None
    assert result["amount"] == 1_500_000 and result["remaining"] == world.credit[nid] - 1_500_000
    assert result["replayed"] is False and result["tranche_id"] == world.tranche_id
    row = await conn.fetchrow("SELECT * FROM ledger")
    assert row["seq"] == result["redemption_id"] and row["request_id"] == p["request_id"]
    assert row["captured_at"] == captured and row["created_at"] > captured
    assert await conn.fetchval("SELECT sum(transactions) FROM province_counters") == 1
    assert await conn.fetchval("SELECT sum(served) FROM province_counters_all") == 1
    await invariants(conn)
    # the ledger shows it, and can select it
    for channel, expected in (("offline", 1), ("online", 0)):
        resp2 = await client.get(f"/v1/ledger?channel={channel}", headers=auditor)
        entries = (await resp2.json())["entries"]
        assert len(entries) == expected
    entry = (await (await client.get("/v1/ledger", headers=auditor)).json())["entries"][0]
    assert dt.datetime.fromisoformat(entry["captured_at"]) == captured
    csv = await (await client.get("/v1/ledger.csv?channel=offline", headers=auditor)).text()
    assert csv.splitlines()[0].endswith(",created_at,captured_at") and len(csv.splitlines()) == 2
    # the same batch again: the same outcomes, nothing applied twice
    again = await forward(world.terminal, [p])
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.body["results"][0] == {**result, "replayed": True}
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 1
    assert await conn.fetchval("SELECT sum(transactions) FROM province_counters") == 1
    await invariants(conn)


async def test_an_overlapping_batch_applies_only_what_is_new_and_reports_gaps(
    world: Any, conn: asyncpg.Connection
) -> None:
    a, b, c = list(world.credit)[:3]
    first = [purchase(1, a, 100_000), purchase(2, b, 200_000), purchase(4, c, 300_000)]
    resp = await forward(world.terminal, first)
    assert resp.body["approved"] == 3
    assert resp.body["gaps"] == [{"first": 3, "last": 3}] and resp.body["last_offline_seq"] == 4
    # seq 2 and 4 again (same bodies), 3 fills the gap, 7 leaves a new one
    second = [first[1], purchase(3, a, 50_000), first[2], purchase(7, b, 60_000)]
    resp = await forward(world.terminal, second)
    by_seq = {r["offline_seq"]: r for r in resp.body["results"]}
    assert [r["offline_seq"] for r in resp.body["results"]] == [2, 3, 4, 7]
    assert by_seq[2]["replayed"] and by_seq[4]["replayed"]
    assert not by_seq[3]["replayed"] and not by_seq[7]["replayed"]
    assert resp.headers.get("Idempotent-Replayed") is None
    assert resp.body["gaps"] == [{"first": 5, "last": 6}]
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 5
    # a seq re-sent with another body, or a request id already used, is rejected
    changed = {**first[0], "amount": 999}
    reused = purchase(8, a, 1000, request_id=first[1]["request_id"])
    resp = await forward(world.terminal, [changed, reused])
    assert [(r["status"], r["reason"]) for r in resp.body["results"]] == [
        ("rejected", "idempotency_conflict"),
        ("rejected", "idempotency_conflict"),
    ]
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 5
    assert await conn.fetchval("SELECT count(*) FROM offline_purchases") == 5
    await invariants(conn)


async def test_operators_see_the_gaps(
    world: Any, client: Client, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    nid = next(iter(world.credit))
    await forward(world.terminal, [purchase(2, nid, 1000), purchase(5, nid, 1000)])
    resp = await client.get("/v1/admin/offline/gaps", headers=operator)
    assert resp.status == 200
    assert (await resp.json())["terminals"] == [
        {
            "terminal_id": world.terminal.terminal_id,
            "merchant_id": world.terminal.merchant_id,
            "last_offline_seq": 5,
            "missing": 3,
        }
    ]
    assert (await client.get("/v1/admin/offline/gaps", headers=auditor)).status == 403


async def test_each_offline_rule_declines_with_its_reason(
    client: Client, operator: dict[str, str], world: Any, conn: asyncpg.Connection
) -> None:
    ids = list(world.credit)
    t = now()
    stranger = valid_id_not_in(world.credit)
    cases = [
        # (purchase, expected reason)
        (purchase(1, ids[0], 2_000_000), None),  # at the per-purchase maximum
        (purchase(2, ids[0], 2_000_001), "offline_max_amount_exceeded"),
        (purchase(3, ids[0], 1_000_000), None),  # allowance 3,000,000 used up exactly
        (purchase(4, ids[0], 1), "offline_allowance_exceeded"),
        (purchase(5, ids[1], 1000, t + dt.timedelta(minutes=10)), "captured_in_future"),
        (purchase(6, ids[1], 1000, t + dt.timedelta(minutes=4)), None),  # within the skew
        (purchase(7, ids[1], 1000, t - dt.timedelta(hours=73)), "late"),
        (purchase(8, ids[1], 1000, t - dt.timedelta(days=3)), "late"),
        (purchase(9, stranger, 1000), "household_not_found"),
        (
            purchase(10, ids[2], 1000, items=[{"category": "tea", "amount": 1000}]),
            "category_not_allowed",
        ),
    ]
    resp = await forward(world.terminal, [p for p, _ in cases])
    assert resp.status == 200, resp.body
    got = [(r["offline_seq"], r["status"], r["reason"]) for r in resp.body["results"]]
    assert got == [
        (p["offline_seq"], "approved" if why is None else "declined", why) for p, why in cases
    ]
    declined = [r for r in resp.body["results"] if r["status"] == "declined"]
    assert all(r["redemption_id"] is None and r["posted_at"] for r in declined)
    assert {r["amount"] for r in declined if r["offline_seq"] == 2} == {2_000_001}
    await invariants(conn)


async def test_captured_outside_any_window_or_before_the_band_opens(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    w = await offline_world(client, operator, start=dt.timedelta(hours=-1))
    nid = next(iter(w.credit))
    resp = await forward(w.terminal, [purchase(1, nid, 1000, now() - dt.timedelta(hours=2))])
    assert resp.body["results"][0]["reason"] == "outside_window"
    await invariants(conn)


async def test_offline_needs_the_terminal_switch_and_an_allowance(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    w = await offline_world(client, operator, allowance=0, max_amount=None)
    nid = next(iter(w.credit))
    resp = await forward(w.terminal, [purchase(1, nid, 1000)])
    assert resp.body["results"][0]["reason"] == "offline_allowance_exceeded"
    other = await make_terminal(client, operator)
    resp = await forward(other, [purchase(1, nid, 1000)])
    assert resp.body["results"][0]["reason"] == "offline_not_enabled"
    await enable_offline(client, operator, other)
    await enable_offline(client, operator, other, on=False)
    resp = await forward(other, [purchase(2, nid, 1000)])
    assert resp.body["results"][0]["reason"] == "offline_not_enabled"
    resp = await client.patch(
        f"/v1/admin/terminals/{other.terminal_id}", json={"status": "suspended"}, headers=operator
    )
    assert (await resp.json()) == {
        "id": other.terminal_id,
        "merchant_id": other.merchant_id,
        "status": "suspended",
        "offline_enabled": False,
    }
    resp = await client.patch(f"/v1/admin/terminals/{other.terminal_id}", json={}, headers=operator)
    assert resp.status == 422
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 0


async def test_an_online_spend_meanwhile_declines_the_offline_purchase(
    world: Any, conn: asyncpg.Connection
) -> None:
    nid = next(iter(world.credit))
    online = await world.terminal.redeem(nid, world.credit[nid] - 500_000)
    assert online.status == 201
    resp = await forward(world.terminal, [purchase(1, nid, 600_000), purchase(2, nid, 500_000)])
    assert [(r["status"], r["reason"]) for r in resp.body["results"]] == [
        ("declined", "insufficient_balance"),
        ("approved", None),
    ]
    assert resp.body["results"][1]["remaining"] == 0
    assert await conn.fetchval("SELECT balance FROM entitlements WHERE national_id = $1", nid) == 0
    await invariants(conn)


async def test_a_forwarded_purchase_can_be_reversed_and_a_tombstone_declines_it(
    world: Any, conn: asyncpg.Connection
) -> None:
    a, b = list(world.credit)[:2]
    p1 = purchase(1, a, 700_000)
    await forward(world.terminal, [p1])
    rev = await world.terminal.reverse(p1["request_id"])
    assert rev.status == 201 and rev.body["amount"] == 700_000
    early = await world.terminal.reverse("off-late")
    assert early.status == 202
    resp = await forward(world.terminal, [purchase(2, b, 1000, request_id="off-late")])
    assert resp.body["results"][0]["reason"] == "reversed"
    await invariants(conn)


async def test_bad_batches_are_422_and_change_nothing(world: Any, conn: asyncpg.Connection) -> None:
    nid = next(iter(world.credit))
    p = purchase(1, nid, 1000)
    bad = [
        [],
        [p, {**p, "request_id": "other"}],  # a repeated seq
        [p, {**p, "offline_seq": 2}],  # a repeated request id
        [{**p, "captured_at": "yesterday"}],
        [{**p, "captured_at": "2026-01-01T00:00:00"}],  # no time zone
        [{**p, "offline_seq": 0}],
        [{**p, "amount": 0}],
        [{**p, "national_id": "1234567890"}],
        [{**p, "items": [{"category": "rice", "amount": 999}]}],
        [purchase(k + 1, nid, 1) for k in range(501)],
    ]
    for purchases in bad:
        resp = await forward(world.terminal, purchases)
        assert resp.status == 422, (purchases[:1], resp.body)
        assert resp.body["error"]["code"] == "invalid_request"
    assert await conn.fetchval("SELECT count(*) FROM terminal_requests") == 0
    # 500 fit, and are applied in one go
    resp = await forward(world.terminal, [purchase(k + 1, nid, 1) for k in range(500)])
    assert resp.status == 200 and resp.body["approved"] == 500
    await invariants(conn)


async def test_the_hash_chain_covers_the_capture_time(
    world: Any,
    client: Client,
    auditor: dict[str, str],
    conn: asyncpg.Connection,
    tmp_path: Any,
) -> None:
    a, b = list(world.credit)[:2]
    await world.terminal.redeem(a, 1000)
    await forward(world.terminal, [purchase(1, a, 2000), purchase(2, b, 3000)])
    await world.terminal.redeem(b, 4000)
    keys = client.app[SEAL_KEYS]
    await audit.seal(conn, keys)
    assert (await audit.verify(conn, keys)).ok
    # the export carries captured_at, and its offline check recomputes the same digests
    lines: list[bytes] = []
    await audit.export(conn, lines.append)
    assert audit.verify_export(b"".join(lines).splitlines(), keys).ok
    target = await conn.fetchval("SELECT min(seq) FROM ledger WHERE captured_at IS NOT NULL")
    await conn.execute("SET session_replication_role = replica")
    await conn.execute(
        "UPDATE ledger SET captured_at = captured_at - interval '1 day' WHERE seq = $1", target
    )
    await conn.execute("SET session_replication_role = origin")
    resp = await client.get("/v1/ledger/verify", headers=auditor)
    result = await resp.json()
    assert result["ok"] is False and result["first_bad_seq"] == target
    # an online row given a capture time is caught too
    online = await conn.fetchval("SELECT min(seq) FROM ledger WHERE captured_at IS NULL")
    await conn.execute("SET session_replication_role = replica")
    await conn.execute(
        "UPDATE ledger SET captured_at = created_at WHERE seq = $1 OR seq = $2", target, online
    )
    await conn.execute("SET session_replication_role = origin")
    result = await (await client.get("/v1/ledger/verify", headers=auditor)).json()
    assert result["ok"] is False and result["first_bad_seq"] == min(target, online)


async def test_settlement_shows_offline_postings_and_the_stores_losses(
    world: Any,
    client: Client,
    auditor: dict[str, str],
    operator: dict[str, str],
    conn: asyncpg.Connection,
) -> None:
    a, b = list(world.credit)[:2]
    await world.terminal.redeem(a, 10_000)
    await forward(
        world.terminal,
        [purchase(1, a, 20_000), purchase(2, b, 5_000_000), purchase(3, b, 30_000)],
    )
    # a store that only lost
    other = await make_terminal(client, operator)
    await forward(other, [purchase(1, b, 40_000)])
    today = (await conn.fetchval("SELECT (now() AT TIME ZONE 'Asia/Tehran')::date")).isoformat()
    resp = await client.get(f"/v1/reports/settlement?date={today}", headers=operator)
    merchants = {m["merchant_id"]: m for m in (await resp.json())["merchants"]}
    mine = merchants[world.terminal.merchant_id]
    assert (mine["redemptions"], mine["net_amount"]) == (3, 60_000)
    assert (mine["offline_redemptions"], mine["offline_amount"]) == (2, 50_000)
    assert (mine["declined_offline"], mine["declined_offline_amount"]) == (1, 5_000_000)
    lost = merchants[other.merchant_id]
    assert (lost["redemptions"], lost["net_amount"]) == (0, 0)
    assert (lost["declined_offline"], lost["declined_offline_amount"]) == (1, 40_000)
    resp = await client.get(f"/v1/reports/offline-declines?date={today}", headers=auditor)
    declines = (await resp.json())["declines"]
    assert [(d["merchant_id"], d["reason"], d["amount"]) for d in declines] == [
        (world.terminal.merchant_id, "offline_max_amount_exceeded", 5_000_000),
        (other.merchant_id, "offline_not_enabled", 40_000),
    ]
    resp = await client.get(
        f"/v1/reports/offline-declines?date={today}&merchant_id={other.merchant_id}",
        headers=auditor,
    )
    assert len((await resp.json())["declines"]) == 1
    assert (
        await client.get(f"/v1/reports/offline-declines?date={today}", headers=operator)
    ).status == 403
    keys = client.app[SEAL_KEYS]
    await audit.seal(conn, keys)
    assert (await audit.verify(conn, keys)).ok  # settlement == the terminals' answers


async def test_the_dashboard_shows_offline_postings_and_losses_per_province(
    world: Any, client: Client, auditor: dict[str, str]
) -> None:
    in_tehran = next(n for n, p in world.province.items() if p == "IR-23")
    resp = await forward(
        world.terminal,
        [purchase(1, in_tehran, 400_000), purchase(2, in_tehran, 2_500_000)],  # max 2,000,000
    )
    assert [r["status"] for r in resp.body["results"]] == ["approved", "declined"]
    for query in ("", f"?tranche_id={world.tranche_id}"):
        body = await (await client.get(f"/v1/stats/activity{query}", headers=auditor)).json()
        by_code = {p["code"]: p for p in body["provinces"]}
        tehran, store = by_code["IR-23"], by_code["IR-15"]  # household's, store's province
        assert (tehran["offline_posted"], tehran["offline_posted_amount"]) == (1, 400_000)
        assert (store["offline_declined"], store["offline_declined_amount"]) == (1, 2_500_000)
        assert store["declines"] == {"offline_max_amount_exceeded": 1}
        assert by_code["IR-01"]["offline_posted"] == by_code["IR-01"]["offline_declined"] == 0


async def test_the_offline_endpoints_are_in_openapi(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    for path in ("/v1/offline/batches", "/v1/terminals/reconciliation"):
        assert "post" in paths[path], path
    for path in ("/v1/reconciliation", "/v1/reports/offline-declines", "/v1/admin/offline/gaps"):
        assert paths[path]["get"]["security"] == [{"bearer": []}], path
    schemas = doc["components"]["schemas"]
    assert {"offline_allowance", "offline_max_amount"} <= set(
        schemas["TrancheCreate"]["properties"]
    )
    assert "offline_enabled" in schemas["TerminalChange"]["properties"]
    assert "captured_at" in schemas["LedgerEntry"]["properties"]
