"""Inspection: signals computed from the ledger that point auditors at the stores worth a visit.

Per store and Asia/Tehran day, one SQL statement (inspection_store_days) reads the store's
ledger rows by its index and counts what each signal needs; this module turns the counts into
signals with the rules in force (thresholds and weights are data: versioned rows of
inspection_rules, the newest applies), scores the store and explains every signal that fired
with the numbers behind it. Nothing here runs on the redemption path."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import statistics
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from coupon import audit, db, errors
from coupon.provinces import iran_provinces

TEHRAN = ZoneInfo("Asia/Tehran")
# history requests span at most this many days
MAX_HISTORY_DAYS = 31
# a fired signal scores its weight times how far past its threshold it is, up to this
MAX_STRENGTH = 3.0

SignalName = Literal[
    "emptied_share",
    "burst_minutes",
    "outside_province_share",
    "round_share",
    "after_hours_share",
    "split_share",
    "reversal_rate",
    "terminal_volume_z",
    "far_apart",
]
SIGNALS: tuple[SignalName, ...] = get_args(SignalName)

# what each signal measures, for people (the API and CLI show it)
DESCRIPTIONS: dict[SignalName, str] = {
    "emptied_share": "share of redemptions that emptied the household's remaining credit",
    "burst_minutes": "minutes with far more redemptions than the store's own rate",
    "outside_province_share": "share of redemptions by households of another province",
    "round_share": "share of redemptions of a round amount",
    "after_hours_share": "share of redemptions outside opening hours (Asia/Tehran)",
    "split_share": "share of redemptions repeating the same household's within minutes",
    "reversal_rate": "reversals per redemption",
    "terminal_volume_z": "redemptions per terminal, robust z-score (median/MAD of the log) "
    "against the stores of the same province and category that day",
    "far_apart": "share of redemptions whose household also redeemed at a store of another "
    "province within far_minutes",
}

HourMinute = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")]


class Threshold(BaseModel):
    """When a signal fires (value >= threshold) and what it adds to the score."""

    model_config = ConfigDict(extra="forbid", strict=True)

    threshold: Annotated[float, Field(gt=0, le=1e9)]
    weight: Annotated[float, Field(ge=0, le=100)]


def _signal(threshold: float, weight: float) -> Any:
    return Field(default_factory=lambda: Threshold(threshold=threshold, weight=weight))


class Signals(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    emptied_share: Threshold = _signal(0.22, 2.0)
    burst_minutes: Threshold = _signal(2, 3.0)
    outside_province_share: Threshold = _signal(0.1, 2.0)
    round_share: Threshold = _signal(0.1, 1.5)
    after_hours_share: Threshold = _signal(0.06, 2.0)
    split_share: Threshold = _signal(0.08, 2.5)
    reversal_rate: Threshold = _signal(0.05, 1.5)
    terminal_volume_z: Threshold = _signal(3.5, 1.5)
    far_apart: Threshold = _signal(0.01, 2.5)


class Rules(BaseModel):
    """The inspection rules: every field has a default, the built-in version 0."""

    model_config = ConfigDict(extra="forbid", strict=True)

    opens_at: HourMinute = "07:00"  # opening hours, Asia/Tehran
    closes_at: HourMinute = "23:00"
    round_unit: Annotated[int, Field(ge=1000, le=10**12)] = 1_000_000  # rials
    split_minutes: Annotated[float, Field(gt=0, le=1440)] = 10
    burst_min_per_minute: Annotated[int, Field(ge=2, le=10_000)] = 5
    burst_factor: Annotated[float, Field(ge=1, le=1e6)] = 10
    far_minutes: Annotated[float, Field(gt=0, le=1440)] = 60
    min_redemptions: Annotated[int, Field(ge=1, le=10**6)] = 5  # below: no share-based signal
    far_apart_min: Annotated[int, Field(ge=1, le=10**6)] = 2  # redemptions, at the least
    # the volume z-score: peers needed, and the least spread (of the log) it divides by
    volume_min_peers: Annotated[int, Field(ge=3, le=10**6)] = 8
    volume_min_spread: Annotated[float, Field(gt=0, le=10)] = 0.3
    signals: Signals = Field(default_factory=Signals)

    @model_validator(mode="after")
    def _open_before_closing(self) -> Rules:
        if _minutes(self.closes_at) <= _minutes(self.opens_at):
            raise ValueError("closes_at must be after opens_at")
        return self


class RuleSet(BaseModel):
    version: int  # 0: the built-in defaults, no version saved yet
    rules: Rules
    note: str
    created_by: str
    created_at: dt.datetime | None


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def tehran_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), TEHRAN)


def ledger_link(merchant_id: int, first: dt.date, last: dt.date) -> str:
    """The ledger rows behind a store's signals, days first..last: a GET /v1/ledger URL."""
    query = urllib.parse.urlencode(
        {
            "merchant_id": merchant_id,
            "from": tehran_midnight(first).isoformat(),
            "to": tehran_midnight(last + dt.timedelta(days=1)).isoformat(),
            "limit": 1000,
        }
    )
    return f"/v1/ledger?{query}"


