"""Demo data: households over the 31 provinces in proportion to their population (2016 census),
stores and terminals in every province, and an open tranche with two decile bands."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import random
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from coupon import db, households, merchants, national_id, tokens, tranches
from coupon.embedded import write_private
from coupon.keyring import Keyring
from coupon.models import CATEGORIES, Band, MerchantCreate, TerminalCreated, TrancheCreate
from coupon.provinces import iran_provinces

CENSUS_FILE = "census_2016_population.csv"
DEFAULT_HOUSEHOLDS = 30_000
STORES = 150
MIN_HOUSEHOLDS = 25  # per province, so that the smallest still moves on the dashboard
MIN_STORES = 2
# stores that commit fraud in the simulated traffic (inspection finds them)
FRAUDULENT_STORES = 3
# the demo stores' kinds, most of them groceries
DEMO_CATEGORIES = {"grocery": 55, "supermarket": 25, "chain_store": 5, "butcher": 7,
                   "dairy_shop": 5, "bakery": 3}  # fmt: skip
TERMINALS_FILE = "demo-terminals.json"
OFFLINE_EVERY = 4
TOKENS_FILE = "demo-tokens.json"
# Iran's average household had 3.3 members at the 2016 census; this spread averages 3.4
MEMBERS = (1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 6)


@dataclass
class Seeded:
    operator_token: str
    auditor_token: str
    terminals: list[dict[str, Any]]
    households: list[str]
    tranche_id: int | None
    terminals_file: Path
    tokens_file: Path
    # each terminal's highest offline_seq forwarded so far
    offline_seqs: dict[int, int] = field(default_factory=dict)


@cache
def census_population() -> dict[str, int]:
    """Province code -> population at the 2016 census (coupon/data/, with its source)."""
    text = resources.files("coupon").joinpath("data", CENSUS_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {row["code"]: int(row["population"]) for row in rows}


def allocate(total: int, weights: dict[str, int], minimum: int = 0) -> dict[str, int]:
    """Split total over the keys in proportion to weights (largest remainders), each at least
    minimum."""
    spare = total - minimum * len(weights)
    if spare < 0:
        raise ValueError(f"{total} is less than {minimum} for each of {len(weights)}")
    whole = sum(weights.values())
    exact = {k: spare * w / whole for k, w in weights.items()}
    shares = {k: int(v) for k, v in exact.items()}
    left = spare - sum(shares.values())
    for k in sorted(exact, key=lambda k: exact[k] - shares[k], reverse=True)[:left]:
        shares[k] += 1
    return {k: minimum + v for k, v in shares.items()}


def demo_households(
    total: int = DEFAULT_HOUSEHOLDS, seed: int = 1404
) -> list[tuple[str, str, int, int]]:
    """Deterministic households, (national_id, province, members, decile), spread over the
    provinces by population."""
    rng = random.Random(seed)
    # a floor for the smallest provinces, kept small enough not to bend the proportions
    per_province = allocate(total, census_population(), min(MIN_HOUSEHOLDS, total // 400))
    seen: set[str] = set()
    rows = []
    for province in iran_provinces():
        for _ in range(per_province[province.code]):
            nid = ""
            while not national_id.is_valid(nid) or nid in seen:
                nid = national_id.with_check_digit(f"{rng.randrange(10**9):09d}")
            seen.add(nid)
            rows.append((nid, province.code, rng.choice(MEMBERS), rng.randint(1, 10)))
    return rows


async def seed_programme(
    conn: db.Connection,
    rows: list[tuple[str, str, int, int]],
    terminal_provinces: list[str],
    *,
    keyring: Keyring,
    name: str,
    up_to_decile: int,
    started: dt.timedelta = dt.timedelta(minutes=1),
) -> list[tuple[str, TerminalCreated]]:
    """A small programme for benchmarks and tests: households (national_id, province, members,
    decile), a tranche open since `started` ago crediting deciles up to `up_to_decile` with
    5,000,000 rials a member, and one store with a terminal per entry of terminal_provinces."""
    csv_text = "national_id,province,members,decile\n" + "".join(
        f"{n},{p},{m},{d}\n" for n, p, m, d in rows
    )
    await households.import_csv(conn, households.blocks_of(csv_text.encode()))
    now = dt.datetime.now(dt.UTC)
    await tranches.open_tranche(
        conn,
        TrancheCreate(
            name=name,
            starts_at=now - started,
            ends_at=now + dt.timedelta(days=30),
            categories=["rice", "dairy"],
            carry_over=False,
            bands=[Band(up_to_decile=up_to_decile, per_member_credit=5_000_000)],
        ),
    )
    terminals = []
    for i, province in enumerate(terminal_provinces):
        merchant_id = await merchants.create_merchant(
            conn, MerchantCreate(name=f"{name} {province} {i}", province=province)
        )
        terminals.append((province, await merchants.create_terminal(conn, merchant_id, keyring)))
    return terminals


async def seed(
    conn: db.Connection,
    data_dir: Path,
    total_households: int = DEFAULT_HOUSEHOLDS,
    *,
    keyring: Keyring,
) -> Seeded:
    """Load the demo data set (again safe: households upsert, stores and tranche once)."""
    rows = demo_households(total_households)
    csv_text = "national_id,province,members,decile\n" + "".join(
        f"{n},{p},{m},{d}\n" for n, p, m, d in rows
    )
    await households.import_csv(conn, households.blocks_of(csv_text.encode()))
    terminals = await _demo_terminals(conn, data_dir, keyring)
    now = dt.datetime.now(dt.UTC)
    tranche_id = await conn.fetchval(db.q("current_tranche"))
    if tranche_id is None:
        created = await tranches.open_tranche(
            conn,
            TrancheCreate(
                name="Demo phase (deciles 1-7)",
                starts_at=now - dt.timedelta(minutes=5),
                ends_at=now + dt.timedelta(days=30),
                # the demo tranche's goods: every category but tea
                categories=[c for c in CATEGORIES if c != "tea"],
                carry_over=False,
                bands=[
                    Band(up_to_decile=3, per_member_credit=5_000_000),
                    Band(up_to_decile=7, per_member_credit=3_500_000),
                ],
                # offline store-and-forward: some stores lose their line now and then
                offline_allowance=3_000_000,
                offline_max_amount=1_500_000,
            ),
        )
        tranche_id = created.id
    # one terminal in OFFLINE_EVERY may work offline (the simulator cuts their lines)
    for t in terminals[::OFFLINE_EVERY]:
        await merchants.set_terminal_status(conn, t["terminal_id"], None, True)
        t["offline_enabled"] = True
    offline_seqs: dict[int, int] = {
        r["terminal_id"]: r["last_seq"] for r in await conn.fetch(db.q("last_offline_seqs"))
    }
    operator_token, auditor_token = await _demo_tokens(conn, data_dir)
    return Seeded(
        operator_token=operator_token,
        auditor_token=auditor_token,
        terminals=terminals,
        households=[r[0] for r in rows],
        tranche_id=tranche_id,
        offline_seqs=offline_seqs,
        terminals_file=(data_dir / TERMINALS_FILE).absolute(),
        tokens_file=(data_dir / TOKENS_FILE).absolute(),
    )


async def _demo_tokens(conn: db.Connection, data_dir: Path) -> tuple[str, str]:
    """The demo's operator and auditor tokens: those kept in the data directory while the
    database still knows them, so that a restart does not mint (and leave valid) new ones."""
    path = data_dir / TOKENS_FILE
    saved: dict[str, str] = {}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            saved = {}
    chosen = {}
    for role in ("operator", "auditor"):
        token = saved.get(role)
        if not isinstance(token, str) or await tokens.role_of(conn, token) != role:
            token = await tokens.create_token(conn, role, f"demo {role}")
        chosen[role] = token
    if chosen != saved:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(chosen, indent=1))
    return chosen["operator"], chosen["auditor"]


async def _demo_terminals(
    conn: db.Connection, data_dir: Path, keyring: Keyring
) -> list[dict[str, Any]]:
    # secrets are shown once, so the demo keeps its own terminals' secrets in a private file
    path = data_dir / TERMINALS_FILE
    if path.exists():
        saved: list[dict[str, Any]] = json.loads(path.read_text())
        known = {r["id"] for r in await conn.fetch(db.q("terminal_ids"))}
        if saved and all(t["terminal_id"] in known for t in saved):
            return saved
    rng = random.Random(7)
    kinds = random.Random(11)  # the stores' categories, apart from the terminals' draw
    stores = allocate(STORES, census_population(), MIN_STORES)
    terminals = []
    for province in iran_provinces():
        for n in range(1, stores[province.code] + 1):
            category = kinds.choices(list(DEMO_CATEGORIES), list(DEMO_CATEGORIES.values()))[0]
            merchant_id = await merchants.create_merchant(
                conn,
                MerchantCreate(
                    name=f"{province.name_fa} فروشگاه {n}",
                    province=province.code,
                    category=category,
                ),
            )
            # most stores have one POS, some two
            for _ in range(rng.choice((1, 1, 1, 2))):
                created = await merchants.create_terminal(conn, merchant_id, keyring)
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


def fraudulent(terminals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The terminals of the few demo stores that commit fraud (the same ones on every start),
    so that inspection has something to find."""
    stores = sorted({t["merchant_id"] for t in terminals})
    chosen = set(random.Random(17).sample(stores, min(FRAUDULENT_STORES, len(stores))))
    return [t for t in terminals if t["merchant_id"] in chosen]


