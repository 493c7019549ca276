"""Read-only figures for the dashboard beyond the live counters: tranche labels, history per
minute, hour or day beside the previous tranche, and declines and reversals per province."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import BaseModel

from coupon import audit, db, errors
from coupon.api import keys
from coupon.api.common import json_response
from coupon.api.guard import query_of
from coupon.models import StatsQuery

TEHRAN = ZoneInfo("Asia/Tehran")
# a per-minute history covers this much time: the recent past, not the whole tranche
MINUTE_WINDOW = dt.timedelta(hours=2)


class TrancheLabel(BaseModel):
    id: int
    name: str
    starts_at: dt.datetime
    ends_at: dt.datetime


class TrancheLabels(BaseModel):
    tranches: list[TrancheLabel]


class HistoryQuery(StatsQuery):
    """GET /v1/stats/history: one tranche (default: the current, else the newest one)."""

    bucket: Literal["minute", "hour", "day"] = "hour"


class Bucket(BaseModel):
    at: dt.datetime
    transactions: int
    amount: int
    served: int  # households first served in this bucket


class History(BaseModel):
    as_of: dt.datetime
    bucket: str
    tranche: TrancheLabel | None
    series: list[Bucket]
    previous: TrancheLabel | None  # the tranche before this one, with its whole series
    previous_series: list[Bucket]


class ProvinceActivity(BaseModel):
    code: str
    declines: dict[str, int]  # reason -> declined redemptions, by the store's province
    declined: int
    reversals: int
    reversed_amount: int
    today_transactions: int  # net, since midnight in Tehran
    today_amount: int
    # purchases forwarded from offline: posted (by the household's province), and declined at
    # posting, the stores' losses (by the store's province), with their rials
    offline_posted: int
    offline_posted_amount: int
    offline_declined: int
    offline_declined_amount: int


class Activity(BaseModel):
    as_of: dt.datetime
    tranche_id: int | None
    since: dt.datetime  # the start of "today" (Asia/Tehran)
    provinces: list[ProvinceActivity]


def _midnight(now: dt.datetime) -> dt.datetime:
    local = now.astimezone(TEHRAN)
    return dt.datetime.combine(local.date(), dt.time(), tzinfo=TEHRAN)


async def _labels(conn: db.Connection) -> list[TrancheLabel]:
    rows = await conn.fetch(db.q("insight_tranches"))
    return [TrancheLabel.model_validate(dict(r)) for r in rows]


async def _series(
    conn: db.Connection, tranche_id: int, bucket: str, since: dt.datetime
) -> list[Bucket]:
    rows = await conn.fetch(db.q("insight_history"), tranche_id, bucket, since)
    return [Bucket.model_validate(dict(r)) for r in rows]


async def get_tranches(request: web.Request) -> web.Response:
    async with request.app[keys.READS].acquire() as conn, conn.transaction(readonly=True):
        await audit.read_only(conn)
        labels = await _labels(conn)
    return json_response(TrancheLabels(tranches=labels))


async def get_history(request: web.Request) -> web.Response:
    query = query_of(request, HistoryQuery)
    now = dt.datetime.now(dt.UTC)
    async with request.app[keys.READS].acquire() as conn, conn.transaction(readonly=True):
        await audit.read_only(conn)
        labels = await _labels(conn)  # newest window first
        if query.tranche_id is not None:
            index = next((i for i, t in enumerate(labels) if t.id == query.tranche_id), None)
            if index is None:
                raise errors.TrancheNotFound()
        else:
            started = [i for i, t in enumerate(labels) if t.starts_at <= now]
            index = started[0] if started else (0 if labels else None)
        tranche = None if index is None else labels[index]
        previous = labels[index + 1] if index is not None and index + 1 < len(labels) else None
        series: list[Bucket] = []
        previous_series: list[Bucket] = []
        if tranche is not None:
            since = now - MINUTE_WINDOW if query.bucket == "minute" else tranche.starts_at
            series = await _series(conn, tranche.id, query.bucket, since)
            if previous is not None and query.bucket != "minute":
                previous_series = await _series(conn, previous.id, query.bucket, previous.starts_at)
    history = History(
        as_of=now,
        bucket=query.bucket,
        tranche=tranche,
        series=series,
        previous=previous,
        previous_series=previous_series,
    )
    return json_response(history)


async def get_activity(request: web.Request) -> web.Response:
    tranche_id = query_of(request, StatsQuery).tranche_id
    since = _midnight(dt.datetime.now(dt.UTC))
    async with request.app[keys.READS].acquire() as conn, conn.transaction(readonly=True):
        await audit.read_only(conn)
        if tranche_id is not None and not await conn.fetchval(db.q("tranche_exists"), tranche_id):
            raise errors.TrancheNotFound()
        rows = await conn.fetch(db.q("insight_activity"), tranche_id, since)
    provinces: list[dict[str, Any]] = []
    for r in rows:
        declines = {str(k): int(v) for k, v in r["declines"].items()}
        provinces.append({**dict(r), "declines": declines, "declined": sum(declines.values())})
    activity = Activity(
        as_of=rows[0]["as_of"],
        tranche_id=tranche_id,
        since=since,
        provinces=[ProvinceActivity.model_validate(p) for p in provinces],
    )
    return json_response(activity)
