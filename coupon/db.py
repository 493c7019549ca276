"""The database edge: the pool, the named queries, the schema, the embedded server, and the one
place where driver errors become domain errors."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson
import structlog

from coupon import errors, logins
from coupon.config import Settings
from coupon.embedded import EmbeddedPostgres, write_private

log = structlog.get_logger(__name__)

_EMBEDDED_DATABASE = "coupon"
# serialises the embedded cluster's role set-up between commands starting at once
_BOOTSTRAP_LOCK_KEY = 0x636F75706F6F

if TYPE_CHECKING:
    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    )
    AsyncpgPool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
    AsyncpgPool = asyncpg.Pool


class Pool:
    """asyncpg's pool behind the one seam the service needs, through its public API:

    - acquiring a connection gives up after `timeout` (asyncpg waits forever by default), and
      so does the connection's reset on release: a database that stops answering costs a
      request a bounded wait, then a 503;
    - once the work inside has succeeded, a failure to release the connection does not turn
      that outcome into an error: the answer is committed and known, and asyncpg has already
      thrown the connection away (seen when a backend is killed right after answering)."""

    def __init__(self, pool: AsyncpgPool, timeout: float) -> None:
        self.asyncpg = pool
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def acquire(self, *, within: float | None = None) -> AsyncIterator[Connection]:
        budget = self.timeout if within is None else within
        conn = await self.asyncpg.acquire(timeout=budget)
        try:
            yield conn
        except BaseException:
            await self.asyncpg.release(conn, timeout=budget)
            raise
        try:
            await self.asyncpg.release(conn, timeout=budget)
        except Exception as failure:
            log.warning("connection_release_failed", error=type(failure).__name__)

    async def close(self) -> None:
        await self.asyncpg.close()

    def terminate(self) -> None:
        self.asyncpg.terminate()


@cache
def queries() -> Mapping[str, str]:
    """Every named statement of sql/queries.sql: name -> SQL."""
    text = resources.files("coupon").joinpath("sql/queries.sql").read_text(encoding="utf-8")
    named: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        sql = "\n".join(line for line in body.splitlines() if not line.startswith("--")).strip()
        named[name.strip()] = sql.rstrip(";")
    return named


def q(name: str) -> str:
    """The SQL of one named statement."""
    return queries()[name]


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await _json_codecs(conn)
    await warm_up(conn)


async def _json_codecs(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            format="text",
        )


async def warm_up(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Call the terminal path's functions once on a new connection, for nothing, and roll back.
    PL/pgSQL compiles a function on a connection's first call of it, and the backend fills its
    catalog caches: the first calls take ~16 ms against ~3 ms warm (loadtest/pgwarm.py), paid
    otherwise by the first requests that reach the connection -- under load, all at once.
    Terminal 0 and the empty national id exist nowhere, so every call answers early, and
    nothing outlives the rollback."""
    key = f"warm-up-{conn.get_server_pid()}"  # connections warming at once do not queue
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.fetchrow(q("balance_inquiry"), 0, key, "")
        await conn.fetch(q("redeem_many"), [0], [key], [key], [b""], [""], [1], [""], [False], 1)
        await conn.fetchrow(q("reverse"), 0, key + "r", key + "r", b"", key + "o", 1)
        await conn.execute("SELECT counters_apply(0, 0, '{}', '{}', '{}', '{}', '{}', '{}')")
    except asyncpg.UndefinedFunctionError:
        pass  # no schema yet (`coupon db init` not run): the first request will say so
    finally:
        await transaction.rollback()


