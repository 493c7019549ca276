"""A signed POS terminal for the tests, and a ready-made world to redeem in."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient

from coupon import auth
from tests.integration.helpers import households_csv, national_ids, tranche_body

Client = TestClient[Any, Any]


# one redemption through the batch function, as a batch of one (categories as an array)
REDEEM_ONE = (
    "SELECT outcome, reason, entry_id, amount, remaining, tranche_id, province, merchant_id, "
    "created_at, replayed FROM redeem_many(ARRAY[$1::bigint], "
    "ARRAY[$2::text], ARRAY[$3::text], ARRAY[$4::bytea], ARRAY[$5::text], ARRAY[$6::bigint], "
    "ARRAY[array_to_string($7::text[], ',')], ARRAY[$8::boolean], $9)"
)


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Terminal:
    client: Client
    terminal_id: int
    secret: str
    merchant_id: int
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def nonce(self) -> str:
        return uuid.uuid4().hex

    async def send(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        sign_body: bytes | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> Response:
        body = raw if raw is not None else (b"" if payload is None else orjson.dumps(payload))
        signed = auth.signed_headers(
            self.terminal_id,
            self.secret,
            method,
            path,
            body if sign_body is None else sign_body,
            nonce or self.nonce(),
            timestamp,
        )
        all_headers = {
            **signed,
            **({"Content-Type": content_type} if method != "GET" else {}),
            **(headers or {}),
        }
        resp = await self.client.request(method, path, data=body, headers=all_headers)
        text = await resp.read()
        return Response(resp.status, orjson.loads(text) if text else None, dict(resp.headers))

    async def redeem(
        self, national_id: str, amount: int, request_id: str | None = None, **extra: Any
    ) -> Response:
        request_id = request_id or f"r-{uuid.uuid4().hex[:20]}"
        payload = {"request_id": request_id, "national_id": national_id, "amount": amount, **extra}
        return await self.send("POST", "/v1/redemptions", payload)

    async def reverse(self, original_request_id: str, request_id: str | None = None) -> Response:
        payload = {
            "request_id": request_id or f"v-{uuid.uuid4().hex[:20]}",
            "original_request_id": original_request_id,
        }
        return await self.send("POST", "/v1/reversals", payload)

    async def balance(self, national_id: str) -> Response:
        return await self.send("GET", f"/v1/households/{national_id}/balance")


async def make_terminal(
    client: Client, operator: dict[str, str], province: str = "IR-15"
) -> Terminal:
    resp = await client.post(
        "/v1/admin/merchants", json={"name": "Store", "province": province}, headers=operator
    )
    merchant_id = (await resp.json())["id"]
    resp = await client.post(f"/v1/admin/merchants/{merchant_id}/terminals", headers=operator)
    created = await resp.json()
    return Terminal(client, created["terminal_id"], created["secret"], merchant_id)


@dataclass
class World:
    """Households (with their credit), a store with a terminal, an open tranche."""

    terminal: Terminal
    tranche_id: int
    credit: dict[str, int]
    province: dict[str, str]


async def make_world(
    client: Client,
    operator: dict[str, str],
    n: int = 10,
    members: int = 2,
    provinces: tuple[str, ...] = ("IR-15", "IR-23", "IR-01"),
    **tranche: Any,
) -> World:
    ids = national_ids(n, seed=11)
    rows = [(nid, provinces[i % len(provinces)], members, 1 + i % 3) for i, nid in enumerate(ids)]
    resp = await client.post(
        "/v1/admin/households/import",
        data=households_csv(rows).encode(),
        headers={**operator, "Content-Type": "text/csv"},
    )
    assert resp.status == 200
    body = tranche_body(bands=[{"up_to_decile": 3, "per_member_credit": 5_000_000}], **tranche)
    resp = await client.post("/v1/admin/tranches", json=body, headers=operator)
    assert resp.status == 201, await resp.text()
    tranche_id = (await resp.json())["id"]
    terminal = await make_terminal(client, operator)
    return World(
        terminal,
        tranche_id,
        {nid: members * 5_000_000 for nid in ids},
        {nid: p for nid, p, _, _ in rows},
    )


async def invariants(conn: asyncpg.Connection) -> dict[str, Any]:
    """Check counters == ledger == credit minus balances, per province; return the figures."""
    ledger = {
        r["province"]: r
        for r in await conn.fetch("""
        WITH net AS (
            SELECT l.province, l.national_id, l.tranche_id,
                   sum(CASE WHEN l.kind = 'redemption' THEN 1 ELSE -1 END) AS n,
                   sum(CASE WHEN l.kind = 'redemption' THEN l.amount ELSE -l.amount END) AS amount
            FROM ledger l GROUP BY 1, 2, 3)
        SELECT province, sum(n)::bigint AS transactions, sum(amount)::bigint AS amount,
               count(DISTINCT national_id) FILTER (WHERE n > 0) AS served
        FROM net GROUP BY province""")
    }
    counters = {
        r["province"]: r
        for r in await conn.fetch("""
        SELECT province, sum(transactions)::bigint AS transactions, sum(amount)::bigint AS amount,
               sum(served)::bigint AS served
        FROM province_counters GROUP BY province""")
    }
    money = {
        r["province"]: r["spent"]
        for r in await conn.fetch("""
        SELECT province, sum(credit + carried_in - carried_out - balance)::bigint AS spent
        FROM entitlements GROUP BY province""")
    }
    for province, c in counters.items():
        led = ledger.get(province)
        transactions = led["transactions"] if led else 0
        amount = led["amount"] if led else 0
        served = led["served"] if led else 0
        assert (c["transactions"], c["amount"], c["served"]) == (transactions, amount, served), (
            province,
            dict(c),
            dict(led) if led else None,
        )
        assert money.get(province, 0) == amount, (province, money.get(province), amount)
    # every approved redemption has one ledger row; every stored approval names a real row
    orphans = await conn.fetchval("""
        SELECT count(*) FROM terminal_requests r
        WHERE r.outcome = 'approved' AND r.kind = 'redemption'
          AND NOT EXISTS (SELECT FROM ledger l WHERE l.seq = r.entry_id
                          AND l.kind = 'redemption' AND l.request_id = r.request_id)""")
    assert orphans == 0
    assert await conn.fetchval("SELECT count(*) FROM entitlements WHERE balance < 0") == 0
    return {"ledger": ledger, "counters": counters}


def valid_id_not_in(ids: dict[str, Any]) -> str:
    for candidate in national_ids(len(ids) + 50, seed=99):
        if candidate not in ids:
            return candidate
    raise AssertionError
