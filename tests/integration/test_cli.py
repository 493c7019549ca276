"""The `coupon` command against a real database (DATABASE_URL set: nothing embedded starts)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import sys
from pathlib import Path

import asyncpg
import pytest

from coupon import cli, households, merchants, migrations, national_id, tokens, tranches
from coupon.config import Settings
from coupon.keyring import Keyring
from coupon.models import MerchantCreate, TrancheCreate
from tests.conftest import ROOT, TEST_SHARDS
from tests.integration.helpers import households_csv, national_ids, tranche_body
from tests.integration.terminal import REDEEM_ONE


async def coupon(
    dsn: str | None, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the command; dsn None: no DATABASE_URL (nor COUPON_DATA_DIR) in its environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "COUPON_DATA_DIR")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coupon",
        *args,
        env={
            **base,
            **({"DATABASE_URL": dsn} if dsn else {}),
            "COUPON_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        },
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    """The error of a failed command: one line on stderr beside the line naming the database
    (printed once it answered), and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("coupon: database:")]
    assert len(lines) == 1, err
    return lines[0]


def tree(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob("*"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    assert "coupon_owner" in one_line(err)
    assert "coupon: database: DATABASE_URL postgresql://coupon_writer@" in err
    assert "password" not in err


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
        "merchant_id,name,province,redemptions,reversals,redeemed_amount,reversed_amount,"
        "net_amount,offline_redemptions,offline_amount,declined_offline,declined_offline_amount"
    )


# -- failures: one line, what went wrong and what to do -----------------------------------------


async def test_import_of_a_missing_file_or_a_directory(dsn: str, tmp_path: Path) -> None:
    code, _, err = await coupon(dsn, "households", "import", str(tmp_path / "nope.csv"))
    assert code == 2 and "no such file" in one_line(err) and "examples/households.csv" in err
    code, _, err = await coupon(dsn, "households", "import", str(tmp_path))
    assert code == 2 and "is a directory" in one_line(err)


async def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(households_csv([(national_ids(1)[0], "IR-15", 2, 1)]))
    url = f"postgresql://coupon_writer:s3cret-pw@127.0.0.1:{closed_port()}/coupon"
    for args in (("households", "import", str(path)), ("token", "create", "--role", "operator")):
        code, out, err = await coupon(url, *args)
        line = one_line(err)
        assert code == 2 and out == ""
        assert "cannot reach" in line and "connection refused" in line and "DATABASE_URL" in line
        assert "s3cret-pw" not in err
    code, _, err = await coupon("postgresql://u@no-such-host.invalid/coupon", "merchants", "list")
    assert code == 2 and "unknown host" in one_line(err)


async def test_a_wrong_password_or_database_is_one_line(dsn: str) -> None:
    bad = dsn.replace("coupon_writer-test-password", "wrong-password")
    assert bad != dsn
    code, _, err = await coupon(bad, "merchants", "list")
    assert code == 2 and "refused the login" in one_line(err)
    missing = dsn.rsplit("/", 1)[0] + "/no_such_database"
    code, _, err = await coupon(missing, "merchants", "list")
    assert code == 2 and "database name" in one_line(err)


async def test_serve_on_a_busy_port_fails_before_anything(dsn: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for workers in ("1", "2"):
            code, out, err = await coupon(dsn, "serve", "--port", port, "--workers", workers)
            assert code == 2 and out == ""
            assert f"port {port} on 127.0.0.1 is already in use" in one_line(err)
            assert "--port" in err


async def test_demo_on_a_busy_port_fails_before_its_banner_and_mints_nothing(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, out, err = await coupon(
            dsn,
            "demo",
            "--port",
            str(busy.getsockname()[1]),
            env={"COUPON_DATA_DIR": str(tmp_path)},
        )
    assert code == 2 and "already in use" in one_line(err)
    assert "token" not in out
    assert await conn.fetchval("SELECT count(*) FROM api_tokens") == 0
    assert await conn.fetchval("SELECT count(*) FROM households") == 0


async def test_arguments_are_checked_in_one_line(dsn: str) -> None:
    for args, expected in (
        (("report", "settlement", "--date", "2026-13-01"), "no month 13"),
        (("report", "settlement", "--date", "1405-12-30"), "has no day 30"),
        (("report", "settlement", "--date", "yesterday"), "is not a date"),
        (("audit", "verify", "--head", "deadbeef"), "64 hex digits"),
        (("serve", "--port", "http"), "not a port number"),
        (("terminals", "add", "--merchant", "-3"), "-3 is not positive"),
        (("terminals", "add", "--merchant", "one"), "not a whole number"),
        (("db",), "required: COMMAND"),
    ):
        code, out, err = await coupon(dsn, *args)
        assert code == 2 and out == "", args
        assert expected in one_line(err), (args, err)


async def test_environment_mistakes_are_one_line(dsn: str) -> None:
    code, _, err = await coupon(dsn, "merchants", "list", env={"COUPON_DB_TIMEOUT": "soon"})
    assert code == 2 and one_line(err).startswith("coupon: COUPON_DB_TIMEOUT:")


# -- which database ------------------------------------------------------------------------------


async def test_without_a_database_nothing_is_created_silently(tmp_path: Path) -> None:
    assert cli.find_data_dir(tmp_path) is None, "a .coupon/ above the test's directory"
    for args in (
        ("token", "create", "--role", "operator"),
        ("merchants", "list"),
        ("audit", "verify"),
        ("db", "status"),
        ("db", "migrate"),
        ("serve", "--port", str(closed_port())),
    ):
        code, out, err = await coupon(None, *args, cwd=tmp_path)
        line = one_line(err)
        assert code == 2 and out == "", args
        assert f"no .coupon/ directory in {tmp_path}" in line and "coupon db init" in line
    # an empty .coupon/ is found from below, and still nothing is made in it
    (tmp_path / ".coupon").mkdir()
    (tmp_path / "sub").mkdir()
    code, _, err = await coupon(None, "merchants", "list", cwd=tmp_path / "sub")
    assert code == 2 and f"{tmp_path / '.coupon'} holds no database yet" in one_line(err)
    code, _, err = await coupon(
        None, "merchants", "list", env={"COUPON_DATA_DIR": str(tmp_path / "elsewhere")}
    )
    assert code == 2 and "holds no database yet" in one_line(err)
    assert tree(tmp_path) == [".coupon", "sub"]


# -- dates, heads, stores and terminals ---------------------------------------------------------


async def test_merchants_and_terminals(dsn: str, conn: asyncpg.Connection) -> None:
    code, out, err = await coupon(
        dsn, "merchants", "add", "--name", "Shahrvand Ekbatan", "--province", "ir-23"
    )
    assert code == 0 and "(IR-23)" in out
    merchant_id = int(out.strip().splitlines()[-1])
    code, _, err = await coupon(dsn, "merchants", "add", "--name", "x", "--province", "IR-99")
    assert code == 2 and "unknown province 'IR-99'" in one_line(err) and "IR-15" in err

    code, out, _ = await coupon(dsn, "terminals", "add", "--merchant", str(merchant_id))
    assert code == 0 and "shown once" in out
    secret = out.strip().splitlines()[-1]
    terminal_id = int(out.split()[1])
    stored = await conn.fetchrow("SELECT * FROM terminals WHERE id = $1", terminal_id)
    # stored only encrypted, under the key file of the command's settings
    assert stored["secret"] is None and len(secret) == 64
    assert Keyring.from_settings(Settings()).open(terminal_id, stored["secret_box"]) == secret
    code, _, err = await coupon(dsn, "terminals", "add", "--merchant", "999999")
    assert code == 1 and "no merchant 999999" in one_line(err)

    code, out, _ = await coupon(dsn, "merchants", "list", "--province", "IR-23")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["id", "province", "category", "status", "terminals", "name"]
    assert row.split() == [
        str(merchant_id),
        "IR-23",
        "grocery",
        "active",
        "1",
        "Shahrvand",
        "Ekbatan",
    ]
    code, out, _ = await coupon(dsn, "terminals", "list")
    assert code == 0 and secret not in out and f"{terminal_id}  " in out

    code, out, _ = await coupon(dsn, "terminals", "suspend", str(terminal_id))
    assert code == 0 and "is suspended" in out
    code, out, _ = await coupon(dsn, "merchants", "suspend", str(merchant_id))
    assert code == 0 and "is suspended" in out
    statuses = await conn.fetchrow(
        "SELECT m.status AS m, t.status AS t FROM merchants m JOIN terminals t "
        "ON t.merchant_id = m.id WHERE t.id = $1",
        terminal_id,
    )
    assert dict(statuses) == {"m": "suspended", "t": "suspended"}
    code, out, _ = await coupon(dsn, "merchants", "list", "--status", "active")
    assert code == 0 and out.strip().splitlines() == [
        "id  province  category  status  terminals  name"
    ]
    code, out, _ = await coupon(dsn, "merchants", "activate", str(merchant_id))
    assert code == 0 and "is active" in out
    code, _, err = await coupon(dsn, "terminals", "suspend", "424242")
    assert code == 1 and "no terminal 424242" in one_line(err)


async def test_settlement_dates_solar_hijri_or_gregorian(
    dsn: str, conn: asyncpg.Connection
) -> None:
    merchant = await conn.fetchval(
        "INSERT INTO merchants (name, province) VALUES ('Store', 'IR-15') RETURNING id"
    )
    # 9 Azar 1405 = 30 November 2026, in Tehran
    await conn.execute(
        "INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, province, "
        "tranche_id, amount, created_at) VALUES ('redemption', 'r1', 1, $1, '0084575948', "
        "'IR-15', 1, 500, $2)",
        merchant,
        dt.datetime(2026, 11, 30, 10, tzinfo=dt.timezone(dt.timedelta(hours=3, minutes=30))),
    )
    for day in ("1405-09-09", "۱۴۰۵/۰۹/۰۹", "2026-11-30"):
        code, out, err = await coupon(dsn, "report", "settlement", "--date", day)
        assert code == 0
        assert f"{merchant},Store,IR-15,1,0,500,0,500,0,0,0,0" in out.splitlines(), (day, out)
        assert "Solar Hijri 1405-09-09" in err and "Gregorian 2026-11-30" in err
    code, out, err = await coupon(dsn, "report", "settlement", "--date", "1405-09-10")
    assert code == 0 and len(out.splitlines()) == 1 and "Gregorian 2026-12-01" in err


async def one_redemption(conn: asyncpg.Connection) -> None:
    """A household, a tranche, a store and one redemption through the terminal function."""
    nid = national_ids(1)[0]
    csv_text = households_csv([(nid, "IR-15", 2, 1)])
    await households.import_csv(conn, households.blocks_of(csv_text.encode()))
    body = tranche_body(bands=[{"up_to_decile": 3, "per_member_credit": 5_000_000}])
    await tranches.open_tranche(conn, TrancheCreate.model_validate(body))
    shop = await merchants.create_merchant(conn, MerchantCreate(name="Shop", province="IR-15"))
    made = await merchants.create_terminal(conn, shop, Keyring.from_settings(Settings()))
    row = await conn.fetchrow(
        REDEEM_ONE, made.terminal_id, "n1", "r1", bytes(32), nid, 500, [], False, TEST_SHARDS
    )
    assert row["outcome"] == "approved", dict(row)


async def test_a_head_not_found_is_not_called_tampering(dsn: str, conn: asyncpg.Connection) -> None:
    await one_redemption(conn)
    code, out, _ = await coupon(dsn, "audit", "verify", "--seal")
    assert code == 0
    head = next(line for line in out.splitlines() if '"head":' in line).split('"')[3]
    assert len(head) == 64
    code, out, _ = await coupon(dsn, "audit", "verify", "--head", head.upper())
    assert code == 0 and '"ok": true' in out
    typo = head[:-1] + ("0" if head[-1] != "0" else "1")
    code, out, err = await coupon(dsn, "audit", "verify", "--head", typo)
    line = one_line(err)
    assert code == 3 and line.startswith("coupon: head not found") and "copied whole" in line
    assert "rewritten" not in err and '"first_bad_seq": null' in out
    # tampering is still told as such, and apart
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("UPDATE ledger SET amount = 5000")
    code, out, err = await coupon(dsn, "audit", "verify", "--head", head)
    assert code == 1 and '"first_bad_seq": 1' in out and "does not match the ledger" in err


# -- help and the sample data ---------------------------------------------------------------------


async def test_help_tells_what_defaults_and_environment() -> None:
    code, out, _ = await coupon(None, "serve", "--help")
    assert code == 0
    assert "serve the HTTP API" in out and "default: 1" in out
    for variable in ("DATABASE_URL", "COUPON_DATA_DIR", "COUPON_PORT", "COUPON_DB_TIMEOUT"):
        assert variable in out
    assert "(default: 8080)" in out and "(default: 5.0)" in out
    code, out, _ = await coupon(None, "report", "settlement", "--help")
    assert code == 0 and "Solar Hijri" in out and "DATABASE_URL" in out
    code, out, _ = await coupon(None, "--help")
    assert code == 0 and all(c in out for c in ("merchants", "terminals", "demo", "audit"))


async def test_the_sample_households_csv(dsn: str, conn: asyncpg.Connection) -> None:
    sample = ROOT / "examples" / "households.csv"
    lines = sample.read_text().splitlines()
    assert lines[0] == "national_id,province,members,decile,status"
    assert all(national_id.is_valid(line.split(",")[0]) for line in lines[1:])
    code, out, _ = await coupon(dsn, "households", "import", str(sample))
    assert code == 0 and f"imported {len(lines) - 1}, updated 0, rejected 0" in out
    assert await conn.fetchval("SELECT count(*) FROM households") == len(lines) - 1


async def test_a_reader_that_goes_away_is_no_error(dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO merchants (name, province) SELECT 'Store ' || i, 'IR-15' "
        "FROM generate_series(1, 20000) i"
    )
    read, write = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "coupon", "merchants", "list"),
        env={**os.environ, "DATABASE_URL": dsn, "COUPON_LOG_LEVEL": "warning"},
        stdout=write,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write)
    os.read(read, 100)  # like `| head -1`
    os.close(read)
    assert proc.stderr is not None
    err = (await asyncio.wait_for(proc.stderr.read(), 60)).decode()
    assert await proc.wait() == 141
    assert "Traceback" not in err and "Broken pipe" not in err and "Exception ignored" not in err


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_writes_request_logs_where_told(dsn: str, tmp_path: Path, workers: int) -> None:
    log_file = tmp_path / "logs" / "serve.log"
    port = closed_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "coupon", "serve", "--port", str(port)),
        *("--workers", str(workers)),
        env={
            **os.environ,
            "DATABASE_URL": dsn,
            "COUPON_LOG_FILE": str(log_file),
            "COUPON_POOL_MAX_SIZE": "2",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert first.decode().strip() == f"coupon: request logs go to {log_file}"
        serving = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert serving.decode().startswith("serving on")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 401")
        writer.close()
    finally:
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert b'"event"' not in out  # no JSON line on stdout
    assert '"route":"/v1/stats","status":401' in log_file.read_text()


async def test_token_and_secret_come_last_even_with_stderr(
    dsn: str, conn: asyncpg.Connection
) -> None:
    code, out, err = await coupon(dsn, "token", "create", "--role", "operator")
    assert code == 0 and err == ""  # `out + err`, or `2>&1 | tail -1`, still ends with the token
    assert "DATABASE_URL postgresql://coupon_writer@" in out
    assert await tokens.role_of(conn, (out + err).strip().splitlines()[-1]) == "operator"
    merchant = await conn.fetchval(
        "INSERT INTO merchants (name, province) VALUES ('S', 'IR-15') RETURNING id"
    )
    code, out, err = await coupon(dsn, "terminals", "add", "--merchant", str(merchant))
    assert code == 0 and err == "" and len((out + err).strip().splitlines()[-1]) == 64


async def test_offline_switch_gaps_reconciliations_and_declines(
    dsn: str, conn: asyncpg.Connection
) -> None:
    merchant = await conn.fetchval(
        "INSERT INTO merchants (name, province) VALUES ('Store', 'IR-15') RETURNING id"
    )
    terminal = await conn.fetchval(
        "INSERT INTO terminals (merchant_id) VALUES ($1) RETURNING id", merchant
    )
    code, out, _ = await coupon(dsn, "terminals", "offline-enable", str(terminal))
    assert code == 0 and "may work offline" in out
    assert await conn.fetchval("SELECT offline_enabled FROM terminals WHERE id = $1", terminal)
    code, out, _ = await coupon(dsn, "terminals", "list")
    assert code == 0 and "offline_enabled" in out.splitlines()[0]
    code, out, _ = await coupon(dsn, "terminals", "offline-disable", str(terminal))
    assert code == 0 and "may not work offline" in out
    code, _, err = await coupon(dsn, "terminals", "offline-enable", "424242")
    assert code == 1 and "no terminal 424242" in one_line(err)
    # a forwarded purchase with seq 3, declined: seq 1 and 2 are missing
    await conn.execute(
        "INSERT INTO offline_purchases (terminal_id, offline_seq, request_id, body_hash, "
        "national_id, amount, captured_at, posted_at) VALUES ($1, 3, 'o3', '\\x00', "
        "'0084575948', 700, $2, $2)",
        terminal,
        dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC),
    )
    await conn.execute(
        "INSERT INTO terminal_requests (terminal_id, request_id, kind, body_hash, outcome, "
        "reason) VALUES ($1, 'o3', 'redemption', '\\x00', 'declined', 'late')",
        terminal,
    )
    code, out, _ = await coupon(dsn, "terminals", "gaps")
    assert code == 0 and out.splitlines()[1].split() == [str(terminal), str(merchant), "3", "2"]
    code, out, _ = await coupon(dsn, "report", "offline-declines", "--date", "1405-09-09")
    assert code == 0
    assert out.splitlines()[1].startswith(f"{terminal},{merchant},3,o3,0084575948,700,")
    assert out.splitlines()[1].endswith(",late")
    await conn.execute(
        "INSERT INTO terminal_reconciliations (terminal_id, business_date, status, reported, "
        "processor, differences, processor_only) VALUES ($1, '2026-11-30', 'out_of_balance', "
        "$2::text::jsonb, $2::text::jsonb, '{}', 2)",
        terminal,
        '{"online_redemptions": {"count": 1, "amount": 5}, '
        '"offline_redemptions": {"count": 0, "amount": 0}, '
        '"reversals": {"count": 0, "amount": 0}}',
    )
    code, out, _ = await coupon(
        dsn, "report", "reconciliation", "--date", "2026-11-30", "--status", "out_of_balance"
    )
    assert code == 0 and len(out.splitlines()) == 2
    assert out.splitlines()[1].startswith(f"{terminal},{merchant},out_of_balance,1,5,0,0,0,0,1,5")
    code, out, _ = await coupon(
        dsn, "report", "reconciliation", "--date", "2026-11-30", "--status", "balanced"
    )
    assert code == 0 and len(out.splitlines()) == 1
