"""Inspection signals on small hand-made ledgers: each fires when it should and not otherwise,
days are Asia/Tehran days; the API, the CLI and the versioned rules."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from coupon import inspection
from tests.conftest import as_role
from tests.integration.test_cli import coupon

Client = TestClient[Any, Any]
DAY = dt.date(2026, 1, 10)
TEHRAN = inspection.TEHRAN


def at(hour: int, minute: int = 0, second: float = 0, day: dt.date = DAY) -> dt.datetime:
    """A Tehran wall-clock time of DAY."""
    return dt.datetime.combine(day, dt.time(hour, minute), TEHRAN) + dt.timedelta(seconds=second)


class Ledger:
    """Stores, terminals and ledger rows written straight into the test database (as the
    superuser): the signals only read them."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.n = itertools.count(1)
        self.household_province: dict[str, str] = {}

    async def store(self, province: str = "IR-15", category: str = "grocery") -> int:
        merchant: int = await self.conn.fetchval(
            "INSERT INTO merchants (name, province, category) VALUES ('s', $1, $2) RETURNING id",
            province,
            category,
        )
        await self.conn.execute("INSERT INTO terminals (merchant_id) VALUES ($1)", merchant)
        return merchant

    async def redeem(
        self,
        merchant: int,
        when: dt.datetime,
        household: str | None = None,
        *,
        amount: int = 1_234_000,
        province: str | None = None,
        remaining: int = 500_000,
        reversed_at: dt.datetime | None = None,
    ) -> int:
        i = next(self.n)
        nid = household or f"{i:010d}"
        terminal = await self.conn.fetchval(
            "SELECT min(id) FROM terminals WHERE merchant_id = $1", merchant
        )
        home = province or await self.conn.fetchval(
            "SELECT province FROM merchants WHERE id = $1", merchant
        )
        seq: int = await self.conn.fetchval(
            """INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id,
                                   province, tranche_id, amount, created_at)
               VALUES ('redemption', $1, $2, $3, $4, $5, 1, $6, $7) RETURNING seq""",
            f"r{i}", terminal, merchant, nid, home, amount, when,
        )  # fmt: skip
        await self.conn.execute(
            """INSERT INTO terminal_requests (terminal_id, request_id, kind, body_hash,
                   created_at, outcome, entry_id, amount, remaining, tranche_id, province,
                   merchant_id)
               VALUES ($1, $2, 'redemption', '', $3, 'approved', $4, $5, $6, 1, $7, $8)""",
            terminal, f"r{i}", when, seq, amount, remaining, home, merchant,
        )  # fmt: skip
        if reversed_at is not None:
            await self.conn.execute(
                """INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id,
                                       province, tranche_id, amount, reverses, created_at)
                   VALUES ('reversal', $1, $2, $3, $4, $5, 1, $6, $7, $8)""",
                f"v{i}", terminal, merchant, nid, home, amount, seq, reversed_at,
            )  # fmt: skip
        return seq

    async def many(self, merchant: int, n: int, **kwargs: Any) -> None:
        """n ordinary redemptions through the opening hours."""
        for k in range(n):
            await self.redeem(merchant, at(9 + k % 12, 7 * k % 60), **kwargs)


@pytest.fixture
def ledger(conn: asyncpg.Connection) -> Ledger:
    return Ledger(conn)


async def figures(
    conn: asyncpg.Connection, rules: inspection.Rules | None = None, day: dt.date = DAY
) -> dict[int, dict[str, Any]]:
    found = await inspection.store_days(conn, rules or inspection.Rules(), day, day)
    return {f["merchant_id"]: f for f in found}


async def fired(
    conn: asyncpg.Connection, rules: inspection.Rules | None = None
) -> dict[int, set[str]]:
    rules = rules or inspection.Rules()
    return {
        m: {s["signal"] for s in inspection.signals_of(f, rules)}
        for m, f in (await figures(conn, rules)).items()
    }


# -- days and hours ------------------------------------------------------------------------------


