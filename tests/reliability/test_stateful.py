"""A hypothesis state machine drives signed redemptions, reversals, retries, balance inquiries
and restarts (a new app instance on the same database) -- with answers lost after their commit
and connections cut -- against an in-memory model of every balance and counter, and compares
the two after every step.

Rules cannot be coroutines, so the machine owns a private event loop and runs each step's
requests to completion on it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import asyncpg
import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from coupon import auth, tokens
from coupon.config import Settings
from tests.conftest import TEMPLATE, TEST_SHARDS, _with_database
from tests.faultproxy import FaultProxy
from tests.integration.terminal import invariants
from tests.reliability.harness import (
    Answer,
    Pos,
    Sent,
    in_process,
    record,
    seed,
    send,
    soak,
    upstream,
    via,
)

T = TypeVar("T")
AMOUNTS = st.sampled_from([1_000, 250_000, 2_000_000, 7_500_000, 10**11])
FAULTS = st.sampled_from([None, None, None, "lost_reply", "drop"])
STEPS: dict[str, int] = {}


@dataclass
class Redemption:
    sent: Sent
    national_id: str
    amount: int  # approved
    reversed: bool = False


class CouponMachine(RuleBasedStateMachine):
    redemptions = Bundle("redemptions")
    reversed_early = Bundle("reversed_early")

    def __init__(self, admin_dsn: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.admin_dsn = admin_dsn
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        self.name = "t_state_" + uuid.uuid4().hex[:12]
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f"CREATE DATABASE {self.name} TEMPLATE {TEMPLATE}")
        finally:
            await admin.close()
        self.dsn = _with_database(self.admin_dsn, self.name)
        world = await seed(self.dsn, n_households=4, n_terminals=2)
        self.terminals: list[Pos] = world.terminals
        self.conn = await asyncpg.connect(self.dsn)
        rows = await self.conn.fetch("SELECT national_id, province, balance FROM entitlements")
        self.balance = {r["national_id"]: r["balance"] for r in rows}
        self.province = {r["national_id"]: r["province"] for r in rows}
        # the counters as the model sees them: unreversed approvals per household, and sums
        self.open = {nid: 0 for nid in self.balance}
        self.transactions = self.amount = 0
        self.operator = await tokens.create_token(self.conn, "operator", "state")
        self.proxy = FaultProxy(*upstream(self.dsn))
        self.pdsn = via(self.dsn, await self.proxy.start())
        self.session = aiohttp.ClientSession()
        self.server: Any = None
        await self._serve()
        self.requests: list[Sent] = []

    async def _serve(self) -> None:
        # one pooled connection: a lost reply always lands on the statement that was armed
        settings = Settings(
            database_url=self.pdsn,
            pool_min_size=1,
            pool_max_size=1,
            counter_shards=TEST_SHARDS,
            db_timeout=2.0,
            seal_interval=3600,
            live_counters=False,  # its connections would go through the proxy too
        )
        self.server = in_process(settings, self.pdsn)
        self.base = await self.server.__aenter__()

    def teardown(self) -> None:
        async def stop() -> None:
            await self.server.__aexit__(None, None, None)
            await self.session.close()
            await self.proxy.stop()
            await self.conn.close()
            admin = await asyncpg.connect(self.admin_dsn)
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            finally:
                await admin.close()

        try:
            self.run(stop())
        finally:
            self.loop.close()

    # -- sending -----------------------------------------------------------------------------

    def step(self, name: str) -> None:
        STEPS[name] = STEPS.get(name, 0) + 1

    async def _settle(self, sent: Sent, path: str, fault: str | None = None) -> Answer:
        """Send until a definitive answer, as a POS would; with a fault injected first."""
        if fault == "lost_reply":
            self.proxy.lose_next_reply()
        elif fault == "drop":
            self.proxy.drop_all()
        lost = self.proxy.stats.lost_replies
        for _ in range(50):
            answer = await send(self.session, self.base, sent, path)
            if answer.definitive:
                if self.proxy.stats.lost_replies > lost:
                    self.step("answers lost" + (", then replayed" if answer.replayed else ""))
                return answer
            assert answer.status == 503, answer
            await asyncio.sleep(0.05)
        raise AssertionError(f"no definitive answer: {sent.answers}")

    def _new(self, pos: Pos, payload: dict[str, Any]) -> Sent:
        sent = Sent(pos, payload["request_id"], orjson.dumps(payload))
        self.requests.append(sent)
        return sent

    # -- rules -------------------------------------------------------------------------------

    @rule(
        target=redemptions,
        terminal=st.integers(0, 1),
        household=st.integers(0, 3),
        amount=AMOUNTS,
        partial=st.booleans(),
        fault=FAULTS,
    )
    def redeem(self, terminal: int, household: int, amount: int, partial: bool, fault: Any) -> Any:
        self.step(f"redeem{'+' + fault if fault else ''}")
        nid = sorted(self.balance)[household]
        pos = self.terminals[terminal]
        payload = {"request_id": f"s-{uuid.uuid4().hex[:20]}", "national_id": nid}
        payload |= {"amount": amount, "allow_partial": partial}
        sent = self._new(pos, payload)
        answer = self.run(self._settle(sent, "/v1/redemptions", fault))
        have = self.balance[nid]
        approved = amount if amount <= have else (have if partial and have > 0 else 0)
        if approved == 0:
            assert answer.status == 402, answer
            assert answer.body["reason"] == "insufficient_balance"
            return None  # nothing to reverse: the bundle gets nothing
        assert answer.status == 201, answer
        assert answer.body["amount"] == approved
        assert answer.body["remaining"] == have - approved
        assert answer.body["province"] == self.province[nid]
        self.balance[nid] -= approved
        self.open[nid] += 1
        self.transactions += 1
        self.amount += approved
        return Redemption(sent, nid, approved)

    @rule(target=redemptions, r=consumes(redemptions), fault=FAULTS)
    def reverse(self, r: Redemption | None, fault: Any) -> Any:
        if r is None:
            return None
        self.step("reverse")
        payload = {
            "request_id": f"v-{uuid.uuid4().hex[:20]}",
            "original_request_id": r.sent.request_id,
        }
        sent = self._new(r.sent.pos, payload)
        answer = self.run(self._settle(sent, "/v1/reversals", fault))
        if r.reversed:
            assert answer.status == 409 and answer.body["error"]["code"] == "already_reversed"
            return r
        assert answer.status == 201, answer
        assert answer.body["amount"] == r.amount
        self.balance[r.national_id] += r.amount
        assert answer.body["remaining"] == self.balance[r.national_id]
        self.open[r.national_id] -= 1
        self.transactions -= 1
        self.amount -= r.amount
        r.reversed = True
        return r

    @rule(target=reversed_early, terminal=st.integers(0, 1))
    def reverse_before_original(self, terminal: int) -> str:
        # (its target bundle feeds one rule only, so hypothesis does not overdo it)
        self.step("reverse_before_original")
        original = f"late-{uuid.uuid4().hex[:16]}"
        payload = {"request_id": f"v-{uuid.uuid4().hex[:20]}", "original_request_id": original}
        answer = self.run(
            self._settle(self._new(self.terminals[terminal], payload), "/v1/reversals")
        )
        assert answer.status == 202 and answer.body["status"] == "pending_original"
        return f"{terminal}:{original}"

    @rule(key=consumes(reversed_early), household=st.integers(0, 3))
    def redeem_a_reversed_original(self, key: str, household: int) -> None:
        self.step("redeem_a_reversed_original")
        terminal, original = key.split(":", 1)
        nid = sorted(self.balance)[household]
        payload = {"request_id": original, "national_id": nid, "amount": 1000}
        answer = self.run(
            self._settle(self._new(self.terminals[int(terminal)], payload), "/v1/redemptions")
        )
        assert answer.status == 402 and answer.body["reason"] == "reversed"

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """Any request sent before, sent again: its stored answer, and nothing changes."""
        if not self.requests:
            return
        self.step("retry")
        sent = data.draw(st.sampled_from(self.requests))
        first = next(a for a in sent.answers if a.definitive)
        path = "/v1/redemptions" if b'"national_id"' in sent.body else "/v1/reversals"
        answer = self.run(self._settle(sent, path))
        assert (answer.status, answer.body) == (first.status, first.body)
        assert answer.replayed == (first.status in (201, 202, 402))

    @rule(household=st.integers(0, 3), now=st.integers(0, 2))
    def inquire(self, household: int, now: int) -> None:
        if now != 1:  # less often than the rules that move money (hypothesis favours 0 and 2)
            return
        self.step("inquire")
        nid = sorted(self.balance)[household]

        async def ask() -> Any:
            path = f"/v1/households/{nid}/balance"
            pos = self.terminals[0]
            for _ in range(50):
                headers = auth.signed_headers(
                    pos.terminal_id, pos.secret, "GET", path, b"", uuid.uuid4().hex
                )
                async with self.session.get(self.base + path, headers=headers) as resp:
                    if resp.status != 503:
                        return resp.status, await resp.json()
                await asyncio.sleep(0.05)
            raise AssertionError("balance never answered")

        status, body = self.run(ask())
        assert status == 200 and body["remaining"] == self.balance[nid], body

    @rule(now=st.integers(0, 5))
    def restart(self, now: int) -> None:
        """A new app instance on the same database: new pool, empty secret cache."""
        if now != 3:  # seldom (hypothesis favours the bounds)
            return
        self.step("restart")

        async def again() -> None:
            await self.server.__aexit__(None, None, None)
            await self._serve()

        self.run(again())

    # -- the model and the database agree -------------------------------------------------

    @invariant()
    def balances_and_counters_match_the_model(self) -> None:
        async def check() -> None:
            rows = await self.conn.fetch("SELECT national_id, balance FROM entitlements")
            assert {r["national_id"]: r["balance"] for r in rows} == self.balance
            await invariants(self.conn)
            async with self.session.get(
                self.base + "/v1/stats", headers={"Authorization": f"Bearer {self.operator}"}
            ) as resp:
                assert resp.status == 200
                stats = await resp.json()
            totals = stats["totals"]
            served = sum(1 for n in self.open.values() if n > 0)
            assert (totals["transactions"], totals["amount"], totals["served_households"]) == (
                self.transactions,
                self.amount,
                served,
            ), (totals, self.open)

        self.run(check())


def test_the_service_agrees_with_a_model_of_it(admin_dsn: str, template_dsn: str) -> None:
    run_state_machine_as_test(
        lambda: CouponMachine(admin_dsn),
        settings=settings(
            max_examples=60 if soak() else 12,
            stateful_step_count=40 if soak() else 25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    record("stateful", {"steps": dict(sorted(STEPS.items())), "total": sum(STEPS.values())})
