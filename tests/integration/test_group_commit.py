"""Group commit (coupon.redemption.RedemptionBatcher): concurrent redemptions share one
transaction, and each still gets its own exact answer -- including when the database refuses
the batch (members go again one by one) or its fate is unknown (all fail, none is retried)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

from coupon import db, errors
from coupon.answers import Answer
from coupon.api import keys
from coupon.app import create_app
from coupon.config import Settings
from coupon.models import RedemptionRequest
from coupon.redemption import RedemptionBatcher
from tests.integration.helpers import national_ids
from tests.integration.terminal import REDEEM_ONE, Client, World, invariants, make_world

T = TypeVar("T")


def batch_sizes(client: Client) -> dict[float, float]:
    """How many batches of each size this app committed (from its Prometheus histogram)."""
    counts: dict[float, float] = {}
    for metric in client.app[keys.METRICS].batch_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                counts[float(sample.labels["le"])] = sample.value
    return counts


def request(nid: str, amount: int, request_id: str | None = None) -> RedemptionRequest:
    return RedemptionRequest(
        request_id=request_id or f"g-{uuid.uuid4().hex[:16]}", national_id=nid, amount=amount
    )


async def one_batch(
    world: World, batcher: RedemptionBatcher, requests: list[tuple[RedemptionRequest, str]]
) -> list[Answer | BaseException]:
    """Submit all at once: they queue in one loop iteration, so the first sender takes them
    all as one batch."""
    tid = world.terminal.terminal_id
    return await asyncio.gather(
        *(batcher.redeem(tid, nonce, r) for r, nonce in requests), return_exceptions=True
    )


async def on_ledger_insert(conn: asyncpg.Connection, request_id: str, action: str) -> None:
    """A trigger that does `action` when the ledger row of `request_id` is inserted (a fault
    inside one member of a batch)."""
    await conn.execute(f"""
        CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.request_id = '{request_id}' THEN {action}; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fault BEFORE INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION fault();
    """)


@pytest.fixture
async def batched(settings: Settings, dsn: str, aiohttp_client: Any) -> Client:
    """The service with one batch at the database at a time, so that concurrent requests
    must share transactions."""
    one = settings.model_copy(update={"batch_connections": 1})
    client: Client = await aiohttp_client(create_app(one, dsn))
    return client


async def test_concurrent_redemptions_share_transactions_and_get_exact_answers(
    batched: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(batched, operator, n=8, members=1)
    nids = list(world.credit)
    price = 400_000
    results = await asyncio.gather(
        *(world.terminal.redeem(nids[i % 8], price) for i in range(96))  # 12 per household
    )
    assert {r.status for r in results} == {201}
    # each household's answers tell one story: credit - price, - 2 price, ... in some order
    remaining: dict[str, list[int]] = defaultdict(list)
    for r in results:
        remaining[r.body["national_id"]].append(r.body["remaining"])
    for nid, seen in remaining.items():
        assert sorted(seen, reverse=True) == [world.credit[nid] - price * k for k in range(1, 13)]
    assert len({r.body["redemption_id"] for r in results}) == 96
    sizes = batch_sizes(batched)
    assert sizes[1.0] < sizes[128.0], "every redemption went alone: nothing was batched"
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 96
    await invariants(conn)


async def test_a_refused_batch_goes_again_one_by_one(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=5)
    await on_ledger_insert(
        conn, "boom", "RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'"
    )
    nids = list(world.credit)
    batch = [(request(nid, 1000), uuid.uuid4().hex) for nid in nids[:4]]
    batch.append((request(nids[4], 1000, "boom"), uuid.uuid4().hex))
    results = await one_batch(world, client.app[keys.BATCHER], batch)

    approved = [r for r in results if isinstance(r, Answer)]
    assert [r.status for r in approved] == [201] * 4
    assert isinstance(results[4], asyncpg.CheckViolationError)
    assert isinstance(db.translate(results[4]), errors.InvalidRequest)  # a 422, not a 500
    sizes = batch_sizes(client)
    assert sizes[1.0] == 5 and sizes[8.0] == 6  # the batch of 5, then 5 alone
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 4
    assert await conn.fetchval("SELECT count(*) FROM terminal_requests") == 4
    await invariants(conn)


async def test_duplicates_in_one_batch_replay_and_reused_nonces_are_refused(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=2)
    first, second = list(world.credit)
    same = request(first, 5000, "same")
    nonce = uuid.uuid4().hex
    results = await one_batch(
        world,
        client.app[keys.BATCHER],
        [
            (same, uuid.uuid4().hex),
            (same, uuid.uuid4().hex),  # a retry of the same request
            (request(second, 7000), nonce),
            (request(second, 7000), nonce),  # a replayed nonce
        ],
    )
    assert isinstance(results[0], Answer) and isinstance(results[1], Answer)
    assert results[0].status == results[1].status == 201
    assert results[0].body == results[1].body
    assert sorted([results[0].replayed, results[1].replayed]) == [False, True]
    outcomes = [r for r in results[2:] if isinstance(r, Answer)]
    refused = [r for r in results[2:] if isinstance(r, errors.NonceReused)]
    assert len(outcomes) == 1 and outcomes[0].status == 201 and len(refused) == 1
    assert batch_sizes(client)[1.0] == 0  # one batch of four
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 2
    await invariants(conn)


async def test_a_batch_of_unknown_fate_fails_whole_and_is_not_retried(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=4)
    await on_ledger_insert(conn, "slow", "PERFORM pg_sleep(30)")
    nids = list(world.credit)
    batch = [(request(nid, 1000), uuid.uuid4().hex) for nid in nids[:3]]
    batch.append((request(nids[3], 1000, "slow"), uuid.uuid4().hex))
    pending = asyncio.ensure_future(one_batch(world, client.app[keys.BATCHER], batch))
    for _ in range(200):
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            " AND query LIKE '%redeem_many%'"
        )
        if pid:
            break
        await asyncio.sleep(0.05)
    assert pid, "the batch never reached the stalled row"
    await conn.execute("SELECT pg_terminate_backend($1)", pid)
    results = await asyncio.wait_for(pending, 10)
    assert all(isinstance(db.translate(r), errors.ServiceUnavailable) for r in results), results
    # nothing was committed, and nobody was sent again behind the terminals' backs
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 0
    assert await conn.fetchval("SELECT count(*) FROM terminal_nonces") == 0
    assert batch_sizes(client)[1.0] == 0


MANY = "SELECT * FROM redeem_many($1, $2, $3, $4, $5, $6, $7, $8, $9) ORDER BY n"
ONE = REDEEM_ONE


async def rolled_back(conn: asyncpg.Connection, work: Callable[[], Awaitable[T]]) -> T:
    """work() in a transaction that is rolled back: both runs start from the same data."""
    tx = conn.transaction()
    await tx.start()
    try:
        return await work()
    finally:
        await tx.rollback()


def comparable(row: Any) -> dict[str, Any]:
    """An answer without what differs between two runs of the same work (ids, timestamps)."""
    return {k: v for k, v in dict(row).items() if k not in ("n", "entry_id", "created_at")}


@pytest.mark.parametrize("seed", range(4))
async def test_a_batch_answers_as_if_its_members_ran_one_by_one(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection, seed: int
) -> None:
    """The set-based redeem_many() against redeem() called once per element, in the order the
    batch promises (national id, then position), on the same data: every answer equal."""
    world = await make_world(client, operator, n=6, members=1, categories=["rice", "dairy"])
    nids = list(world.credit)
    await conn.execute("UPDATE households SET status = 'suspended' WHERE national_id = $1", nids[5])
    stranger = national_ids(1, seed=99)[0]  # valid, never imported
    tid = world.terminal.terminal_id
    await conn.execute(
        "INSERT INTO pending_reversals (terminal_id, original_request_id, request_id)"
        " VALUES ($1, 'voided', 'v-1')",
        tid,
    )
    rng = random.Random(seed)
    rows: list[tuple[Any, ...]] = []
    for i in range(48):
        nid = rng.choice([*nids, stranger])
        amount = rng.choice([100_000, 900_000, 2_000_000, 4_999_999, 5_000_000])
        rid = rng.choice(["voided", f"dup-{i % 5}", f"r-{i}", f"r-{i}", f"r-{i}"])
        cats = rng.choice(["", "rice", "dairy,rice", "eggs"])
        partial = rng.random() < 0.3
        if rid.startswith("dup-") and rows and rng.random() < 0.7:
            same = next((r for r in rows if r[2] == rid), None)
            if same is not None:  # a retry: the same body under a fresh nonce
                nid, amount, cats, partial = same[4], same[5], same[6], same[7]
        nonce = rows[-1][1] if rows and rng.random() < 0.1 else f"n-{seed}-{i}"
        body_hash = hashlib.sha256(f"{rid}|{nid}|{amount}|{cats}|{partial}".encode()).digest()
        rows.append((tid, nonce, rid, body_hash, nid, amount, cats, partial))
    nonces = [r[1] for r in rows]
    first = next(r for r in rows if r[2].startswith("r-") and nonces.count(r[1]) == 1)
    rows.append((*first[:1], f"n-{seed}-retry", *first[2:]))  # at least one retry
    columns = [list(c) for c in zip(*rows, strict=True)]

    async def batch_of_all() -> list[Any]:
        answers = await conn.fetch(MANY, *columns, 4)
        await invariants(conn)
        return list(answers)

    async def one_by_one() -> dict[int, Any]:
        # the order the batch promises: by national id, then position
        answers = {}
        for k in sorted(range(len(rows)), key=lambda k: (rows[k][4], k)):
            t, nonce, rid, bh, nid, amount, cats, partial = rows[k]
            categories = cats.split(",") if cats else []
            answers[k] = await conn.fetchrow(
                ONE, t, nonce, rid, bh, nid, amount, categories, partial, 4
            )
        await invariants(conn)
        return answers

    batch = await rolled_back(conn, batch_of_all)
    singles = await rolled_back(conn, one_by_one)
    outcomes = set()
    for k, got in enumerate(batch):
        outcomes.add(got["outcome"])
        assert comparable(got) == comparable(singles[k]), (k, rows[k])
    # the draw exercised approvals, declines, replays, conflicts and reused nonces
    assert {"approved", "declined", "nonce_reused", "idempotency_conflict"} <= outcomes
    assert any(r["replayed"] for r in batch)
    reasons = {r["reason"] for r in batch if r["outcome"] == "declined"}
    assert {"insufficient_balance", "household_not_found", "reversed"} <= reasons, reasons
