"""The database tier fails, the service keeps its promises: `coupon serve --workers 2` on the
Patroni cluster, under signed POS traffic that resends every unanswered request with the same
request_id, through a postmaster crash, the loss of the leader's whole node, its rejoining, a
planned switchover and the loss of both standbys (strict synchronous mode: commits wait).

After each event, on whichever node leads now: every acknowledged redemption is there exactly
once, nothing answered 2xx is missing, counters == ledger == credit - balances, and the ledger
verifies. Each event's write gap (the longest time without an answered redemption) and the
503s are printed; `make ha-test` runs it COUPON_HA_RUNS times and holds the targets."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from coupon import logins
from tests.ha.cluster import Cluster, Node
from tests.ha.conftest import HaDatabase
from tests.ha.traffic import ResendingLoad, check_primary, until, write_gap
from tests.reliability.harness import Sent, Server, World, record, resolve

RUNS = int(os.environ.get("COUPON_HA_RUNS", "1"))
# `make ha-test` holds the failover targets; the suite only measures them (no timing asserts)
TARGETS = os.environ.get("COUPON_HA_TARGETS", "") not in ("", "0")
TARGET_GAP = {"postmaster_crash": 5.0, "node_loss": 25.0}
# how long both standbys stay away: commits wait (strict mode) and nothing may be confirmed
STANDBYS_AWAY = 6.0


@pytest.mark.timeout(600 + 420 * RUNS)
async def test_failover_loses_nothing(
    cluster: Cluster, ha_database: HaDatabase, ha_world: World
) -> None:
    world = ha_world
    server = Server(
        ha_database.login(logins.WRITER),
        workers=2,
        env={"DATABASE_READ_URL": ha_database.login(logins.WRITER, attrs="prefer-standby")},
    )
    gaps: dict[str, list[float]] = {}
    unavailable: Counter[str] = Counter()
    sent: list[Sent] = []
    await server.start()

    async def event(
        name: str, act: Callable[[ResendingLoad], Awaitable[None]], settle: float = 2.0
    ) -> None:
        async with ResendingLoad(world, server.base, tag=f"{name[:2]}{len(sent)}") as load:
            await asyncio.sleep(2.0)
            began = time.monotonic()
            await act(load)
            await asyncio.sleep(settle)
        answered = load.answered()
        gaps.setdefault(name, []).append(round(write_gap(answered, began), 2))
        unavailable[name] += load.statuses["503"]
        sent.extend(load.sent)
        await resolve(server.base, [s for s in load.sent if not s.definitive])
        figures = await check_primary(ha_database.superuser, sent)
        print(f"{name}: gap {gaps[name][-1]} s, 503s {load.statuses['503']}, {figures}")

    lost: list[Node] = []  # the node lost in this run, until it rejoins
    try:
        for _ in range(RUNS):
            cluster.wait_healthy()

            async def crash_postmaster(load: ResendingLoad) -> None:
                old = _leader(cluster)
                cluster.kill_postmaster(old)
                await until(lambda: _leads_other(cluster, old), 60, "new leader")

            await event("postmaster_crash", crash_postmaster)
            await asyncio.to_thread(cluster.wait_healthy)

            lost.clear()

            async def lose_node(load: ResendingLoad) -> None:
                old = _leader(cluster)
                lost.append(old)
                cluster.kill_node(old)
                await until(lambda: _leads_other(cluster, old), 90, "new leader")

            await event("node_loss", lose_node)

            async def rejoin(load: ResendingLoad) -> None:
                cluster.start_node(lost[0])
                took = await until(cluster.healthy, 120, "rejoined node")
                gaps.setdefault("rejoin_to_streaming", []).append(round(took, 2))

            await event("rejoin", rejoin, settle=1.0)

            async def switchover(load: ResendingLoad) -> None:
                old = _leader(cluster)
                candidate = _sync_standby(cluster)
                await asyncio.to_thread(cluster.switchover, candidate)
                await until(lambda: _leads_other(cluster, old), 60, "switched leader")

            await event("switchover", switchover)
            await asyncio.to_thread(cluster.wait_healthy)

            async def standbys_away(load: ResendingLoad) -> None:
                standbys = [n for n in cluster.nodes if n is not _leader(cluster)]
                for node in standbys:
                    cluster.kill_node(node)
                away = time.monotonic()
                await asyncio.sleep(STANDBYS_AWAY)
                # strict mode: with no standby to hold a copy, nothing may be confirmed
                confirmed = sum(
                    1
                    for s in load.sent
                    for a in s.answers
                    if a.status == 201 and a.sent_at > away + 0.5
                )
                assert confirmed == 0, f"{confirmed} redemptions confirmed with no standby"
                for node in standbys:
                    cluster.start_node(node)
                await until(cluster.healthy, 120, "standbys back")

            await event("standbys_away", standbys_away)
    finally:
        await server.stop()
    # through every failover, the service's log stayed JSON lines (no driver tracebacks)
    assert server.log_path is not None
    for line in server.log_path.read_text().splitlines():
        assert line.startswith("{") or line.startswith("serving on "), line
    figures = {"runs": RUNS, "write_gap_s": gaps, "503s": dict(unavailable)}
    record("ha_failover", figures)
    if TARGETS:
        for name, bound in TARGET_GAP.items():
            assert max(gaps[name]) <= bound, (name, gaps[name], bound)


def _leader(cluster: Cluster) -> Node:
    leader = cluster.leader()
    assert leader is not None, cluster.members()
    return leader


def _leads_other(cluster: Cluster, old: Node) -> bool:
    leader = cluster.leader()
    return leader is not None and leader is not old


def _sync_standby(cluster: Cluster) -> Node:
    for m in cluster.members():
        if m["role"] == "sync_standby" and m["state"] == "streaming":
            return cluster.node(m["name"])
    raise AssertionError(f"no synchronous standby: {cluster.members()}")
