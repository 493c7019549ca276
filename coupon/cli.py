"""The `coupon` command: the service, its database, and the operators' and auditors' desk."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import errno
import gc
import os
import re
import signal
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import asyncpg
import pydantic
import structlog

from coupon import (
    audit,
    csvsafe,
    dates,
    db,
    errors,
    households,
    logins,
    logs,
    migrations,
    signing,
    tokens,
)
from coupon.config import Settings
from coupon.embedded import EmbeddedPostgresError
from coupon.keyring import Keyring
from coupon.models import MERCHANT_CATEGORIES

log = structlog.get_logger(__name__)

# the embedded PostgreSQL's directory, found the way git finds .git
DATA_DIR_NAME = ".coupon"
SERVE_LOG = "serve.log"


class CliError(Exception):
    """A failure the person at the keyboard can act on: one line on stderr and an exit
    status, never a traceback."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        name = "COUPON_" + str(first["loc"][0]).upper() if first["loc"] else "environment"
        print(f"coupon: {name}: {first['msg']}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, buffered=settings.log_flush_interval > 0)
    try:
        # an export is checked with no database at all
        if args.database and not getattr(args, "offline", None):
            settings = locate_database(settings, args.database)
        result: int = args.run(settings, args)
    except CliError as exc:
        print(f"coupon: {exc}", file=sys.stderr)
        return exc.status
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
    except errors.CouponError as exc:
        print(f"coupon: {exc.message}", file=sys.stderr)
        return 1
    except EmbeddedPostgresError as exc:
        text = str(exc).strip()
        summary = text.splitlines()[0] if text else type(exc).__name__
        log_file = settings.data_dir.absolute() / "postgres.log"
        print(
            f"coupon: the embedded PostgreSQL did not start: {summary} (its log: {log_file})",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`coupon merchants list | head`): stop quietly, as cat does; the
        # interpreter must not fail again flushing stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"coupon: {_port_in_use(args)}", file=sys.stderr)
        elif isinstance(exc, ConnectionError | TimeoutError):
            print(f"coupon: lost {describe(settings)}: {_reason(exc)}", file=sys.stderr)
        else:
            print(f"coupon: {_reason(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if settings.log_level.lower() == "debug":
            traceback.print_exc()
        print(
            f"coupon: unexpected {type(exc).__name__}: {_reason(exc)} (a bug: please report it; "
            "COUPON_LOG_LEVEL=debug shows the traceback)",
            file=sys.stderr,
        )
        return 70
    return result


# -- where the database is ---------------------------------------------------------------------


def find_data_dir(start: Path) -> Path | None:
    """The nearest `.coupon/` directory at start or above it, as git finds `.git`."""
    here = start.absolute()
    for directory in (here, *here.parents):
        candidate = directory / DATA_DIR_NAME
        if candidate.is_dir():
            return candidate
    return None


def has_cluster(data_dir: Path) -> bool:
    return (data_dir / "pgdata" / "PG_VERSION").is_file()


def locate_database(settings: Settings, need: str) -> Settings:
    """The settings pointing at the database a command talks to. need "existing": an embedded
    cluster must already exist (nothing is created silently); "create": one is made in
    ./.coupon when none is found."""
    if settings.database_url:
        return settings
    if "data_dir" in settings.model_fields_set:
        data_dir = settings.data_dir.expanduser().absolute()
    else:
        found = find_data_dir(Path.cwd())
        if found is None and need == "existing":
            raise CliError(
                f"no {DATA_DIR_NAME}/ directory in {Path.cwd()} or above it, so no database: "
                f"run this where `coupon demo` or `coupon db init` made one, or set "
                "DATABASE_URL (or COUPON_DATA_DIR)"
            )
        data_dir = found or Path.cwd() / DATA_DIR_NAME
    if need == "existing" and not has_cluster(data_dir):
        raise CliError(
            f"{data_dir} holds no database yet: run `coupon db init` (or `coupon demo`) first, "
            "or set DATABASE_URL"
        )
    return settings.model_copy(update={"data_dir": data_dir})


def describe(settings: Settings) -> str:
    """The database a command talks to, in words (no password)."""
    if settings.database_url:
        return f"DATABASE_URL {redacted(settings.database_url)}"
    return f"the embedded PostgreSQL in {settings.data_dir.absolute()}"


def redacted(dsn: str) -> str:
    """A database URL without its password (of one host or several)."""
    scheme, sep, rest = dsn.partition("://")
    userinfo, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return dsn if sep else "(unparsable)"
    return f"{scheme}://{userinfo.partition(':')[0]}@{location}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


async def _reach(dsn: str, target: str, patience: float) -> None:
    """Connect once, so that an unreachable database is one clear line, not a traceback from
    deep inside a command."""
    try:
        conn = await asyncpg.connect(dsn, timeout=patience)
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise CliError(
            f"{target} refused the login: {exc}: check the user and password in DATABASE_URL"
        ) from None
    except asyncpg.InvalidCatalogNameError as exc:
        raise CliError(f"{target}: {exc}: check the database name in DATABASE_URL") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CliError(
            f"cannot reach {target}: {_reason(exc)}: check DATABASE_URL and that PostgreSQL "
            "is running"
        ) from None
    await conn.close()


@contextlib.asynccontextmanager
async def _database(
    settings: Settings, *, login: str = "service", announce: bool = True
) -> AsyncIterator[db.Database]:
    """db.database(), checked to answer before any work starts; says on stderr which database
    it is (announce=False: the command names it in its own output)."""
    target = describe(settings)
    new = not settings.database_url and not has_cluster(settings.data_dir)
    async with db.database(settings) as database:
        dsn = database.schema if login == "schema" else database.service
        await _reach(dsn, target, settings.db_timeout)
        if announce:
            print(f"coupon: database: {target}{' (new)' if new else ''}", file=sys.stderr)
        yield database


def _with_database(
    settings: Settings,
    work: Callable[[db.Connection], Awaitable[Any]],
    announce: bool = True,
    reads: bool = False,
) -> Any:
    """Run work on one connection of the service's login, on a database at the newest schema
    (embedded PostgreSQL started and stopped around it). reads: work only reads, and may run
    on a standby -- DATABASE_READ_URL's when it is set (a standby serves it as it stands)."""

    async def run() -> Any:
        async with _database(settings, announce=announce) as database:
            conn = await asyncpg.connect((reads and database.read) or database.service)
            try:
                await migrations.check_current(conn)
                return await work(conn)
            finally:
                await conn.close()

    return asyncio.run(run())


# -- arguments ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake answered in one line rather than the usage and the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


_ENV_HELP = {
    "database_url": "the PostgreSQL to use (unset: the embedded one of COUPON_DATA_DIR)",
    "database_read_url": "a standby for reads that may lag (auditors, settlement, dashboards)",
    "read_max_lag": "seconds a standby may lag before its reads go to the primary",
    "data_dir": "the embedded PostgreSQL's directory (unset: the nearest .coupon/ up from here)",
    "host": "address serve listens on",
    "port": "port serve listens on",
    "pool_max_size": "database connections per process",
    "pool_min_size": "connections opened before the first request (unset: all)",
    "db_timeout": "seconds a request waits for the database before answering 503",
    "batch_max_size": "redemptions committed together at most",
    "batch_connections": "redemption batches at the database at once per process",
    "clock_skew": "seconds a terminal's clock may be off",
    "seal_interval": "seconds between sealing runs of the ledger's hash chain",
    "live_counters": "the live counters stream (/v1/stats/stream)",
    "stats_poll_interval": "seconds between the live counters' looks for changes",
    "stats_min_interval": "least seconds between two live counter events",
    "uvloop": "serve on uvloop (false: asyncio's own loop)",
    "log_level": "debug, info, warning or error",
    "log_file": "where JSON log lines go (unset: stdout, or <data dir>/serve.log under demo "
    "and when stdout is a terminal; '-': stdout)",
    "log_flush_interval": "seconds log lines may wait in the buffer (0: none)",
    "counter_shards": "counter rows per province (set at db init)",
    "header_timeout": "seconds from connecting to a complete request head",
    "idle_timeout": "seconds a kept-alive connection may stay idle",
    "body_timeout": "seconds a request body may pause (then 408)",
    "max_connections": "connections per process, in all (then 503 and close)",
    "max_connections_per_client": "connections per process from one address",
    "max_streams": "live-counter streams per process",
    "max_streams_per_token": "live-counter streams per process and token (then 429)",
    "trusted_proxies": "proxies whose X-Forwarded-For names the client (CIDRs)",
    "metrics_networks": "networks that may read /metrics (CIDRs)",
    "metrics_token": "a bearer token that may read /metrics from anywhere",
    "seal_key_file": "the Ed25519 key that signs sealed heads (default <data dir>/ledger-seal.key)",
    "seal_trusted_keys": "retired signing keys' public keys verification still trusts",
    "kek_file": "the keys that encrypt terminal secrets (default <data dir>/terminal-secrets.keys)",
}
_DB_ENV = ("database_url", "data_dir", "log_level")
_READ_ENV = (*_DB_ENV, "database_read_url")
_SERVE_ENV = (
    *_READ_ENV,
    "read_max_lag",
    "host",
    "port",
    "pool_max_size",
    "pool_min_size",
    "db_timeout",
    "batch_max_size",
    "batch_connections",
    "clock_skew",
    "seal_interval",
    "live_counters",
    "stats_poll_interval",
    "stats_min_interval",
    "uvloop",
    "log_file",
    "log_flush_interval",
    "header_timeout",
    "idle_timeout",
    "body_timeout",
    "max_connections",
    "max_connections_per_client",
    "max_streams",
    "max_streams_per_token",
    "trusted_proxies",
    "metrics_networks",
    "metrics_token",
    "seal_key_file",
    "seal_trusted_keys",
    "kek_file",
)


def _env_epilog(names: Sequence[str]) -> str:
    """The environment variables a command reads, with their defaults (from Settings)."""
    lines = ["environment:"]
    for name in names:
        field = Settings.model_fields[name]
        variable = str(field.validation_alias or f"COUPON_{name.upper()}")
        default = field.default
        shown = "" if default is None or name == "data_dir" else f" (default: {default})"
        lines.append(f"  {variable:<28} {_ENV_HELP[name]}{shown}")
    return "\n".join(lines)


def _command(
    group: Any,
    name: str,
    summary: str,
    run: Callable[[Settings, argparse.Namespace], int],
    *,
    database: str | None = "existing",
    env: Sequence[str] = _DB_ENV,
    details: str = "",
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        help=summary,
        description=summary + (f"\n\n{details}" if details else ""),
        epilog=_env_epilog(env) if env else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run, database=database)
    return parser


def _group(sub: Any, name: str, summary: str) -> Any:
    parser = sub.add_parser(name, help=summary, description=summary)
    return parser.add_subparsers(title="commands", metavar="COMMAND", required=True)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1..65535)")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _csv_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(
            f"no such file: {path.absolute()} (a CSV file with the header "
            "national_id,province,members,decile[,status]; examples/households.csv is one)"
        )
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path.absolute()} is a directory, not a CSV file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {path.absolute()}: permission denied")
    return path


