"""The `coupon` command against a real database (DATABASE_URL set: nothing embedded starts)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from coupon import migrations, tokens
from tests.integration.helpers import households_csv, national_ids


async def coupon(dsn: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coupon",
        *args,
        env={**os.environ, "DATABASE_URL": dsn, "COUPON_LOG_LEVEL": "warning"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_db_init_is_idempotent(superuser_dsn: str, conn: asyncpg.Connection) -> None:
    for _ in range(2):
        code, out, _ = await coupon(superuser_dsn, "db", "init")
        newest = migrations.available()[-1].label
        assert code == 0 and "nothing to apply" in out and f"schema at {newest}" in out
    assert await conn.fetchval("SELECT count(*) FROM provinces") == 31
    code, out, _ = await coupon(superuser_dsn, "db", "status")
    assert code == 0 and f"applied  {newest}" in out and out.endswith("current\n")


async def test_db_migrate_as_the_service_login_is_refused_in_one_line(dsn: str) -> None:
    code, _, err = await coupon(dsn, "db", "migrate")
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "coupon_owner" in err


async def test_db_roles_prints_what_a_dba_runs(dsn: str) -> None:
    code, out, _ = await coupon(dsn, "db", "roles", "--database", "kalabarg")
    assert code == 0
    assert "CREATE DATABASE kalabarg OWNER coupon_owner;" in out
    assert "NOSUPERUSER" in out and "GRANT coupon_reader TO coupon_writer;" in out


async def test_token_create_prints_the_token_last(dsn: str, conn: asyncpg.Connection) -> None:
    code, out, _ = await coupon(dsn, "token", "create", "--role", "auditor", "--name", "ci")
    assert code == 0
    token = out.strip().splitlines()[-1]
    assert token.startswith("cpn_")
    assert await tokens.role_of(conn, token) == "auditor"
    code, _, err = await coupon(dsn, "token", "create", "--role", "root")
    assert code == 2 and "invalid choice" in err


async def test_households_import_reports_bad_lines(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    ids = national_ids(3)
    path = tmp_path / "h.csv"
    path.write_text(
        households_csv([(ids[0], "IR-15", 2, 1), (ids[1], "IR-99", 2, 1), (ids[2], "IR-23", 3, 4)])
    )
    code, out, err = await coupon(dsn, "households", "import", str(path))
    assert code == 1  # some lines were rejected
    assert "imported 2, updated 0, rejected 1" in out and "line 3" in out
    assert "import" in err  # the progress bar
    assert await conn.fetchval("SELECT count(*) FROM households") == 2


async def test_audit_verify_and_settlement(dsn: str, conn: asyncpg.Connection) -> None:
    code, out, _ = await coupon(dsn, "audit", "verify", "--seal")
    assert code == 0 and '"ok": true' in out
    await conn.execute(
        "INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, province, "
        "tranche_id, amount) VALUES ('redemption', 'r1', 1, 1, '0084575948', 'IR-15', 1, 500)"
    )
    code, out, _ = await coupon(dsn, "audit", "verify", "--seal")
    # sealed, but a row no terminal was answered: a forgery
    assert code == 1 and '"head_seq": 1' in out and '"first_bad_seq": 1' in out
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("UPDATE ledger SET amount = 5000")
    code, out, _ = await coupon(dsn, "audit", "verify")
    assert code == 1 and '"first_bad_seq": 1' in out
    code, out, _ = await coupon(dsn, "report", "settlement", "--date", "2026-03-21")
    assert code == 0
    assert out.splitlines()[0] == (
        "merchant_id,name,province,redemptions,reversals,redeemed_amount,reversed_amount,net_amount"
    )
