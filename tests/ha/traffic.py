"""What the high-availability tests share: POS clients that resend every unanswered request,
the write gap of an event, waiting for the cluster, and the check that nothing confirmed was
lost or doubled on whichever node leads now."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from coupon import audit
from coupon.config import Settings
from coupon.signing import SealKeys
from tests.reliability.harness import Load, Sent, check_outcomes, redemption, send


class ResendingLoad(Load):
    """POS clients through a failover: each sends a redemption and resends it (same request_id,
    new nonce) until it gets a definitive answer, whatever the service answers meanwhile --
    silence included -- then serves the next customer."""

    async def _client(self, k: int) -> None:
        rng = random.Random(f"{self.tag}-{k}")
        while not self._stop.is_set():
            sent = redemption(self.world, rng, f"{self.tag}{k}")
            self.sent.append(sent)
            while not self._stop.is_set():
                answer = await send(self._session, self.base, sent)
                self.statuses[str(answer.status or "no answer")] += 1
                if answer.definitive:
                    break
                await asyncio.sleep(0.05)

    def answered(self) -> list[float]:
        """When each definitive answer arrived (time.monotonic), in order."""
        return sorted(a.sent_at + a.latency for s in self.sent for a in s.answers if a.definitive)

    def confirmed_between(self, start: float, end: float) -> int:
        return sum(
            1
            for s in self.sent
            for a in s.answers
            if a.status == 201 and start <= a.sent_at + a.latency <= end
        )


def write_gap(answered: list[float], event: float) -> float:
    """The longest stretch without a definitive answer that the event falls into."""
    before = [t for t in answered if t <= event]
    after = [t for t in answered if t > event]
    if not before or not after:
        raise AssertionError("no answers on both sides of the event")
    gap = after[0] - before[-1]
    for a, b in itertools.pairwise(after):
        if b - a > gap:
            gap = b - a
        if b - event > 120:
            break
    return gap


async def until(
    condition: Callable[[], bool | Awaitable[bool]], patience: float, what: str
) -> float:
    """Wait for condition (a function, or a coroutine function); the seconds it took."""
    started = time.monotonic()
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return time.monotonic() - started
        if time.monotonic() - started > patience:
            raise AssertionError(f"no {what} after {patience:.0f} s")
        await asyncio.sleep(0.1)


async def check_primary(superuser: str, sent: list[Sent]) -> dict[str, Any]:
    """Nothing lost or doubled on the node that leads now, and its ledger verifies."""
    conn = await asyncpg.connect(superuser)
    try:
        figures = await check_outcomes(conn, sent)
        result = await audit.verify(conn, SealKeys.from_settings(Settings()), None)
        assert result.ok, result
        figures["verified_entries"] = result.entries
    finally:
        await conn.close()
    return figures
