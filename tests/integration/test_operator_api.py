"""The operator API end to end: every endpoint, good input and bad, against PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.integration.helpers import households_csv, national_ids, now, tranche_body

Client = TestClient[Any, Any]
CSV = {"Content-Type": "text/csv"}

NONE_REJECTED = {"rejected_count": 0, "rejected_by_reason": {}}


async def import_csv(client: Client, headers: dict[str, str], text: str) -> dict[str, Any]:
    resp = await client.post(
        "/v1/admin/households/import", data=text.encode(), headers={**headers, **CSV}
    )
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def assert_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "details" in body["error"]


# -- authentication ---------------------------------------------------------------------------


async def test_operator_endpoints_need_a_token(client: Client) -> None:
    resp = await client.get("/v1/admin/tranches")
    assert resp.status == 401
    assert_error(await resp.json(), "unauthorized")
    resp = await client.get("/v1/admin/tranches", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    resp = await client.get("/v1/admin/tranches", headers={"Authorization": "Basic abc"})
    assert resp.status == 401


async def test_auditor_token_is_forbidden_on_operator_endpoints(
    client: Client, auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    resp = await client.post(
        "/v1/admin/merchants", json={"name": "S", "province": "IR-15"}, headers=auditor
    )
    assert resp.status == 403
    assert_error(await resp.json(), "forbidden")
    assert await conn.fetchval("SELECT count(*) FROM merchants") == 0


async def test_tokens_are_stored_only_as_hashes(
    conn: asyncpg.Connection, operator: dict[str, str]
) -> None:
    token = operator["Authorization"].split()[1]
    stored = await conn.fetch("SELECT token_hash::text AS h, name FROM api_tokens")
    assert len(stored) == 1
    assert token not in stored[0]["h"] and token.encode().hex() not in stored[0]["h"]


# -- households -------------------------------------------------------------------------------


async def test_import_upserts_and_reports_bad_lines(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    ids = national_ids(3)
    text = (
        "national_id,province,members,decile\n"
        f"{ids[0]},IR-15,3,2\n"
        f"{ids[1][:9]}{(int(ids[1][9]) + 1) % 10},IR-15,3,2\n"  # wrong checksum
        f"{ids[1]},IR-77,3,2\n"  # unknown province
        f"{ids[1]},IR-15,0,2\n"  # members out of range
        f"{ids[1]},IR-15,3,0\n"  # decile out of range
        "garbage\n"  # unparsable
        f"{ids[2]},IR-23,5,9\n"
    )
    body = await import_csv(client, operator, text)
    assert body["imported"] == 2 and body["updated"] == 0
    assert [r["line"] for r in body["rejected"]] == [3, 4, 5, 6, 7]
    rows = await conn.fetch(
        "SELECT national_id, province, members, decile, status FROM households ORDER BY national_id"
    )
    assert {r["national_id"] for r in rows} == {ids[0], ids[2]}
    assert all(r["status"] == "active" for r in rows)

    # again, with changes: an upsert
    body = await import_csv(
        client,
        operator,
        households_csv([(ids[0], "IR-23", 4, 1), (ids[1], "IR-15", 1, 1)], ["suspended", "active"]),
    )
    assert body == {"imported": 1, "updated": 1, "rejected": [], **NONE_REJECTED}
    row = await conn.fetchrow("SELECT * FROM households WHERE national_id = $1", ids[0])
    assert (row["province"], row["members"], row["decile"], row["status"]) == (
        "IR-23",
        4,
        1,
        "suspended",
    )


async def test_import_without_status_keeps_the_status(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    [nid] = national_ids(1)
    await import_csv(client, operator, households_csv([(nid, "IR-15", 2, 2)], ["suspended"]))
    body = await import_csv(client, operator, households_csv([(nid, "IR-15", 3, 2)]))
    assert body == {"imported": 0, "updated": 1, "rejected": [], **NONE_REJECTED}
    assert await conn.fetchval("SELECT status FROM households") == "suspended"


@pytest.mark.parametrize(
    ("content_type", "payload", "status", "code"),
    [
        ("application/json", b"{}", 415, "unsupported_media_type"),
        ("text/csv", b"", 422, "invalid_request"),
        ("text/csv", b"id,name\n1,2\n", 422, "invalid_request"),
        (
            "text/csv",
            b"national_id,province,members,decile\n\xff\xfe,IR-15,1,1\n",
            422,
            "invalid_request",
        ),
    ],
)
async def test_import_rejects_unusable_files(
    client: Client,
    operator: dict[str, str],
    conn: asyncpg.Connection,
    content_type: str,
    payload: bytes,
    status: int,
    code: str,
) -> None:
    resp = await client.post(
        "/v1/admin/households/import",
        data=payload,
        headers={**operator, "Content-Type": content_type},
    )
    assert resp.status == status
    assert_error(await resp.json(), code)
    assert await conn.fetchval("SELECT count(*) FROM households") == 0


async def test_household_status(client: Client, operator: dict[str, str]) -> None:
    [nid, other] = national_ids(2)
    await import_csv(client, operator, households_csv([(nid, "IR-15", 2, 2)]))
    resp = await client.patch(
        f"/v1/admin/households/{nid}", json={"status": "suspended"}, headers=operator
    )
    assert resp.status == 200
    assert (await resp.json())["status"] == "suspended"
    resp = await client.patch(
        f"/v1/admin/households/{other}", json={"status": "active"}, headers=operator
    )
    assert resp.status == 404
    assert_error(await resp.json(), "household_not_found")
    resp = await client.patch(
        "/v1/admin/households/0084575947", json={"status": "active"}, headers=operator
    )
    assert resp.status == 422
    assert_error(await resp.json(), "invalid_national_id")
    resp = await client.patch(
        f"/v1/admin/households/{nid}", json={"status": "gone"}, headers=operator
    )
    assert resp.status == 422
    body = await resp.json()
    assert_error(body, "invalid_request")
    assert body["error"]["details"][0]["field"] == "status"


# -- tranches ---------------------------------------------------------------------------------


async def seed_households(client: Client, operator: dict[str, str]) -> list[str]:
    ids = national_ids(6)
    rows = [
        (ids[0], "IR-15", 3, 1),  # band 1: 3 * 5M
        (ids[1], "IR-15", 1, 3),  # band 1: 1 * 5M
        (ids[2], "IR-23", 4, 5),  # band 2: 4 * 3.5M
        (ids[3], "IR-23", 2, 8),  # above the last band: nothing
        (ids[4], "IR-23", 2, 2),  # suspended: nothing
        (ids[5], "IR-01", 2, 7),  # band 2: 2 * 3.5M
    ]
    status = ["active", "active", "active", "active", "suspended", "active"]
    await import_csv(client, operator, households_csv(rows, status))
    return ids


async def test_open_tranche_credits_each_band(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    ids = await seed_households(client, operator)
    body = tranche_body()
    body["bands"][1]["opens_at"] = (now() + dt.timedelta(days=2)).isoformat()
    resp = await client.post("/v1/admin/tranches", json=body, headers=operator)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["households_credited"] == 4
    assert created["total_credit"] == 15_000_000 + 5_000_000 + 14_000_000 + 7_000_000
    credit = {
        r["national_id"]: (r["credit"], r["balance"], r["opens_at"])
        for r in await conn.fetch(
            "SELECT national_id, credit, balance, opens_at FROM entitlements WHERE tranche_id = $1",
            created["id"],
        )
    }
    assert set(credit) == {ids[0], ids[1], ids[2], ids[5]}
    assert credit[ids[2]][:2] == (14_000_000, 14_000_000)
    assert credit[ids[2]][2] > credit[ids[0]][2]  # band 2 opens later
    # counters know the eligible households per province
    eligible = dict(
        await conn.fetch(
            "SELECT province, sum(eligible) FROM province_counters WHERE tranche_id = $1 "
            "GROUP BY province",
            created["id"],
        )
    )
    assert len(eligible) == 31
    assert (eligible["IR-15"], eligible["IR-23"], eligible["IR-01"], eligible["IR-02"]) == (
        2,
        1,
        1,
        0,
    )

    resp = await client.get("/v1/admin/tranches", headers=operator)
    listed = (await resp.json())["tranches"]
    assert [t["id"] for t in listed] == [created["id"]]
    assert listed[0]["bands"][0] == {
        "up_to_decile": 3,
        "per_member_credit": 5_000_000,
        "opens_at": listed[0]["starts_at"],
    }
    assert listed[0]["households_credited"] == 4


async def test_overlapping_tranche_is_rejected(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    await seed_households(client, operator)
    first = await client.post("/v1/admin/tranches", json=tranche_body(), headers=operator)
    assert first.status == 201
    resp = await client.post(
        "/v1/admin/tranches", headers=operator, json=tranche_body(start=dt.timedelta(days=10))
    )
    assert resp.status == 409
    assert_error(await resp.json(), "tranche_overlap")
    assert await conn.fetchval("SELECT count(*) FROM tranches") == 1
    assert await conn.fetchval("SELECT count(DISTINCT tranche_id) FROM entitlements") == 1
    # right after it is fine
    resp = await client.post(
        "/v1/admin/tranches", headers=operator, json=tranche_body(start=dt.timedelta(days=40))
    )
    assert resp.status == 201


async def test_expiry_and_carry_over(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    ids = await seed_households(client, operator)
    # a tranche that has already ended, then spend part of one household's credit in it
    old = await client.post(
        "/v1/admin/tranches",
        headers=operator,
        json=tranche_body(start=dt.timedelta(days=-20), length=dt.timedelta(days=10)),
    )
    old_id = (await old.json())["id"]
    await conn.execute(
        "UPDATE entitlements SET balance = balance - 1000000 "
        "WHERE national_id = $1 AND tranche_id = $2",
        ids[0],
        old_id,
    )
    # no carry-over: the old balance expires, the new credit is fresh
    expire = await client.post(
        "/v1/admin/tranches",
        headers=operator,
        json=tranche_body(start=dt.timedelta(days=-9), length=dt.timedelta(days=2)),
    )
    expire_id = (await expire.json())["id"]
    assert (
        await conn.fetchval(
            "SELECT balance FROM entitlements WHERE national_id = $1 AND tranche_id = $2",
            ids[0],
            expire_id,
        )
        == 15_000_000
    )
    # carry-over: the unspent balance of the previous tranche moves into the new one
    carry = await client.post(
        "/v1/admin/tranches",
        headers=operator,
        json=tranche_body(start=dt.timedelta(hours=-1), carry_over=True),
    )
    assert carry.status == 201, await carry.text()
    carried = await carry.json()
    row = await conn.fetchrow(
        "SELECT credit, carried_in, balance FROM entitlements "
        "WHERE national_id = $1 AND tranche_id = $2",
        ids[0],
        carried["id"],
    )
    assert (row["credit"], row["carried_in"], row["balance"]) == (
        15_000_000,
        15_000_000,
        30_000_000,
    )
    prev = await conn.fetchrow(
        "SELECT balance, carried_out FROM entitlements WHERE national_id = $1 AND tranche_id = $2",
        ids[0],
        expire_id,
    )
    assert (prev["balance"], prev["carried_out"]) == (0, 15_000_000)
    assert carried["total_credit"] == 2 * 41_000_000


async def test_carry_over_waits_for_the_previous_tranche_to_end(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    await seed_households(client, operator)
    await client.post(
        "/v1/admin/tranches", headers=operator, json=tranche_body(length=dt.timedelta(days=5))
    )
    resp = await client.post(
        "/v1/admin/tranches",
        headers=operator,
        json=tranche_body(start=dt.timedelta(days=6), carry_over=True),
    )
    assert resp.status == 409
    assert_error(await resp.json(), "previous_tranche_active")
    assert await conn.fetchval("SELECT count(*) FROM tranches") == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "name"),
        ({"bands": []}, "bands"),
        ({"bands": [{"up_to_decile": 11, "per_member_credit": 1}]}, "bands.0.up_to_decile"),
        ({"bands": [{"up_to_decile": 3, "per_member_credit": 0}]}, "bands.0.per_member_credit"),
        ({"bands": [{"up_to_decile": 3, "per_member_credit": 1.5}]}, "bands.0.per_member_credit"),
        ({"bands": [{"up_to_decile": 3, "per_member_credit": "5"}]}, "bands.0.per_member_credit"),
        (
            {"bands": [{"up_to_decile": 3, "per_member_credit": 10**13}]},
            "bands.0.per_member_credit",
        ),
        (
            {
                "bands": [
                    {"up_to_decile": 5, "per_member_credit": 1},
                    {"up_to_decile": 3, "per_member_credit": 1},
                ]
            },
            "body",
        ),
        ({"categories": ["rice", "caviar"]}, "categories.1"),
        ({"categories": []}, "categories"),
        ({"starts_at": "2026-01-01T00:00:00"}, "starts_at"),
        ({"starts_at": "yesterday"}, "starts_at"),
        ({"ends_at": "2020-01-01T00:00:00+00:00"}, "body"),
        ({"carry_over": "maybe"}, "carry_over"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_tranches_are_422_and_write_nothing(
    client: Client,
    operator: dict[str, str],
    conn: asyncpg.Connection,
    change: dict[str, Any],
    field: str,
) -> None:
    body = {**tranche_body(), **change}
    resp = await client.post("/v1/admin/tranches", json=body, headers=operator)
    assert resp.status == 422, await resp.text()
    error = await resp.json()
    assert_error(error, "invalid_request")
    assert field in [d["field"] for d in error["error"]["details"]]
    assert await conn.fetchval("SELECT count(*) FROM tranches") == 0


# -- merchants and terminals ------------------------------------------------------------------


async def test_merchants_and_terminals(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    resp = await client.post(
        "/v1/admin/merchants", json={"name": "فروشگاه ۱", "province": "IR-15"}, headers=operator
    )
    assert resp.status == 201
    merchant_id = (await resp.json())["id"]
    resp = await client.post(f"/v1/admin/merchants/{merchant_id}/terminals", headers=operator)
    assert resp.status == 201
    terminal = await resp.json()
    assert set(terminal) == {"terminal_id", "secret"} and len(terminal["secret"]) >= 32
    resp = await client.post(f"/v1/admin/merchants/{merchant_id}/terminals", headers=operator)
    assert (await resp.json())["secret"] != terminal["secret"]

    resp = await client.patch(
        f"/v1/admin/merchants/{merchant_id}", json={"status": "suspended"}, headers=operator
    )
    assert resp.status == 200 and (await resp.json())["status"] == "suspended"
    resp = await client.patch(
        f"/v1/admin/terminals/{terminal['terminal_id']}",
        json={"status": "suspended"},
        headers=operator,
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "suspended" and "secret" not in body
    assert (
        await conn.fetchval("SELECT status FROM terminals WHERE id = $1", terminal["terminal_id"])
        == "suspended"
    )


@pytest.mark.parametrize(
    ("path", "method", "body", "status", "code"),
    [
        ("/v1/admin/merchants", "POST", {"name": "S", "province": "IR-77"}, 422, "invalid_request"),
        (
            "/v1/admin/merchants",
            "POST",
            {"name": "S", "province": "Tehran"},
            422,
            "invalid_request",
        ),
        ("/v1/admin/merchants", "POST", {"province": "IR-15"}, 422, "invalid_request"),
        ("/v1/admin/merchants/999/terminals", "POST", None, 404, "merchant_not_found"),
        ("/v1/admin/merchants/abc/terminals", "POST", None, 404, "not_found"),
        ("/v1/admin/merchants/999", "PATCH", {"status": "suspended"}, 404, "merchant_not_found"),
        ("/v1/admin/terminals/999", "PATCH", {"status": "suspended"}, 404, "terminal_not_found"),
        ("/v1/admin/terminals/999", "PATCH", {"status": "closed"}, 422, "invalid_request"),
        ("/v1/admin/nothing", "GET", None, 404, "not_found"),
        ("/v1/admin/tranches", "DELETE", None, 405, "method_not_allowed"),
    ],
)
async def test_merchant_errors(
    client: Client,
    operator: dict[str, str],
    conn: asyncpg.Connection,
    path: str,
    method: str,
    body: Any,
    status: int,
    code: str,
) -> None:
    resp = await client.request(method, path, json=body, headers=operator)
    assert resp.status == status, await resp.text()
    assert_error(await resp.json(), code)
    assert await conn.fetchval("SELECT count(*) FROM merchants") == 0
    assert await conn.fetchval("SELECT count(*) FROM terminals") == 0


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b'{"name": "S", "province": "IR-15"}', "text/plain"),
        (b'{"name": "' + b"x" * 100_000 + b'", "province": "IR-15"}', "application/json"),
        (b'{"name": 5, "province": "IR-15"}', "application/json"),
        (b'{"name": "S", "province": "IR-15", "name": null}', "application/json"),
    ],
)
async def test_malformed_bodies_are_4xx(
    client: Client,
    operator: dict[str, str],
    conn: asyncpg.Connection,
    payload: bytes,
    content_type: str,
) -> None:
    resp = await client.post(
        "/v1/admin/merchants", data=payload, headers={**operator, "Content-Type": content_type}
    )
    assert 400 <= resp.status < 500
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]["code"]
    assert await conn.fetchval("SELECT count(*) FROM merchants") == 0
