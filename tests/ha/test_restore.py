"""The restore drill: a base backup (pg_basebackup) and the WAL archive bring the ledger back
as it stood at a chosen moment -- every redemption answered before it, none sent after it --
consistent (counters == ledger == credit - balances) and verifying."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import shutil
import time

import aiohttp
import asyncpg
import pytest

from coupon import audit, logins
from coupon.config import Settings
from coupon.signing import SealKeys
from tests.ha.cluster import Cluster, free_ports
from tests.ha.conftest import HaDatabase
from tests.integration.terminal import invariants
from tests.reliability.harness import Sent, Server, World, redemption, send


async def _redeem(base: str, world: World, rng: random.Random, n: int, tag: str) -> list[Sent]:
    sents = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            sent = redemption(world, rng, tag)
            for _ in range(100):
                if (await send(session, base, sent)).definitive:
                    break
                await asyncio.sleep(0.1)
            assert sent.definitive, sent.answers
            sents.append(sent)
    return sents


@pytest.mark.timeout(300)
async def test_point_in_time_restore(
    cluster: Cluster, ha_database: HaDatabase, ha_world: World
) -> None:
    cluster.wait_healthy()
    leader = cluster.leader()
    assert leader is not None
    backup = cluster.home / "backup"
    cluster.as_server_user(
        [
            str(cluster.pg_bin / "pg_basebackup"),
            f"--pgdata={backup}",
            f"--host={leader.host}",
            f"--port={leader.pg_port}",
            "--username=replicator",
            "--wal-method=stream",
            "--checkpoint=fast",
        ],
        env={"PGPASSWORD": cluster.password},
    )
    server = Server(ha_database.login(logins.WRITER), workers=1)
    await server.start()
    rng = random.Random(11)
    try:
        before = await _redeem(server.base, ha_world, rng, 40, "pitr-before")
        await asyncio.sleep(1.0)
        target = dt.datetime.now(dt.UTC)
        await asyncio.sleep(1.0)
        after = await _redeem(server.base, ha_world, rng, 40, "pitr-after")
    finally:
        await server.stop()
    await _archived(cluster)

    port = free_ports(1)[0]
    (backup / "recovery.signal").touch()
    with (backup / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"restore_command = 'cp {cluster.archive}/%f %p'\n"
            f"recovery_target_time = '{target.isoformat()}'\n"
            "recovery_target_action = 'promote'\n"
        )
    cluster.own(backup)
    options = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={backup} "
        "-c archive_mode=off -c synchronous_standby_names='' -c hot_standby=on"
    )
    pg_ctl = str(cluster.pg_bin / "pg_ctl")
    # -l: the server must not hold our pipes open
    log = backup / "restore.log"
    cluster.as_server_user(
        [pg_ctl, "start", "-w", "-t", "120", "-D", str(backup), "-l", str(log), "-o", options]
    )
    try:
        restored = cluster.dsn(database=ha_database.name, attrs=None).replace(
            cluster.hosts(), f"127.0.0.1:{port}"
        )
        conn = await asyncpg.connect(restored)
        try:
            await _promoted(conn)
            keys = {
                r["request_id"]
                for r in await conn.fetch("SELECT request_id FROM terminal_requests")
            }
            assert all(s.request_id in keys for s in before)
            assert not any(s.request_id in keys for s in after)
            await invariants(conn)
            verified = await audit.verify(conn, SealKeys.from_settings(Settings()), None)
            assert verified.ok, verified
        finally:
            await conn.close()
    finally:
        cluster.as_server_user([pg_ctl, "stop", "-m", "immediate", "-D", str(backup)])
        shutil.rmtree(backup, ignore_errors=True)


async def _archived(cluster: Cluster, patience: float = 60.0) -> None:
    """Close the current WAL segment and wait until the archive has it."""
    conn = await asyncpg.connect(cluster.dsn())
    try:
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + patience
        while await conn.fetchval(
            "SELECT last_archived_wal IS NULL OR last_archived_wal < $1 FROM pg_stat_archiver",
            segment,
        ):
            assert time.monotonic() < deadline, "the WAL archive did not catch up"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _promoted(conn: asyncpg.Connection, patience: float = 120.0) -> None:
    deadline = time.monotonic() + patience
    while await conn.fetchval("SELECT pg_is_in_recovery()"):
        assert time.monotonic() < deadline, "recovery did not reach its target"
        await asyncio.sleep(0.2)
