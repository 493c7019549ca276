"""A partition, not a crash: the leader is cut off from etcd and the other database nodes while
the service still reaches it. It cannot renew its leadership, so Patroni demotes it, and a
standby is promoted; in between it is a primary nobody else knows about, and strict synchronous
replication is what keeps it from confirming anything: a commit there waits for a standby that
cannot hear it. The service follows the new primary; after healing, the old leader rejoins
through pg_rewind; and every redemption ever answered 2xx is on the new primary, once.

Each node runs in a network namespace of its own (root, `ip netns`, veth and a bridge)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from coupon import logins
from tests.ha.cluster import Cluster, Network
from tests.ha.conftest import make_database
from tests.ha.test_failover import ResendingLoad, check_primary, until, write_gap
from tests.reliability.harness import Server, record, resolve, seed


@pytest.fixture(scope="module")
async def partitionable() -> AsyncIterator[Cluster]:
    made = Cluster(network=Network())
    try:
        await asyncio.to_thread(made.start)
        yield made
    except BaseException:
        print(made.logs())
        raise
    finally:
        await asyncio.to_thread(made.stop)


@pytest.mark.timeout(600)
async def test_isolated_leader_confirms_nothing(partitionable: Cluster) -> None:
    cluster = partitionable
    database = await make_database(cluster, "coupon_partition")
    world = await seed(database.login(logins.WRITER))
    server = Server(database.login(logins.WRITER), workers=2)
    await server.start()
    try:
        old = cluster.leader()
        assert old is not None
        async with ResendingLoad(world, server.base, tag="part") as load:
            await asyncio.sleep(2.0)
            cut = time.monotonic()
            cluster.partition(old)
            took = await until(lambda: _leads_other(cluster, old.name), 90, "a new leader")
            promoted = time.monotonic()
            # the old leader, still reachable by the service, must have stopped being a primary
            # by itself (it cannot renew its key): ask it directly
            demoted = await _demoted(cluster.dsn(nodes=[old], attrs=None), 60)
            await asyncio.sleep(3.0)
            cluster.heal(old)
            rejoined = await until(cluster.healthy, 120, "the old leader rejoined")
            await asyncio.sleep(2.0)
        # nothing confirmed by the isolated node between the cut and the promotion
        confirmed_isolated = load.confirmed_between(cut + 0.5, promoted)
        await resolve(server.base, [s for s in load.sent if not s.definitive])
        figures = await check_primary(cluster, database.superuser, load.sent)
    finally:
        await server.stop()
    gap = write_gap(load.answered(), cut)
    record(
        "ha_partition",
        {
            "new_leader_after_s": round(took, 2),
            "old_leader_demoted_after_s": round(demoted, 2),
            "rejoined_after_heal_s": round(rejoined, 2),
            "write_gap_s": round(gap, 2),
            "503s": load.statuses["503"],
            "confirmed_while_isolated": confirmed_isolated,
            **figures,
        },
    )
    # check_primary found every 2xx on the new primary; here: none came from the old one
    assert confirmed_isolated == 0


def _leads_other(cluster: Cluster, old: str) -> bool:
    leader = cluster.leader()
    return leader is not None and leader.name != old


async def _demoted(dsn: str, patience: float) -> float:
    """Seconds until the server behind dsn is no longer a primary (a standby, or down)."""
    started = time.monotonic()
    while time.monotonic() - started < patience:
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return time.monotonic() - started
        try:
            if await conn.fetchval("SELECT pg_is_in_recovery()", timeout=2):
                return time.monotonic() - started
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return time.monotonic() - started
        finally:
            conn.terminate()
        await asyncio.sleep(0.2)
    raise AssertionError(f"the isolated leader was still a primary after {patience} s")
