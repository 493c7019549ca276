"""Province-scoped operator and auditor tokens: every route that takes a bearer token is listed
here with what a token of IR-15 may do there, so that a new route cannot forget its scope."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from coupon import inspection, offline, tokens
from coupon.api.routes import ROUTES
from tests.integration.helpers import households_csv, national_ids, tranche_body

Client = TestClient[Any, Any]
OWN, OTHER = "IR-15", "IR-23"


@dataclass
class World:
    client: Client
    conn: asyncpg.Connection
    national: dict[str, str]  # a national operator's headers
    operator: dict[str, str]  # an IR-15 operator's
    auditor: dict[str, str]  # an IR-15 auditor's
    merchants: dict[str, int]  # by province
    terminals: dict[str, int]
    households: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


@pytest.fixture
async def world(client: Client, conn: asyncpg.Connection) -> World:
    national = bearer(await tokens.create_token(conn, "operator", "national"))
    operator = bearer(await tokens.create_token(conn, "operator", "lorestan", province=OWN))
    auditor = bearer(await tokens.create_token(conn, "auditor", "lorestan", province=OWN))
    own_id, other_id = national_ids(2, seed=15)
    resp = await client.post(
        "/v1/admin/households/import",
        data=households_csv([(own_id, OWN, 2, 1), (other_id, OTHER, 2, 1)]).encode(),
        headers={**national, "Content-Type": "text/csv"},
    )
    assert resp.status == 200
    merchants, terminals = {}, {}
    for province in (OWN, OTHER):
        resp = await client.post(
            "/v1/admin/merchants", json={"name": province, "province": province}, headers=national
        )
        merchants[province] = (await resp.json())["id"]
        resp = await client.post(
            f"/v1/admin/merchants/{merchants[province]}/terminals", headers=national
        )
        terminals[province] = (await resp.json())["terminal_id"]
    return World(
        client,
        conn,
        national,
        operator,
        auditor,
        merchants,
        terminals,
        {OWN: own_id, OTHER: other_id},
    )


async def expect(resp: Any, status: int, code: str | None = None) -> Any:
    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    assert resp.status == status, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


OUT = "province_out_of_scope"
NATIONAL = "national_scope_required"


# Each case: what the IR-15 token gets for another province's target (or a national act), and
# that the same request on its own province works.
async def import_households(w: World) -> None:
    fresh = national_ids(3, seed=99)[2]
    text = households_csv(
        [(fresh, OTHER, 1, 1), (w.households[OTHER], OWN, 1, 1), (fresh[::-1], OWN, 1, 1)]
    )
    resp = await w.client.post(
        "/v1/admin/households/import",
        data=text.encode(),
        headers={**w.operator, "Content-Type": "text/csv"},
    )
    body = await expect(resp, 200)
    # another province's line, and a household of another province moved here: refused
    assert [r["line"] for r in body["rejected"]][:2] == [2, 3], body
    assert "scope" in body["rejected"][0]["error"] and "scope" in body["rejected"][1]["error"]
    assert (
        await w.conn.fetchval(
            "SELECT province FROM households WHERE national_id = $1", w.households[OTHER]
        )
        == OTHER
    )
    assert not await w.conn.fetchval(
        "SELECT count(*) FROM households WHERE national_id = $1", fresh
    )


async def patch_household(w: World) -> None:
    path = "/v1/admin/households/{}"
    resp = await w.client.patch(
        path.format(w.households[OTHER]), json={"status": "suspended"}, headers=w.operator
    )
    await expect(resp, 403, OUT)
    assert (
        await w.conn.fetchval(
            "SELECT status FROM households WHERE national_id = $1", w.households[OTHER]
        )
        == "active"
    )
    resp = await w.client.patch(
        path.format(w.households[OWN]), json={"status": "suspended"}, headers=w.operator
    )
    await expect(resp, 200)


async def create_tranche(w: World) -> None:
    resp = await w.client.post("/v1/admin/tranches", json=tranche_body(), headers=w.operator)
    await expect(resp, 403, NATIONAL)
    assert not await w.conn.fetchval("SELECT count(*) FROM tranches")


async def list_tranches(w: World) -> None:
    # programme phases are national facts: a provincial office reads them
    await expect(await w.client.get("/v1/admin/tranches", headers=w.operator), 200)


async def create_merchant(w: World) -> None:
    resp = await w.client.post(
        "/v1/admin/merchants", json={"name": "x", "province": OTHER}, headers=w.operator
    )
    await expect(resp, 403, OUT)
    resp = await w.client.post(
        "/v1/admin/merchants",
        json={"name": "x", "province": OWN, "category": "butcher"},
        headers=w.operator,
    )
    made = await expect(resp, 201)
    assert await w.conn.fetchval(
        "SELECT (province, category) = ($2, 'butcher') FROM merchants WHERE id = $1",
        made["id"],
        OWN,
    )


async def patch_merchant(w: World) -> None:
    path = "/v1/admin/merchants/{}"
    change = {"status": "suspended"}
    resp = await w.client.patch(path.format(w.merchants[OTHER]), json=change, headers=w.operator)
    await expect(resp, 403, OUT)
    assert (
        await w.conn.fetchval("SELECT status FROM merchants WHERE id = $1", w.merchants[OTHER])
        == "active"
    )
    resp = await w.client.patch(path.format(w.merchants[OWN]), json=change, headers=w.operator)
    assert (await expect(resp, 200))["category"] == "grocery"
    # a store that does not exist is still 404, not 403
    resp = await w.client.patch(path.format(999999), json=change, headers=w.operator)
    await expect(resp, 404, "merchant_not_found")


async def create_terminal(w: World) -> None:
    path = "/v1/admin/merchants/{}/terminals"
    before = await w.conn.fetchval("SELECT count(*) FROM terminals")
    await expect(await w.client.post(path.format(w.merchants[OTHER]), headers=w.operator), 403, OUT)
    assert await w.conn.fetchval("SELECT count(*) FROM terminals") == before
    await expect(await w.client.post(path.format(w.merchants[OWN]), headers=w.operator), 201)


async def rotate_secret(w: World) -> None:
    path = "/v1/admin/terminals/{}/secret"
    resp = await w.client.post(path.format(w.terminals[OTHER]), json={}, headers=w.operator)
    await expect(resp, 403, OUT)
    assert await w.conn.fetchval(
        "SELECT previous_box IS NULL FROM terminals WHERE id = $1", w.terminals[OTHER]
    )
    resp = await w.client.post(path.format(w.terminals[OWN]), json={}, headers=w.operator)
    await expect(resp, 201)


async def patch_terminal(w: World) -> None:
    path = "/v1/admin/terminals/{}"
    change = {"status": "suspended"}
    resp = await w.client.patch(path.format(w.terminals[OTHER]), json=change, headers=w.operator)
    await expect(resp, 403, OUT)
    resp = await w.client.patch(path.format(w.terminals[OWN]), json=change, headers=w.operator)
    await expect(resp, 200)
    resp = await w.client.patch(path.format(10**9), json=change, headers=w.operator)
    await expect(resp, 404, "terminal_not_found")


async def ranking(w: World) -> None:
    for headers in (w.operator, w.auditor):
        path = "/v1/inspection/stores?province=" + OTHER
        await expect(await w.client.get(path, headers=headers), 403, OUT)
        body = await expect(await w.client.get("/v1/inspection/stores", headers=headers), 200)
        assert body["province"] == OWN  # pinned to its own by default


async def store_history(w: World) -> None:
    path = "/v1/inspection/stores/{}"
    for headers in (w.operator, w.auditor):
        resp = await w.client.get(path.format(w.merchants[OTHER]), headers=headers)
        await expect(resp, 403, OUT)
        await expect(await w.client.get(path.format(w.merchants[OWN]), headers=headers), 200)


async def get_rules(w: World) -> None:
    await expect(await w.client.get("/v1/inspection/rules", headers=w.auditor), 200)


async def put_rules(w: World) -> None:
    resp = await w.client.put("/v1/inspection/rules", json={"rules": {}}, headers=w.operator)
    await expect(resp, 403, NATIONAL)
    resp = await w.client.put("/v1/inspection/rules", json={"rules": {}}, headers=w.national)
    await expect(resp, 201)


async def ledger(w: World, path: str) -> None:
    # a provincial auditor sees the rows of its province's stores only: none of another's
    resp = await w.client.get(f"{path}?merchant_id={w.merchants[OTHER]}", headers=w.auditor)
    await expect(resp, 200)


async def national_read(w: World, path: str) -> None:
    # national figures: every province compares itself with the others
    for headers in (w.operator, w.auditor):
        await expect(await w.client.get(path, headers=headers), 200)


async def stats(w: World) -> None:
    await national_read(w, "/v1/stats")
    # all 31 provinces for everyone; a provincial token is told its own (the dashboard pins it)
    resp = await w.client.get("/v1/stats", headers=w.operator)
    assert len((await resp.json())["provinces"]) == 31
    assert resp.headers["X-Token-Province"] == OWN
    resp = await w.client.get("/v1/stats", headers=w.national)
    assert "X-Token-Province" not in resp.headers


async def settlement(w: World) -> None:
    path = "/v1/reports/settlement?date=2026-01-01"
    for headers in (w.operator, w.auditor):
        await expect(await w.client.get(path, headers=headers), 200)


async def verify(w: World) -> None:
    # the hash chain is one for the whole ledger
    await expect(await w.client.get("/v1/ledger/verify", headers=w.auditor), 200)


async def stream(w: World) -> None:
    pass  # the same figures as /v1/stats, as a stream: test_stats_stream covers it


async def reconciliations(w: World) -> None:
    for province in (OWN, OTHER):
        await w.conn.execute(
            "INSERT INTO terminal_reconciliations (terminal_id, business_date, status, reported, "
            "processor, differences) VALUES ($1, '2026-01-01', 'balanced', $2, $2, '{}')",
            w.terminals[province],
            json.dumps({name: {"count": 0, "amount": 0} for name in offline.TOTALS}),
        )
    for headers, mine in (
        (w.operator, [w.terminals[OWN]]),
        (w.national, list(w.terminals.values())),
    ):
        body = await expect(
            await w.client.get("/v1/reconciliation?date=2026-01-01", headers=headers), 200
        )
        assert [t["terminal_id"] for t in body["terminals"]] == sorted(mine), body


async def offline_rows(w: World) -> None:
    """A forwarded purchase at each province's terminal, with a gap below it, declined."""
    for province in (OWN, OTHER):
        terminal = w.terminals[province]
        await w.conn.execute(
            "INSERT INTO terminal_requests (terminal_id, request_id, kind, body_hash, outcome, "
            "reason) VALUES ($1, 'off-2', 'redemption', '\\x00', 'declined', 'late')",
            terminal,
        )
        await w.conn.execute(
            "INSERT INTO offline_purchases (terminal_id, offline_seq, request_id, body_hash, "
            "national_id, amount, captured_at, posted_at) VALUES ($1, 2, 'off-2', '\\x00', $2, "
            "1000, '2026-01-01 09:00+03:30', '2026-01-01 10:00+03:30')",
            terminal,
            w.households[province],
        )


