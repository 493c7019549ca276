"""The service on a cluster before anything fails: reads that may lag go to a standby while it
is within COUPON_READ_MAX_LAG of the primary and to the primary once it is not; /healthz says
where writes and reads go; the read-only CLI commands work on a standby."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from coupon import logins, tokens
from tests.ha.cluster import Cluster, Node
from tests.ha.conftest import HaDatabase
from tests.reliability.harness import ROOT, Server, World, redemption, send

MAX_LAG = 1.0


async def _get(base: str, path: str, headers: dict[str, str] | None = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + path, headers=headers) as resp,
    ):
        return resp.status, orjson.loads(await resp.read())


async def _eventually(probe: Any, patience: float, what: str) -> Any:
    deadline = time.monotonic() + patience
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {patience} s")
        await asyncio.sleep(0.1)


def _async_standby(cluster: Cluster) -> Node:
    for m in cluster.members():
        if m["role"] == "replica" and m["state"] == "streaming":
            return cluster.node(m["name"])
    raise AssertionError(f"no asynchronous standby: {cluster.members()}")


async def test_reads_go_to_a_fresh_standby_only(
    cluster: Cluster, ha_database: HaDatabase, ha_world: World
) -> None:
    cluster.wait_healthy()
    standby = _async_standby(cluster)
    conn = await asyncpg.connect(ha_database.superuser)
    try:
        auditor = {"Authorization": "Bearer " + await tokens.create_token(conn, "auditor", "ha")}
    finally:
        await conn.close()
    server = Server(
        ha_database.login(logins.WRITER),
        workers=1,
        env={
            "DATABASE_READ_URL": ha_database.login(logins.WRITER, attrs=None, nodes=[standby]),
            "COUPON_READ_MAX_LAG": str(MAX_LAG),
        },
    )
    await server.start()
    try:

        async def reads_on(where: str) -> bool:
            status, health = await _get(server.base, "/healthz")
            assert status == 200 and health["role"] == "primary", health
            return bool(health.get("reads") == where)

        await _eventually(lambda: reads_on("standby"), 10, "reads on the standby")

        cluster.pause_replay(standby)
        try:
            # a redemption the paused standby will not have
            async with aiohttp.ClientSession() as session:
                sent = redemption(ha_world, random.Random(5), "lag")
                answer = await send(session, server.base, sent)
            assert answer.status in (201, 402), answer
            nid = orjson.loads(sent.body)["national_id"]
            mark = time.monotonic()

            async def shows_it() -> bool:
                status, page = await _get(
                    server.base, f"/v1/ledger?national_id={nid}&limit=1000", auditor
                )
                assert status == 200, page
                return any(e["request_id"] == sent.request_id for e in page["entries"])

            if answer.status == 201:
                # within the bound, from the primary (the standby never gets it while paused)
                await _eventually(shows_it, MAX_LAG + 4.0, "the new redemption in the ledger")
                assert time.monotonic() - mark <= MAX_LAG + 4.0
            # the standby is behind by more than the bound now: reads stay on the primary
            await asyncio.sleep(MAX_LAG + 0.5)
            assert await reads_on("primary")
        finally:
            cluster.resume_replay(standby)
        await _eventually(lambda: reads_on("standby"), 10, "reads back on the standby")
        status, stats = await _get(server.base, "/v1/stats", auditor)
        assert status == 200 and stats["totals"]["transactions"] >= 0, stats
    finally:
        await server.stop()


def _coupon(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "COUPON_"))}
    return subprocess.run(
        [sys.executable, "-m", "coupon", *argv],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_read_only_commands_work_on_a_standby(
    cluster: Cluster, ha_database: HaDatabase, ha_world: World, tmp_path: Path
) -> None:
    cluster.wait_healthy()
    standby = _async_standby(cluster)
    on_standby = ha_database.login(logins.WRITER, attrs=None, nodes=[standby])

    async def replicated() -> bool:
        try:
            conn = await asyncpg.connect(on_standby)
        except (OSError, asyncpg.PostgresError):
            return False  # the database is not there yet
        try:
            return bool(await conn.fetchval("SELECT count(*) > 0 FROM tranches"))
        finally:
            await conn.close()

    await _eventually(replicated, 30, "the seeded database on the standby")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    for env in (
        {"DATABASE_URL": on_standby},
        {"DATABASE_URL": ha_database.login(logins.WRITER), "DATABASE_READ_URL": on_standby},
    ):
        verified = _coupon(env, "audit", "verify")
        assert verified.returncode == 0, verified.stderr
        assert orjson.loads(verified.stdout)["ok"] is True
        settled = _coupon(env, "report", "settlement", "--date", today)
        assert settled.returncode == 0, settled.stderr
        assert settled.stdout.startswith("merchant_id,"), settled.stdout
        export = tmp_path / "ledger.jsonl"
        exported = _coupon(env, "audit", "export", str(export))
        assert exported.returncode == 0, exported.stderr
        checked = _coupon({}, "audit", "verify", "--offline", str(export))
        assert checked.returncode == 0, checked.stdout + checked.stderr
