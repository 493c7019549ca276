"""Keys: bearer tokens expire and are revoked everywhere at once; terminal secrets are encrypted
under a key outside the database and rotate with an overlap in which both verify."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from coupon import tokens
from coupon.app import create_app
from coupon.config import Settings
from tests.integration.terminal import Client, Terminal, make_terminal
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


async def test_terminal_secrets_are_encrypted_and_hidden_from_auditors(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    t = await make_terminal(client, operator)
    row = await conn.fetchrow("SELECT * FROM terminals WHERE id = $1", t.terminal_id)
    assert row["secret"] is None and row["secret_box"] is not None
    assert t.secret.encode() not in row["secret_box"]
    assert bytes.fromhex(t.secret) not in row["secret_box"]
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE coupon_reader")
        assert await conn.fetchval("SELECT count(*) FROM terminals") >= 1  # which exist: yes
        for column in ("secret", "secret_box", "previous_box", "*"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.fetch(f"SELECT {column} FROM terminals")
    # a box copied to another terminal does not open as that terminal's
    other = await make_terminal(client, operator)
    await conn.execute(
        "UPDATE terminals SET secret_box = $1 WHERE id = $2", row["secret_box"], other.terminal_id
    )
    await conn.fetchval("SELECT nextval('terminal_key_changes_seq')")
    await asyncio.sleep(0.8)
    stolen = Terminal(client, other.terminal_id, t.secret, other.merchant_id)
    refused = await stolen.balance("0084575948")
    assert refused.status == 401 and refused.body["error"]["code"] == "bad_signature"


async def test_a_rotated_secret_holds_in_every_process_with_an_overlap(
    client: Client,
    operator: dict[str, str],
    settings: Settings,
    dsn: str,
    aiohttp_client: Factory,
) -> None:
    t = await make_terminal(client, operator)
    elsewhere = await aiohttp_client(create_app(settings, dsn))  # another process
    old_here, old_there = t, Terminal(elsewhere, t.terminal_id, t.secret, t.merchant_id)
    for pos in (old_here, old_there):
        assert (await pos.balance("0084575948")).status == 404  # verified, no such household
    resp = await client.post(
        f"/v1/admin/terminals/{t.terminal_id}/secret",
        json={"overlap_seconds": 2},
        headers=operator,
    )
    assert resp.status == 201
    rotated = await resp.json()
    assert rotated["secret"] != t.secret and rotated["terminal_id"] == t.terminal_id
    new_here = Terminal(client, t.terminal_id, rotated["secret"], t.merchant_id)
    new_there = Terminal(elsewhere, t.terminal_id, rotated["secret"], t.merchant_id)
    assert (await new_here.balance("0084575948")).status == 404
    await asyncio.sleep(1)  # the other process forgets what it cached within a second
    assert (await new_there.balance("0084575948")).status == 404
    for pos in (old_here, old_there):  # the overlap: the old secret still verifies
        assert (await pos.balance("0084575948")).status == 404
    await asyncio.sleep(1.5)
    for pos in (old_here, old_there):
        assert (await pos.balance("0084575948")).status == 401
    resp = await client.post("/v1/admin/terminals/999999/secret", json={}, headers=operator)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "terminal_not_found"


async def test_the_key_encryption_key_rotates_without_downtime(
    settings: Settings,
    dsn: str,
    aiohttp_client: Factory,
    operator: dict[str, str],
    tmp_path: Path,
) -> None:
    kek_file = tmp_path / "terminal-secrets.keys"
    mine = settings.model_copy(update={"kek_file": kek_file})
    client = await aiohttp_client(create_app(mine, dsn))
    terminals = [await make_terminal(client, operator) for _ in range(3)]
    first_key = kek_file.read_text().split()[0]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coupon",
        "keys",
        "rotate",
        env={**os.environ, "DATABASE_URL": dsn, "COUPON_KEK_FILE": str(kek_file)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert b"3 terminals' secrets re-encrypted" in out
    # the old key retired at once: nothing needs it any more
    lines = kek_file.read_text().splitlines()
    assert lines[1].split()[0] == first_key
    kek_file.write_text(lines[0] + "\n")
    await asyncio.sleep(1)
    for t in terminals:  # served throughout, now under the new key
        assert (await t.balance("0084575948")).status == 404