def _day(text: str) -> dates.Day:
    try:
        return dates.parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_HEAD = re.compile(r"[0-9a-f]{64}")


def _head(text: str) -> bytes:
    cleaned = text.strip().lower()
    if not _HEAD.fullmatch(cleaned):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a head: a head is the 64 hex digits of `head` in the output of an "
            f"earlier `coupon audit verify` (this has {len(cleaned)} characters)"
        )
    return bytes.fromhex(cleaned)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="coupon",
        description=__doc__,
        epilog="Each command's --help tells what it does, its options and the environment "
        "variables it reads.\nWithout DATABASE_URL, commands use the embedded PostgreSQL of "
        "the nearest .coupon/ directory\n(from the working directory up); only `coupon demo` "
        "and `coupon db init` create one.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    dbp = _group(sub, "db", "the database: schema migrations and login roles")
    _command(
        dbp,
        "init",
        "create the schema, or migrate it to the newest version (idempotent)",
        _db_migrate,
        database="create",
        env=(*_DB_ENV, "counter_shards"),
        details="Without DATABASE_URL and with no .coupon/ found, it creates an embedded "
        "PostgreSQL in ./.coupon.",
    ).set_defaults(create=True)
    _command(
        dbp,
        "migrate",
        "apply the pending migrations (as init, but never creates an embedded PostgreSQL)",
        _db_migrate,
        env=(*_DB_ENV, "counter_shards"),
    )
    _command(dbp, "status", "applied and pending migrations; exit 1 if not current", _db_status)
    roles = _command(
        dbp,
        "roles",
        "print the SQL a DBA runs once: login roles and the database",
        _db_roles,
        database=None,
        env=(),
    )
    roles.add_argument("--database", default="coupon", help="database name (default: %(default)s)")

    serve = _command(
        sub,
        "serve",
        "serve the HTTP API and the dashboard",
        _serve,
        env=_SERVE_ENV,
        details="Refuses a superuser login or a schema that is not current (exit 2). On a "
        "terminal, request logs go to <data dir>/serve.log.",
    )
    serve.add_argument("--host", default=None, help="address to listen on (default: COUPON_HOST)")
    serve.add_argument(
        "--port", type=_port, default=None, help="port to listen on (default: COUPON_PORT)"
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes sharing the port (default: %(default)s)",
    )

    token = _group(sub, "token", "operator and auditor API tokens")
    create = _command(
        token,
        "create",
        "create an operator or auditor token; prints it alone on the last line",
        _token_create,
    )
    create.add_argument("--role", required=True, choices=["operator", "auditor"])
    create.add_argument("--name", default="", help="who holds it (default: none)")
    create.add_argument(
        "--province",
        default=None,
        help="scope it to one province (code, e.g. IR-15): it then acts only on that "
        "province's stores, terminals and households (default: national)",
    )
    create.add_argument(
        "--days",
        type=float,
        default=tokens.DEFAULT_LIFETIME_DAYS,
        help="days the token works (default: %(default)s)",
    )
    _command(token, "list", "every token: id, role, name, expiry, revocation", _token_list)
    revoke = _command(
        token, "revoke", "revoke a token by id: refused by every process at once", _token_revoke
    )
    revoke.add_argument("token_id", type=_positive, help="the token's id (coupon token list)")

    keyp = _group(sub, "keys", "the key file that encrypts terminal secrets")
    _command(
        keyp,
        "rotate",
        "put a new key first in the key file and re-encrypt every terminal secret under it",
        _keys_rotate,
        env=(*_DB_ENV, "kek_file"),
        details="Servers that are running follow within a second (no downtime); afterwards "
        "the older keys' lines may be removed from the file.",
    )

    hh = _group(sub, "households", "the households' register: CSV import")
    imp = _command(
        hh,
        "import",
        "import (upsert) households from a CSV file, with a progress bar",
        _households_import,
        details="Header: national_id,province,members,decile[,status]. Bad lines are "
        "reported by number and never block good ones (exit 1 if any).",
    )
    imp.add_argument("file", type=_csv_file, help="the CSV file")

    merchants_group = _group(sub, "merchants", "stores: add, list, suspend, activate")
    add = _command(merchants_group, "add", "register a store; prints its id", _merchants_add)
    add.add_argument("--name", required=True, help="the store's name")
    add.add_argument("--province", required=True, help="its province's code, e.g. IR-23 (Tehran)")
    add.add_argument(
        "--category",
        choices=MERCHANT_CATEGORIES,
        default="grocery",
        help="the kind of store, which inspection compares it with (default: %(default)s)",
    )
    ls = _command(merchants_group, "list", "stores and their number of terminals", _merchants_list)
    ls.add_argument("--province", default=None, help="only this province (code, e.g. IR-15)")
    ls.add_argument("--status", choices=["active", "suspended"], default=None)
    for verb in ("suspend", "activate"):
        p = _command(
            merchants_group,
            verb,
            f"{verb} a store (its terminals are {'declined' if verb == 'suspend' else 'served'})",
            _merchants_status,
        )
        p.add_argument("merchant_id", type=_positive, help="the store's id")
        p.set_defaults(status="suspended" if verb == "suspend" else "active")

    terminals_group = _group(
        sub, "terminals", "POS terminals: add, list, suspend, activate, offline store-and-forward"
    )
    tadd = _command(
        terminals_group,
        "add",
        "register a POS terminal of a store; prints its id and secret (shown once)",
        _terminals_add,
    )
    tadd.add_argument("--merchant", type=_positive, required=True, help="the store's id")
    tls = _command(
        terminals_group, "list", "terminals and their stores (no secrets)", _terminals_list
    )
    tls.add_argument("--merchant", type=_positive, default=None, help="only this store's")
    for verb in ("suspend", "activate"):
        p = _command(terminals_group, verb, f"{verb} a POS terminal", _terminals_change)
        p.add_argument("terminal_id", type=_positive, help="the terminal's id")
        p.set_defaults(status="suspended" if verb == "suspend" else "active")
    for verb, enabled in (("offline-enable", True), ("offline-disable", False)):
        p = _command(
            terminals_group,
            verb,
            "let a POS terminal approve purchases offline and forward them later"
            if enabled
            else "stop a POS terminal approving purchases offline (what it forwards is declined)",
            _terminals_change,
        )
        p.add_argument("terminal_id", type=_positive, help="the terminal's id")
        p.set_defaults(offline_enabled=enabled)
    _command(
        terminals_group,
        "gaps",
        "terminals whose forwarded offline purchases have offline_seq numbers missing",
        _terminals_gaps,
    )

    aud = _group(sub, "audit", "the ledger's audit")
    ver = _command(
        aud,
        "verify",
        "recompute the ledger's hash chain, check its heads' signatures and reconcile it with "
        "the terminals' answers, the credit and the settlement; exit 0 ok, 1 tampered, 3 head "
        "not found",
        _audit_verify,
        env=_READ_ENV,
    )
    ver.add_argument(
        "--head",
        type=_head,
        default=None,
        help="a head recorded earlier (64 hex digits), to check it is still in the chain",
    )
    ver.add_argument("--seal", action="store_true", help="seal pending rows first")
    ver.add_argument(
        "--offline",
        type=Path,
        metavar="FILE",
        default=None,
        help="check an export (coupon audit export) instead, with no database",
    )
    ver.add_argument(
        "--public-key",
        action="append",
        default=[],
        help="a trusted signing key: 64 hex digits or a PEM file (repeatable; default: the "
        "seal key file's and COUPON_SEAL_TRUSTED_KEYS)",
    )
    exp = _command(
        aud,
        "export",
        "every sealed ledger row and signed head, as JSON lines",
        _audit_export,
        env=_READ_ENV,
    )
    exp.add_argument("file", type=Path, help="where to write it")

    report = _group(
        sub, "report", "reports: settlement per store, reconciliations, offline declines"
    )
    settle = _command(
        report,
        "settlement",
        "per-store settlement of a day, as CSV on stdout",
        _report_settlement,
        env=_READ_ENV,
    )
    day_help = (
        "an Asia/Tehran day: Gregorian YYYY-MM-DD, or Solar Hijri (a year before "
        f"{dates.SOLAR_HIJRI_BEFORE}: 1405-09-09, ۱۴۰۵/۰۹/۰۹)"
    )
    settle.add_argument("--date", required=True, type=_day, help=day_help)
    recon = _command(
        report,
        "reconciliation",
        "the terminals' end-of-day reconciliations of a day, as CSV on stdout",
        _report_reconciliation,
        env=_READ_ENV,
    )
    recon.add_argument("--date", required=True, type=_day, help=day_help)
    recon.add_argument(
        "--status",
        choices=["balanced", "out_of_balance"],
        default=None,
        help="only these (default: all)",
    )
    declined = _command(
        report,
        "offline-declines",
        "offline purchases declined when posted on a day (the stores' losses), as CSV",
        _report_offline_declines,
        env=_READ_ENV,
    )
    declined.add_argument("--date", required=True, type=_day, help=day_help)
    declined.add_argument("--merchant", type=_positive, default=None, help="only this store's")

    insp = _command(
        sub,
        "inspect",
        "stores ranked by their fraud signals for a day: score, the signals that fired and the "
        "numbers behind them, and the ledger link of the rows",
        _inspect,
        details="The rules (thresholds, weights, opening hours) are those in force: GET/PUT "
        "/v1/inspection/rules, or --rules to print them.",
    )
    insp.add_argument(
        "--date",
        type=_day,
        default=None,
        help="an Asia/Tehran day, Gregorian or Solar Hijri (default: today in Tehran)",
    )
    insp.add_argument("--province", default=None, help="only this province's stores (code)")
    insp.add_argument(
        "--limit", type=_positive, default=50, help="the top stores (default: %(default)s)"
    )
    insp.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    insp.add_argument("--rules", action="store_true", help="print the rules in force (JSON)")

    demo = _command(
        sub,
        "demo",
        "load demo data, serve it and simulate POS traffic",
        _demo,
        database="create",
        env=_SERVE_ENV,
        details="Without DATABASE_URL and with no .coupon/ found, it creates an embedded "
        "PostgreSQL in ./.coupon. Its tokens and terminal secrets are kept there (0600) and "
        "reused; request logs go to <data dir>/serve.log.",
    )
    demo.add_argument("--host", default=None, help="address to listen on (default: COUPON_HOST)")
    demo.add_argument(
        "--port", type=_port, default=None, help="port to listen on (default: COUPON_PORT)"
    )
    demo.add_argument("--no-serve", action="store_true", help="load the data and exit")
    demo.add_argument(
        "--rate",
        type=float,
        default=30.0,
        help="simulated POS requests a second, 0 for none (default: %(default)s)",
    )
    demo.add_argument(
        "--households",
        type=_positive,
        default=None,
        help="households to load (default: 30000)",
    )
    return parser