async def test_days_are_tehran_days(conn: asyncpg.Connection, ledger: Ledger) -> None:
    store = await ledger.store()
    before = at(0) - dt.timedelta(seconds=1)  # 23:59:59 of the day before, Tehran
    await ledger.redeem(store, before)
    await ledger.redeem(store, at(0))
    await ledger.redeem(store, at(23, 59, 59))
    await ledger.redeem(store, at(0, day=DAY + dt.timedelta(days=1)))
    assert before.astimezone(dt.UTC).hour == 20  # Tehran is UTC+03:30
    day = (await figures(conn))[store]
    assert day["redemptions"] == 2 and day["day"] == DAY
    assert day["after_hours"] == 2  # 00:00 and 23:59 are outside 07:00-23:00
    previous = (await figures(conn, day=DAY - dt.timedelta(days=1)))[store]
    assert previous["redemptions"] == 1


async def test_opening_hours_are_inclusive_of_opening_exclusive_of_closing(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    store = await ledger.store()
    for when in (at(6, 59, 59), at(7), at(22, 59, 59), at(23)):
        await ledger.redeem(store, when)
    assert (await figures(conn))[store]["after_hours"] == 2
    late = inspection.Rules(opens_at="06:00", closes_at="24:00")
    assert (await figures(conn, late))[store]["after_hours"] == 0


async def test_after_hours_fires_on_a_store_open_at_night(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    night, day = await ledger.store(), await ledger.store()
    await ledger.many(night, 12)
    await ledger.many(day, 24)
    for k in range(8):
        await ledger.redeem(night, at(2, k))
    await ledger.redeem(day, at(23, 30))
    signals = await fired(conn)
    assert "after_hours_share" in signals[night]
    assert "after_hours_share" not in signals[day]


# -- each signal, firing and not ----------------------------------------------------------------


async def test_emptied_balances(conn: asyncpg.Connection, ledger: Ledger) -> None:
    drains, honest = await ledger.store(), await ledger.store()
    await ledger.many(drains, 14, remaining=0)
    await ledger.many(drains, 6)
    await ledger.many(honest, 18)
    await ledger.many(honest, 2, remaining=0)
    signals = await fired(conn)
    assert "emptied_share" in signals[drains] and "emptied_share" not in signals[honest]
    assert (await figures(conn))[drains]["emptied"] == 14


async def test_households_of_other_provinces(conn: asyncpg.Connection, ledger: Ledger) -> None:
    collector, local = await ledger.store(), await ledger.store()
    await ledger.many(collector, 10, province="IR-23")
    await ledger.many(collector, 10)
    await ledger.many(local, 19)
    await ledger.many(local, 1, province="IR-23")
    signals = await fired(conn)
    assert "outside_province_share" in signals[collector]
    assert "outside_province_share" not in signals[local]


async def test_round_amounts(conn: asyncpg.Connection, ledger: Ledger) -> None:
    cash, shop = await ledger.store(), await ledger.store()
    await ledger.many(cash, 10, amount=15_000_000)
    await ledger.many(cash, 10)
    await ledger.many(shop, 20)
    await ledger.many(shop, 1, amount=2_000_000)
    signals = await fired(conn)
    assert "round_share" in signals[cash] and "round_share" not in signals[shop]
    assert (await figures(conn))[cash]["round_amounts"] == 10


async def test_splitting_is_the_same_household_within_minutes(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    splitter, other = await ledger.store(), await ledger.store()
    for k in range(6):
        household = f"77{k:08d}"
        for m in range(3):  # one purchase as three, a minute apart
            await ledger.redeem(splitter, at(10 + k, m), household)
        # the same household at another store: not a split at either
        await ledger.redeem(other, at(10 + k, 1), household)
    await ledger.many(other, 10)
    # the same household back at the same store 11 minutes later: not a split (10 minutes)
    await ledger.redeem(other, at(20, 0), "7800000001")
    await ledger.redeem(other, at(20, 11), "7800000001")
    days = await figures(conn)
    assert days[splitter]["splits"] == 12 and days[other]["splits"] == 0
    signals = await fired(conn)
    assert "split_share" in signals[splitter] and "split_share" not in signals[other]


async def test_reversal_rate(conn: asyncpg.Connection, ledger: Ledger) -> None:
    churn, shop = await ledger.store(), await ledger.store()
    for k in range(20):
        back = at(9 + k % 12, 7 * k % 60 + 1) if k % 3 == 0 else None
        await ledger.redeem(churn, at(9 + k % 12, 7 * k % 60), reversed_at=back)
    await ledger.many(shop, 30)
    await ledger.redeem(shop, at(12, 30), reversed_at=at(12, 31))
    days = await figures(conn)
    assert days[churn]["reversals"] == 7 and days[shop]["reversals"] == 1
    signals = await fired(conn)
    assert "reversal_rate" in signals[churn] and "reversal_rate" not in signals[shop]


async def test_bursts_against_the_store_own_rate(conn: asyncpg.Connection, ledger: Ledger) -> None:
    burst, steady = await ledger.store(), await ledger.store()
    await ledger.many(burst, 10)
    for minute in (14, 15):
        for k in range(6):  # six households in one minute, twice
            await ledger.redeem(burst, at(15, minute, k * 9))
    # a busy store, one a minute all day long: never a burst
    for k in range(12 * 60):
        await ledger.redeem(steady, at(9 + k // 60, k % 60))
    days = await figures(conn)
    assert days[burst]["burst_minutes"] == 2 and days[burst]["peak_per_minute"] == 6
    assert days[steady]["burst_minutes"] == 0
    signals = await fired(conn)
    assert "burst_minutes" in signals[burst] and "burst_minutes" not in signals[steady]


async def test_a_household_far_apart_within_the_hour(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    here, there, nearby, calm = (
        await ledger.store("IR-15"),
        await ledger.store("IR-23"),
        await ledger.store("IR-15"),
        await ledger.store("IR-15"),
    )
    for k in range(4):
        household = f"55{k:08d}"
        await ledger.redeem(here, at(10 + k), household)
        await ledger.redeem(there, at(10 + k, 40), household)  # 40 minutes later, in Tehran
        # the same province, and over an hour from the other province: not far
        await ledger.redeem(nearby, at(9 + k, 30), household)
    # two hours apart: travelling, not collusion
    await ledger.redeem(calm, at(9), "5600000001")
    await ledger.redeem(there, at(11, 1), "5600000001")
    for store in (here, there, nearby, calm):
        await ledger.many(store, 10)
    days = await figures(conn)
    assert days[here]["far_apart"] == 4 and days[there]["far_apart"] == 4
    assert days[nearby]["far_apart"] == 0 and days[calm]["far_apart"] == 0
    signals = await fired(conn)
    assert "far_apart" in signals[here] and "far_apart" in signals[there]
    assert "far_apart" not in signals[nearby] and "far_apart" not in signals[calm]


async def test_volume_per_terminal_against_the_province_and_category(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    peers = [await ledger.store() for _ in range(9)]
    for k, peer in enumerate(peers):
        await ledger.many(peer, 8 + k % 4)
    heavy = await ledger.store()
    await ledger.many(heavy, 120)
    # as heavy, but a chain store: its peers are other chain stores (too few to compare)
    chain = await ledger.store(category="chain_store")
    await ledger.many(chain, 120)
    signals = await fired(conn)
    assert "terminal_volume_z" in signals[heavy]
    assert "terminal_volume_z" not in signals[chain]
    assert not any("terminal_volume_z" in signals[p] for p in peers)
    z = next(
        s
        for s in inspection.signals_of((await figures(conn))[heavy], inspection.Rules())
        if s["signal"] == "terminal_volume_z"
    )
    assert z["numbers"]["peers"] == 10 and z["numbers"]["per_terminal"] == 120


async def test_an_ordinary_store_fires_nothing(conn: asyncpg.Connection, ledger: Ledger) -> None:
    store = await ledger.store()
    await ledger.many(store, 40)
    assert (await fired(conn))[store] == set()


def test_few_redemptions_cannot_fire_a_share() -> None:
    # 2 of 5 is a high share, but 5 redemptions prove little; 14 of 20 do
    assert inspection.wilson_lower(2, 5) < 0.22 < inspection.wilson_lower(14, 20)
    assert inspection.wilson_lower(0, 0) == 0


# -- the API -------------------------------------------------------------------------------------


async def test_ranking_explains_and_links_to_the_ledger(
    client: Client, auditor: dict[str, str], conn: asyncpg.Connection, ledger: Ledger
) -> None:
    bad, good, elsewhere = (
        await ledger.store(),
        await ledger.store(),
        await ledger.store("IR-23"),
    )
    await ledger.many(bad, 14, remaining=0, amount=10_000_000)
    await ledger.many(good, 20)
    await ledger.many(elsewhere, 10, remaining=0)
    resp = await client.get(f"/v1/inspection/stores?date={DAY}&province=IR-15", headers=auditor)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["date"] == str(DAY) and body["province"] == "IR-15"
    assert body["rules_version"] == 0
    assert [s["merchant_id"] for s in body["stores"]] == [bad]  # score 0 is not listed
    row = body["stores"][0]
    assert {s["signal"] for s in row["signals"]} == {"emptied_share", "round_share"}
    emptied = next(s for s in row["signals"] if s["signal"] == "emptied_share")
    assert emptied["numbers"]["count"] == 14 and emptied["numbers"]["redemptions"] == 14
    assert row["score"] == pytest.approx(sum(s["points"] for s in row["signals"]))
    # the link lists exactly the store-day's rows
    page = await (await client.get(row["ledger"], headers=auditor)).json()
    assert len(page["entries"]) == 14
    assert {e["merchant_id"] for e in page["entries"]} == {bad}
    everywhere = await (
        await client.get(f"/v1/inspection/stores?date={DAY}&limit=1", headers=auditor)
    ).json()
    assert everywhere["province"] is None and len(everywhere["stores"]) == 1


async def test_store_history_per_day(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection, ledger: Ledger
) -> None:
    store = await ledger.store()
    await ledger.many(store, 10, remaining=0)
    await ledger.redeem(store, at(12, day=DAY - dt.timedelta(days=2)))
    path = f"/v1/inspection/stores/{store}?from={DAY - dt.timedelta(days=3)}&to={DAY}"
    resp = await client.get(path, headers=operator)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["from"] == str(DAY - dt.timedelta(days=3)) and body["to"] == str(DAY)
    assert [d["date"] for d in body["days"]] == [str(DAY - dt.timedelta(days=2)), str(DAY)]
    assert body["days"][0]["signals"] == [] and body["days"][1]["score"] > 0
    assert f"merchant_id={store}" in body["ledger"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/inspection/stores?date=2026-13-01", 422, "invalid_request"),
        ("/v1/inspection/stores?date=yesterday", 422, "invalid_request"),
        ("/v1/inspection/stores?date=9999-12-31", 422, "invalid_request"),
        ("/v1/inspection/stores/1?from=0001-01-01", 422, "invalid_request"),
        ("/v1/inspection/stores?limit=0", 422, "invalid_request"),
        ("/v1/inspection/stores?province=IR-1", 422, "invalid_request"),
        ("/v1/inspection/stores/999999", 404, "merchant_not_found"),
        ("/v1/inspection/stores/abc", 404, "not_found"),
        ("/v1/inspection/stores/1?from=2026-01-01&to=2026-03-01", 422, "invalid_request"),
        ("/v1/inspection/stores/1?from=2026-01-05&to=2026-01-01", 422, "invalid_request"),
        ("/v1/inspection/rules?version=7", 404, "not_found"),
    ],
)
async def test_bad_requests_are_clear_4xx(
    client: Client,
    auditor: dict[str, str],
    ledger: Ledger,
    path: str,
    status: int,
    code: str,
) -> None:
    await ledger.store()
    resp = await client.get(path, headers=auditor)
    body = await resp.json()
    assert resp.status == status, body
    assert body["error"]["code"] == code


async def test_inspection_needs_a_token(client: Client) -> None:
    assert (await client.get("/v1/inspection/stores")).status == 401


# -- the rules, versioned ------------------------------------------------------------------------


async def test_rules_are_versioned_and_apply_from_the_next_request(
    client: Client,
    operator: dict[str, str],
    auditor: dict[str, str],
    conn: asyncpg.Connection,
    ledger: Ledger,
) -> None:
    store = await ledger.store()
    await ledger.many(store, 14, remaining=0)
    resp = await client.get("/v1/inspection/rules", headers=auditor)
    defaults = await resp.json()
    assert defaults["version"] == 0 and defaults["rules"] == inspection.Rules().model_dump(
        mode="json"
    )
    changed = inspection.Rules().model_dump(mode="json")
    changed["signals"]["emptied_share"] = {"threshold": 0.99, "weight": 2}
    resp = await client.put(
        "/v1/inspection/rules", json={"rules": changed, "note": "stricter"}, headers=operator
    )
    saved = await resp.json()
    assert resp.status == 201, saved
    assert saved["version"] == 1 and saved["note"] == "stricter"
    assert saved["rules"]["signals"]["emptied_share"]["threshold"] == 0.99
    ranked = await (await client.get(f"/v1/inspection/stores?date={DAY}", headers=auditor)).json()
    assert ranked["rules_version"] == 1 and ranked["stores"] == []
    resp = await client.put("/v1/inspection/rules", json={"rules": {}}, headers=operator)
    assert (await resp.json())["version"] == 2
    first = await (await client.get("/v1/inspection/rules?version=1", headers=auditor)).json()
    assert first["rules"] == saved["rules"]
    newest = await (await client.get("/v1/inspection/rules", headers=auditor)).json()
    assert newest["version"] == 2 and newest["rules"] == defaults["rules"]
    # an auditor reads the rules but does not change them
    resp = await client.put("/v1/inspection/rules", json={"rules": {}}, headers=auditor)
    assert resp.status == 403


@pytest.mark.parametrize(
    "rules",
    [
        {"opens_at": "23:00", "closes_at": "07:00"},
        {"opens_at": "24:00"},  # after the default closing
        {"opens_at": "7:00"},
        {"signals": {"emptied_share": {"threshold": 0, "weight": 1}}},
        {"signals": {"emptied_share": {"threshold": 0.5, "weight": -1}}},
        {"signals": {"no_such_signal": {"threshold": 1, "weight": 1}}},
        {"round_unit": 1.5},
    ],
)
async def test_bad_rules_are_refused(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection, rules: dict[str, Any]
) -> None:
    resp = await client.put("/v1/inspection/rules", json={"rules": rules}, headers=operator)
    assert resp.status == 422, await resp.text()
    assert not await conn.fetchval("SELECT count(*) FROM inspection_rules")


async def test_the_service_cannot_rewrite_a_rules_version(
    superuser_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute("INSERT INTO inspection_rules (version, rules) VALUES (1, '{}')")
    writer = await asyncpg.connect(as_role(superuser_dsn, "coupon_writer"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await writer.execute("UPDATE inspection_rules SET rules = '{\"x\": 1}'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await writer.execute("DELETE FROM inspection_rules")
    finally:
        await writer.close()


# -- the CLI -------------------------------------------------------------------------------------


async def test_inspect_prints_a_table_or_csv(
    dsn: str, conn: asyncpg.Connection, ledger: Ledger
) -> None:
    store = await ledger.store()
    await ledger.many(store, 14, remaining=0)
    code, out, err = await coupon(dsn, "inspect", "--date", str(DAY))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["rank", "merchant_id", "province", "category", "score"]
    assert lines[1].split()[:3] == ["1", str(store), "IR-15"] and "emptied_share" in lines[1]
    assert "1 stores with signals on 2026-01-10" in err
    # the same day in the Solar Hijri calendar, as CSV
    code, out, err = await coupon(dsn, "inspect", "--date", "1404-10-20", "--csv")
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0].startswith("rank,merchant_id,name,province,category,score,")
    assert rows[1].startswith(f"1,{store},") and "/v1/ledger?merchant_id=" in rows[1]
    code, out, err = await coupon(dsn, "inspect", "--date", str(DAY), "--province", "IR-23")
    assert code == 0 and out.splitlines()[1:] == []
    code, out, _ = await coupon(dsn, "inspect", "--rules")
    assert code == 0 and '"version": 0' in out
    await inspection.save_rules(conn, inspection.Rules(min_redemptions=6), "cli", "test")
    code, out, _ = await coupon(dsn, "inspect", "--rules")
    assert code == 0 and '"version": 1' in out and '"min_redemptions": 6' in out


# -- closed days are computed once ---------------------------------------------------------------


async def test_a_closed_day_is_ranked_once_per_rules(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    store = await ledger.store()
    await ledger.many(store, 14, remaining=0)
    _, first = await inspection.ranking(conn, DAY, "IR-15", 10)
    assert await conn.fetchval("SELECT count(*) FROM inspection_days") == 1
    # a row slipped in behind the service's back does not change the kept figures
    await ledger.redeem(store, at(12, 30), remaining=0)
    _, again = await inspection.ranking(conn, DAY, "IR-15", 10)
    assert again == first and again[0]["redemptions"] == 14
    # other rules: computed anew
    await inspection.save_rules(conn, inspection.Rules(opens_at="08:00"), "", "test")
    rules, recomputed = await inspection.ranking(conn, DAY, "IR-15", 10)
    assert rules.version == 1 and recomputed[0]["redemptions"] == 15
    assert await conn.fetchval("SELECT count(*) FROM inspection_days") == 2
    _, everywhere = await inspection.ranking(conn, DAY, None, 10)
    assert everywhere == recomputed
    assert await conn.fetchval("SELECT count(*) FROM inspection_days") == 3


async def test_the_last_closed_day_is_kept_ahead_of_the_auditors(
    superuser_dsn: str, conn: asyncpg.Connection, ledger: Ledger
) -> None:
    store = await ledger.store()
    await ledger.many(store, 14, remaining=0)
    # 00:20 in Tehran the day after DAY: DAY is closed, and nobody has asked for it
    now = at(0, 20, day=DAY + dt.timedelta(days=1)).astimezone(dt.UTC)
    assert await inspection.keep_closed_day(conn, now) == 1 + 31  # the nation, each province
    assert await conn.fetchval("SELECT count(*) FROM inspection_days WHERE day = $1", DAY) == 32
    # what a request then reads is the kept ranking, the same as one computed now
    await ledger.redeem(store, at(12, 30), remaining=0)
    _, kept = await inspection.ranking(conn, DAY, "IR-15", 10)
    assert kept[0]["merchant_id"] == store and kept[0]["redemptions"] == 14
    assert await inspection.keep_closed_day(conn, now) == 0
    # another process holding the keeper's lock: this one leaves the work to it
    await conn.execute("DELETE FROM inspection_days")
    other = await asyncpg.connect(superuser_dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock(7365626, 5)")
        assert await inspection.keep_closed_day(conn, now) == 0
    finally:
        await other.close()
    assert await inspection.keep_closed_day(conn, now) == 32


async def test_today_is_never_kept(conn: asyncpg.Connection, ledger: Ledger) -> None:
    store = await ledger.store()
    today = inspection.today_in_tehran()
    now = dt.datetime.now(TEHRAN)
    for k in range(8):
        await ledger.redeem(store, now - dt.timedelta(seconds=k), remaining=0)
    _, ranked = await inspection.ranking(conn, today, None, 10)
    assert ranked and not await conn.fetchval("SELECT count(*) FROM inspection_days")


async def test_rules_take_no_lookalike_types(client: Client, operator: dict[str, str]) -> None:
    for rules in (
        {"signals": {"far_apart": {"threshold": 0.5, "weight": False}}},
        {"min_redemptions": "5"},
        {"opens_at": 7},
    ):
        resp = await client.put("/v1/inspection/rules", json={"rules": rules}, headers=operator)
        assert resp.status == 422, (rules, await resp.text())
