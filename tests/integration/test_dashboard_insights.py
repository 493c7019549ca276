"""The dashboard's read-only figures: tranche labels, history, declines and reversals."""

from __future__ import annotations

import datetime as dt

from tests.integration.helpers import tranche_body
from tests.integration.terminal import Client, World, make_world


async def _world(client: Client, operator: dict[str, str]) -> tuple[World, int]:
    older = tranche_body(start=dt.timedelta(days=-20), length=dt.timedelta(days=10), name="Old")
    resp = await client.post("/v1/admin/tranches", json=older, headers=operator)
    assert resp.status == 201, await resp.text()
    previous_id = (await resp.json())["id"]
    world = await make_world(client, operator, n=6, provinces=("IR-15", "IR-23"), name="Now")
    return world, previous_id


async def test_tranche_labels_for_operators_and_auditors(
    client: Client, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    world, previous_id = await _world(client, operator)
    for headers in (operator, auditor):
        resp = await client.get("/v1/stats/tranches", headers=headers)
        assert resp.status == 200
        labels = (await resp.json())["tranches"]
        assert [t["id"] for t in labels] == [world.tranche_id, previous_id]
        assert labels[0]["name"] == "Now" and set(labels[0]) == {
            "id",
            "name",
            "starts_at",
            "ends_at",
        }
    assert (await client.get("/v1/stats/tranches")).status == 401


async def test_history_counts_net_transactions_and_first_served(
    client: Client, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    world, previous_id = await _world(client, operator)
    nid, other = list(world.credit)[:2]
    first = await world.terminal.redeem(nid, 1_000_000, request_id="h-1")
    assert first.status == 201
    assert (await world.terminal.redeem(nid, 500_000)).status == 201
    assert (await world.terminal.redeem(other, 200_000, request_id="h-3")).status == 201
    assert (await world.terminal.reverse("h-3")).status == 201

    for bucket in ("minute", "hour", "day"):
        resp = await client.get(f"/v1/stats/history?bucket={bucket}", headers=auditor)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["bucket"] == bucket
        assert body["tranche"]["id"] == world.tranche_id
        assert body["previous"]["id"] == previous_id
        assert body["previous_series"] == []
        series = body["series"]
        assert sum(b["transactions"] for b in series) == 2  # three redemptions, one reversed
        assert sum(b["amount"] for b in series) == 1_500_000
        assert sum(b["served"] for b in series) == 2  # first redemptions of two households
    stats = await (await client.get("/v1/stats", headers=auditor)).json()
    assert stats["totals"]["transactions"] == 2

    resp = await client.get(f"/v1/stats/history?tranche_id={previous_id}", headers=operator)
    body = await resp.json()
    assert body["tranche"]["id"] == previous_id and body["previous"] is None
    assert body["series"] == []
    for query, status in (("tranche_id=999999", 404), ("bucket=week", 422), ("x=1", 422)):
        resp = await client.get(f"/v1/stats/history?{query}", headers=operator)
        assert resp.status == status, query


async def test_activity_has_declines_by_reason_and_reversals_per_province(
    client: Client, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    world, _ = await _world(client, operator)
    in_tehran = next(n for n, p in world.province.items() if p == "IR-23")
    assert (await world.terminal.redeem(in_tehran, 10**11)).status == 402  # insufficient
    assert (await world.terminal.redeem("0000000001", 1000)).status in (402, 422)
    assert (await world.terminal.redeem(in_tehran, 300_000, request_id="a-1")).status == 201
    assert (await world.terminal.reverse("a-1")).status == 201
    assert (await world.terminal.redeem(in_tehran, 400_000)).status == 201

    for query in ("", f"?tranche_id={world.tranche_id}"):
        resp = await client.get(f"/v1/stats/activity{query}", headers=auditor)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert len(body["provinces"]) == 31
        by_code = {p["code"]: p for p in body["provinces"]}
        store = by_code["IR-15"]  # the terminal's store is in Lorestan
        assert store["declines"].get("insufficient_balance") == 1
        assert store["declined"] == sum(store["declines"].values()) >= 1
        tehran = by_code["IR-23"]  # the household's province
        assert tehran["reversals"] == 1 and tehran["reversed_amount"] == 300_000
        assert tehran["today_transactions"] == 1 and tehran["today_amount"] == 400_000
        assert by_code["IR-01"]["declined"] == 0
    resp = await client.get("/v1/stats/activity?tranche_id=999999", headers=operator)
    assert resp.status == 404


async def test_the_new_endpoints_are_in_openapi(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    for path in ("/v1/stats/tranches", "/v1/stats/history", "/v1/stats/activity"):
        assert doc["paths"][path]["get"]["security"] == [{"bearer": []}], path
    params = {p["name"] for p in doc["paths"]["/v1/stats/history"]["get"]["parameters"]}
    assert params == {"tranche_id", "bucket"}