async def offline_gaps(w: World) -> None:
    await offline_rows(w)
    body = await expect(await w.client.get("/v1/admin/offline/gaps", headers=w.operator), 200)
    assert [t["terminal_id"] for t in body["terminals"]] == [w.terminals[OWN]], body
    body = await expect(await w.client.get("/v1/admin/offline/gaps", headers=w.national), 200)
    assert len(body["terminals"]) == 2, body


async def offline_declines(w: World) -> None:
    await offline_rows(w)
    path = "/v1/reports/offline-declines?date=2026-01-01"
    body = await expect(await w.client.get(path, headers=w.auditor), 200)
    assert [d["terminal_id"] for d in body["declines"]] == [w.terminals[OWN]], body
    other = f"{path}&merchant_id={w.merchants[OTHER]}"
    assert (await expect(await w.client.get(other, headers=w.auditor), 200))["declines"] == []


Case = Callable[[World], Awaitable[None]]

CASES: dict[tuple[str, str], Case] = {
    ("POST", "/v1/admin/households/import"): import_households,
    ("PATCH", "/v1/admin/households/{national_id}"): patch_household,
    ("POST", "/v1/admin/tranches"): create_tranche,
    ("GET", "/v1/admin/tranches"): list_tranches,
    ("POST", "/v1/admin/merchants"): create_merchant,
    ("PATCH", "/v1/admin/merchants/{id}"): patch_merchant,
    ("POST", "/v1/admin/merchants/{id}/terminals"): create_terminal,
    ("POST", "/v1/admin/terminals/{id}/secret"): rotate_secret,
    ("PATCH", "/v1/admin/terminals/{id}"): patch_terminal,
    ("GET", "/v1/inspection/stores"): ranking,
    ("GET", "/v1/inspection/stores/{merchant_id}"): store_history,
    ("GET", "/v1/inspection/rules"): get_rules,
    ("PUT", "/v1/inspection/rules"): put_rules,
    ("GET", "/v1/ledger"): lambda w: ledger(w, "/v1/ledger"),
    ("GET", "/v1/ledger.csv"): lambda w: ledger(w, "/v1/ledger.csv"),
    ("GET", "/v1/ledger/verify"): verify,
    ("GET", "/v1/reports/settlement"): settlement,
    ("GET", "/v1/stats"): stats,
    ("GET", "/v1/stats/stream"): stream,
    ("GET", "/v1/stats/tranches"): lambda w: national_read(w, "/v1/stats/tranches"),
    ("GET", "/v1/stats/history"): lambda w: national_read(w, "/v1/stats/history"),
    ("GET", "/v1/stats/activity"): lambda w: national_read(w, "/v1/stats/activity"),
    ("GET", "/v1/reconciliation"): reconciliations,
    ("GET", "/v1/admin/offline/gaps"): offline_gaps,
    ("GET", "/v1/reports/offline-declines"): offline_declines,
}


