"""A real PostgreSQL for the suite: DATABASE_URL (a superuser) when set, otherwise an embedded
cluster (fsync off, test data only). The login roles are made once per cluster, the schema is
migrated once into a template database owned by coupon_owner; every test gets a fresh clone.
The service under test logs in as coupon_writer (`dsn`); `conn` is a superuser's, for set-up
and for playing the attacker."""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from coupon import logins, migrations, tokens
from coupon.app import create_app
from coupon.config import Settings
from coupon.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "coupon_template"
TEST_SHARDS = 4
# test clusters only
PASSWORDS = {role: f"{role}-test-password" for role in logins.ROLES}


def _with_database(dsn: str, name: str) -> str:
    return logins.dsn_for(dsn, database=name)


def as_role(dsn: str, role: str) -> str:
    """The same database, logged in as one of the service's roles."""
    return logins.dsn_for(dsn, role=role, password=PASSWORDS[role])


def test_data_dir() -> Path:
    """The test cluster's home: under the system temp dir, which the unprivileged server user
    can always reach (a clone under a private home directory may not be)."""
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"coupon-test-{digest}"
    path.mkdir(mode=0o755, exist_ok=True)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A superuser DSN on a real server."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(test_data_dir(), durable=False)
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()


async def create_database(
    admin_dsn: str,
    name: str,
    *,
    owner: str | None = logins.OWNER,
    template: str | None = None,
    migrated: bool = False,
) -> str:
    """A new database (owner None: the superuser, as 0.1.0 made them), a copy of a template or
    migrated to the newest schema; the superuser's DSN of it. The login roles are made first."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        for statement in logins.role_statements(PASSWORDS):
            await conn.execute(statement)
        await conn.execute(
            f"CREATE DATABASE {name}"
            + (f" TEMPLATE {template}" if template else "")
            + (f" OWNER {owner}" if owner else "")
        )
    finally:
        await conn.close()
    dsn = _with_database(admin_dsn, name)
    if migrated:
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn, TEST_SHARDS)
        finally:
            await conn.close()
    return dsn


async def drop_databases(admin_dsn: str, *names: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        for name in names:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def template_dsn(admin_dsn: str) -> AsyncIterator[str]:
    await drop_databases(admin_dsn, TEMPLATE)
    yield await create_database(admin_dsn, TEMPLATE, migrated=True)


@pytest.fixture
async def superuser_dsn(admin_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    """A fresh database cloned from the template, dropped after the test: a superuser's DSN."""
    name = "t_" + uuid.uuid4().hex[:16]
    yield await create_database(admin_dsn, name, template=TEMPLATE)
    await drop_databases(admin_dsn, name)


@pytest.fixture
async def empty_database(
    admin_dsn: str, template_dsn: str
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Make empty databases, dropped afterwards; a superuser's DSN of each. owner=None: owned by
    the superuser, as 0.1.0 made them."""
    made: list[str] = []

    async def make(owner: str | None = logins.OWNER) -> str:
        made.append("e_" + uuid.uuid4().hex[:16])
        return await create_database(admin_dsn, made[-1], owner=owner)

    yield make
    await drop_databases(admin_dsn, *made)


@pytest.fixture
def dsn(superuser_dsn: str) -> str:
    """The test's database as the service logs in to it: coupon_writer."""
    return as_role(superuser_dsn, logins.WRITER)


@pytest.fixture
async def conn(superuser_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(superuser_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings(database_url=dsn, pool_min_size=1, pool_max_size=20, counter_shards=TEST_SHARDS)


@pytest.fixture
async def client(
    settings: Settings, dsn: str, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings, dsn))


@pytest.fixture
async def operator(conn: asyncpg.Connection) -> dict[str, str]:
    """Headers of an operator."""
    return {"Authorization": "Bearer " + await tokens.create_token(conn, "operator", "test")}


@pytest.fixture
async def auditor(conn: asyncpg.Connection) -> dict[str, str]:
    """Headers of an auditor."""
    return {"Authorization": "Bearer " + await tokens.create_token(conn, "auditor", "test")}
