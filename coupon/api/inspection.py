"""Inspection API: stores ranked by their fraud signals for a day, a store's signal history, and
the rules (thresholds and weights) the signals follow."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from coupon import errors, inspection
from coupon.api import keys
from coupon.api.audit import parse_day
from coupon.api.common import int_param, json_response
from coupon.api.guard import body_of, national_only, query_of, scope_of
from coupon.inspection import RuleSet as RuleSet
from coupon.models import Model, ProvinceCode

Day = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]


class RankingQuery(Model):
    """GET /v1/inspection/stores: one Asia/Tehran day (default today), one province (a
    province-scoped token: its own, the default), the top `limit` stores."""

    date: Day | None = Field(default=None, json_schema_extra={"format": "date"})
    province: ProvinceCode | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class StoreHistoryQuery(Model):
    """GET /v1/inspection/stores/{merchant_id}: Asia/Tehran days from..to (default: the week
    to today; at most 31 days)."""

    from_: Day | None = Field(default=None, alias="from", json_schema_extra={"format": "date"})
    to: Day | None = Field(default=None, json_schema_extra={"format": "date"})


class RulesQuery(Model):
    """GET /v1/inspection/rules: one version (default: the one in force)."""

    version: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None


class RulesChange(Model):
    """PUT /v1/inspection/rules: the whole rule set (fields left out take their defaults)."""

    rules: inspection.Rules
    note: Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00]*$")] = ""


class FiredSignal(BaseModel):
    signal: inspection.SignalName
    value: float
    threshold: float
    weight: float
    points: float  # weight * min(value / threshold, 3)
    numbers: dict[str, float]  # the counts the value comes from
    description: str


class StoreDay(BaseModel):
    merchant_id: int
    name: str
    province: str
    category: str
    date: dt.date
    score: float  # the sum of the fired signals' points
    redemptions: int
    reversals: int
    households: int
    amount: int
    signals: list[FiredSignal]
    ledger: str  # GET /v1/ledger with the filters that list this store-day's rows


class Ranking(BaseModel):
    date: dt.date
    province: str | None  # None: every province
    rules_version: int
    stores: list[StoreDay]


class StoreHistory(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    merchant_id: int
    name: str
    province: str
    category: str
    from_: dt.date = Field(alias="from")
    to: dt.date
    rules_version: int
    ledger: str
    days: list[StoreDay]


# the days inspection answers for: the programme's, with room on both sides
FIRST_DAY, LAST_DAY = dt.date(2000, 1, 1), dt.date(2099, 12, 31)


def _day(raw: str | None) -> dt.date | None:
    if raw is None:
        return None
    day = parse_day(raw)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise errors.InvalidRequest(
            f"dates are {FIRST_DAY}..{LAST_DAY}", [{"field": "date", "message": "out of range"}]
        )
    return day


async def get_ranking(request: web.Request) -> web.Response:
    query = query_of(request, RankingQuery)
    scope = scope_of(request)
    province = query.province or scope
    if scope is not None and province != scope:
        raise errors.OutOfProvince()
    day = _day(query.date) or inspection.today_in_tehran()
    async with request.app[keys.POOL].acquire() as conn:
        rules, stores = await inspection.ranking(conn, day, province, query.limit)
    ranking = Ranking.model_validate(
        {"date": day, "province": province, "rules_version": rules.version, "stores": stores}
    )
    return json_response(ranking)


async def get_store_history(request: web.Request) -> web.Response:
    merchant_id = int_param(request, "merchant_id")
    query = query_of(request, StoreHistoryQuery)
    first, last = inspection.days_of(
        _day(query.from_), _day(query.to), inspection.today_in_tehran()
    )
    async with request.app[keys.POOL].acquire() as conn:
        rules, merchant, days = await inspection.history(
            conn, merchant_id, first, last, scope_of(request)
        )
    history = StoreHistory.model_validate(
        {
            **merchant,
            "merchant_id": merchant["id"],
            "from": first,
            "to": last,
            "rules_version": rules.version,
            "ledger": inspection.ledger_link(merchant_id, first, last),
            "days": days,
        }
    )
    return json_response(history)


async def get_rules(request: web.Request) -> web.Response:
    version = query_of(request, RulesQuery).version
    async with request.app[keys.POOL].acquire() as conn:
        rules = await inspection.rules_in_force(conn, version)
    return json_response(rules)


async def put_rules(request: web.Request) -> web.Response:
    national_only(request)  # one rule set for the whole programme
    change = body_of(request, RulesChange)
    async with request.app[keys.POOL].acquire() as conn:
        saved = await inspection.save_rules(
            conn, change.rules, change.note, f"token {request[keys.TOKEN][:12]}"
        )
    request[keys.LOG]["rules_version"] = saved.version
    return json_response(saved, status=201)
