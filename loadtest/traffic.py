"""POS traffic: a seeded population and a file of pre-signed terminal requests.

Households are spread over the provinces by their 2016 census population; shoppers are drawn
Zipf-like (rank k with weight 1/k^s over a shuffled order: a few households shop often, most
rarely) and buy at a terminal of their own province. The mix is ~90 % redemptions, then
balance inquiries, reversals of an earlier redemption of the same terminal, and retries (the
same request_id and body with a fresh nonce, as a POS does after a timeout).

Every line of the file is one signed request, `METHOD\\tPATH\\tTERMINAL\\tTS\\tNONCE\\tSIG\\tBODY`;
line i belongs to sender slice i % slices (a wrk thread), and a reversal or retry always
follows its original in the same slice. Timestamps are signed when the file is written, so it
is written just before a run (the service accepts 300 s of clock skew).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import random
import secrets
import time
import uuid
from pathlib import Path

import asyncpg
import orjson

from coupon import auth, demo, national_id
from coupon.config import Settings
from coupon.keyring import Keyring

MIX = {"redeem": 0.90, "balance": 0.04, "reverse": 0.03, "retry": 0.03}


@dataclasses.dataclass(frozen=True, slots=True)
class Terminal:
    terminal_id: int
    secret: str
    province: str


@dataclasses.dataclass(frozen=True, slots=True)
class Population:
    households: list[tuple[str, str]]  # (national_id, province)
    terminals: list[Terminal]


async def seed(dsn: str, n_households: int, n_terminals: int, rng_seed: int = 5) -> Population:
    """Households by census weight, an open tranche crediting them all, and terminals (at least
    one per province, the rest by population)."""
    rng = random.Random(rng_seed)
    population = demo.census_population()
    codes = list(population)
    weights = list(population.values())
    step = 10**9 // n_households
    rows = [
        (
            national_id.with_check_digit(f"{i * step + 1:09d}"),
            rng.choices(codes, weights)[0],
            rng.randint(1, 6),
            rng.randint(1, 7),
        )
        for i in range(n_households)
    ]
    provinces = [
        province
        for province, count in demo.allocate(n_terminals, population, minimum=1).items()
        for _ in range(count)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        made = await demo.seed_programme(
            conn,
            rows,
            provinces,
            keyring=Keyring.from_settings(Settings()),
            name="bench",
            up_to_decile=7,
        )
    finally:
        await conn.close()
    terminals = [Terminal(c.terminal_id, c.secret, province) for province, c in made]
    return Population([(nid, prov) for nid, prov, _, _ in rows], terminals)


def zipf_cumulative(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))


@dataclasses.dataclass(frozen=True, slots=True)
class Sent:
    terminal: Terminal
    request_id: str
    body: bytes


def _line(t: Terminal, method: str, path: str, body: bytes, ts: int) -> str:
    nonce = secrets.token_hex(12)
    sig = auth.sign(t.secret, method, path, str(ts), nonce, body)
    return f"{method}\t{path}\t{t.terminal_id}\t{ts}\t{nonce}\t{sig}\t{body.decode()}\n"


def write_requests(
    path: Path,
    pop: Population,
    count: int,
    slices: int,
    zipf_s: float = 0.6,
    rng_seed: int = 1,
) -> dict[str, int]:
    """Write count pre-signed requests, signed now; returns how many of each kind."""
    rng = random.Random(rng_seed)
    order = pop.households[:]
    rng.shuffle(order)  # rank in the Zipf draw is unrelated to id or province
    cum = zipf_cumulative(len(order), zipf_s)
    total = cum[-1]
    by_province: dict[str, list[Terminal]] = {}
    for t in pop.terminals:
        by_province.setdefault(t.province, []).append(t)
    kinds = list(MIX)
    kind_weights = list(MIX.values())
    # per slice, redemptions that a later reversal or retry may refer to
    recent: list[list[Sent]] = [[] for _ in range(slices)]
    counts = dict.fromkeys(kinds, 0)
    ts = int(time.time())
    run = uuid.uuid4().hex[:8]
    with path.open("w") as f:
        for i in range(count):
            lane = i % slices
            kind = rng.choices(kinds, kind_weights)[0]
            if kind in ("reverse", "retry") and len(recent[lane]) < 50:
                kind = "redeem"
            if kind == "redeem" or kind == "balance":
                nid, province = order[bisect.bisect_left(cum, rng.random() * total)]
                t = rng.choice(by_province.get(province) or pop.terminals)
                if kind == "balance":
                    f.write(_line(t, "GET", f"/v1/households/{nid}/balance", b"", ts))
                else:
                    rid = f"{run}-{i}"
                    amount = rng.randint(1, 50) * 1000
                    doc: dict[str, object] = {
                        "request_id": rid,
                        "national_id": nid,
                        "amount": amount,
                    }
                    if rng.random() < 0.3:
                        doc["items"] = [{"category": "rice", "amount": amount}]
                    body = orjson.dumps(doc)
                    f.write(_line(t, "POST", "/v1/redemptions", body, ts))
                    recent[lane].append(Sent(t, rid, body))
                    if len(recent[lane]) > 2000:
                        del recent[lane][:1000]
            else:
                # refer to a redemption at least ~40 requests back in the same slice, so the
                # original has normally been answered already
                pool = recent[lane][:-20]
                sent = pool[rng.randrange(max(0, len(pool) - 500), len(pool))]
                if kind == "retry":
                    f.write(_line(sent.terminal, "POST", "/v1/redemptions", sent.body, ts))
                else:
                    pool.remove(sent)
                    recent[lane].remove(sent)
                    body = orjson.dumps(
                        {"request_id": f"{run}-{i}-rev", "original_request_id": sent.request_id}
                    )
                    f.write(_line(sent.terminal, "POST", "/v1/reversals", body, ts))
            counts[kind] += 1
    return counts
