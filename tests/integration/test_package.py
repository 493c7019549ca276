"""The built package works outside the repository: `python -m build` makes an sdist and a wheel
with no warnings, the wheel installs into a fresh virtual environment, and from another working
directory its `coupon` initialises a database, serves it as the writer login, and approves a
signed redemption."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from coupon import auth, logins
from tests.conftest import ROOT, as_role
from tests.integration.helpers import households_csv, national_ids, tranche_body
from tests.reliability.harness import free_port


def _run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (argv, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `coupon` command of a wheel built from this tree, in a fresh venv outside it."""
    work = tmp_path_factory.mktemp("package")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    output = _run(
        sys.executable,
        "-m",
        "build",
        "--no-isolation",
        "--outdir",
        work / "dist",
        ROOT,
        cwd=work,
        env=env,
    )
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert not warnings, warnings
    wheel = next((work / "dist").glob("coupon-*.whl"))
    assert next((work / "dist").glob("coupon-*.tar.gz"))
    _run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    _run(
        work / "venv" / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "-c",
        ROOT / "constraints.txt",
        wheel,
        cwd=work,
    )
    return work / "venv" / "bin" / "coupon"


async def test_the_installed_wheel_migrates_serves_and_redeems(
    installed: Path, empty_database: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    superuser_dsn = await empty_database()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "COUPON_LOG_LEVEL": "warning", "DATABASE_URL": superuser_dsn}
    out = _run(installed, "db", "init", cwd=elsewhere, env=env)
    assert "applied schema.sql" in out
    writer = {**env, "DATABASE_URL": as_role(superuser_dsn, logins.WRITER)}
    operator = (
        _run(installed, "token", "create", "--role", "operator", cwd=elsewhere, env=writer)
        .strip()
        .splitlines()[-1]
    )

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(  # noqa: ASYNC220 -- a plain child, waited for below
            [installed, "serve", "--port", str(port)],
            cwd=elsewhere,
            env=writer,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {operator}"}
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            nid = national_ids(1, seed=5)[0]
            async with http.post(
                f"{base}/v1/admin/households/import",
                data=households_csv([(nid, "IR-15", 3, 1)]).encode(),
                headers={**headers, "Content-Type": "text/csv"},
            ) as resp:
                assert resp.status == 200, await resp.text()
            body = tranche_body(bands=[{"up_to_decile": 3, "per_member_credit": 5_000_000}])
            async with http.post(f"{base}/v1/admin/tranches", json=body, headers=headers) as r:
                assert r.status == 201, await r.text()
            async with http.post(
                f"{base}/v1/admin/merchants",
                json={"name": "Shop", "province": "IR-15"},
                headers=headers,
            ) as r:
                merchant = (await r.json())["id"]
            async with http.post(
                f"{base}/v1/admin/merchants/{merchant}/terminals", headers=headers
            ) as r:
                terminal = await r.json()
            payload = (f'{{"request_id":"pkg-1","national_id":"{nid}","amount":1200000}}').encode()
            signed = auth.signed_headers(
                terminal["terminal_id"],
                terminal["secret"],
                "POST",
                "/v1/redemptions",
                payload,
                nonce="package-test-1",
            )
            async with http.post(
                f"{base}/v1/redemptions",
                data=payload,
                headers={**signed, "Content-Type": "application/json"},
            ) as r:
                assert r.status == 201, await r.text()
                assert (await r.json())["remaining"] == 15_000_000 - 1_200_000
    finally:
        server.terminate()
        server.wait(timeout=60)
    conn = await asyncpg.connect(superuser_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ledger") == 1
    finally:
        await conn.close()
    assert server.returncode == 0
