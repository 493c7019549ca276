"""One Patroni cluster for the high-availability tests; a database of its own for each test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import pytest

from coupon import logins, migrations
from tests.conftest import PASSWORDS, TEST_SHARDS
from tests.ha.cluster import Cluster, Node
from tests.reliability.harness import World, seed


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


@dataclass(frozen=True)
class HaDatabase:
    """The service's database on a cluster."""

    cluster: Cluster
    name: str

    @property
    def superuser(self) -> str:
        return self.cluster.dsn(database=self.name)

    def login(
        self, role: str, attrs: str | None = "read-write", nodes: list[Node] | None = None
    ) -> str:
        """A login role's DSN, over every node (or those given)."""
        return self.cluster.dsn(role, PASSWORDS[role], self.name, nodes=nodes, attrs=attrs)


async def make_database(cluster: Cluster, name: str) -> HaDatabase:
    """The login roles, a database owned by coupon_owner, migrated to the newest schema."""
    conn = await asyncpg.connect(cluster.dsn())
    try:
        for statement in logins.role_statements(PASSWORDS):
            await conn.execute(statement)
        for statement in logins.database_statements(name):
            await conn.execute(statement)
    finally:
        await conn.close()
    made = HaDatabase(cluster, name)
    conn = await asyncpg.connect(made.superuser)
    try:
        await migrations.migrate(conn, TEST_SHARDS)
    finally:
        await conn.close()
    return made


@pytest.fixture
async def ha_database(cluster: Cluster, request: pytest.FixtureRequest) -> HaDatabase:
    cluster.wait_healthy()
    return await make_database(cluster, "coupon_" + re.sub(r"\W", "_", request.node.name)[:50])


@pytest.fixture
async def ha_world(ha_database: HaDatabase) -> World:
    """Households, an open tranche and signed terminals in the test's database."""
    return await seed(ha_database.login(logins.WRITER))
