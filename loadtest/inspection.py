"""Inspection: how well the signals find labelled fraud, and how fast one province-day answers.

    python -m loadtest.inspection quality --tune 1-5 --report 100-119
    python -m loadtest.inspection scale --rows 10000000

`quality` generates, per seed, one Asia/Tehran day of traffic at 1,000 stores of which 10 are
fraudulent (each with two or three of the patterns below, mixed into honest-looking cover
traffic), ranks the day's stores with the rules in force and reports precision and recall at
the top 20 and 50: averaged over the tuning seeds and, separately, over the held-out ones.

`scale` builds a ledger of --rows rows (30 days, 260,000 stores by the provinces' weights) and
times the ranking of one province-day, the largest province's and a typical one's.

Both write their rows straight into a throwaway benchmark database as its owner (COPY and
generate_series), bypassing redeem_many(): the signals only read the ledger and the terminals'
stored answers, and generating a day through the service would take longer than the whole
benchmark. Nothing else ever writes the ledger this way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from coupon import inspection, logins, migrations
from coupon.embedded import EmbeddedPostgres
from coupon.provinces import iran_provinces
from loadtest.common import OUT, bench_database, print_result

STORES = 1000
FRAUDULENT = 10
HOUSEHOLDS = 300_000
PATTERNS = (
    "cash_for_credit",  # the household's whole balance, a round sum, for cash
    "burst",  # cards collected in advance, run through a few minutes at a time
    "splitting",  # one purchase split into several redemptions
    "outside_province",  # households of other provinces (collected cards)
    "after_hours",  # redemptions when the store is closed
    "reversal_churn",  # redeem, reverse, redeem again
    "terminal_volume",  # far more redemptions per terminal than the store's peers
    "far_apart",  # the same cards used at a colluding store in another province
)
CATEGORIES = {  # share of stores, terminals (low, high), median redemptions a day
    "grocery": (0.55, (1, 1), 35),
    "supermarket": (0.25, (1, 3), 110),
    "chain_store": (0.05, (3, 8), 380),
    "butcher": (0.07, (1, 1), 30),
    "dairy_shop": (0.05, (1, 1), 25),
    "bakery": (0.03, (1, 1), 20),
}
# honest redemptions per hour of the Tehran day: the morning and evening peaks
HOURS = [0, 0, 0, 0, 0, 0, 0.2, 0.6, 1.5, 2.5, 3, 3.2, 3, 2.2, 1.6, 1.5, 1.8, 2.4, 3, 3.2,
         2.8, 2, 1, 0.3]  # fmt: skip
CREDIT = 5_000_000  # rials per member


@dataclass
class Store:
    id: int
    province: str
    category: str
    terminals: list[int]
    volume: int
    patterns: tuple[str, ...] = ()
    partner: Store | None = None


@dataclass
class Day:
    """One generated day: ledger rows (and the terminals' answers) in time order."""

    day: dt.date
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # kind, store, terminal, hh, ...
    fraud: set[int] = field(default_factory=set)


def province_weights(rng: random.Random) -> dict[str, float]:
    """Skewed like the population: Tehran largest, then a long tail."""
    codes = [p.code for p in iran_provinces() if p.code != "IR-23"]
    rng.shuffle(codes)
    weights = {"IR-23": 1.0}
    for rank, code in enumerate(codes, start=2):
        weights[code] = 1 / rank**0.9
    return weights


def generate(
    seed: int, day: dt.date, first_store: int, first_terminal: int
) -> tuple[Day, list[Store]]:
    rng = random.Random(seed)
    weights = province_weights(rng)
    provinces = list(weights)
    hh_province = rng.choices(provinces, weights=list(weights.values()), k=HOUSEHOLDS)
    by_province: dict[str, list[int]] = {p: [] for p in provinces}
    for i, p in enumerate(hh_province):
        by_province[p].append(i)
    members = [rng.choice((1, 2, 2, 3, 3, 4, 4, 5, 6)) for _ in range(HOUSEHOLDS)]
    store_provinces = rng.choices(provinces, weights=list(weights.values()), k=STORES)
    cats = list(CATEGORIES)
    stores = []
    terminal = first_terminal
    for i in range(STORES):
        category = rng.choices(cats, weights=[CATEGORIES[c][0] for c in cats])[0]
        low, high = CATEGORIES[category][1]
        n = rng.randint(low, high)
        volume = max(1, round(CATEGORIES[category][2] * n / ((low + high) / 2)
                              * math.exp(rng.gauss(0, 0.8))))  # fmt: skip
        stores.append(Store(first_store + i, store_provinces[i], category,
                            list(range(terminal, terminal + n)), volume))  # fmt: skip
        terminal += n
    fraud = rng.sample(stores, FRAUDULENT)
    for s in fraud:
        s.patterns = tuple(rng.sample(PATTERNS, rng.choice((2, 2, 3))))
    for s in fraud:
        if "far_apart" in s.patterns:
            others = [o for o in fraud if o is not s and o.province != s.province]
            s.partner = rng.choice(others or [o for o in stores if o.province != s.province])

    midnight = inspection.tehran_midnight(day)
    out = Day(day, fraud={s.id for s in fraud})
    seq = 0

    def local_household(store: Store, outside: float) -> int:
        if rng.random() < outside:
            return rng.randrange(HOUSEHOLDS)
        pool = by_province[store.province]
        return rng.choice(pool) if pool else rng.randrange(HOUSEHOLDS)

    def honest_time() -> dt.datetime:
        hour = rng.choices(range(24), weights=HOURS)[0]
        return midnight + dt.timedelta(hours=hour, seconds=rng.uniform(0, 3600))

    def basket() -> int:
        if rng.random() < 0.03:
            return rng.randint(1, 4) * 1_000_000  # honest round sums happen
        return sum(rng.randint(10, 180) * 5000 for _ in range(rng.randint(1, 6)))

    def redeem(store: Store, at: dt.datetime, hh: int, amount: int, emptied: bool,
               terminal: int | None = None) -> None:  # fmt: skip
        nonlocal seq
        seq += 1
        term = terminal or rng.choice(store.terminals)
        out.rows.append(("redemption", at, store.id, term, hh, hh_province[hh], amount,
                         emptied, seq))  # fmt: skip

    def reverse_later(store: Store, at: dt.datetime, hh: int, amount: int) -> None:
        nonlocal seq
        seq += 1
        later = at + dt.timedelta(minutes=rng.uniform(1, 30))
        out.rows.append(("reversal", later, store.id, None, hh, hh_province[hh], amount,
                         False, seq))  # fmt: skip

    for s in stores:
        for _ in range(s.volume):  # honest traffic (a fraudulent store's cover too)
            at, hh, amount = honest_time(), local_household(s, 0.03), basket()
            redeem(s, at, hh, amount, rng.random() < 0.12)
            if rng.random() < 0.02:  # back for something forgotten
                later = at + dt.timedelta(minutes=rng.uniform(1, 9))
                redeem(s, later, hh, basket(), rng.random() < 0.3)
            if rng.random() < 0.008:
                reverse_later(s, at, hh, amount)

    for s in fraud:
        extra = max(8, round(s.volume * rng.uniform(0.25, 0.6)))
        if "terminal_volume" in s.patterns:
            extra = round(s.volume * rng.uniform(2, 4))
        for _ in range(extra):
            outside = 0.5 if "outside_province" in s.patterns else 0.03
            hh = local_household(s, outside)
            at = honest_time()
            if "after_hours" in s.patterns and rng.random() < 0.45:
                at = midnight + dt.timedelta(hours=rng.choice((0, 1, 2, 5, 6, 23)),
                                             seconds=rng.uniform(0, 3600))  # fmt: skip
            emptied, amount = rng.random() < 0.12, basket()
            if "cash_for_credit" in s.patterns and rng.random() < 0.7:
                emptied, amount = True, CREDIT * members[hh]
            redeem(s, at, hh, amount, emptied)
            if "splitting" in s.patterns and rng.random() < 0.5:
                for k in range(rng.randint(1, 3)):
                    redeem(s, at + dt.timedelta(minutes=rng.uniform(0.5, 3) * (k + 1)), hh,
                           basket(), False)  # fmt: skip
            if "reversal_churn" in s.patterns and rng.random() < 0.3:
                reverse_later(s, at, hh, amount)
            if s.partner is not None and rng.random() < 0.35:
                redeem(s.partner, at + dt.timedelta(minutes=rng.uniform(5, 50)), hh, basket(),
                       rng.random() < 0.5)  # fmt: skip
        if "burst" in s.patterns:
            for _ in range(rng.randint(1, 3)):
                start = honest_time()
                n = rng.randint(12, 40)
                span = rng.uniform(2, 6) * 60
                for k in range(n):
                    hh = local_household(s, 0.1)
                    redeem(s, start + dt.timedelta(seconds=span * k / n), hh,
                           CREDIT * members[hh] if rng.random() < 0.5 else basket(),
                           rng.random() < 0.8, s.terminals[0])  # fmt: skip
    out.rows.sort(key=lambda r: r[1])
    return out, stores


async def load(conn: asyncpg.Connection, day: Day, stores: list[Store], seed: int) -> None:
    """COPY the stores, terminals, ledger rows and terminal answers of one generated day."""
    await conn.copy_records_to_table(
        "merchants",
        records=[(s.id, f"store {s.id}", s.province, s.category) for s in stores],
        columns=["id", "name", "province", "category"],
    )
    await conn.copy_records_to_table(
        "terminals",
        records=[(t, s.id) for s in stores for t in s.terminals],
        columns=["id", "merchant_id"],
    )
    base = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM ledger")
    ledger, answers = [], []
    seq_of: dict[tuple[int, int, int], int] = {}
    terminal_of: dict[int, int] = {}
    for i, (kind, at, store, term, hh, province, amount, emptied, _) in enumerate(day.rows):
        seq = base + i + 1
        nid = f"{seed:03d}{hh:07d}"
        request_id = f"s{seed}-{i}"
        if kind == "redemption":
            seq_of[(store, hh, amount)] = seq
            terminal_of[seq] = term
            ledger.append((seq, kind, request_id, term, store, nid, province, 1, amount, None, at))
            answers.append((term, request_id, "redemption", b"", at, "approved", seq, amount,
                            0 if emptied else 1_000_000, 1, province, store))  # fmt: skip
        else:
            original = seq_of.get((store, hh, amount))
            if original is None:
                continue
            term = terminal_of[original]
            ledger.append((seq, kind, request_id, term, store, nid, province, 1, amount,
                           original, at))  # fmt: skip
    await conn.copy_records_to_table(
        "ledger",
        records=ledger,
        columns=["seq", "kind", "request_id", "terminal_id", "merchant_id", "national_id",
                 "province", "tranche_id", "amount", "reverses", "created_at"],
    )  # fmt: skip
    await conn.copy_records_to_table(
        "terminal_requests",
        records=answers,
        columns=["terminal_id", "request_id", "kind", "body_hash", "created_at", "outcome",
                 "entry_id", "amount", "remaining", "tranche_id", "province", "merchant_id"],
    )  # fmt: skip


def at_k(ranked: list[int], fraud: set[int], k: int) -> tuple[float, float]:
    hits = len(set(ranked[:k]) & fraud)
    return hits / k, hits / len(fraud)


def seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


async def quality(tune: list[int], held_out: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"stores": STORES, "fraudulent": FRAUDULENT}
    async with bench_database("coupon_bench_inspection") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            rules = (await inspection.rules_in_force(conn)).rules
            per_seed: dict[int, dict[str, float]] = {}
            generate_s = rank_s = 0.0
            for n, seed in enumerate([*tune, *held_out]):
                day = dt.date(2026, 1, 1) + dt.timedelta(days=3 * n)
                started = time.perf_counter()
                generated, stores = generate(seed, day, 1 + n * STORES, 1001 + n * 10 * STORES)
                await load(conn, generated, stores, seed)
                await conn.execute("ANALYZE")
                generate_s += time.perf_counter() - started
                started = time.perf_counter()
                _, ranked = await inspection.ranking(conn, day, None, 50)
                rank_s += time.perf_counter() - started
                ids = [r["merchant_id"] for r in ranked]
                p20, r20 = at_k(ids, generated.fraud, 20)
                p50, r50 = at_k(ids, generated.fraud, 50)
                per_seed[seed] = {"precision@20": p20, "recall@20": r20,
                                  "precision@50": p50, "recall@50": r50}  # fmt: skip
                print(seed, per_seed[seed], len(generated.rows), "rows", file=sys.stderr)
        finally:
            await conn.close()
    for name, group in (("tuning_seeds", tune), ("held_out_seeds", held_out)):
        if group:
            out[name] = {
                "seeds": f"{group[0]}-{group[-1]}",
                **{
                    metric: round(statistics.fmean(per_seed[s][metric] for s in group), 3)
                    for metric in ("precision@20", "recall@20", "precision@50", "recall@50")
                },
                "worst_recall@20": min(per_seed[s]["recall@20"] for s in group),
            }
    out["rows_per_day"] = len(generated.rows)
    out["generate_and_load_s_per_seed"] = round(generate_s / len(per_seed), 1)
    out["rank_one_day_national_s"] = round(rank_s / len(per_seed), 2)
    out["rules"] = rules.model_dump(mode="json")
    return out


# -- scale ---------------------------------------------------------------------------------------

SCALE_STORES = 260_000
SCALE_DAYS = 30
SCALE_HOUSEHOLDS = 20_000_000
SCALE_FIRST_DAY = dt.date(2026, 3, 21)
SCALE_DATABASE = "coupon_bench_inspection_scale"

# Stores by the same skewed province weights (seed 1), ids 1..N; category by a hash.
SCALE_MERCHANTS = """
INSERT INTO merchants (id, name, province, category) OVERRIDING SYSTEM VALUE
SELECT g, 'store ' || g, p.code,
       (ARRAY['grocery', 'grocery', 'grocery', 'supermarket', 'supermarket', 'chain_store',
              'butcher', 'dairy_shop', 'bakery', 'grocery'])[1 + (g * 7919) % 10]
FROM generate_series(1, $1::int) AS g
JOIN LATERAL (SELECT code FROM unnest($2::text[], $3::float8[]) AS w(code, upto)
              WHERE upto >= (g * 0.6180339887) % 1 ORDER BY upto LIMIT 1) p ON true
"""
SCALE_TERMINALS = """
INSERT INTO terminals (id, merchant_id) OVERRIDING SYSTEM VALUE
SELECT 1000 + g, g FROM generate_series(1, $1::int) AS g
"""
# Rows spread evenly over the days, each at a store drawn with a skew (a few stores take many
# rows), at a Tehran hour of the day's peaks, a household mostly of the store's province.
SCALE_LEDGER = """
INSERT INTO ledger (seq, kind, request_id, terminal_id, merchant_id, national_id, province,
                    tranche_id, amount, reverses, created_at) OVERRIDING SYSTEM VALUE
SELECT i, 'redemption', 'g' || i, 1000 + s.m, s.m,
       lpad(((i * 2654435761) % $5::bigint)::text, 10, '0'), m.province, 1,
       5000 * (20 + (i * 104729) % 600), NULL,
       $3::timestamptz + (i - 1) * ($4::float8 / $2::float8) * interval '1 second'
FROM generate_series($1::bigint, $6::bigint) AS i
CROSS JOIN LATERAL (
    SELECT least($7::int, 1 + floor($7::int * power((hashint8(i)::float8 + 2147483648)
                                                    / 4294967296.0, 2.2))::int) AS m) s
JOIN merchants m ON m.id = s.m
"""
SCALE_ANSWERS = """
INSERT INTO terminal_requests (terminal_id, request_id, kind, body_hash, created_at, outcome,
                               entry_id, amount, remaining, tranche_id, province, merchant_id)
SELECT terminal_id, request_id, 'redemption', '', created_at, 'approved', seq, amount,
       CASE WHEN seq % 7 = 0 THEN 0 ELSE 1000000 END, 1, province, merchant_id
FROM ledger WHERE seq BETWEEN $1 AND $2
"""


async def build(conn: asyncpg.Connection, rows: int) -> float:
    """The scale data set; returns the seconds it took."""
    rng = random.Random(1)
    weights = province_weights(rng)
    total = sum(weights.values())
    codes, upto, acc = [], [], 0.0
    for code, w in weights.items():
        acc += w / total
        codes.append(code)
        upto.append(min(acc, 1.0))
    upto[-1] = 1.0
    start = inspection.tehran_midnight(SCALE_FIRST_DAY)
    started = time.perf_counter()
    await conn.execute("SET synchronous_commit = off")
    await conn.execute(SCALE_MERCHANTS, SCALE_STORES, codes, upto)
    await conn.execute(SCALE_TERMINALS, SCALE_STORES)
    # the ledger's indexes are built once, after the rows: far faster than row by row
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ledger' "
        "AND indexname <> 'ledger_pkey'"
    )
    for ix in indexes:
        await conn.execute(f'DROP INDEX "{ix["indexname"]}"')
    step = 1_000_000
    for first in range(1, rows + 1, step):
        await conn.execute(
            SCALE_LEDGER, first, rows, start, SCALE_DAYS * 86400.0, SCALE_HOUSEHOLDS,
            min(first + step - 1, rows), SCALE_STORES,
        )  # fmt: skip
    for ix in indexes:
        await conn.execute(ix["indexdef"])
    for first in range(1, rows + 1, step):
        await conn.execute(SCALE_ANSWERS, first, min(first + step - 1, rows))
    await conn.execute("SELECT setval(pg_get_serial_sequence('ledger', 'seq'), $1)", rows)
    await conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


