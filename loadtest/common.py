"""What every benchmark shares: a durable PostgreSQL (never fsync off) and a fresh database."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from coupon import db
from coupon.embedded import EmbeddedPostgres

OUT = Path(__file__).resolve().parent / "out"


def machine() -> str:
    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {cpus} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def print_result(module: str, figures: dict[str, Any]) -> None:
    """Print a benchmark's figures as JSON, with the command, machine and date that made them."""
    print(
        json.dumps(
            {
                "command": f"python -m {module} " + shlex.join(sys.argv[1:]),
                "machine": machine(),
                "date": dt.date.today().isoformat(),
                **figures,
            },
            indent=2,
            default=str,
        )
    )


@contextlib.asynccontextmanager
async def bench_database(name: str, counter_shards: int = 16) -> AsyncIterator[str]:
    """A fresh, schema-initialised database on DATABASE_URL or a durable embedded server."""
    url = os.environ.get("DATABASE_URL")
    server = None
    if url:
        admin = url
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        OUT.chmod(0o755)
        server = EmbeddedPostgres(OUT / "pg", durable=True)
        admin = server.start()
    try:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {name}")
            fsync = await conn.fetchval("SHOW fsync")
            sync_commit = await conn.fetchval("SHOW synchronous_commit")
            assert fsync == "on" and sync_commit == "on", "benchmarks run with durable commits"
        finally:
            await conn.close()
        dsn = admin.rsplit("/", 1)[0] + "/" + name
        conn = await asyncpg.connect(dsn)
        try:
            await db.apply_schema(conn, counter_shards)
        finally:
            await conn.close()
        yield dsn
    finally:
        if server is not None:
            server.stop()
