"""The live counters' change detector and event encoding, without a database."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from coupon import live
from coupon.models import Stats, Totals


def test_the_watch_awaits_skipped_seqs_until_they_commit() -> None:
    watch = live.LedgerWatch(head=10)
    assert watch.observe([], [], 1, now=0.0)  # the first look always announces
    assert not watch.observe([], [], 1, now=0.1)
    assert watch.observe([11, 13, 14], [], 1, now=0.2)
    assert watch.head == 14 and set(watch.awaited) == {12}
    assert not watch.observe([], [], 1, now=0.3)
    assert watch.observe([], [12], 1, now=0.4)  # the late commit
    assert watch.awaited == {}
    assert watch.observe([], [], 2, now=0.5)  # a new tranche


def test_the_watch_gives_up_on_seqs_that_never_commit() -> None:
    watch = live.LedgerWatch(head=0)
    watch.observe([5], [], 1, now=0.0)
    assert set(watch.awaited) == {1, 2, 3, 4}
    watch.observe([], [], 1, now=live.AWAIT_SEQ_FOR + 1)
    assert watch.awaited == {}
    watch.observe([10_000_000], [], 1, now=0.0)  # a reset sequence is not a gap
    assert len(watch.awaited) == live.MAX_AWAITED


def test_an_sse_frame() -> None:
    assert live.sse_frame(7, b'{"a":1}') == b'id: 7\r\nevent: stats\r\ndata: {"a":1}\r\n\r\n'


def _snapshot(serial: int, transactions: int) -> live.Snapshot:
    totals = Totals(
        transactions=transactions,
        served_households=transactions,
        eligible_households=10,
        amount=transactions,
        coverage=transactions / 10,
    )
    stats = Stats(as_of=dt.datetime.now(dt.UTC), tranche_id=None, totals=totals, provinces=[])
    numbers = stats.model_dump_json(exclude={"as_of"}).encode()
    return live.Snapshot(serial, serial, stats, live.sse_frame(serial, b"{}"), numbers)


async def test_clients_get_numbers_first_computed_for_a_newcomer() -> None:
    """A newcomer's fresh snapshot went to the newcomer alone: the next refresh with the same
    numbers must still reach the clients that were there before."""
    hub = live.Hub(pool=None, dsn="")  # type: ignore[arg-type]
    numbers = {"transactions": 1}
    serials = iter(range(1, 100))

    async def compute(tranche_id: int | None) -> live.Snapshot:
        return _snapshot(next(serials), numbers["transactions"])

    hub._compute = compute  # type: ignore[method-assign]
    hub._listening = True
    first, snap = await hub.subscribe(None)
    assert snap.stats.totals.transactions == 1
    await hub._refresh([None])  # nothing new for the first client: no event
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(first.next(), 0.05)

    numbers["transactions"] = 2
    hub._dirty.set()  # a notification arrives; before the refresher runs, a newcomer joins
    newcomer, fresh = await hub.subscribe(None)
    assert fresh.stats.totals.transactions == 2
    await hub._refresh([None])
    seen = await asyncio.wait_for(first.next(), 1)
    assert seen is not None and seen.stats.totals.transactions == 2
    with pytest.raises(TimeoutError):  # the newcomer already has these numbers
        await asyncio.wait_for(newcomer.next(), 0.05)
    hub.close_streams()
    assert await first.next() is None
