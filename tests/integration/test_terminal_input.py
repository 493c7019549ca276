"""Malformed terminal requests, correctly signed: always 4xx with the SPEC error body, never a
5xx, never a write."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from tests.integration.terminal import Client, make_world

NID = "0084575948"
GOOD: dict[str, Any] = {"request_id": "ok-1", "national_id": NID, "amount": 1000}


def body(**change: Any) -> bytes:
    payload = {**GOOD, **change}
    return orjson.dumps({k: v for k, v in payload.items() if v is not ...})


BAD_REDEMPTIONS: list[tuple[str, bytes, str]] = [
    ("not json", b"{request_id: 1", "invalid_request"),
    ("empty", b"", "invalid_request"),
    ("a list", b"[]", "invalid_request"),
    ("null", b"null", "invalid_request"),
    ("missing amount", body(amount=...), "invalid_request"),
    ("missing national_id", body(national_id=...), "invalid_request"),
    ("missing request_id", body(request_id=...), "invalid_request"),
    ("amount as string", body(amount="1000"), "invalid_request"),
    ("amount as float", body(amount=1000.0), "invalid_request"),
    ("amount zero", body(amount=0), "invalid_request"),
    ("amount negative", body(amount=-5), "invalid_request"),
    ("amount over 10^12", body(amount=10**12 + 1), "invalid_request"),
    (
        "amount 2^64",
        b'{"request_id":"a","national_id":"0084575948","amount":18446744073709551616}',
        "invalid_request",
    ),
    (
        "amount 10^400",
        b'{"request_id":"a","national_id":"0084575948","amount":1' + b"0" * 400 + b"}",
        "invalid_request",
    ),
    ("amount true", body(amount=True), "invalid_request"),
    ("national id with Persian digits", body(national_id="۰۰۸۴۵۷۵۹۴۸"), "invalid_request"),
    ("national id bad checksum", body(national_id="0084575947"), "invalid_request"),
    ("national id as number", body(national_id=84575948), "invalid_request"),
    ("request_id too long", body(request_id="x" * 65), "invalid_request"),
    ("request_id with space", body(request_id="a b"), "invalid_request"),
    ("request_id empty", body(request_id=""), "invalid_request"),
    ("request_id unicode", body(request_id="رسید"), "invalid_request"),
    ("unknown field", body(tip=5), "invalid_request"),
    ("items not a list", body(items="rice"), "invalid_request"),
    ("items empty", body(items=[]), "invalid_request"),
    (
        "item unknown category",
        body(items=[{"category": "gold", "amount": 1000}]),
        "invalid_request",
    ),
    ("items do not add up", body(items=[{"category": "rice", "amount": 999}]), "invalid_request"),
    ("allow_partial as string", body(allow_partial="yes"), "invalid_request"),
    (
        "invalid utf-8",
        b'{"request_id":"\xff\xfe","national_id":"0084575948","amount":1}',
        "invalid_request",
    ),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, "invalid_request"),
]


@pytest.mark.parametrize(
    ("name", "raw", "code"), BAD_REDEMPTIONS, ids=[b[0] for b in BAD_REDEMPTIONS]
)
async def test_bad_redemption_bodies(
    client: Client,
    operator: dict[str, str],
    conn: asyncpg.Connection,
    name: str,
    raw: bytes,
    code: str,
) -> None:
    world = await make_world(client, operator, n=1)
    resp = await world.terminal.send("POST", "/v1/redemptions", raw=raw)
    assert resp.status == 422, (name, resp.status, resp.body)
    assert set(resp.body) == {"error"}
    assert resp.body["error"]["code"] == code
    assert resp.body["error"]["message"]
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 0
    assert await conn.fetchval("SELECT count(*) FROM terminal_requests") == 0


async def test_invalid_fields_are_named(client: Client, operator: dict[str, str]) -> None:
    world = await make_world(client, operator, n=1)
    resp = await world.terminal.send("POST", "/v1/redemptions", raw=body(amount="x", request_id=""))
    fields = {d["field"] for d in resp.body["error"]["details"]}
    assert fields == {"amount", "request_id"}
    assert "amount" in resp.body["error"]["message"]


async def test_wrong_content_type_and_oversized_body(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=1)
    resp = await world.terminal.send(
        "POST", "/v1/redemptions", raw=body(), content_type="text/plain"
    )
    assert resp.status == 415 and resp.body["error"]["code"] == "unsupported_media_type"
    huge = body(request_id="big", pad="x" * 200_000)
    resp = await world.terminal.send("POST", "/v1/redemptions", raw=huge)
    assert resp.status == 413 and resp.body["error"]["code"] == "payload_too_large"
    assert await conn.fetchval("SELECT count(*) FROM terminal_requests") == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b'{"request_id": "a"}',
        b'{"request_id": "a", "original_request_id": 5}',
        b'{"request_id": "a b", "original_request_id": "b"}',
        b"nope",
    ],
)
async def test_bad_reversal_bodies(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection, raw: bytes
) -> None:
    world = await make_world(client, operator, n=1)
    resp = await world.terminal.send("POST", "/v1/reversals", raw=raw)
    assert resp.status == 422 and resp.body["error"]["code"] == "invalid_request"
    assert await conn.fetchval("SELECT count(*) FROM pending_reversals") == 0


@pytest.mark.parametrize("nid", ["123", "00845759480", "%D9%A1", "0084575947", "abcdefghij"])
async def test_bad_national_ids_in_the_path(
    client: Client, operator: dict[str, str], nid: str
) -> None:
    world = await make_world(client, operator, n=1)
    resp = await world.terminal.send("GET", f"/v1/households/{nid}/balance")
    assert resp.status == 422 and resp.body["error"]["code"] == "invalid_national_id"
