"""The `coupon` command: db init|migrate|status|roles, serve, token create, households import,
audit verify, report settlement, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import gc
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from coupon import (
    audit,
    csvsafe,
    db,
    errors,
    households,
    logins,
    logs,
    merchants,
    migrations,
    signing,
    tokens,
)
from coupon.config import Settings
from coupon.keyring import Keyring

log = structlog.get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    settings = Settings()
    logs.configure(settings.log_level, buffered=settings.log_flush_interval > 0)
    try:
        result: int = args.run(settings, args)
    except errors.DatabaseNotReady as exc:
        print(f"coupon: {exc}", file=sys.stderr)
        return 2
    except asyncpg.InsufficientPrivilegeError as exc:
        print(
            f"coupon: the database refused: {exc} (migrations run as {logins.OWNER}, or a "
            f"superuser; the service as {logins.WRITER})",
            file=sys.stderr,
        )
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coupon", description=__doc__)
    sub = parser.add_subparsers()

    dbp = sub.add_parser("db", help="database schema and roles").add_subparsers()
    init = dbp.add_parser(
        "init", help="create the schema, or migrate it to the newest version (idempotent)"
    )
    init.set_defaults(run=_db_migrate)
    migrate = dbp.add_parser("migrate", help="apply the pending migrations (the same as init)")
    migrate.set_defaults(run=_db_migrate)
    status = dbp.add_parser("status", help="applied and pending migrations; exit 1 if not current")
    status.set_defaults(run=_db_status)
    roles = dbp.add_parser(
        "roles", help="print the SQL a DBA runs once: login roles and the database"
    )
    roles.add_argument("--database", default="coupon", help="database name (default: coupon)")
    roles.set_defaults(run=_db_roles)

    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(run=_serve)

    token = sub.add_parser("token", help="API tokens").add_subparsers()
    create = token.add_parser("create", help="create an operator or auditor token")
    create.add_argument("--role", required=True, choices=["operator", "auditor"])
    create.add_argument("--name", default="")
    create.add_argument(
        "--days",
        type=float,
        default=tokens.DEFAULT_LIFETIME_DAYS,
        help=f"days the token works (default {tokens.DEFAULT_LIFETIME_DAYS})",
    )
    create.set_defaults(run=_token_create)
    listing = token.add_parser("list", help="every token: id, role, name, expiry, revocation")
    listing.set_defaults(run=_token_list)
    revoke = token.add_parser("revoke", help="revoke a token by id (every process, at once)")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(run=_token_revoke)

    keyp = sub.add_parser(
        "keys", help="the key file that encrypts terminal secrets"
    ).add_subparsers()
    rotate = keyp.add_parser(
        "rotate",
        help="put a new key first in the key file and re-encrypt every terminal secret under it "
        "(running servers follow within a second; then the old key's line may go)",
    )
    rotate.set_defaults(run=_keys_rotate)

    hh = sub.add_parser("households", help="households").add_subparsers()
    imp = hh.add_parser("import", help="import households from a CSV file")
    imp.add_argument("file", type=Path)
    imp.set_defaults(run=_households_import)

    aud = sub.add_parser("audit", help="ledger audit").add_subparsers()
    ver = aud.add_parser(
        "verify", help="recompute the ledger's hash chain, check its signatures, reconcile"
    )
    ver.add_argument("--head", default=None, help="a head hash recorded earlier, to check")
    ver.add_argument("--seal", action="store_true", help="seal pending rows first")
    ver.add_argument(
        "--offline",
        type=Path,
        metavar="FILE",
        help="check an export (coupon audit export) instead, with no database",
    )
    ver.add_argument(
        "--public-key",
        action="append",
        default=[],
        help="a trusted signing key: 64 hex digits or a PEM file (repeatable; default: the "
        "key file's and COUPON_SEAL_TRUSTED_KEYS)",
    )
    ver.set_defaults(run=_audit_verify)
    exp = aud.add_parser("export", help="every sealed row and signed head, as JSON lines")
    exp.add_argument("file", type=Path)
    exp.set_defaults(run=_audit_export)

    report = sub.add_parser("report", help="reports").add_subparsers()
    settle = report.add_parser("settlement", help="per-store settlement of a day, as CSV")
    settle.add_argument(
        "--date",
        required=True,
        type=dt.date.fromisoformat,
        help="an Asia/Tehran calendar day, YYYY-MM-DD",
    )
    settle.set_defaults(run=_report_settlement)

    demo = sub.add_parser("demo", help="load demo data, serve it and simulate POS traffic")
    demo.add_argument("--host", default=None)
    demo.add_argument("--port", type=int, default=None)
    demo.add_argument("--no-serve", action="store_true", help="load the data and exit")
    demo.add_argument(
        "--rate", type=float, default=30.0, help="simulated POS requests a second (0: none)"
    )
    demo.add_argument("--households", type=int, default=None, help="households to load")
    demo.set_defaults(run=_demo)
    return parser


def _with_database(settings: Settings, work: Callable[[db.Connection], Awaitable[Any]]) -> Any:
    """Run work on one connection of the service's login, on a database at the newest schema
    (embedded PostgreSQL started and stopped around it)."""

    async def run() -> Any:
        async with db.database(settings) as database:
            conn = await asyncpg.connect(database.service)
            try:
                await migrations.check_current(conn)
                return await work(conn)
            finally:
                await conn.close()

    return asyncio.run(run())


async def _migrate(database: db.Database, settings: Settings) -> list[str]:
    conn = await asyncpg.connect(database.schema)
    try:
        return await migrations.migrate(conn, settings.counter_shards)
    finally:
        await conn.close()


def _db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> list[str]:
        async with db.database(settings) as database:
            return await _migrate(database, settings)

    done = asyncio.run(run())
    newest = migrations.available()[-1].label
    print(f"applied {', '.join(done)}" if done else "nothing to apply")
    print(f"schema at {newest}")
    return 0


def _db_status(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> migrations.Status:
        async with db.database(settings) as database:
            conn = await asyncpg.connect(database.schema)
            try:
                return await migrations.status(conn)
            finally:
                await conn.close()

    state = asyncio.run(run())
    for a in state.applied:
        print(
            f"applied  {a.version:04d}_{a.name}  {a.applied_at:%Y-%m-%d %H:%M:%S%z}  {a.applied_as}"
        )
    for m in state.pending:
        print(f"pending  {m.label}")
    for c in state.changed:
        print(f"changed  {c.label}  (the file differs from what was applied)")
    for u in state.unknown:
        print(f"unknown  {u.version:04d}_{u.name}  (newer than this code)")
    print("current" if state.current else "not current")
    return 0 if state.current else 1


def _db_roles(settings: Settings, args: argparse.Namespace) -> int:
    passwords = logins.new_passwords()
    print("-- Run once as a superuser (psql), then keep the passwords in your secret store.")
    for statement in logins.role_statements(passwords) + logins.database_statements(args.database):
        print(statement + ";")
    print("-- Then, on the Coupon server:")
    for role, use in ((logins.OWNER, "coupon db migrate"), (logins.WRITER, "coupon serve")):
        print(
            f"--   {use}: DATABASE_URL=postgresql://{role}:{passwords[role]}@HOST:5432/"
            f"{args.database}"
        )
    return 0


def _token_create(settings: Settings, args: argparse.Namespace) -> int:
    async def create(conn: db.Connection) -> str:
        return await tokens.create_token(conn, args.role, args.name, args.days)

    token = _with_database(settings, create)
    print(f"{args.role} token (shown once, store it now):")
    print(token)
    return 0


def _token_list(settings: Settings, args: argparse.Namespace) -> int:
    rows = _with_database(settings, tokens.list_tokens)
    print(f"{'id':>5}  {'role':8}  {'expires_at':25}  {'revoked_at':25}  name")
    for r in rows:
        revoked = r["revoked_at"].isoformat(timespec="seconds") if r["revoked_at"] else "-"
        expires = r["expires_at"].isoformat(timespec="seconds")
        print(f"{r['id']:>5}  {r['role']:8}  {expires:25}  {revoked:25}  {r['name']}")
    return 0


def _token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async def run(conn: db.Connection) -> bool:
        return await tokens.revoke(conn, args.id)

    if not _with_database(settings, run):
        print(f"error: no live token has id {args.id}", file=sys.stderr)
        return 1
    print(f"token {args.id} revoked")
    return 0


def _keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    keyring = Keyring.from_settings(settings)
    key_id = keyring.rotate()

    async def run(conn: db.Connection) -> int:
        async with conn.transaction():
            done = await merchants.rewrap_secrets(conn, keyring)
            await conn.fetchval(db.q("terminal_keys_changed"))
        return done

    done = _with_database(settings, run)
    print(f"key {key_id} now encrypts; {done} terminals' secrets re-encrypted under it")
    print(f"older keys in {keyring.path} may now be removed")
    return 0


def _households_import(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    size = args.file.stat().st_size

    async def run(conn: db.Connection) -> households.ImportResult:
        with (
            args.file.open("rb") as f,
            tqdm(total=size, unit="B", unit_scale=True, desc="import", file=sys.stderr) as bar,
        ):

            async def blocks() -> AsyncIterator[bytes]:
                while block := f.read(1 << 20):
                    bar.update(len(block))
                    yield block

            return await households.import_csv(conn, blocks())

    try:
        result: households.ImportResult = _with_database(settings, run)
    except households.CsvFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {result.imported}, updated {result.updated}, rejected {result.rejected_count}")
    for rejection in result.rejected[:20]:
        print(f"  line {rejection['line']}: {rejection['error']}")
    if result.rejected_count > 20:
        print(f"  ... and {result.rejected_count - 20} more")
    return 0 if not result.rejected_count else 1


def _audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    head = bytes.fromhex(args.head) if args.head else None
    keys = signing.SealKeys.from_settings(settings, create=args.seal)
    if args.public_key:
        keys = signing.SealKeys(None, [signing.load_public(k) for k in args.public_key])
    if args.offline is not None:
        with args.offline.open("rb") as lines:
            result = audit.verify_export(lines, keys)
    else:

        async def run(conn: db.Connection) -> Any:
            if args.seal:
                await audit.seal(conn, keys)
            return await audit.verify(conn, keys, head)

        result = _with_database(settings, run)
    print(result.model_dump_json(indent=2))
    return 0 if result.ok else 1


def _audit_export(settings: Settings, args: argparse.Namespace) -> int:
    async def run(conn: db.Connection) -> int:
        with args.file.open("wb") as out:
            return await audit.export(conn, out.write)

    rows = _with_database(settings, run)
    print(f"exported {rows} sealed entries to {args.file}")
    return 0


def _report_settlement(settings: Settings, args: argparse.Namespace) -> int:
    async def run(conn: db.Connection) -> list[dict[str, Any]]:
        return await audit.settlement(conn, args.date)

    rows = _with_database(settings, run)
    columns = (
        "merchant_id",
        "name",
        "province",
        "redemptions",
        "reversals",
        "redeemed_amount",
        "reversed_amount",
        "net_amount",
    )
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: csvsafe.cell(v) for k, v in row.items()} for row in rows)
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    host = args.host or settings.host
    port = args.port or settings.port
    if args.workers > 1:
        return _serve_workers(settings, host, port, args.workers)

    async def run() -> None:
        async with db.database(settings) as database:
            await migrations.preflight(database.service)
            await serve_until_stopped(settings, database.service, host, port)

    _run_server_loop(settings, run())
    return 0


def _run_server_loop(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, on uvloop unless COUPON_UVLOOP=false."""
    if settings.uvloop:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


