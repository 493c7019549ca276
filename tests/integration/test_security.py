"""Refusals that must change nothing: tampered and replayed terminal requests (every kind of
tampering, every terminal endpoint, across an app restart), suspended terminals and stores, and
every bearer-token endpoint against every wrong credential. test_terminal_api.py has the
basic signature cases; these go around them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest

from coupon import auth, tokens
from coupon.api.routes import ROUTES
from coupon.app import create_app
from coupon.config import Settings
from tests.integration.terminal import Client, Terminal, make_terminal, make_world

PATHS = {
    "redemption": ("POST", "/v1/redemptions"),
    "reversal": ("POST", "/v1/reversals"),
    "balance": ("GET", "/v1/households/{nid}/balance"),
}


async def footprint(conn: asyncpg.Connection) -> tuple[int, ...]:
    """Everything a terminal request can write."""
    return tuple(
        [
            await conn.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("ledger", "terminal_requests", "terminal_nonces", "pending_reversals")
        ]
        + [await conn.fetchval("SELECT sum(balance) FROM entitlements")]
    )


def request_for(kind: str, nid: str) -> tuple[str, str, bytes]:
    method, path = PATHS[kind]
    if kind == "redemption":
        body = orjson.dumps({"request_id": "sec-1", "national_id": nid, "amount": 1000})
    elif kind == "reversal":
        body = orjson.dumps({"request_id": "sec-2", "original_request_id": "sec-0"})
    else:
        body = b""
    return method, path.format(nid=nid), body


def flip(data: bytes, at: int) -> bytes:
    """One byte changed (the byte at `at`, counted from the end if negative)."""
    i = at % len(data)
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


TAMPERING: dict[str, Callable[[dict[str, str], bytes, Terminal, Terminal], Any]] = {
    # each returns (headers, body) for a request that must be refused with this code
    "a byte of the body": lambda h, b, t, o: (h, flip(b, 12)) if b else (h, b"x"),
    "the last byte of the body": lambda h, b, t, o: (h, flip(b, -2)) if b else (h, b" "),
    "the timestamp": lambda h, b, t, o: ({**h, "X-Timestamp": str(int(h["X-Timestamp"]) - 1)}, b),
    "the nonce": lambda h, b, t, o: ({**h, "X-Nonce": h["X-Nonce"] + "x"}, b),
    "the terminal id": lambda h, b, t, o: ({**h, "X-Terminal-Id": str(o.terminal_id)}, b),
    "one hex digit of the MAC": lambda h, b, t, o: (
        {**h, "X-Signature": h["X-Signature"][:-1] + ("0" if h["X-Signature"][-1] != "0" else "1")},
        b,
    ),
    "the MAC in upper case": lambda h, b, t, o: (
        {**h, "X-Signature": h["X-Signature"].upper()},
        b,
    ),
}


@pytest.mark.parametrize("kind", list(PATHS))
async def test_tampered_requests_are_refused_and_change_nothing(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection, kind: str
) -> None:
    world = await make_world(client, operator, n=2)
    t = world.terminal
    other = await make_terminal(client, operator)
    nid = next(iter(world.credit))
    await t.redeem(nid, 5000, request_id="sec-0")  # something a reversal could undo
    before = await footprint(conn)
    method, path, body = request_for(kind, nid)
    for name, tamper in TAMPERING.items():
        headers = auth.signed_headers(t.terminal_id, t.secret, method, path, body, t.nonce())
        headers, sent = tamper(headers, body, t, other)
        if method == "POST":
            headers["Content-Type"] = "application/json"
        resp = await client.request(method, path, data=sent, headers=headers)
        assert resp.status == 401, (kind, name, await resp.text())
        assert (await resp.json())["error"]["code"] == "bad_signature", (kind, name)
    # signed for another path, another method, another terminal's secret
    for signed_method, signed_path, secret in (
        (method, "/v1/reversals" if path != "/v1/reversals" else "/v1/redemptions", t.secret),
        ("PUT", path, t.secret),
        (method, path, other.secret),
    ):
        headers = auth.signed_headers(
            t.terminal_id, secret, signed_method, signed_path, body, t.nonce()
        )
        headers["Content-Type"] = "application/json"
        resp = await client.request(method, path, data=body, headers=headers)
        assert resp.status == 401, (kind, signed_method, signed_path)
    # out of the clock window, far off, and not a number
    for stamp in (int(time.time()) - 301, int(time.time()) + 301, 0, 10**12 - 1):
        resp_t = await t.send(method, path, raw=body, timestamp=stamp)
        assert resp_t.status == 401
        assert resp_t.body["error"]["code"] == "timestamp_out_of_window"
    resp_t = await t.send(method, path, raw=body, headers={"X-Timestamp": "soon"})
    assert resp_t.status == 401
    # no such terminal (well-formed, signed with a plausible secret)
    ghost = Terminal(client, 987654321, "00" * 32, 0)
    resp_t = await ghost.send(method, path, raw=body)
    assert resp_t.status == 401 and resp_t.body["error"]["code"] == "bad_signature"
    # each header missing
    for header in ("X-Terminal-Id", "X-Timestamp", "X-Nonce", "X-Signature"):
        headers = auth.signed_headers(t.terminal_id, t.secret, method, path, body, t.nonce())
        del headers[header]
        resp = await client.request(method, path, data=body, headers=headers)
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_signature"
    assert await footprint(conn) == before


async def test_a_replayed_request_is_refused_across_endpoints_and_restarts(
    client: Client,
    operator: dict[str, str],
    conn: asyncpg.Connection,
    settings: Settings,
    dsn: str,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    world = await make_world(client, operator, n=2)
    t = world.terminal
    nid = next(iter(world.credit))
    body = orjson.dumps({"request_id": "replay-1", "national_id": nid, "amount": 1000})
    nonce = uuid.uuid4().hex
    headers = auth.signed_headers(t.terminal_id, t.secret, "POST", "/v1/redemptions", body, nonce)
    headers["Content-Type"] = "application/json"
    first = await client.post("/v1/redemptions", data=body, headers=headers)
    assert first.status == 201
    after_first = await footprint(conn)
    # the captured request, byte for byte
    again = await client.post("/v1/redemptions", data=body, headers=headers)
    assert again.status == 401 and (await again.json())["error"]["code"] == "nonce_reused"
    # the same nonce on other endpoints, correctly signed for them
    balance = f"/v1/households/{nid}/balance"
    same_nonce = auth.signed_headers(t.terminal_id, t.secret, "GET", balance, b"", nonce)
    resp = await client.get(balance, headers=same_nonce)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "nonce_reused"
    rev = orjson.dumps({"request_id": "replay-2", "original_request_id": "replay-1"})
    same_nonce = auth.signed_headers(t.terminal_id, t.secret, "POST", "/v1/reversals", rev, nonce)
    resp = await client.post(
        "/v1/reversals", data=rev, headers={**same_nonce, "Content-Type": "application/json"}
    )
    assert resp.status == 401
    # another process (a new app on the same database) remembers it too
    restarted = await aiohttp_client(create_app(settings, dsn))
    resp = await restarted.post("/v1/redemptions", data=body, headers=headers)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "nonce_reused"
    assert await footprint(conn) == after_first


async def test_suspended_terminals_and_stores_are_refused(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=2)
    t = world.terminal
    nid = next(iter(world.credit))
    assert (await t.redeem(nid, 1000, request_id="before")).status == 201
    before = await footprint(conn)
    for kind, path in (("terminal", f"terminals/{t.terminal_id}"), ("merchant", None)):
        target = path or f"merchants/{t.merchant_id}"
        resp = await client.patch(
            f"/v1/admin/{target}", json={"status": "suspended"}, headers=operator
        )
        assert resp.status == 200
        declined = await t.redeem(nid, 1000)
        assert declined.status == 402 and declined.body["reason"] == f"{kind}_suspended"
        inquiry = await t.balance(nid)
        assert inquiry.status == 403 and inquiry.body["error"]["code"] == f"{kind}_suspended"
        # every financial message, reversals too: no credit comes back through a suspended POS
        for original in ("before", "never-seen"):
            refused = await t.reverse(original)
            assert refused.status == 403
            assert refused.body["error"]["code"] == f"{kind}_suspended"
        await client.patch(f"/v1/admin/{target}", json={"status": "active"}, headers=operator)
    after = await footprint(conn)
    # the declined redemptions are stored (replayable) and nonces recorded; nothing else moved
    assert (after[0], after[3], after[4]) == (before[0], before[3], before[4])
    assert after[1] == before[1] + 2
    assert (await t.reverse("before")).status == 201


def _url(path: str) -> str:
    return (
        path.replace("{national_id}", "0084575948")
        .replace("{id}", "1")
        .replace("{merchant_id}", "1")
    )


BEARER_ROUTES = [r for r in ROUTES if r.auth not in ("terminal", "none")]


@pytest.mark.parametrize(
    "route", BEARER_ROUTES, ids=[f"{r.method} {r.path}" for r in BEARER_ROUTES]
)
async def test_every_token_endpoint_refuses_wrong_credentials(
    client: Client, conn: asyncpg.Connection, route: Any
) -> None:
    roles = {"operator", "auditor"}
    allowed = set(route.auth.split(","))
    wrong = roles - allowed
    before = await conn.fetchval("SELECT count(*) FROM tranches") + await conn.fetchval(
        "SELECT count(*) FROM merchants"
    )
    url, method = _url(route.path), route.method
    cases: list[tuple[dict[str, str], int]] = [
        ({}, 401),
        ({"Authorization": "Bearer cpn_forged"}, 401),
        ({"Authorization": "Basic b3BlcmF0b3I6eA=="}, 401),
        ({"Authorization": "Bearer"}, 401),
    ]
    for role in wrong:
        token = await tokens.create_token(conn, role, "wrong")
        cases.append(({"Authorization": f"Bearer {token}"}, 403))
    # a terminal's signature opens no token endpoint
    signed = auth.signed_headers(1, "00" * 32, method, url, b"{}", uuid.uuid4().hex)
    cases.append((signed, 401))
    for headers, status in cases:
        resp = await client.request(
            method, url, data=b"{}", headers={**headers, "Content-Type": "application/json"}
        )
        assert resp.status == status, (headers, await resp.text())
        code = (await resp.json())["error"]["code"]
        assert code == ("forbidden" if status == 403 else "unauthorized")
    after = await conn.fetchval("SELECT count(*) FROM tranches") + await conn.fetchval(
        "SELECT count(*) FROM merchants"
    )
    assert after == before
