"""Property: one terminal's history of online redemptions, reversals, offline batches (with
gaps, re-sends, late, future and out-of-window captures) gets, request by request, the answers
of a pure-Python model of the rules, and leaves the balances and counters the model says."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupon import tokens
from coupon.app import create_app
from coupon.config import Settings
from tests.conftest import TEMPLATE, TEST_SHARDS, _with_database, as_role
from tests.integration.helpers import now
from tests.integration.offline import CREDIT, forward, offline_world
from tests.integration.terminal import invariants
from tests.reliability.harness import soak

ALLOWANCE = 3_000_000
MAX_AMOUNT = 2_000_000
HOUSEHOLDS = 2
AMOUNTS = st.sampled_from([300_000, 1_000_000, 1_000_000, 2_000_000, 2_500_000, 4_000_000])
# when a purchase was captured, relative to now: the tranche opened 48 hours ago
CAPTURES = {
    "recent": dt.timedelta(hours=-1),
    "yesterday": dt.timedelta(hours=-30),
    "future": dt.timedelta(hours=1),
    "late": dt.timedelta(hours=-73),
    "before_window": dt.timedelta(hours=-50),
}
OFFLINE = st.tuples(
    st.integers(0, HOUSEHOLDS - 1),
    AMOUNTS,
    st.sampled_from(["recent"] * 4 + ["yesterday", "future", "late", "before_window"]),
)
STEP = st.one_of(
    st.tuples(st.just("online"), st.integers(0, HOUSEHOLDS - 1), AMOUNTS),
    st.tuples(st.just("offline"), st.lists(OFFLINE, min_size=1, max_size=6), st.booleans()),
    st.tuples(st.just("offline"), st.lists(OFFLINE, min_size=2, max_size=6), st.just(False)),
    st.tuples(st.just("reverse"), st.integers(0, 50)),
    st.tuples(st.just("resend"), st.integers(0, 50)),
)


@dataclass
class Model:
    """The rules, for one terminal that may work offline and HOUSEHOLDS households."""

    balance: list[int] = field(default_factory=lambda: [CREDIT] * HOUSEHOLDS)
    offline_used: list[int] = field(default_factory=lambda: [0] * HOUSEHOLDS)
    approved: list[tuple[str, int, int]] = field(default_factory=list)  # request id, hh, amount
    reversed: set[str] = field(default_factory=set)

    def online(self, hh: int, amount: int) -> str | None:
        if self.balance[hh] < amount:
            return "insufficient_balance"
        self.balance[hh] -= amount
        return None

    def offline(self, hh: int, amount: int, capture: str) -> str | None:
        if capture == "future":
            return "captured_in_future"
        if capture == "late":
            return "late"
        if capture == "before_window":
            return "outside_window"
        if amount > MAX_AMOUNT:
            return "offline_max_amount_exceeded"
        if self.offline_used[hh] + amount > ALLOWANCE:
            return "offline_allowance_exceeded"
        if self.balance[hh] < amount:
            return "insufficient_balance"
        self.balance[hh] -= amount
        self.offline_used[hh] += amount  # a reversal does not give the allowance back
        return None


async def _history(admin_dsn: str, steps: list[Any]) -> None:
    name = "t_model_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    dsn = _with_database(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    writer = as_role(dsn, "coupon_writer")
    settings_ = Settings(
        database_url=writer,
        pool_min_size=1,
        pool_max_size=4,
        counter_shards=TEST_SHARDS,
        live_counters=False,
        seal_interval=3600,
    )
    client = TestClient(TestServer(create_app(settings_, writer)))
    await client.start_server()
    try:
        operator = {"Authorization": "Bearer " + await tokens.create_token(conn, "operator")}
        world = await offline_world(
            client, operator, n=HOUSEHOLDS, allowance=ALLOWANCE, max_amount=MAX_AMOUNT
        )
        await _run(world, steps, conn)
    finally:
        await client.close()
        await conn.close()
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


async def _run(world: Any, steps: list[Any], conn: asyncpg.Connection) -> None:
    ids = list(world.credit)
    t = world.terminal
    model = Model()
    batches: list[tuple[list[dict[str, Any]], list[tuple[str, str | None]]]] = []
    next_seq = 1
    for step in steps:
        kind = step[0]
        if kind == "online":
            _, hh, amount = step
            rid = f"on-{uuid.uuid4().hex[:10]}"
            resp = await t.redeem(ids[hh], amount, request_id=rid)
            why = model.online(hh, amount)
            assert (resp.status, resp.body.get("reason")) == (
                (201, None) if why is None else (402, why)
            ), (step, resp.body)
            if why is None:
                assert resp.body["remaining"] == model.balance[hh]
                model.approved.append((rid, hh, amount))
        elif kind == "offline":
            _, purchases, gap = step
            next_seq += gap  # a batch the processor never gets
            sent, expected = [], []
            for hh, amount, capture in purchases:
                rid = f"off-{uuid.uuid4().hex[:10]}"
                sent.append(
                    {
                        "offline_seq": next_seq,
                        "request_id": rid,
                        "captured_at": (now() + CAPTURES[capture]).isoformat(),
                        "national_id": ids[hh],
                        "amount": amount,
                    }
                )
                next_seq += 1
                why = model.offline(hh, amount, capture)
                expected.append(("approved" if why is None else "declined", why))
                if why is None:
                    model.approved.append((rid, hh, amount))
            resp = await forward(t, sent)
            got = [(r["status"], r["reason"]) for r in resp.body["results"]]
            assert got == expected, (step, resp.body)
            batches.append((sent, got))
        elif kind == "reverse" and model.approved:
            rid, hh, amount = model.approved[step[1] % len(model.approved)]
            resp = await t.reverse(rid)
            if rid in model.reversed:
                assert resp.status == 409, resp.body
            else:
                assert resp.status == 201, resp.body
                model.reversed.add(rid)
                model.balance[hh] += amount
                assert resp.body["remaining"] == model.balance[hh]
        elif kind == "resend" and batches:
            sent, got = batches[step[1] % len(batches)]
            resp = await forward(t, sent)
            assert [(r["status"], r["reason"]) for r in resp.body["results"]] == got
            assert all(r["replayed"] for r in resp.body["results"])
    balances = dict(await conn.fetch("SELECT national_id, balance FROM entitlements"))
    assert [balances[nid] for nid in ids] == model.balance
    live = [r for r in model.approved if r[0] not in model.reversed]
    figures = await conn.fetchrow(
        "SELECT sum(transactions)::bigint AS tx, sum(amount)::bigint AS amount "
        "FROM province_counters"
    )
    assert (figures["tx"] or 0, figures["amount"] or 0) == (
        len(live),
        sum(a for _, _, a in live),
    )
    await invariants(conn)


def test_one_terminals_history_agrees_with_the_model(admin_dsn: str, template_dsn: str) -> None:
    @settings(
        max_examples=40 if soak() else 8,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(STEP, min_size=1, max_size=14))
    def history(steps: list[Any]) -> None:
        asyncio.run(_history(admin_dsn, steps))

    history()