async def measure(conn: asyncpg.Connection, samples: int) -> dict[str, Any]:
    """Time the ranking of closed province-days, the largest province's and the median one's:
    the first request of each day (computed from the ledger, then kept) and a later one."""
    out: dict[str, Any] = {}
    sizes = await conn.fetch(
        "SELECT m.province, count(*) AS n FROM ledger l JOIN merchants m "
        "ON m.id = l.merchant_id GROUP BY 1 ORDER BY 2 DESC"
    )
    out["rows"] = sum(r["n"] for r in sizes)
    largest, typical = sizes[0]["province"], sizes[len(sizes) // 2]["province"]
    await conn.execute("DELETE FROM inspection_days")
    # what the service does in the background once a day closes: every province's ranking
    # and the nation's, computed and kept before any auditor asks
    closed = SCALE_FIRST_DAY + dt.timedelta(days=SCALE_DAYS // 2)
    after = dt.datetime.combine(closed + dt.timedelta(days=1), dt.time(0, 20), inspection.TEHRAN)
    began = time.perf_counter()
    computed = await inspection.keep_closed_day(conn, after.astimezone(dt.UTC))
    out["keeper"] = {
        "day": closed.isoformat(),
        "rankings": computed,
        "seconds": round(time.perf_counter() - began, 1),
    }
    await conn.execute("DELETE FROM inspection_days")
    for label, province in (("largest", largest), ("typical", typical)):
        per_day = next(r["n"] for r in sizes if r["province"] == province) / SCALE_DAYS
        out[f"{label}_province"] = entry = {"province": province, "rows_per_day": round(per_day)}
        days = [
            SCALE_FIRST_DAY + dt.timedelta(days=1 + k % (SCALE_DAYS - 2)) for k in range(samples)
        ]
        for phase in ("first_request", "later_requests"):
            timings = []
            for day in days:
                began = time.perf_counter()
                _, ranked = await inspection.ranking(conn, day, province, 50)
                timings.append(time.perf_counter() - began)
            entry[phase] = summary(timings)
        entry["flagged"] = len(ranked)
    return out


def summary(timings: list[float]) -> dict[str, Any]:
    timings = sorted(timings)
    return {
        "samples": len(timings),
        "p50_ms": round(timings[len(timings) // 2] * 1000, 1),
        "p95_ms": round(timings[min(len(timings) - 1, int(len(timings) * 0.95))] * 1000, 1),
        "max_ms": round(timings[-1] * 1000, 1),
    }


async def scale(rows: int, samples: int, reuse: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"stores": SCALE_STORES, "days": SCALE_DAYS}
    if reuse:  # the database a previous run built, on its embedded server
        server = EmbeddedPostgres(OUT / "pg", durable=True)
        admin = server.start()
        try:
            conn = await asyncpg.connect(logins.dsn_for(admin, database=SCALE_DATABASE))
            try:
                if await conn.fetchval("SELECT to_regclass('inspection_days') IS NULL"):
                    # built by an earlier version of this branch, before the table existed
                    ddl = re.search(
                        r"CREATE TABLE inspection_days \(.*?\n\);", migrations.head_schema(), re.S
                    )
                    assert ddl is not None
                    await conn.execute(ddl[0])
                out.update(await measure(conn, samples))
            finally:
                await conn.close()
        finally:
            server.stop()
        return out
    async with bench_database(SCALE_DATABASE) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            out["build_s"] = round(await build(conn, rows), 1)
            out.update(await measure(conn, samples))
        finally:
            await conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality", help="precision and recall on labelled fraud")
    q.add_argument("--tune", default="1-5", help="the seeds the rules were tuned on")
    q.add_argument("--report", default="100-119", help="held-out seeds")
    s = sub.add_parser("scale", help="one province-day's ranking at scale")
    s.add_argument("--rows", type=int, default=10_000_000)
    s.add_argument("--samples", type=int, default=40)
    s.add_argument("--reuse", action="store_true", help="measure the database built last time")
    args = parser.parse_args()
    if args.what == "quality":
        result = asyncio.run(quality(seeds(args.tune), seeds(args.report) if args.report else []))
    else:
        result = asyncio.run(scale(args.rows, args.samples, args.reuse))
    print_result("loadtest.inspection", result)


if __name__ == "__main__":
    main()
