"""The live counters' change detector and event encoding, without a database."""

from __future__ import annotations

from coupon import live


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
