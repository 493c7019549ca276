"""Versioned schema migrations: numbered SQL files in coupon/sql/migrations/, applied in order,
each in its own transaction, under an advisory lock, recorded with their checksums in
schema_migrations. An empty database gets schema.sql whole (the newest schema) and every
migration recorded as applied; a test proves both paths give the same catalog."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from functools import cache
from importlib import resources

import asyncpg

from coupon import db, errors, logins
from coupon.provinces import iran_provinces

# Serialises concurrent `db migrate`s (several starters at once): the 0.1.0 schema lock's key.
_LOCK_KEY = 0x636F75706F6E
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# The runner's own table; the service reads it to refuse a schema it was not built for.
_BOOKKEEPING = """
CREATE TABLE schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_as text NOT NULL  -- 'migration', 'fresh' (schema.sql) or 'adopted' (0.1.0)
);
GRANT SELECT ON schema_migrations TO coupon_writer, coupon_reader;
"""

# PostgreSQL's oldest supported major: 15 (schema.sql and every migration run there).
MIN_SERVER_VERSION = 150000


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclasses.dataclass(frozen=True)
class Applied:
    version: int
    name: str
    checksum: str
    applied_at: object
    applied_as: str


@dataclasses.dataclass(frozen=True)
class Status:
    applied: list[Applied]
    pending: list[Migration]
    unknown: list[Applied]  # recorded by newer code than this
    changed: list[Migration]  # applied, but the file differs from what ran

    @property
    def current(self) -> bool:
        return not (self.pending or self.unknown or self.changed)


@cache
def available() -> tuple[Migration, ...]:
    """Every migration shipped with the package, by version."""
    found = []
    for entry in resources.files("coupon").joinpath("sql/migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("migrations must be numbered 0001, 0002, ... without gaps")
    return tuple(found)


@cache
def head_schema() -> str:
    """schema.sql: the newest schema, applied whole to an empty database."""
    return resources.files("coupon").joinpath("sql/schema.sql").read_text(encoding="utf-8")


async def status(conn: asyncpg.Connection) -> Status:
    """What is applied, what is pending, and what does not match this code."""
    applied: list[Applied] = []
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        applied = [Applied(**dict(r)) for r in await conn.fetch(db.q("applied_migrations"))]
    known = {m.version: m for m in available()}
    done = {a.version for a in applied}
    return Status(
        applied=applied,
        pending=[m for m in available() if m.version not in done],
        unknown=[a for a in applied if a.version not in known],
        changed=[
            known[a.version]
            for a in applied
            if a.version in known
            and a.applied_as != "fresh"
            and known[a.version].checksum != a.checksum
        ],
    )


async def check_current(conn: asyncpg.Connection) -> None:
    """Raise errors.SchemaMismatch unless the database is at this code's newest migration."""
    state = await status(conn)
    if state.current:
        return
    newest = available()[-1].label
    if state.unknown:
        raise errors.SchemaMismatch(
            f"the database has migration {state.unknown[-1].version:04d}, newer than this "
            f"code ({newest}): run the newer release, or restore"
        )
    if state.changed:
        raise errors.SchemaMismatch(
            f"migration {state.changed[0].label} differs from the one applied to the database"
        )
    at = f"{state.applied[-1].version:04d}" if state.applied else "no schema"
    raise errors.SchemaMismatch(
        f"the database is at {at}, this code needs {newest}: run `coupon db migrate`"
    )


async def preflight(dsn: str) -> None:
    """Refuse to serve as a superuser, from a standby, or on a schema this code was not built
    for."""
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT pg_is_in_recovery()"):
            raise errors.DatabaseNotReady(
                "DATABASE_URL reaches a standby, which takes no writes: point it at the "
                "primary, or list every node of the cluster (postgresql://…@db1,db2,db3/coupon)"
            )
        if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = session_user"):
            user = await conn.fetchval("SELECT session_user")
            raise errors.UnsafeLogin(
                f"refusing to serve as the superuser {user!r}: set DATABASE_URL to the "
                f"{logins.WRITER} login (`coupon db roles`)"
            )
        await check_current(conn)
    finally:
        await conn.close()


async def migrate(conn: asyncpg.Connection, counter_shards: int) -> list[str]:
    """Bring the database to the newest schema; return what was applied. Safe to run
    concurrently (an advisory lock) and again (nothing to do)."""
    version = await conn.fetchval("SELECT current_setting('server_version_num')::int")
    if version < MIN_SERVER_VERSION:
        raise errors.SchemaMismatch(
            f"PostgreSQL {version // 10000} is too old: 15 or newer is needed"
        )
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        done = await _migrate_locked(conn)
        async with conn.transaction():
            await _as_owner(conn)
            await _load_reference_data(conn, counter_shards)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def _migrate_locked(conn: asyncpg.Connection) -> list[str]:
    async with conn.transaction():
        await _as_owner(conn)
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
            if await conn.fetchval("SELECT to_regclass('households') IS NULL"):
                await conn.execute(head_schema())
                await conn.execute(_BOOKKEEPING)
                await _record(conn, available(), "fresh")
                return ["schema.sql"]
            await conn.execute(_BOOKKEEPING)
            await _adopt_released(conn)
    state = await status(conn)
    if state.unknown or state.changed:
        await check_current(conn)  # raises: never migrate a database we do not understand
    done = []
    for migration in state.pending:
        async with conn.transaction():
            await _as_owner(conn)
            await conn.execute(migration.sql)
            await _record(conn, [migration], "migration")
        done.append(migration.label)
    return done


async def _adopt_released(conn: asyncpg.Connection) -> None:
    """A database made by 0.1.0 (schema.sql re-applied at every start, no bookkeeping) is at
    migration 0001 exactly when it recorded 0001's checksum."""
    first = available()[0]
    digest = None
    if await conn.fetchval("SELECT to_regclass('schema_meta') IS NOT NULL"):
        digest = await conn.fetchval(db.q("get_meta"), "schema_sha256")
    if digest != first.checksum:
        raise errors.SchemaMismatch(
            "the database has tables but no migration history, and is not a 0.1.0 database: "
            "point DATABASE_URL at an empty database or a Coupon one"
        )
    await _record(conn, [first], "adopted")


async def _record(
    conn: asyncpg.Connection, done: tuple[Migration, ...] | list[Migration], how: str
) -> None:
    await conn.executemany(
        db.q("record_migration"),
        [(m.version, m.name, m.checksum, how) for m in done],
    )


async def _as_owner(conn: asyncpg.Connection) -> None:
    """Run as the database's owner, so that every object belongs to it whoever logs in (a
    superuser, or a member of the owner role)."""
    await conn.execute(
        "SELECT set_config('role', d.datdba::regrole::text, true) FROM pg_database d "
        "WHERE d.datname = current_database() AND d.datdba <> current_user::regrole "
        "AND pg_has_role(current_user, d.datdba, 'MEMBER')"
    )


async def _load_reference_data(conn: asyncpg.Connection, counter_shards: int) -> None:
    """The provinces, and the counter shards of this database (fixed at its first init)."""
    await conn.executemany(
        db.q("upsert_province"), [(p.code, p.name_en, p.name_fa) for p in iran_provinces()]
    )
    stored = await conn.fetchval(db.q("get_meta"), "counter_shards")
    shards = int(stored) if stored else counter_shards
    await conn.execute(db.q("set_meta"), "counter_shards", str(shards))
    await conn.execute(db.q("create_all_tranche_counters"), shards)