def print_welcome(
    seeded: Seeded,
    base: str,
    rate: float | None,
    *,
    samples: list[str] | None = None,
    log_file: Path | None = None,
    example: str | None = None,
) -> None:
    """The way in: URLs, tokens, where the secrets are. Printed last, once the service listens,
    so that it stays on screen."""
    traffic = (
        f"~{rate:g} simulated POS requests/s through the signed API (--rate)"
        if rate
        else "none (--rate 0)"
    )
    lines = [
        "",
        f"Coupon demo on {base}",
        f"  dashboard        {base}/dashboard   (sign in with the operator token)",
        f"  operator token   {seeded.operator_token}",
        f"  auditor token    {seeded.auditor_token}",
        f"                   (kept in {seeded.tokens_file}: the same on every start)",
        f"  API              {base}/v1/   OpenAPI {base}/openapi.json",
        f"  health, metrics  {base}/healthz   {base}/metrics",
        f"  terminals        {len(seeded.terminals)}, ids and secrets in {seeded.terminals_file}",
        f"  households       {len(seeded.households)} over 31 provinces by population "
        "(2016 census)",
        f"                   credited, e.g. {', '.join((samples or seeded.households)[:3])}",
        f"  open tranche     {seeded.tranche_id}",
    ]
    if example:
        lines.append(f"  a signed sale    {example}")
    if rate:
        cheats = sorted({t["merchant_id"] for t in fraudulent(seeded.terminals)})
        lines.append(
            f"  injected fraud   stores {', '.join(map(str, cheats))}: "
            f"{base}/v1/inspection/stores (auditor token)"
        )
    lines.append(f"  POS traffic      {traffic}")
    if log_file:
        lines.append(f"  request logs     {log_file}")
        lines.append("  stop             Ctrl-C (the PostgreSQL it started stops too)")
    print("\n".join([*lines, ""]), flush=True)
