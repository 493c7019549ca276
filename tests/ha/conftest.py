"""One Patroni cluster for the high-availability tests, with the service's database on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from coupon import logins, migrations
from tests.conftest import PASSWORDS, TEST_SHARDS
from tests.ha.cluster import Cluster
from tests.reliability.harness import World, seed

DATABASE = "coupon"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    try:
        made.start()
        yield made
    except BaseException:
        print(made.logs())
        raise
    finally:
        made.stop()


@pytest.fixture(scope="session")
async def ha_database(cluster: Cluster) -> AsyncIterator[str]:
    """The service's database on the cluster, at the newest schema: the superuser's DSN."""
    conn = await asyncpg.connect(cluster.dsn())
    try:
        for statement in logins.role_statements(PASSWORDS):
            await conn.execute(statement)
        for statement in logins.database_statements(DATABASE):
            await conn.execute(statement)
    finally:
        await conn.close()
    dsn = cluster.dsn(database=DATABASE)
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn, TEST_SHARDS)
    finally:
        await conn.close()
    yield dsn


def login(cluster: Cluster, role: str, attrs: str | None = "read-write") -> str:
    """A login role's DSN of the service's database, over every node."""
    return cluster.dsn(role, PASSWORDS[role], DATABASE, attrs=attrs)


@pytest.fixture(scope="session")
async def ha_world(cluster: Cluster, ha_database: str) -> World:
    """Households, an open tranche and signed terminals on the cluster's database."""
    return await seed(login(cluster, logins.WRITER))