async def _no_reset_query(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Release a connection to the pool without asyncpg's reset query (`SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`): one more round trip and
    statement per request, a tenth of a worker's CPU and of PostgreSQL's (BENCHMARKS.md). asyncpg
    still rolls back an open transaction and drops listeners first. Pooled connections carry
    no session state to reset: settings are SET LOCAL or startup settings, advisory locks are
    transaction locks, and the session lock and LISTEN of the live counters have connections
    of their own (live.py)."""


# seconds a bulk statement may run (import, tranche opening, export, verification, sealing):
# the pool's db_timeout is for requests, and would cut these off half-way
BULK_TIMEOUT = 3600.0


async def create_pool(dsn: str, settings: Settings, **overrides: Any) -> Pool:
    """A pool whose connections decode json with orjson and give up after db_timeout; they log
    in as the DSN says (the service: coupon_writer)."""
    server_settings = {"timezone": "UTC", "jit": "off", "application_name": "coupon"}
    # opened whole unless a floor is set (0: on demand)
    floor = settings.pool_max_size if settings.pool_min_size is None else settings.pool_min_size
    options: dict[str, Any] = {
        "min_size": min(floor, settings.pool_max_size),
        "max_size": settings.pool_max_size,
        "command_timeout": settings.db_timeout,
        "timeout": settings.db_timeout,
        "init": _init_connection,
        # answers carry UTC timestamps; JIT only slows short OLTP statements down
        "server_settings": server_settings,
        # statements are prepared per connection; keep them (the hot path has a handful)
        "max_inactive_connection_lifetime": 300.0,
        "reset": _no_reset_query,
    }
    options.update(overrides)
    return Pool(await asyncpg.create_pool(dsn, **options), settings.db_timeout)


# connections of a process to the standbys (DATABASE_READ_URL): its reads are few
READ_POOL_SIZE = 4


async def create_read_pool(dsn: str, settings: Settings) -> Pool:
    """A pool on the standbys: opened on demand (a standby that is down must not stop the
    service from starting), nothing to warm up (the terminal path never runs there)."""
    return await create_pool(dsn, settings, min_size=0, max_size=READ_POOL_SIZE, init=_json_codecs)


async def close_pool(pool: Pool, grace: float) -> None:
    """Close gracefully (connections in use are waited for), or abort after grace seconds: a
    database that does not answer must not keep a stopping process alive."""
    try:
        await asyncio.wait_for(pool.close(), grace)
    except UNAVAILABLE:  # TimeoutError among them
        log.warning("pool_close_aborted")
        pool.terminate()


async def counter_shards(conn: Connection) -> int:
    """How many counter shards per province this database was initialised with."""
    stored = await conn.fetchval(q("get_meta"), "counter_shards")
    return int(stored) if stored else 1


@dataclasses.dataclass(frozen=True)
class Database:
    """Where a command connects: `schema` runs migrations (the owner, or a superuser who acts as
    the owner), `service` is everything else (the writer). With DATABASE_URL both are it.
    `read`: DATABASE_READ_URL, the standbys for reads that may lag (None: the primary's)."""

    schema: str
    service: str
    read: str | None = None


def primary(dsn: str) -> str:
    """A DSN that reaches the primary: of several hosts (a cluster), the one that accepts
    writes -- unless the DSN says otherwise. asyncpg tries the hosts in order and, across a
    failover, reconnects to whichever has become the primary."""
    head, _, query = dsn.partition("?")
    hosts = head.split("://", 1)[-1].rpartition("@")[2].partition("/")[0]
    if "," not in hosts or "target_session_attrs" in query:
        return dsn
    return f"{head}?{query + '&' if query else ''}target_session_attrs=read-write"


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[Database]:
    """DATABASE_URL, or an embedded PostgreSQL started (and stopped) here."""
    if settings.database_url:
        yield _configured(settings)
        return
    server = EmbeddedPostgres(settings.data_dir, durable=settings.embedded_durable)
    admin_dsn = await asyncio.to_thread(server.start)
    try:
        yield await _embedded_database(admin_dsn, settings.data_dir)
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.contextmanager
def database_blocking(settings: Settings) -> Iterator[Database]:
    """database() for a caller with no event loop running (a parent that forks workers)."""
    if settings.database_url:
        yield _configured(settings)
        return
    server = EmbeddedPostgres(settings.data_dir, durable=settings.embedded_durable)
    admin_dsn = server.start()
    try:
        yield asyncio.run(_embedded_database(admin_dsn, settings.data_dir))
    finally:
        server.stop()


def _configured(settings: Settings) -> Database:
    assert settings.database_url is not None
    url = primary(settings.database_url)
    return Database(url, url, settings.database_read_url)


async def _embedded_database(admin_dsn: str, data_dir: Path) -> Database:
    """The embedded cluster's login roles (passwords kept in data_dir, 0600) and database."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        async with conn.transaction():
            # several commands may start at once on one data directory
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_LOCK_KEY)
            passwords_file = data_dir / "logins.json"
            if passwords_file.exists():
                passwords = orjson.loads(passwords_file.read_bytes())
            else:
                passwords = logins.new_passwords()
                write_private(passwords_file, orjson.dumps(passwords).decode())
            for statement in logins.role_statements(passwords):
                await conn.execute(statement)
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", _EMBEDDED_DATABASE
        )
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                for statement in logins.database_statements(_EMBEDDED_DATABASE):
                    await conn.execute(statement)
    finally:
        await conn.close()
    return Database(
        schema=logins.dsn_for(admin_dsn, database=_EMBEDDED_DATABASE),
        service=logins.dsn_for(
            admin_dsn,
            database=_EMBEDDED_DATABASE,
            role=logins.WRITER,
            password=passwords[logins.WRITER],
        ),
    )


# -- driver errors -> domain errors -----------------------------------------------------------

_CONSTRAINT_ERRORS: dict[str, tuple[type[errors.CouponError], str]] = {
    "tranches_window_excl": (errors.TrancheOverlap, ""),
    "tranches_window_check": (errors.InvalidRequest, "starts_at must be before ends_at"),
    "households_province_fkey": (errors.InvalidRequest, "unknown province"),
    "merchants_province_fkey": (errors.InvalidRequest, "unknown province"),
}


def _argument_refused(exc: BaseException) -> bool:
    """The driver refused to encode an argument (a value its type cannot hold): asyncpg's
    client-side DataError, the InterfaceError that is a ValueError (the public name DataError
    is the server's SQLSTATE class 22)."""
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)


# Infrastructure failures: the request may be retried as it is (terminal requests are
# idempotent by request_id), so they become 503 service_unavailable, never 500.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was refused
    asyncpg.InterfaceError,  # the connection is closed (also: the pool is closing)
    asyncpg.OperatorInterventionError,  # class 57: shutdown, crash, recovery, cancel
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.PostgresSystemError,  # class 58: I/O error on the server
    asyncpg.ReadOnlySQLTransactionError,  # 25006: a standby answered (failover)
    asyncpg.TransactionRollbackError,  # class 40: serialization failure, deadlock
    # the driver's protocol state broke under it (a backend killed between two messages);
    # asyncpg discards the connection, and the request is safe to send again
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def never_applied(exc: BaseException) -> bool:
    """True when a failed statement certainly committed nothing: the server refused it (its
    transaction rolled back), or the driver never sent it. A lost connection, a shutdown or a
    timeout leave a statement's fate unknown: False."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] not in ("08", "57", "58")
    return _argument_refused(exc)


def translate(exc: BaseException) -> errors.CouponError | None:
    """The domain error a driver error means, or None when it is a bug."""
    if isinstance(exc, asyncpg.PostgresError):
        constraint = getattr(exc, "constraint_name", None)
        if constraint in _CONSTRAINT_ERRORS:
            cls, message = _CONSTRAINT_ERRORS[constraint]
            return cls(message or None, {"constraint": constraint})
        if isinstance(exc, asyncpg.CheckViolationError | asyncpg.NotNullViolationError):
            return errors.InvalidRequest("a value is out of range", {"constraint": constraint})
        if isinstance(exc, asyncpg.DataError):  # class 22: out of range, bad datetime...
            return errors.InvalidRequest("a value is out of range", {"sqlstate": exc.sqlstate})
        if isinstance(exc, asyncpg.QueryCanceledError):
            return errors.ServiceUnavailable("the database did not answer in time")
    if _argument_refused(exc):
        # a value the parameter's type cannot hold (the driver refused to send it): the
        # client's input, not the database's health -- checked before InterfaceError below
        return errors.InvalidRequest("a value is out of range")
    if isinstance(exc, UNAVAILABLE):
        return errors.ServiceUnavailable()
    return None
