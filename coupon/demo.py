"""Demo data: every province with households, stores and terminals, and an open tranche."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coupon import db, households, merchants, tokens, tranches
from coupon.models import Band, MerchantCreate, TrancheCreate
from coupon.provinces import iran_provinces

HOUSEHOLDS_PER_PROVINCE = 120
STORES_PER_PROVINCE = 2
TERMINALS_FILE = "demo-terminals.json"


@dataclass
class Seeded:
    operator_token: str
    auditor_token: str
    terminals: list[dict[str, Any]]
    households: list[str]
    tranche_id: int | None


def demo_households(seed: int = 1404) -> list[tuple[str, str, int, int]]:
    """Deterministic households: (national_id, province, members, decile)."""
    rng = random.Random(seed)
    rows = []
    for province in iran_provinces():
        for _ in range(HOUSEHOLDS_PER_PROVINCE):
            national_id = ""
            while not households.is_valid_national_id(national_id):
                national_id = households.with_check_digit(f"{rng.randrange(10**9):09d}")
            rows.append(
                (
                    national_id,
                    province.code,
                    rng.choice((1, 2, 3, 3, 4, 4, 5, 6)),
                    rng.randint(1, 10),
                )
            )
    return rows


async def seed(conn: db.Connection, data_dir: Path) -> Seeded:
    """Load the demo data set (again safe: households upsert, stores and tranche once)."""
    rows = demo_households()
    csv = "national_id,province,members,decile\n" + "".join(
        f"{n},{p},{m},{d}\n" for n, p, m, d in rows
    )
    await households.import_csv(conn, households.blocks_of(csv.encode()))
    terminals = await _demo_terminals(conn, data_dir)
    now = dt.datetime.now(dt.UTC)
    tranche_id = await conn.fetchval(
        "SELECT id FROM tranches WHERE tstzrange(starts_at, ends_at) @> now()"
    )
    if tranche_id is None:
        created = await tranches.open_tranche(
            conn,
            TrancheCreate(
                name="Demo phase (deciles 1-7)",
                starts_at=now - dt.timedelta(minutes=5),
                ends_at=now + dt.timedelta(days=30),
                categories=[
                    "rice",
                    "cooking_oil",
                    "chicken",
                    "red_meat",
                    "eggs",
                    "dairy",
                    "legumes",
                    "sugar",
                    "pasta",
                ],
                carry_over=False,
                bands=[
                    Band(up_to_decile=3, per_member_credit=5_000_000),
                    Band(up_to_decile=7, per_member_credit=3_500_000),
                ],
            ),
        )
        tranche_id = created.id
    return Seeded(
        operator_token=await tokens.create_token(conn, "operator", "demo operator"),
        auditor_token=await tokens.create_token(conn, "auditor", "demo auditor"),
        terminals=terminals,
        households=[r[0] for r in rows],
        tranche_id=tranche_id,
    )


async def _demo_terminals(conn: db.Connection, data_dir: Path) -> list[dict[str, Any]]:
    # secrets are shown once, so the demo keeps its own terminals' secrets in a private file
    path = data_dir / TERMINALS_FILE
    if path.exists():
        saved: list[dict[str, Any]] = json.loads(path.read_text())
        known = {r["id"] for r in await conn.fetch("SELECT id FROM terminals")}
        if all(t["terminal_id"] in known for t in saved):
            return saved
    terminals = []
    for province in iran_provinces():
        for n in range(1, STORES_PER_PROVINCE + 1):
            merchant_id = await merchants.create_merchant(
                conn, MerchantCreate(name=f"{province.name_fa} فروشگاه {n}", province=province.code)
            )
            created = await merchants.create_terminal(conn, merchant_id)
            terminals.append(
                {
                    "terminal_id": created.terminal_id,
                    "secret": created.secret,
                    "merchant_id": merchant_id,
                    "province": province.code,
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(terminals, f, indent=1)
    return terminals


def print_welcome(seeded: Seeded, base: str) -> None:
    first = seeded.terminals[0]
    print(
        f"""
Coupon demo
  API          {base}/v1/   (OpenAPI: {base}/openapi.json)
  dashboard    {base}/dashboard
  health       {base}/healthz     metrics: {base}/metrics
  operator token   {seeded.operator_token}
  auditor token    {seeded.auditor_token}
  open tranche     {seeded.tranche_id}
  {len(seeded.terminals)} terminals; e.g. terminal {first["terminal_id"]} secret {first["secret"]}
  all terminal secrets: {TERMINALS_FILE} in the data directory
  sample households: {", ".join(seeded.households[:3])}
""",
        flush=True,
    )
