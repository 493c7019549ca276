"""The terminal path: redemptions, reversals and balance inquiries. Each is one call of a SQL
function (schema.sql), so a request costs one round trip and one transaction -- or a share of
one: concurrent redemptions are committed together (RedemptionBatcher)."""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from coupon import answers, db
from coupon.models import RedemptionRequest, ReversalRequest


def body_hash(model: RedemptionRequest | ReversalRequest) -> bytes:
    """Identity of a request body for idempotency: the validated fields, canonically."""
    canonical = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


async def reverse(
    conn: db.Connection, terminal_id: int, nonce: str, request: ReversalRequest, shards: int
) -> answers.Answer:
    row = await conn.fetchrow(
        db.q("reverse"),
        terminal_id,
        nonce,
        request.request_id,
        body_hash(request),
        request.original_request_id,
        shards,
    )
    assert row is not None  # the function returns one row
    return answers.reversal(row, request)


async def balance(
    conn: db.Connection, terminal_id: int, nonce: str, national_id: str
) -> answers.Answer:
    row = await conn.fetchrow(db.q("balance_inquiry"), terminal_id, nonce, national_id)
    assert row is not None  # the function returns one row
    return answers.balance(row, national_id)


@dataclass(slots=True)
class _Pending:
    terminal_id: int
    nonce: str
    request: RedemptionRequest
    answer: asyncio.Future[answers.Answer]


class RedemptionBatcher:
    """Group commit. Redemptions that arrive while earlier ones are at the database go together
    in the next redeem_many() call: one round trip, one transaction and one WAL flush for all of
    them, and each request still gets its own exact answer. There is no timer: a lone request
    goes at once, and under load a batch is what queued during the previous round trip (at most
    max_size), so the wait is bounded by one batch's time.

    If the database refuses a batch (a deadlock, one bad value), nothing of it was committed and
    its members go again one by one, each with its own answer or error. If a batch's fate is
    unknown (connection lost, timeout), every member fails with that error -- a 503 -- and the
    terminal's resend replays the stored answer if it had committed."""

    def __init__(
        self,
        pool: db.Pool,
        shards: int,
        max_size: int = 64,
        connections: int = 1,
        on_batch: Callable[[int], object] | None = None,
    ) -> None:
        self._pool = pool
        self._shards = shards
        self._max_size = max_size
        self._connections = connections
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._sending = 0  # counted in _send itself: a done-callback would run too late
        self._senders: set[asyncio.Task[None]] = set()

    async def redeem(
        self, terminal_id: int, nonce: str, request: RedemptionRequest
    ) -> answers.Answer:
        answer: asyncio.Future[answers.Answer] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(terminal_id, nonce, request, answer))
        if self._sending < self._connections:
            self._sending += 1
            sender = asyncio.create_task(self._send())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await answer

    async def close(self) -> None:
        """Wait for the batches under way (aiohttp has already waited for their requests)."""
        if self._senders:
            await asyncio.gather(*self._senders, return_exceptions=True)

    async def _send(self) -> None:
        try:
            while self._queue:
                size = min(len(self._queue), self._max_size)
                await self._commit([self._queue.popleft() for _ in range(size)])
        finally:
            self._sending -= 1

    async def _commit(self, batch: list[_Pending]) -> None:
        # one order of row locks for every batch: by household (entitlement, then household)
        batch.sort(key=lambda p: p.request.national_id)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    db.q("redeem_many"),
                    [p.terminal_id for p in batch],
                    [p.nonce for p in batch],
                    [p.request.request_id for p in batch],
                    [body_hash(p.request) for p in batch],
                    [p.request.national_id for p in batch],
                    [p.request.amount for p in batch],
                    [_categories(p.request) for p in batch],
                    [p.request.allow_partial for p in batch],
                    self._shards,
                )
        except Exception as exc:
            if len(batch) > 1 and db.never_applied(exc):
                for one in batch:
                    await self._commit([one])
                return
            for p in batch:
                if not p.answer.done():
                    p.answer.set_exception(exc)
            return
        for row in rows:
            p = batch[row["n"] - 1]
            if p.answer.done():  # its request was cancelled; the redemption stands
                continue
            try:
                p.answer.set_result(answers.redemption(row, p.terminal_id, p.request))
            except Exception as exc:  # a refusal with a stable code (401, 409...)
                p.answer.set_exception(exc)
        for p in batch:  # never leave a request waiting, whatever came back
            if not p.answer.done():
                p.answer.set_exception(RuntimeError("redeem_many() returned no row for it"))


def _categories(request: RedemptionRequest) -> str:
    """The items' categories as redeem_many() takes them: comma-separated, each once."""
    return ",".join(sorted({i.category for i in request.items})) if request.items else ""
