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

from coupon import logins, migrations
from coupon.embedded import EmbeddedPostgres

OUT = Path(__file__).resolve().parent / "out"
# the login roles' passwords for this run (set on the server by bench_database)
PASSWORDS = logins.new_passwords()


def service_dsn(dsn: str) -> str:
    """A bench database as the service logs in to it: coupon_writer."""
    return logins.dsn_for(dsn, role=logins.WRITER, password=PASSWORDS[logins.WRITER])


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
    """A fresh, migrated database on DATABASE_URL or a durable embedded server: a superuser's
    DSN of it (service_dsn() gives the service's)."""
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
            for statement in logins.role_statements(PASSWORDS):
                await conn.execute(statement)
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {name} OWNER {logins.OWNER}")
            fsync = await conn.fetchval("SHOW fsync")
            sync_commit = await conn.fetchval("SHOW synchronous_commit")
            assert fsync == "on" and sync_commit == "on", "benchmarks run with durable commits"
        finally:
            await conn.close()
        dsn = logins.dsn_for(admin, database=name)
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn, counter_shards)
        finally:
            await conn.close()
        yield dsn
    finally:
        if server is not None:
            server.stop()
