"""Keys: bearer tokens expire and are revoked everywhere at once; terminal secrets are encrypted
under a key outside the database and rotate with an overlap in which both verify."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

from coupon import tokens
from coupon.app import create_app
from coupon.config import Settings
from tests.integration.terminal import Client
from tests.integration.test_cli import coupon

Factory = Callable[..., Awaitable[Client]]


async def test_tokens_expire_and_every_token_has_an_expiry(
    client: Client, conn: asyncpg.Connection
) -> None:
    short = await tokens.create_token(conn, "auditor", "short", days=1.5 / 86400)
    headers = {"Authorization": f"Bearer {short}"}
    assert (await client.get("/v1/ledger", headers=headers)).status == 200
    await asyncio.sleep(2)
    resp = await client.get("/v1/ledger", headers=headers)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    # the default is finite
    await tokens.create_token(conn, "operator", "default")
    days = await conn.fetchval(
        "SELECT extract(epoch FROM expires_at - created_at) / 86400 FROM api_tokens "
        "WHERE name = 'default'"
    )
    assert 89 < days <= tokens.DEFAULT_LIFETIME_DAYS


async def test_a_revoked_token_is_refused_by_every_process_within_a_second(
    settings: Settings, dsn: str, aiohttp_client: Factory, conn: asyncpg.Connection
) -> None:
    first = await aiohttp_client(create_app(settings, dsn))
    second = await aiohttp_client(create_app(settings, dsn))
    token = await tokens.create_token(conn, "auditor", "leaked")
    keep = await tokens.create_token(conn, "auditor", "kept")
    headers = {"Authorization": f"Bearer {token}"}
    for app in (first, second):
        assert (await app.get("/v1/ledger", headers=headers)).status == 200
    code, out, _ = await coupon(dsn, "token", "list")
    assert code == 0 and "leaked" in out and "kept" in out and "cpn_" not in out
    token_id = await conn.fetchval("SELECT id FROM api_tokens WHERE name = 'leaked'")
    code, out, err = await coupon(dsn, "token", "revoke", str(token_id))
    assert code == 0, err
    revoked_at = time.monotonic()
    for app in (first, second):
        assert (await app.get("/v1/ledger", headers=headers)).status == 401
    assert time.monotonic() - revoked_at < 1
    kept = {"Authorization": f"Bearer {keep}"}
    assert (await second.get("/v1/ledger", headers=kept)).status == 200
    code, out, _ = await coupon(dsn, "token", "list")
    line = next(x for x in out.splitlines() if x.endswith("leaked"))
    assert line.split()[3] != "-"  # its revocation time
    code, _, err = await coupon(dsn, "token", "revoke", str(token_id))
    assert code == 1 and "no live token" in err