# -- the rules ---------------------------------------------------------------------------------


async def rules_in_force(conn: db.Connection, version: int | None = None) -> RuleSet:
    """The newest rules (the defaults as version 0 while none was saved), or one version."""
    row = await conn.fetchrow(db.q("inspection_rules"), version)
    if row is None:
        if version not in (None, 0):
            raise errors.NotFound(f"no inspection rules version {version}")
        return RuleSet(
            version=0, rules=Rules(), note="built-in defaults", created_by="", created_at=None
        )
    return RuleSet.model_validate({**dict(row), "rules": Rules.model_validate_json(row["rules"])})


async def save_rules(conn: db.Connection, rules: Rules, note: str, by: str) -> RuleSet:
    """Store the rules as the next version, which applies from now on."""
    try:
        row = await conn.fetchrow(
            db.q("insert_inspection_rules"), rules.model_dump_json(), note, by
        )
    except asyncpg.UniqueViolationError:
        raise errors.Conflict(
            "another change of the rules came first: read them and retry"
        ) from None
    assert row is not None
    return RuleSet.model_validate({**dict(row), "rules": Rules.model_validate_json(row["rules"])})


# -- the figures -------------------------------------------------------------------------------


async def store_days(
    conn: db.Connection,
    rules: Rules,
    first: dt.date,
    last: dt.date,
    province: str | None = None,
    merchant_id: int | None = None,
) -> list[dict[str, Any]]:
    """The raw figures per store and day, days first..last, of one province and/or store."""
    end = last + dt.timedelta(days=1)
    far = rules.far_minutes * 60
    async with conn.transaction(readonly=True):
        await audit.read_only(conn)
        window = await conn.fetchrow(db.q("inspection_seq_window"), first, end, far)
        assert window is not None
        rows = await conn.fetch(
            db.q("inspection_store_days"),
            first,
            end,
            province,
            merchant_id,
            window["lo"],
            window["hi"],
            _minutes(rules.opens_at),
            _minutes(rules.closes_at),
            rules.round_unit,
            rules.split_minutes * 60,
            rules.burst_min_per_minute,
            rules.burst_factor,
            far,
            timeout=db.BULK_TIMEOUT,
        )
        figures = [dict(r) for r in rows]
        if merchant_id is not None and figures:
            peers = await conn.fetch(
                db.q("inspection_peer_volumes"),
                first,
                end,
                figures[0]["province"],
                figures[0]["category"],
                window["lo"],
                window["hi"],
                timeout=db.BULK_TIMEOUT,
            )
            province_of, category_of = figures[0]["province"], figures[0]["category"]
            volumes = _volumes(
                {**dict(r), "province": province_of, "category": category_of} for r in peers
            )
        else:
            volumes = _volumes(figures)
    return _with_peers(figures, volumes)


def _with_peers(
    figures: list[dict[str, Any]], volumes: dict[tuple[Any, ...], Peers]
) -> list[dict[str, Any]]:
    for f in figures:
        f["peers"] = volumes.get((f["province"], f["category"], f["day"]))
    return figures


@dataclasses.dataclass(frozen=True)
class Peers:
    """The stores a store's volume is compared with: how many, and the median and MAD of the
    log of their redemptions per terminal."""

    count: int
    median: float
    mad: float


