"""`coupon demo`: the data set it loads, and the POS traffic it drives through the signed API."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from coupon import db, demo, inspection, simulator
from coupon.api.keys import KEYRING
from coupon.config import Settings
from coupon.keyring import Keyring
from tests.conftest import ROOT
from tests.integration.terminal import Client, invariants


def demo_keyring(data_dir: Path) -> Keyring:
    return Keyring.from_settings(Settings(data_dir=data_dir))


EXAMPLES = ROOT / "examples"


async def test_the_demo_data_set(conn: asyncpg.Connection, tmp_path: Path) -> None:
    seeded = await demo.seed(conn, tmp_path, total_households=3_000, keyring=demo_keyring(tmp_path))
    per_province = dict(
        await conn.fetch("SELECT province, count(*) FROM households GROUP BY province")
    )
    assert len(per_province) == 31 and sum(per_province.values()) == 3_000
    assert 0.15 < per_province["IR-23"] / 3_000 < 0.17  # Tehran's share of the 2016 census
    stores = dict(await conn.fetch("SELECT province, count(*) FROM merchants GROUP BY province"))
    assert len(stores) == 31 and min(stores.values()) >= demo.MIN_STORES
    assert {t["province"] for t in seeded.terminals} == set(per_province)
    bands = await conn.fetch(
        "SELECT up_to_decile FROM tranche_bands WHERE tranche_id = $1 ORDER BY 1",
        seeded.tranche_id,
    )
    assert [b["up_to_decile"] for b in bands] == [3, 7]
    assert await conn.fetchval(db.q("current_tranche")) == seeded.tranche_id
    # loading it again adds nothing and reuses the terminals (their secrets are on disk)
    again = await demo.seed(conn, tmp_path, total_households=3_000, keyring=demo_keyring(tmp_path))
    assert again.terminals == seeded.terminals and again.tranche_id == seeded.tranche_id
    assert await conn.fetchval("SELECT count(*) FROM households") == 3_000


async def test_the_simulated_traffic_uses_the_real_api(
    client: Client, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    seeded = await demo.seed(conn, tmp_path, total_households=1_000, keyring=client.app[KEYRING])
    shoppers = [
        simulator.Shopper(r["national_id"], r["province"], r["entitled"])
        for r in await conn.fetch(db.q("demo_shoppers"), 10_000)
    ]
    assert any(not s.entitled for s in shoppers)
    traffic = simulator.Traffic(
        str(client.make_url("")).rstrip("/"),
        [simulator.Pos(t["terminal_id"], t["secret"], t["province"]) for t in seeded.terminals],
        shoppers,
        rate=200,
        seed=3,
    )
    counts = await traffic.run(requests=400)
    assert sum(counts.values()) == 400
    assert counts["error"] == 0, counts
    assert counts["redemption_201"] > 250
    assert counts["balance"] > 0 and counts["reversal_201"] > 0 and counts["replayed"] > 0
    assert sum(n for k, n in counts.items() if k.startswith("declined_")) > 0
    await invariants(conn)
    ledger = await conn.fetchval("SELECT count(*) FROM ledger")
    assert ledger == counts["redemption_201"] + counts["reversal_201"]


async def test_the_demo_injects_fraud_that_inspection_finds(
    client: Client, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    seeded = await demo.seed(conn, tmp_path, total_households=1_000, keyring=client.app[KEYRING])
    assert len(await conn.fetch("SELECT DISTINCT category FROM merchants")) > 2
    cheats = demo.fraudulent(seeded.terminals)
    assert len({t["merchant_id"] for t in cheats}) == demo.FRAUDULENT_STORES
    assert demo.fraudulent(seeded.terminals) == cheats  # the same stores on every start
    shoppers = [
        simulator.Shopper(r["national_id"], r["province"], r["entitled"])
        for r in await conn.fetch(db.q("demo_shoppers"), 10_000)
    ]
    traffic = simulator.Traffic(
        str(client.make_url("")).rstrip("/"),
        [simulator.Pos(t["terminal_id"], t["secret"], t["province"]) for t in seeded.terminals],
        shoppers,
        rate=300,
        seed=5,
        fraud_terminals=[
            simulator.Pos(t["terminal_id"], t["secret"], t["province"]) for t in cheats
        ],
    )
    counts = await traffic.run(requests=1200)
    assert counts["error"] == 0, counts
    await invariants(conn)
    _, ranked = await inspection.ranking(conn, inspection.today_in_tehran(), None, 5)
    found = {r["merchant_id"] for r in ranked[:3]}
    assert found & {t["merchant_id"] for t in cheats}, ranked


async def test_demo_no_serve_loads_and_prints_the_way_in(dsn: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "COUPON_DATA_DIR": str(tmp_path),
        "COUPON_LOG_LEVEL": "warning",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coupon",
        "demo",
        "--no-serve",
        "--households",
        "500",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    text = out.decode()
    assert "/dashboard" in text and "operator token   cpn_" in text
    assert "households       500 over 31 provinces" in text


async def test_demo_reuses_its_tokens_and_says_where_its_files_are(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "COUPON_DATA_DIR": str(tmp_path),
        "COUPON_LOG_LEVEL": "warning",
    }

    async def demo_run() -> str:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "coupon", "demo", "--no-serve", "--households", "300"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        return out.decode()

    def tokens_of(text: str) -> list[str]:
        return [line.split()[-1] for line in text.splitlines() if " token " in line]

    first, second = await demo_run(), await demo_run()
    assert len(tokens_of(first)) == 2 and tokens_of(first) == tokens_of(second)
    assert await conn.fetchval("SELECT count(*) FROM api_tokens") == 2
    for name in (demo.TOKENS_FILE, demo.TERMINALS_FILE):
        path = tmp_path / name
        assert str(path) in first  # the full path
        assert path.stat().st_mode & 0o777 == 0o600
    # a token revoked behind its back is replaced, not printed
    await conn.execute("DELETE FROM api_tokens WHERE role = 'auditor'")
    third = tokens_of(await demo_run())
    assert third[0] == tokens_of(first)[0] and third[1] != tokens_of(first)[1]


async def test_the_example_pos_sells_to_the_demo(
    client: Client, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import pos_redeem
    finally:
        sys.path.remove(str(EXAMPLES))
    seeded = await demo.seed(conn, tmp_path, total_households=3_000, keyring=client.app[KEYRING])
    household = next(r for r in demo.demo_households(3_000) if r[0] == pos_redeem.DEMO_HOUSEHOLD)
    assert household[3] <= 3  # credited from the first minute of the demo's tranche
    url = str(client.make_url("")).rstrip("/")
    for _ in range(2):  # a fresh request id and nonce on every run
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / "pos_redeem.py"),
            "--url",
            url,
            env={**os.environ, "COUPON_DATA_DIR": str(tmp_path)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert proc.returncode == 0, text + err.decode()
        assert f"terminal {seeded.terminals[0]['terminal_id']}" in text
        assert "balance    200" in text and '"eligible": true' in text
        assert "redemption 201" in text and '"status": "approved"' in text
        assert "resent     201 the stored answer, Idempotent-Replayed: true" in text
    redeemed = await conn.fetchval(
        "SELECT sum(amount) FROM ledger WHERE national_id = $1", pos_redeem.DEMO_HOUSEHOLD
    )
    assert redeemed == 2 * 1_200_000


async def test_the_root_redirects_to_the_dashboard(client: Client) -> None:
    response = await client.get("/", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/dashboard"
    response = await client.get("/")
    assert response.status == 200 and "text/html" in response.headers["Content-Type"]


async def test_simulated_terminals_go_offline_and_forward_later(
    client: Client, conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = await demo.seed(conn, tmp_path, total_households=1_000, keyring=client.app[KEYRING])
    enabled = [t for t in seeded.terminals if t.get("offline_enabled")]
    assert enabled and len(enabled) < len(seeded.terminals)
    assert await conn.fetchval("SELECT count(*) FROM terminals WHERE offline_enabled") == len(
        enabled
    )
    assert await conn.fetchval("SELECT offline_allowance > 0 FROM tranches")
    monkeypatch.setattr(simulator, "OUTAGE_CHANCE", 0.2)
    monkeypatch.setattr(simulator, "OUTAGE_SECONDS", (0.2, 0.6))
    shoppers = [
        simulator.Shopper(r["national_id"], r["province"], r["entitled"])
        for r in await conn.fetch(db.q("demo_shoppers"), 10_000)
    ]
    pos = [
        simulator.Pos(t["terminal_id"], t["secret"], t["province"], True) for t in seeded.terminals
    ]
    traffic = simulator.Traffic(
        str(client.make_url("")).rstrip("/"), pos, shoppers, rate=200, seed=4
    )
    counts = await traffic.run(requests=600)
    assert counts["error"] == 0, counts
    assert counts["offline_outage"] > 0 and counts["offline_captured"] > 0, counts
    assert counts["offline_approved"] > 0, counts
    assert not [k for k in counts if k.startswith("offline_batch_")], counts
    offline = await conn.fetchval("SELECT count(*) FROM ledger WHERE captured_at IS NOT NULL")
    assert offline == counts["offline_approved"]
    await invariants(conn)