# -- commands ----------------------------------------------------------------------------------


async def _migrate(database: db.Database, settings: Settings) -> list[str]:
    conn = await asyncpg.connect(database.schema)
    try:
        return await migrations.migrate(conn, settings.counter_shards)
    finally:
        await conn.close()


def _db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> list[str]:
        async with _database(settings, login="schema") as database:
            return await _migrate(database, settings)

    done = asyncio.run(run())
    newest = migrations.available()[-1].label
    print(f"applied {', '.join(done)}" if done else "nothing to apply")
    print(f"schema at {newest}")
    return 0


def _db_status(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> migrations.Status:
        async with _database(settings, login="schema") as database:
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
    try:
        statements = logins.database_statements(args.database)
    except ValueError as exc:
        raise CliError(f"--database {args.database!r}: {exc}") from None
    passwords = logins.new_passwords()
    print("-- Run once as a superuser (psql), then keep the passwords in your secret store.")
    for statement in logins.role_statements(passwords) + statements:
        print(statement + ";")
    print("-- Then, on the Coupon server:")
    for role, use in ((logins.OWNER, "coupon db migrate"), (logins.WRITER, "coupon serve")):
        print(
            f"--   {use}: DATABASE_URL=postgresql://{role}:{passwords[role]}@HOST:5432/"
            f"{args.database}"
        )
    return 0


def _token_create(settings: Settings, args: argparse.Namespace) -> int:
    province = _province(args.province) if args.province else None

    async def create(conn: db.Connection) -> str:
        return await tokens.create_token(conn, args.role, args.name, args.days, province)

    # the token must be the last line of the output, stderr included: the database is named here
    token = _with_database(settings, create, announce=False)
    scope = f" of {province}" if province else ""
    print(f"{args.role} token{scope} for {describe(settings)} (shown once, store it now):")
    print(token)
    return 0


def _token_list(settings: Settings, args: argparse.Namespace) -> int:
    rows = _with_database(settings, tokens.list_tokens)
    for row in rows:
        row["expires_at"] = row["expires_at"].isoformat(timespec="seconds")
        row["revoked_at"] = (
            row["revoked_at"].isoformat(timespec="seconds") if row["revoked_at"] else "-"
        )
        row["province"] = row["province"] or "national"
    _print_table(rows, ("id", "role", "province", "expires_at", "revoked_at", "name"))
    return 0


def _token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async def run(conn: db.Connection) -> bool:
        return await tokens.revoke(conn, args.token_id)

    if not _with_database(settings, run):
        raise CliError(f"no live token has id {args.token_id}: `coupon token list` shows them", 1)
    print(f"token {args.token_id} revoked")
    return 0


def _keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import merchants

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
        raise CliError(f"{args.file}: {exc}") from None
    print(f"imported {result.imported}, updated {result.updated}, rejected {result.rejected_count}")
    for rejection in result.rejected[:20]:
        print(f"  line {rejection['line']}: {rejection['error']}")
    if result.rejected_count > 20:
        print(f"  ... and {result.rejected_count - 20} more")
    return 0 if not result.rejected_count else 1


def _province(code: str) -> str:
    from coupon.provinces import iran_provinces

    known = {p.code: p for p in iran_provinces()}
    cleaned = code.strip().upper()
    if cleaned not in known:
        codes = ", ".join(f"{p.code} {p.name_en}" for p in known.values())
        raise CliError(f"unknown province {code!r}: one of {codes}")
    return cleaned


def _merchants_add(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import merchants
    from coupon.models import MerchantCreate

    try:
        merchant = MerchantCreate(
            name=args.name, province=_province(args.province), category=args.category
        )
    except pydantic.ValidationError as exc:
        raise CliError(f"--name: {exc.errors()[0]['msg']}") from None

    async def add(conn: db.Connection) -> int:
        return await merchants.create_merchant(conn, merchant)

    merchant_id: int = _with_database(settings, add)
    print(f"merchant {merchant_id} added: {merchant.name} ({merchant.province})")
    print(merchant_id)
    return 0


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _merchants_list(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import merchants

    province = _province(args.province) if args.province else None

    async def fetch(conn: db.Connection) -> list[dict[str, Any]]:
        return await merchants.list_merchants(conn, province, args.status)

    rows = _with_database(settings, fetch)
    _print_table(rows, ("id", "province", "category", "status", "terminals", "name"))
    print(f"{len(rows)} stores", file=sys.stderr)
    return 0


def _merchants_status(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import merchants

    async def change(conn: db.Connection) -> Any:
        return await merchants.set_merchant_status(conn, args.merchant_id, args.status)

    try:
        merchant = _with_database(settings, change)
    except errors.MerchantNotFound:
        raise CliError(
            f"no merchant {args.merchant_id}: `coupon merchants list` shows them", 1
        ) from None
    print(f"merchant {merchant.id} ({merchant.name}) is {merchant.status}")
    return 0


def _terminals_add(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import merchants

    async def add(conn: db.Connection) -> Any:
        return await merchants.create_terminal(conn, args.merchant, Keyring.from_settings(settings))

    try:
        created = _with_database(settings, add, announce=False)
    except errors.MerchantNotFound:
        raise CliError(
            f"no merchant {args.merchant}: `coupon merchants list` shows them", 1
        ) from None
    print(
        f"terminal {created.terminal_id} added to merchant {args.merchant} in {describe(settings)}"
    )
    print("its secret (shown once: put it in the POS now, it cannot be read back):")
    print(created.secret)
    return 0


def _terminals_list(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import merchants

    async def fetch(conn: db.Connection) -> list[dict[str, Any]]:
        return await merchants.list_terminals(conn, args.merchant)

    rows = _with_database(settings, fetch)
    _print_table(
        rows, ("id", "merchant_id", "province", "status", "offline_enabled", "merchant_name")
    )
    print(f"{len(rows)} terminals", file=sys.stderr)
    return 0


def _terminals_change(settings: Settings, args: argparse.Namespace) -> int:
    """suspend/activate (args.status) or offline-enable/-disable (args.offline_enabled)."""
    from coupon import merchants

    status: str | None = getattr(args, "status", None)
    offline_enabled: bool | None = getattr(args, "offline_enabled", None)

    async def change(conn: db.Connection) -> Any:
        return await merchants.set_terminal_status(conn, args.terminal_id, status, offline_enabled)

    try:
        terminal = _with_database(settings, change)
    except errors.TerminalNotFound:
        raise CliError(
            f"no terminal {args.terminal_id}: `coupon terminals list` shows them", 1
        ) from None
    now = (
        f"is {terminal.status}"
        if status is not None
        else f"{'may' if terminal.offline_enabled else 'may not'} work offline"
    )
    print(f"terminal {terminal.id} (merchant {terminal.merchant_id}) {now}")
    return 0


def _terminals_gaps(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import offline

    rows = _with_database(settings, offline.terminals_with_gaps)
    _print_table(rows, ("terminal_id", "merchant_id", "last_offline_seq", "missing"))
    print(f"{len(rows)} terminals with gaps", file=sys.stderr)
    return 0


def _audit_verify(settings: Settings, args: argparse.Namespace) -> int:
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
            return await audit.verify(conn, keys, args.head)

        result = _with_database(settings, run, reads=not args.seal)
    print(result.model_dump_json(indent=2))
    if result.ok:
        return 0
    print(f"coupon: {result.reason}", file=sys.stderr)
    return 3 if audit.head_not_found(result) else 1


def _audit_export(settings: Settings, args: argparse.Namespace) -> int:
    async def run(conn: db.Connection) -> int:
        with args.file.open("wb") as out:
            return await audit.export(conn, out.write)

    rows = _with_database(settings, run, reads=True)
    print(f"exported {rows} sealed entries to {args.file}")
    return 0


def _report_settlement(settings: Settings, args: argparse.Namespace) -> int:
    day: dates.Day = args.date
    print(f"coupon: date: {day.interpretation()} (an Asia/Tehran day)", file=sys.stderr)

    async def run(conn: db.Connection) -> list[dict[str, Any]]:
        return await audit.settlement(conn, day.date)

    rows = _with_database(settings, run, reads=True)
    columns = (
        "merchant_id",
        "name",
        "province",
        "redemptions",
        "reversals",
        "redeemed_amount",
        "reversed_amount",
        "net_amount",
        "offline_redemptions",
        "offline_amount",
        "declined_offline",
        "declined_offline_amount",
    )
    _write_csv(rows, columns)
    return 0


def _write_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: csvsafe.cell(v) for k, v in row.items()} for row in rows)


def _report_reconciliation(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import offline

    day: dates.Day = args.date
    print(f"coupon: date: {day.interpretation()} (an Asia/Tehran day)", file=sys.stderr)

    async def run(conn: db.Connection) -> list[dict[str, Any]]:
        return await offline.list_reconciliations(conn, day.date, args.status)

    rows = []
    for r in _with_database(settings, run, reads=True):
        flat = {k: r[k] for k in ("terminal_id", "merchant_id", "status", "reconciled_at")}
        for side in ("terminal", "processor"):
            for total, figures in r[side].items():
                flat[f"{side}_{total}_count"] = figures["count"]
                flat[f"{side}_{total}_amount"] = figures["amount"]
        flat["processor_only_ids"] = r["processor_only"]
        flat["terminal_only_ids"] = r["terminal_only"]
        rows.append(flat)
    totals = [
        f"{side}_{total}_{what}"
        for side in ("terminal", "processor")
        for total in offline.TOTALS
        for what in ("count", "amount")
    ]
    columns = (
        "terminal_id",
        "merchant_id",
        "status",
        *totals,
        "processor_only_ids",
        "terminal_only_ids",
        "reconciled_at",
    )
    _write_csv(rows, columns)
    print(f"{len(rows)} reconciliations", file=sys.stderr)
    return 0


def _report_offline_declines(settings: Settings, args: argparse.Namespace) -> int:
    from coupon import offline

    day: dates.Day = args.date
    print(f"coupon: date: {day.interpretation()} (an Asia/Tehran day)", file=sys.stderr)

    async def run(conn: db.Connection) -> list[dict[str, Any]]:
        return await offline.declines(conn, day.date, args.merchant)

    rows = _with_database(settings, run, reads=True)
    columns = (
        "terminal_id",
        "merchant_id",
        "offline_seq",
        "request_id",
        "national_id",
        "amount",
        "captured_at",
        "posted_at",
        "reason",
    )
    _write_csv(rows, columns)
    return 0


def _signals_text(signals: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{x['signal']}={x['value']:g} ("
        + ", ".join(f"{k} {v:g}" for k, v in x["numbers"].items())
        + ")"
        for x in signals
    )


def _inspect(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from coupon import inspection

    if args.rules:
        rules = _with_database(settings, inspection.rules_in_force)
        print(orjson.dumps(rules.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return 0
    day = args.date.date if args.date else inspection.today_in_tehran()
    if args.date:
        print(f"coupon: date: {args.date.interpretation()} (an Asia/Tehran day)", file=sys.stderr)
    province = _province(args.province) if args.province else None

    async def run(conn: db.Connection) -> Any:
        return await inspection.ranking(conn, day, province, args.limit)

    rules, rows = _with_database(settings, run)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        row["signal_names"] = ",".join(x["signal"] for x in row["signals"])
        row["signals_text"] = _signals_text(row["signals"])
    if args.csv:
        columns = (
            *("rank", "merchant_id", "name", "province", "category", "score", "redemptions"),
            *("reversals", "households", "amount", "signals_text", "ledger"),
        )
        writer = csv.writer(sys.stdout)
        writer.writerow([c.removesuffix("_text") for c in columns])
        writer.writerows([csvsafe.cell(row[c]) for c in columns] for row in rows)
    else:
        _print_table(
            rows,
            (
                "rank",
                "merchant_id",
                "province",
                "category",
                "score",
                "redemptions",
                "signal_names",
                "ledger",
            ),
        )
    where = f" in {province}" if province else ""
    print(
        f"{len(rows)} stores with signals on {day}{where} (rules version {rules.version})",
        file=sys.stderr,
    )
    return 0


# -- serving -----------------------------------------------------------------------------------


def _port_in_use(args: argparse.Namespace) -> str:
    where = f" {args.port}" if getattr(args, "port", None) else ""
    return (
        f"the port{where} is already in use (another `coupon serve` or `make run`?): stop "
        "it, or choose another with --port or COUPON_PORT"
    )


def check_port(host: str, port: int) -> None:
    """Fail now, before anything is started or printed, when the address cannot be listened
    on (a test bind, released at once; the server binds again the same way)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CliError(
            f"cannot listen on {host}: unknown address ({exc.strerror}): check --host or "
            "COUPON_HOST"
        ) from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CliError(
                        f"port {port} on {host} is already in use (another `coupon serve` or "
                        "`make run`?): stop it, or choose another with --port or COUPON_PORT"
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL and family == socket.AF_INET6:
                    continue  # no IPv6 here; the server skips it too
                raise CliError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None


def _request_log(settings: Settings, default_to_file: bool) -> Path | None:
    """Where request logs go instead of stdout, if anywhere: COUPON_LOG_FILE, or
    <data dir>/serve.log when asked for by default (demo, a terminal)."""
    if settings.log_file is not None:
        return None if str(settings.log_file) == "-" else settings.log_file.absolute()
    return settings.data_dir.absolute() / SERVE_LOG if default_to_file else None


def _log_to(settings: Settings, path: Path) -> BinaryIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("ab")
    except OSError as exc:
        raise CliError(f"cannot write the log file: {_reason(exc)} (COUPON_LOG_FILE)") from None
    logs.configure(settings.log_level, stream=stream, buffered=settings.log_flush_interval > 0)
    return stream


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    host = args.host or settings.host
    port = args.port or settings.port
    check_port(host, port)
    log_file = _request_log(settings, default_to_file=sys.stdout.isatty())
    if log_file is not None:
        # forked workers inherit it: one append-mode file, a line per write
        _log_to(settings, log_file)
        print(f"coupon: request logs go to {log_file}", flush=True)
    if args.workers > 1:
        if settings.database_url:
            asyncio.run(
                _reach(
                    settings.database_url,
                    f"DATABASE_URL {redacted(settings.database_url)}",
                    settings.db_timeout,
                )
            )
        return _serve_workers(settings, host, port, args.workers)

    async def run() -> None:
        async with _database(settings) as database:
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
    log_file = None
    if not args.no_serve:
        check_port(host, port)  # before the database starts or a token is shown
        log_file = _request_log(settings, default_to_file=True)
        if log_file is not None:
            _log_to(settings, log_file)
    example = Path("examples", "pos_redeem.py")
    python = os.path.relpath(sys.executable) if sys.executable else "python3"

    async def run() -> None:
        async with _database(settings, login="schema") as database:
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

            def welcome() -> None:
                demo.print_welcome(
                    seeded,
                    base,
                    rate,
                    samples=[s.national_id for s in shoppers if s.entitled][:3],
                    log_file=log_file,
                    example=f"{python} {example}" if example.is_file() else None,
                )

            if args.no_serve:
                welcome()
                return
            # the server may listen on every address; the simulated stores call it locally
            local = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
            traffic = simulator.Traffic(
                f"http://{local}:{port}",
                [
                    simulator.Pos(
                        t["terminal_id"],
                        t["secret"],
                        t["province"],
                        t.get("offline_enabled", False),
                    )
                    for t in seeded.terminals
                ],
                shoppers,
                rate,
                fraud_terminals=[
                    simulator.Pos(t["terminal_id"], t["secret"], t["province"])
                    for t in demo.fraudulent(seeded.terminals)
                ],
                offline_seqs=seeded.offline_seqs,
            )
            await serve_until_stopped(
                settings,
                dsn,
                host,
                port,
                on_started=welcome,
                while_serving=traffic.run if rate else None,
            )

    asyncio.run(run())
    return 0