def _volumes(rows: Iterable[dict[str, Any]]) -> dict[tuple[Any, ...], Peers]:
    """The peers of every (province, category, day). The z-score is taken on the logarithm of
    the volume: store volumes are log-normal (a few big stores), so an honest big store is
    ordinary there and a store several times its peers stands out."""
    logs: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for r in rows:
        if r["redemptions"] and r["terminals"]:
            key = (r["province"], r["category"], r["day"])
            logs[key].append(math.log(r["redemptions"] / r["terminals"]))
    out = {}
    for key, values in logs.items():
        median = statistics.median(values)
        out[key] = Peers(len(values), median, statistics.median(abs(v - median) for v in values))
    return out


def robust_z(value: float, peers: Peers | None, min_peers: int, min_spread: float) -> float | None:
    """(value - median) / (1.4826 * MAD) among peers, the scale no less than min_spread (a
    handful of alike peers would make any store an outlier). None: fewer than min_peers."""
    if peers is None or peers.count < min_peers:
        return None
    return (value - peers.median) / max(1.4826 * peers.mad, min_spread)


# -- the signals -------------------------------------------------------------------------------


def wilson_lower(count: int, n: int, z: float = 1.645) -> float:
    """The lower end of the one-sided 95 % (Wilson) confidence interval of a share count/n:
    how high the share surely is, so that a few redemptions cannot fire a signal by chance."""
    if n <= 0:
        return 0.0
    p = count / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


# the share-based signals and the figure each counts
SHARES: tuple[tuple[SignalName, str], ...] = (
    ("emptied_share", "emptied"),
    ("outside_province_share", "outside_province"),
    ("round_share", "round_amounts"),
    ("after_hours_share", "after_hours"),
    ("split_share", "splits"),
    ("reversal_rate", "reversals"),
    ("far_apart", "far_apart"),
)


def signals_of(figures: dict[str, Any], rules: Rules) -> list[dict[str, Any]]:
    """Every signal of one store-day that fired, with its numbers and points. A share fires
    when its 95 % lower confidence bound reaches the threshold; a count or z-score, when it
    does."""
    n = figures["redemptions"]
    fired: list[dict[str, Any]] = []

    def check(name: SignalName, value: float, measured: float, **numbers: Any) -> None:
        rule: Threshold = getattr(rules.signals, name)
        if rule.weight > 0 and measured >= rule.threshold:
            strength = min(measured / rule.threshold, MAX_STRENGTH)
            fired.append(
                {
                    "signal": name,
                    "value": round(value, 4),
                    "threshold": rule.threshold,
                    "weight": rule.weight,
                    "points": round(rule.weight * strength, 3),
                    "numbers": numbers,
                    "description": DESCRIPTIONS[name],
                }
            )

    if n >= rules.min_redemptions:
        for name, count in SHARES:
            k = figures[count]
            if name == "far_apart" and k < rules.far_apart_min:
                continue
            lower = wilson_lower(min(k, n), n)
            check(name, k / n, lower, count=k, redemptions=n, lower_bound=round(lower, 4))
    check(
        "burst_minutes",
        figures["burst_minutes"],
        figures["burst_minutes"],
        burst_minutes=figures["burst_minutes"],
        burst_redemptions=figures["burst_redemptions"],
        peak_per_minute=figures["peak_per_minute"],
        redemptions=n,
    )
    if n and figures["terminals"]:
        per_terminal = n / figures["terminals"]
        peers: Peers | None = figures.get("peers")
        z = robust_z(math.log(per_terminal), peers, rules.volume_min_peers, rules.volume_min_spread)
        if z is not None and peers is not None:
            check(
                "terminal_volume_z",
                z,
                z,
                per_terminal=round(per_terminal, 2),
                terminals=figures["terminals"],
                peer_median_per_terminal=round(math.exp(peers.median), 2),
                peer_mad_log=round(peers.mad, 3),
                peers=peers.count,
            )
    return fired