async def serve_until_stopped(
    settings: Settings,
    dsn: str,
    host: str,
    port: int,
    on_started: Callable[[], None] | None = None,
    while_serving: Callable[[], Coroutine[Any, Any, Any]] | None = None,
) -> None:
    """Serve in this process until SIGINT or SIGTERM: stop listening, let in-flight requests
    finish, then close the pool. while_serving runs beside the server once it listens, and is
    cancelled before it stops."""
    from aiohttp import web

    from coupon.app import create_app

    app = create_app(settings, dsn)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    beside: asyncio.Task[Any] | None = None
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        print(f"serving on http://{host}:{port}", flush=True)
        # What start-up made (modules, routes, models, the pool) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it (long pauses).
        gc.collect()
        gc.freeze()
        if on_started:
            on_started()
        if while_serving is not None:
            beside = asyncio.create_task(while_serving())
        await stop.wait()
        log.info("shutting_down", pid=os.getpid())
    finally:
        if beside is not None:
            beside.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beside
        await runner.cleanup()
        log.info("stopped", pid=os.getpid())


def _serve_workers(settings: Settings, host: str, port: int, workers: int) -> int:
    """N worker processes under gunicorn's arbiter (coupon/workers.py); the database is shared,
    no state lives in a worker."""
    from coupon import workers as arbiter

    with db.database_blocking(settings) as database:
        # no event loop and no thread may be running when the workers are forked
        asyncio.run(migrations.preflight(database.service))
        arbiter.serve(settings, database.service, host, port, workers)
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import demo, simulator

    host = args.host or settings.host
    port = args.port or settings.port
    rate = 0.0 if args.no_serve else max(args.rate, 0.0)

    async def run() -> None:
        async with db.database(settings) as database:
            if database.schema != database.service:  # embedded: ours to migrate
                await _migrate(database, settings)
            dsn = database.service
            await migrations.preflight(dsn)
            conn = await asyncpg.connect(dsn)
            try:
                seeded = await demo.seed(
                    conn,
                    settings.data_dir,
                    args.households or demo.DEFAULT_HOUSEHOLDS,
                    keyring=Keyring.from_settings(settings),
                )
                shoppers = [
                    simulator.Shopper(r["national_id"], r["province"], r["entitled"])
                    for r in await conn.fetch(db.q("demo_shoppers"), 100_000)
                ]
            finally:
                await conn.close()
            base = f"http://{host}:{port}"
            demo.print_welcome(seeded, base, rate)
            if args.no_serve:
                return
            # the server may listen on every address; the simulated stores call it locally
            local = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
            traffic = simulator.Traffic(
                f"http://{local}:{port}",
                [
                    simulator.Pos(t["terminal_id"], t["secret"], t["province"])
                    for t in seeded.terminals
                ],
                shoppers,
                rate,
            )
            await serve_until_stopped(
                settings, dsn, host, port, while_serving=traffic.run if rate else None
            )

    asyncio.run(run())
    return 0
