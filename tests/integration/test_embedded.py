"""Integration tests of the embedded PostgreSQL (real server processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from coupon.embedded import EmbeddedPostgres, EmbeddedPostgresError

# tmp_path lives under a root-only 0700 directory the unprivileged server user (used when
# running as root) cannot traverse, so data dirs live inside the checkout instead.
_BASE = Path(__file__).resolve().parents[2] / ".test-embedded"


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True if pid runs (a zombie awaiting its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = _BASE / uuid.uuid4().hex
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        # Never leave a server behind, whatever the test did.
        pid = _postmaster_pid(path)
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            _gone(pid)
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            _BASE.rmdir()


async def _query(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def query(dsn: str, sql: str) -> object:
    return asyncio.run(_query(dsn, sql))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def execute(dsn: str, sql: str) -> None:
    asyncio.run(_execute(dsn, sql))


@pytest.mark.timeout(120)
def test_fresh_start_durability_and_restart(data_dir: Path) -> None:
    t0 = time.monotonic()
    fast = EmbeddedPostgres(data_dir, durable=False)
    dsn = fast.start()
    fresh = time.monotonic() - t0
    assert dsn.startswith("postgresql://coupon:") and "@127.0.0.1:" in dsn
    assert dsn == fast.dsn
    assert query(dsn, "select 1") == 1
    assert query(dsn, "show fsync") == "off"
    assert query(dsn, "show synchronous_commit") == "off"
    assert query(dsn, "show unix_socket_directories") == ""
    execute(dsn, "create table survivor (x int); insert into survivor values (42)")
    pw = data_dir / "superuser.password"
    assert pw.stat().st_mode & 0o777 == 0o600
    assert pw.stat().st_uid == os.geteuid()
    assert not list(data_dir.glob(".initdb-pw-*"))
    pid = _postmaster_pid(data_dir)
    fast.stop()
    fast.stop()  # idempotent
    assert pid is not None and _gone(pid)

    t0 = time.monotonic()
    with EmbeddedPostgres(data_dir, durable=True) as durable:
        existing = time.monotonic() - t0
        assert query(durable.dsn, "show fsync") == "on"
        assert query(durable.dsn, "show synchronous_commit") == "on"
        assert query(durable.dsn, "select x from survivor") == 42
        assert (durable.bin_dir / "postgres").exists()
    assert _postmaster_pid(data_dir) is None
    print(f"start: fresh {fresh:.2f}s, existing {existing:.2f}s")
    assert existing < 2.0


@pytest.mark.timeout(120)
def test_second_instance_attaches(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir, durable=False) as first:
        second = EmbeddedPostgres(data_dir, durable=False)
        t0 = time.monotonic()
        assert second.start() == first.dsn
        assert time.monotonic() - t0 < 2.0
        pid = _postmaster_pid(data_dir)
        second.stop()  # it did not start the server: must be a no-op
        assert pid is not None and _alive(pid)
        assert query(first.dsn, "select 1") == 1
    assert _gone(pid)


@pytest.mark.timeout(120)
def test_restart_after_kill_9(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir, durable=True)
    dsn = pg.start()
    execute(dsn, "create table survivor (x int); insert into survivor values (7)")
    pid = _postmaster_pid(data_dir)
    assert pid is not None

    async def kill_with_open_connection() -> None:
        # An open session leaves an orphaned backend attached to the old shared memory.
        conn = await asyncpg.connect(dsn, timeout=10)
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)

    asyncio.run(kill_with_open_connection())
    assert _gone(pid)
    assert (data_dir / "pgdata" / "postmaster.pid").exists()  # stale

    again = EmbeddedPostgres(data_dir, durable=True)
    try:
        new_dsn = again.start()
        assert _postmaster_pid(data_dir) != pid
        assert query(new_dsn, "select x from survivor") == 7
    finally:
        again.stop()
    pg.stop()  # its server is long gone: nothing to do, no error


@pytest.mark.timeout(120)
@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_untraversable_data_dir_is_reported(data_dir: Path) -> None:
    private = data_dir / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    with pytest.raises(EmbeddedPostgresError, match="cannot traverse") as exc:
        EmbeddedPostgres(private / "data").start()
    assert str(private) in str(exc.value) and "COUPON_DATA_DIR" in str(exc.value)
    assert private.stat().st_mode & 0o777 == 0o700  # permissions left alone


def test_durable_refuses_fsync_off() -> None:
    with pytest.raises(EmbeddedPostgresError, match="durable=False"):
        EmbeddedPostgres(_BASE / "unused", settings={"fsync": "off"})