def report(figures: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """One store-day as the API answers it: score, fired signals, figures, the ledger link."""
    fired = signals_of(figures, rules)
    day: dt.date = figures["day"]
    return {
        "merchant_id": figures["merchant_id"],
        "name": figures["name"],
        "province": figures["province"],
        "category": figures["category"],
        "date": day,
        "score": round(sum(s["points"] for s in fired), 3),
        "redemptions": figures["redemptions"],
        "reversals": figures["reversals"],
        "households": figures["households"],
        "amount": figures["amount"],
        "signals": sorted(fired, key=lambda s: -s["points"]),
        "ledger": ledger_link(figures["merchant_id"], day, day),
    }


# a day's ranking is kept once this long past its end: no row of it is still being written
CLOSED_AFTER = dt.timedelta(minutes=15)


async def ranking(
    conn: db.Connection, day: dt.date, province: str | None, limit: int
) -> tuple[RuleSet, list[dict[str, Any]]]:
    """The stores of one day (and province) with a score above 0, highest first. A closed
    day's is computed by the first request that needs it under these rules and kept
    (inspection_days): its ledger rows can no longer change."""
    rules = await rules_in_force(conn)
    closed = dt.datetime.now(dt.UTC) >= tehran_midnight(day) + dt.timedelta(days=1) + CLOSED_AFTER
    key = province or "*"
    params = rules.rules.model_dump_json()
    if closed:
        kept = await conn.fetchval(db.q("inspection_day_ranking"), day, key, params)
        if kept is not None:
            rows: list[dict[str, Any]] = orjson.loads(kept)
            for r in rows:
                r["date"] = dt.date.fromisoformat(r["date"])
            return rules, rows[:limit]
    figures = await store_days(conn, rules.rules, day, day, province=province)
    rows = [r for r in (report(f, rules.rules) for f in figures) if r["score"] > 0]
    rows.sort(key=lambda r: (-r["score"], -r["redemptions"], r["merchant_id"]))
    if closed:
        # a read-only login cannot keep it: computed again next time
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                db.q("save_inspection_day_ranking"), day, key, params, orjson.dumps(rows).decode()
            )
    return rules, rows[:limit]


async def keep_closed_day(conn: db.Connection, now: dt.datetime | None = None) -> int:
    """Compute and keep, ahead of any request, the rankings of the last closed day that are not
    kept yet under the rules in force -- the nation's and each province's -- so that no auditor
    waits for a past day's figures. One process at a time; returns how many it computed."""
    now = now or dt.datetime.now(dt.UTC)
    day = (now - CLOSED_AFTER).astimezone(TEHRAN).date() - dt.timedelta(days=1)
    if not await conn.fetchval(db.q("try_inspection_keeper_lock")):
        return 0
    try:
        rules = await rules_in_force(conn)
        params = rules.rules.model_dump_json()
        kept = {r["province"] for r in await conn.fetch(db.q("inspection_days_kept"), day, params)}
        missing = [key for key in ("*", *(p.code for p in iran_provinces())) if key not in kept]
        for key in missing:
            await ranking(conn, day, None if key == "*" else key, limit=0)
        return len(missing)
    finally:
        await conn.execute(db.q("inspection_keeper_unlock"))


async def history(
    conn: db.Connection, merchant_id: int, first: dt.date, last: dt.date, scope: str | None
) -> tuple[RuleSet, dict[str, Any], list[dict[str, Any]]]:
    """A store's days first..last (those with ledger rows), each scored."""
    merchant = await conn.fetchrow(db.q("inspection_merchant"), merchant_id)
    if merchant is None:
        raise errors.MerchantNotFound()
    if scope is not None and merchant["province"] != scope:
        raise errors.OutOfProvince()
    rules = await rules_in_force(conn)
    figures = await store_days(
        conn, rules.rules, first, last, province=merchant["province"], merchant_id=merchant_id
    )
    return rules, dict(merchant), [report(f, rules.rules) for f in figures]


def days_of(first: dt.date | None, last: dt.date | None, today: dt.date) -> tuple[dt.date, dt.date]:
    """A history's days: default the week to today; at most MAX_HISTORY_DAYS."""
    last = last or today
    first = first or last - dt.timedelta(days=6)
    if first > last:
        raise errors.InvalidRequest(
            "from must not be after to", [{"field": "from", "message": "after to"}]
        )
    if (last - first).days + 1 > MAX_HISTORY_DAYS:
        raise errors.InvalidRequest(
            f"at most {MAX_HISTORY_DAYS} days at a time",
            [{"field": "to", "message": f"more than {MAX_HISTORY_DAYS} days after from"}],
        )
    return first, last


def today_in_tehran() -> dt.date:
    return dt.datetime.now(TEHRAN).date()
