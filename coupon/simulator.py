"""Simulated POS traffic for the demo: signed requests to the real HTTP API at a steady rate.

Roughly what stores do: mostly redemptions (some itemised, some split tender), now and then a
reversal of a recent sale, a POS repeating a request it got no answer for, a balance inquiry,
and purchases that are declined (a household not in the tranche, or more than its credit).
A few stores, when given, commit the frauds inspection looks for: a household's whole balance
run through at once (cash for credit, cards collected from anywhere) and one purchase split
into several redemptions.

Now and then a terminal that may work offline loses its line for a while: it approves its sales
offline, and forwards them in a batch when the line is back."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import structlog

from coupon import auth

log = structlog.get_logger(__name__)

# (action, weight); redemptions are ~85 % of the requests
MIX = (
    ("redeem", 0.80),
    ("retry", 0.03),  # the same request_id and body again: an idempotent replay
    ("decline", 0.02),  # a household the tranche does not credit, or more than its credit
    ("reverse", 0.05),
    ("balance", 0.10),
)
# the share of requests that go to a fraudulent store's schemes, when there are such stores
FRAUD_SHARE = 0.04
ITEMS = ("rice", "cooking_oil", "chicken", "eggs", "dairy", "legumes", "sugar", "pasta")
CONCURRENCY = 32
REPORT_EVERY = 30.0
# per request, the chance that an offline-capable terminal loses its line; for how long (s)
OUTAGE_CHANCE = 0.003
OUTAGE_SECONDS = (20.0, 60.0)
MAX_BATCH = 500


@dataclass(frozen=True)
class Pos:
    terminal_id: int
    secret: str
    province: str
    offline_enabled: bool = False


@dataclass(frozen=True)
class Shopper:
    national_id: str
    province: str
    entitled: bool


@dataclass
class Sale:
    pos: Pos
    request_id: str
    body: bytes


@dataclass
class Traffic:
    """Drives `rate` requests a second at base_url until cancelled (or `requests` are sent)."""

    base_url: str
    terminals: Sequence[Pos]
    shoppers: Sequence[Shopper]
    rate: float
    seed: int = 1
    fraud_terminals: Sequence[Pos] = ()
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    # each terminal's last offline_seq already forwarded (its numbering goes on from there)
    offline_seqs: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._by_province: dict[str, list[Pos]] = collections.defaultdict(list)
        for pos in self.terminals:
            self._by_province[pos.province].append(pos)
        self._entitled = [s for s in self.shoppers if s.entitled]
        self._others = [s for s in self.shoppers if not s.entitled]
        self._recent: collections.deque[Sale] = collections.deque(maxlen=500)
        self._actions = [a for a, _ in MIX]
        self._weights = [w for _, w in MIX]
        if self.fraud_terminals:
            self._actions.append("fraud")
            self._weights.append(FRAUD_SHARE)
        self._offline_capable = [p for p in self.terminals if p.offline_enabled]
        self._outages: dict[int, float] = {}  # terminal -> when its line comes back
        self._captured: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)

    async def run(self, requests: int | None = None) -> collections.Counter[str]:
        if not self.terminals or not self._entitled:
            log.warning("demo_traffic_idle", reason="no terminals or no credited households")
            return self.counts
        limit = asyncio.Semaphore(CONCURRENCY)
        tasks: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            await self._wait_until_up(session)
            started = next_report = time.monotonic()
            sent = 0
            try:
                while requests is None or sent < requests:
                    # a steady rate, not a burst after each slow response
                    delay = started + sent / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await limit.acquire()
                    task = asyncio.create_task(self._one(session))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(lambda _task: limit.release())
                    sent += 1
                    if time.monotonic() >= next_report:
                        next_report += REPORT_EVERY
                        log.info("demo_traffic", sent=sent, **dict(self.counts))
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks, return_exceptions=True)
        return self.counts

    async def _wait_until_up(self, session: aiohttp.ClientSession) -> None:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.base_url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        action = self._rng.choices(self._actions, self._weights)[0]
        try:
            await self._outages_come_and_go(session)
            if action == "retry" and self._recent:
                sale = self._rng.choice(self._recent)
                await self._send(session, sale.pos, "POST", "/v1/redemptions", sale.body)
            elif action == "reverse" and self._recent:
                sale = self._recent.popleft()
                body = {"request_id": self._request_id(), "original_request_id": sale.request_id}
                await self._send(session, sale.pos, "POST", "/v1/reversals", orjson.dumps(body))
            elif action == "fraud":
                await self._fraud(session)
            elif action == "balance":
                shopper = self._rng.choice(self._entitled)
                path = f"/v1/households/{shopper.national_id}/balance"
                await self._send(session, self._pos_for(shopper), "GET", path, b"")
            else:
                await self._redeem(session, decline=action == "decline")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counts["error"] += 1
            log.debug("demo_request_failed", error=type(exc).__name__)

    async def _redeem(self, session: aiohttp.ClientSession, decline: bool) -> None:
        rng = self._rng
        amount = rng.randrange(20, 300) * 10_000  # 200,000 .. 3,000,000 rials
        shopper = rng.choice(self._entitled)
        if decline:
            if self._others and rng.random() < 0.5:
                shopper = rng.choice(self._others)
            else:
                amount = 900_000_000  # far beyond any household's credit
        payload: dict[str, Any] = {
            "request_id": self._request_id(),
            "national_id": shopper.national_id,
            "amount": amount,
        }
        if rng.random() < 0.4:
            first = rng.randrange(1, amount // 10_000) * 10_000
            chosen = rng.sample(ITEMS, 2)
            payload["items"] = [
                {"category": chosen[0], "amount": first},
                {"category": chosen[1], "amount": amount - first},
            ]
        if rng.random() < 0.1:
            payload["allow_partial"] = True
        pos = self._pos_for(shopper)
        if pos.terminal_id in self._outages:
            self._capture_offline(pos, payload)
            return
        body = orjson.dumps(payload)
        status = await self._send(session, pos, "POST", "/v1/redemptions", body)
        if status == 201:
            self._recent.append(Sale(pos, payload["request_id"], body))

    async def _fraud(self, session: aiohttp.ClientSession) -> None:
        """A fraudulent store at work: a collected card's whole balance in one go (any
        province's household, round sums), or one purchase rung up as several."""
        rng = self._rng
        pos = rng.choice(self.fraud_terminals)
        shopper = rng.choice(self._entitled)
        if rng.random() < 0.6:
            sales = [{"amount": 900_000_000, "allow_partial": True}]  # everything that is left
        else:
            sales = [{"amount": rng.randrange(20, 60) * 10_000} for _ in range(rng.randint(2, 4))]
        for sale in sales:
            payload = {"request_id": self._request_id(), "national_id": shopper.national_id}
            body = orjson.dumps({**payload, **sale})
            await self._send(session, pos, "POST", "/v1/redemptions", body)

    async def _outages_come_and_go(self, session: aiohttp.ClientSession) -> None:
        now = time.monotonic()
        if self._offline_capable and self._rng.random() < OUTAGE_CHANCE:
            pos = self._rng.choice(self._offline_capable)
            if pos.terminal_id not in self._outages:
                self._outages[pos.terminal_id] = now + self._rng.uniform(*OUTAGE_SECONDS)
                self.counts["offline_outage"] += 1
        for pos in self._offline_capable:
            until = self._outages.get(pos.terminal_id)
            if until is not None and until <= now:
                del self._outages[pos.terminal_id]
                await self._forward(session, pos, self._captured.pop(pos.terminal_id, []))

    def _capture_offline(self, pos: Pos, payload: dict[str, Any]) -> None:
        """A sale approved offline (no split tender: the POS cannot ask the balance)."""
        seq = self.offline_seqs.get(pos.terminal_id, 0) + 1
        self.offline_seqs[pos.terminal_id] = seq
        purchase = {k: v for k, v in payload.items() if k != "allow_partial"}
        purchase["offline_seq"] = seq
        purchase["captured_at"] = dt.datetime.now(dt.UTC).isoformat()
        self._captured[pos.terminal_id].append(purchase)
        self.counts["offline_captured"] += 1

    async def _forward(
        self, session: aiohttp.ClientSession, pos: Pos, purchases: list[dict[str, Any]]
    ) -> None:
        """The line is back: what the terminal captured meanwhile, in batches."""
        for start in range(0, len(purchases), MAX_BATCH):
            body = orjson.dumps({"purchases": purchases[start : start + MAX_BATCH]})
            headers = auth.signed_headers(
                pos.terminal_id, pos.secret, "POST", "/v1/offline/batches", body, uuid.uuid4().hex
            )
            headers["Content-Type"] = "application/json"
            url = self.base_url + "/v1/offline/batches"
            async with session.post(url, data=body, headers=headers) as r:
                answer = await r.read()
                if r.status != 200:
                    self.counts[f"offline_batch_{r.status}"] += 1
                    continue
                for result in orjson.loads(answer)["results"]:
                    reason = result["reason"]
                    self.counts[
                        f"offline_{result['status']}" + (f"_{reason}" if reason else "")
                    ] += 1

    def _pos_for(self, shopper: Shopper) -> Pos:
        # people shop in their own province
        nearby = self._by_province.get(shopper.province) or self.terminals
        return self._rng.choice(nearby)

    def _request_id(self) -> str:
        # random, not seeded: a POS never reuses a reference, even across demo runs
        return "sim-" + uuid.uuid4().hex[:24]

    async def _send(
        self, session: aiohttp.ClientSession, pos: Pos, method: str, path: str, body: bytes
    ) -> int:
        headers = auth.signed_headers(
            pos.terminal_id, pos.secret, method, path, body, uuid.uuid4().hex
        )
        if body:
            headers["Content-Type"] = "application/json"
        async with session.request(method, self.base_url + path, data=body, headers=headers) as r:
            answer = await r.read()
            self.counts[_outcome(method, path, r.status, answer, r.headers)] += 1
            return r.status


def _outcome(method: str, path: str, status: int, body: bytes, headers: Any) -> str:
    if headers.get("Idempotent-Replayed") == "true":
        return "replayed"
    if path.endswith("/balance"):
        return "balance"
    if status == 402:
        return "declined_" + str(orjson.loads(body).get("reason"))
    kind = "reversal" if path == "/v1/reversals" else "redemption"
    return f"{kind}_{status}"