def test_every_route_with_a_token_has_a_scope_case() -> None:
    with_token = {(r.method, r.path) for r in ROUTES if r.roles}
    assert with_token == set(CASES), "add the new route's province-scope case to CASES"


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda k: f"{k[0]} {k[1]}")
async def test_a_provincial_token_acts_on_its_province_only(
    world: World, key: tuple[str, str]
) -> None:
    await CASES[key](world)


async def test_every_admin_route_refuses_a_provincial_operator_elsewhere(world: World) -> None:
    """Every route of the operator API that names a store, terminal or household of another
    province is 403 province_out_of_scope, and those with no province (national acts) are 403
    national_scope_required, whatever the route table grows into."""
    writes = [r for r in ROUTES if r.tag == "operator" and r.method != "GET"]
    assert writes
    refused = {
        ("POST", "/v1/admin/households/import"),  # refused line by line instead (see above)
    }
    for route in writes:
        if (route.method, route.path) in refused:
            continue
        await CASES[(route.method, route.path)](world)


async def test_a_provincial_auditor_reads_its_province_ledger(
    world: World, conn: asyncpg.Connection
) -> None:
    for province in (OWN, OTHER):
        await conn.execute(
            """INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id,
                                   province, tranche_id, amount)
               VALUES ('redemption', $1, $2, $3, $4, $5, 1, 1000)""",
            "r-" + province,
            world.terminals[province],
            world.merchants[province],
            world.households[province],
            province,
        )
    resp = await world.client.get("/v1/ledger", headers=world.auditor)
    entries = (await expect(resp, 200))["entries"]
    assert [e["merchant_id"] for e in entries] == [world.merchants[OWN]]
    resp = await world.client.get("/v1/ledger.csv", headers=world.auditor)
    text = await resp.text()
    assert "r-" + OWN in text and "r-" + OTHER not in text
    today = inspection.today_in_tehran()
    for headers, expected in ((world.auditor, 1), (world.national, 2)):
        resp = await world.client.get(f"/v1/reports/settlement?date={today}", headers=headers)
        assert len((await expect(resp, 200))["merchants"]) == expected
    national_auditor = bearer(await tokens.create_token(conn, "auditor", "national"))
    resp = await world.client.get("/v1/ledger", headers=national_auditor)
    assert len((await expect(resp, 200))["entries"]) == 2


async def test_token_list_shows_the_scope(world: World) -> None:
    rows = await tokens.list_tokens(world.conn)
    assert sorted(str(r["province"]) for r in rows) == ["IR-15", "IR-15", "None"]
