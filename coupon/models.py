"""Request and response models (pydantic v2); /openapi.json is generated from them."""

from __future__ import annotations

import datetime as dt
import re
import typing
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from coupon import national_id

Category = Literal[
    "rice",
    "cooking_oil",
    "chicken",
    "red_meat",
    "eggs",
    "dairy",
    "legumes",
    "sugar",
    "pasta",
    "tea",
]
CATEGORIES: tuple[str, ...] = typing.get_args(Category)
Status = Literal["active", "suspended"]
Role = Literal["operator", "auditor"]
MAX_AMOUNT = 10**12
# ids are bigint; anything larger cannot name a row (and must not reach the driver)
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(gt=0, le=MAX_ID)]
Rials = Annotated[int, Field(gt=0, le=MAX_AMOUNT, strict=True)]
RialsOrZero = Annotated[int, Field(ge=0, le=MAX_AMOUNT, strict=True)]
ProvinceCode = Annotated[str, StringConstraints(pattern=r"^IR-[0-9]{2}$")]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]

# bidirectional controls (LRE..RLO, LRI..PDI) make a name display as other text than it is
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _no_bidi(value: str) -> str:
    if _BIDI.search(value):
        raise ValueError("names must not contain bidirectional control characters")
    return value


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, strip_whitespace=True),
    AfterValidator(_no_bidi),
]


def _iso_text(value: object) -> object:
    # pydantic would also read 1700000000 or "0.5" as seconds since the epoch
    if not isinstance(value, str | dt.datetime) or (
        isinstance(value, str) and not ISO_DATETIME.match(value)
    ):
        raise ValueError("expected an ISO 8601 timestamp, e.g. 2026-03-21T00:00:00+03:30")
    return value


ISO_DATETIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]")
# pydantic's AwareDatetime (a time zone is required), from ISO 8601 text only
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


def _national_id(value: str) -> str:
    if not national_id.is_valid(value):
        raise ValueError("invalid national id")
    return value


NATIONAL_ID_PATTERN = r"^[0-9]{10}$"
NationalId = Annotated[
    str, StringConstraints(pattern=NATIONAL_ID_PATTERN), AfterValidator(_national_id)
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: object | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# -- operator API ------------------------------------------------------------------------------


class ImportRejection(BaseModel):
    line: int
    error: str


class ImportResponse(BaseModel):
    imported: int
    updated: int
    # the first 1,000 rejected lines (?rejections=all: every one, streamed)
    rejected: list[ImportRejection]
    rejected_count: int
    rejected_by_reason: dict[str, int]  # the reason's text with its numbers as N -> lines


class ImportQuery(Model):
    rejections: Literal["first", "all"] = "first"


class StatusChange(Model):
    status: Status


class Household(BaseModel):
    national_id: str
    province: str
    members: int
    decile: int
    status: Status


class Band(Model):
    up_to_decile: Annotated[int, Field(ge=1, le=10, strict=True)]
    per_member_credit: Rials
    opens_at: Timestamp | None = None


class TrancheCreate(Model):
    name: Name
    bands: Annotated[list[Band], Field(min_length=1, max_length=10)]
    starts_at: Timestamp
    ends_at: Timestamp
    categories: Annotated[list[Category], Field(min_length=1)]
    carry_over: bool = False
    # rials a household may spend offline over the whole tranche (0: offline purchases are
    # declined), and the most one offline purchase may be (null: only the allowance limits it)
    offline_allowance: RialsOrZero = 0
    offline_max_amount: Rials | None = None

    @model_validator(mode="after")
    def _check(self) -> TrancheCreate:
        if self.starts_at >= self.ends_at:
            raise ValueError("starts_at must be before ends_at")
        deciles = [b.up_to_decile for b in self.bands]
        if deciles != sorted(set(deciles)):
            raise ValueError("bands must be in increasing up_to_decile order, without repeats")
        for band in self.bands:
            if band.opens_at is not None and not self.starts_at <= band.opens_at < self.ends_at:
                raise ValueError("a band's opens_at must fall inside the tranche's window")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("categories must not repeat")
        return self


class TrancheCreated(BaseModel):
    id: int
    households_credited: int
    total_credit: int


class BandOut(BaseModel):
    up_to_decile: int
    per_member_credit: int
    opens_at: dt.datetime


class Tranche(BaseModel):
    id: int
    name: str
    bands: list[BandOut]
    starts_at: dt.datetime
    ends_at: dt.datetime
    categories: list[str]
    carry_over: bool
    carried_from: int | None
    households_credited: int
    total_credit: int
    created_at: dt.datetime
    offline_allowance: int
    offline_max_amount: int | None


class TrancheList(BaseModel):
    tranches: list[Tranche]


MerchantCategory = Literal[
    "grocery", "supermarket", "chain_store", "butcher", "dairy_shop", "bakery"
]
MERCHANT_CATEGORIES: tuple[str, ...] = typing.get_args(MerchantCategory)


class MerchantCreate(Model):
    name: Name
    province: ProvinceCode
    # what kind of store: inspection compares it with stores of its province and category
    category: MerchantCategory = "grocery"


class MerchantCreated(BaseModel):
    id: int


class Merchant(BaseModel):
    id: int
    name: str
    province: str
    status: Status
    category: MerchantCategory


class TerminalCreated(BaseModel):
    terminal_id: int
    secret: str


class SecretRotation(Model):
    # seconds the previous secret keeps verifying: terminals switch over meanwhile
    overlap_seconds: Annotated[int, Field(ge=0, le=7 * 86400, strict=True)] = 3600


class SecretRotated(BaseModel):
    terminal_id: int
    secret: str
    previous_valid_until: dt.datetime


class TerminalChange(Model):
    """PATCH /v1/admin/terminals/{id}: its status, whether it may work offline, or both."""

    status: Status | None = None
    offline_enabled: Annotated[bool, Field(strict=True)] | None = None

    @model_validator(mode="after")
    def _something(self) -> TerminalChange:
        if self.status is None and self.offline_enabled is None:
            raise ValueError("send status, offline_enabled or both")
        return self


class Terminal(BaseModel):
    id: int
    merchant_id: int
    status: Status
    offline_enabled: bool


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    # the database answered, and accepts writes (a standby does not: 503)
    database: bool
    # what the database the service writes to is now; absent when it did not answer
    role: Literal["primary", "standby"] | None = None
    # with DATABASE_READ_URL: where reads that may lag go now (a standby while it is within
    # COUPON_READ_MAX_LAG of the primary), and how far behind it is, in seconds
    reads: Literal["primary", "standby"] | None = None
    read_lag: float | None = None


# -- terminal API ------------------------------------------------------------------------------


class Item(Model):
    category: Category
    amount: Rials


class RedemptionRequest(Model):
    request_id: RequestId
    national_id: NationalId
    amount: Rials
    items: Annotated[list[Item], Field(min_length=1, max_length=100)] | None = None
    allow_partial: Annotated[bool, Field(strict=True)] = False

    @model_validator(mode="after")
    def _items_add_up(self) -> RedemptionRequest:
        if self.items is not None and sum(i.amount for i in self.items) != self.amount:
            raise ValueError("the items' amounts must add up to amount")
        return self


MAX_OFFLINE_BATCH = 500


class OfflinePurchase(Model):
    """One purchase a terminal approved while offline, as it forwards it."""

    offline_seq: Annotated[int, Field(gt=0, le=MAX_ID, strict=True)]
    request_id: RequestId
    captured_at: Timestamp
    national_id: NationalId
    amount: Rials
    items: Annotated[list[Item], Field(min_length=1, max_length=100)] | None = None

    @model_validator(mode="after")
    def _items_add_up(self) -> OfflinePurchase:
        if self.items is not None and sum(i.amount for i in self.items) != self.amount:
            raise ValueError("the items' amounts must add up to amount")
        return self


class OfflineBatch(Model):
    """POST /v1/offline/batches: purchases captured offline, each once per offline_seq."""

    purchases: Annotated[list[OfflinePurchase], Field(min_length=1, max_length=MAX_OFFLINE_BATCH)]

    @model_validator(mode="after")
    def _distinct(self) -> OfflineBatch:
        if len({p.offline_seq for p in self.purchases}) != len(self.purchases):
            raise ValueError("offline_seq must not repeat within a batch")
        if len({p.request_id for p in self.purchases}) != len(self.purchases):
            raise ValueError("request_id must not repeat within a batch")
        return self


OfflineDeclineReason = Literal[
    "household_not_found",
    "household_suspended",
    "not_eligible",
    "not_open_yet",
    "insufficient_balance",
    "category_not_allowed",
    "merchant_suspended",
    "terminal_suspended",
    "reversed",
    "offline_not_enabled",
    "captured_in_future",
    "late",
    "outside_window",
    "offline_max_amount_exceeded",
    "offline_allowance_exceeded",
]


class OfflineResult(BaseModel):
    """One forwarded purchase's outcome. approved: in the ledger (redemption_id) with the
    approved amount; declined: the store's loss, amount is what it had handed over; rejected:
    not applied and not stored (idempotency_conflict: this offline_seq or request_id already
    names another purchase)."""

    offline_seq: int
    request_id: str
    status: Literal["approved", "declined", "rejected"]
    reason: OfflineDeclineReason | Literal["idempotency_conflict"] | None
    amount: int
    redemption_id: int | None
    remaining: int | None
    tranche_id: int | None
    captured_at: dt.datetime
    posted_at: dt.datetime | None
    replayed: bool


class SeqRange(BaseModel):
    first: int
    last: int


class OfflineBatchAnswer(BaseModel):
    terminal_id: int
    approved: int
    declined: int
    rejected: int
    results: list[OfflineResult]
    last_offline_seq: int | None
    # offline_seq numbers below the highest forwarded that the processor has never received
    # (the first 100 ranges)
    gaps: list[SeqRange]


class OfflineGap(BaseModel):
    terminal_id: int
    merchant_id: int
    last_offline_seq: int
    missing: int


class OfflineGaps(BaseModel):
    terminals: list[OfflineGap]


class Total(Model):
    count: Annotated[int, Field(ge=0, le=10**9, strict=True)]
    amount: Annotated[int, Field(ge=0, le=10**15, strict=True)]


class DayTotals(Model):
    """A business day's approved figures, as one side counted them."""

    online_redemptions: Total
    offline_redemptions: Total
    reversals: Total


MAX_RECONCILED_IDS = 20_000
DateText = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]


class ReconciliationRequest(Model):
    """POST /v1/terminals/reconciliation: a terminal's totals of one Asia/Tehran day, and
    optionally the request ids it counted (then the answer names each one either side lacks)."""

    date: DateText = Field(json_schema_extra={"format": "date"})
    totals: DayTotals
    request_ids: Annotated[list[RequestId], Field(max_length=MAX_RECONCILED_IDS)] | None = None


class Difference(BaseModel):
    count: int  # the processor's minus the terminal's
    amount: int


class Reconciliation(BaseModel):
    terminal_id: int
    date: dt.date
    status: Literal["balanced", "out_of_balance"]
    terminal: DayTotals
    processor: DayTotals
    # per total that differs: the processor's minus the terminal's
    differences: dict[str, Difference]
    # request ids the processor booked that the terminal did not count (when out of balance;
    # all of the day's when the terminal sent none), and those it counted that the processor
    # did not book (given the ids it sent)
    processor_only: list[str]
    terminal_only: list[str]


class ReconciliationQuery(Model):
    """GET /v1/reconciliation: one Asia/Tehran day, optionally of one status."""

    date: DateText = Field(json_schema_extra={"format": "date"})
    status: Literal["balanced", "out_of_balance"] | None = None


class TerminalReconciliation(BaseModel):
    terminal_id: int
    merchant_id: int
    status: Literal["balanced", "out_of_balance"]
    terminal: DayTotals
    processor: DayTotals
    differences: dict[str, Difference]
    processor_only: int  # how many request ids
    terminal_only: int
    reconciled_at: dt.datetime


class ReconciliationList(BaseModel):
    date: dt.date
    terminals: list[TerminalReconciliation]


class OfflineDeclinesQuery(Model):
    """GET /v1/reports/offline-declines: one Asia/Tehran day, optionally of one store."""

    date: DateText = Field(json_schema_extra={"format": "date"})
    merchant_id: Id | None = None


class OfflineDecline(BaseModel):
    terminal_id: int
    merchant_id: int
    offline_seq: int
    request_id: str
    national_id: str
    amount: int
    captured_at: dt.datetime
    posted_at: dt.datetime
    reason: str


class OfflineDeclines(BaseModel):
    date: dt.date
    declines: list[OfflineDecline]


class ReversalRequest(Model):
    request_id: RequestId
    original_request_id: RequestId


class Approved(BaseModel):
    redemption_id: int
    request_id: str
    status: Literal["approved"]
    national_id: str
    amount: int
    remaining: int
    tranche_id: int
    province: str
    merchant_id: int
    terminal_id: int
    created_at: dt.datetime
    requested_amount: int | None = None


DeclineReason = Literal[
    "household_not_found",
    "household_suspended",
    "not_eligible",
    "no_active_tranche",
    "not_open_yet",
    "insufficient_balance",
    "category_not_allowed",
    "merchant_suspended",
    "terminal_suspended",
    "reversed",
]


class Declined(BaseModel):
    status: Literal["declined"]
    reason: DeclineReason
    request_id: str


class Reversed(BaseModel):
    status: Literal["reversed"]
    reversal_id: int
    request_id: str
    original_request_id: str
    amount: int
    remaining: int


class PendingOriginal(BaseModel):
    status: Literal["pending_original"]
    request_id: str
    original_request_id: str


class Balance(BaseModel):
    national_id: str
    eligible: bool
    reason: str | None
    tranche_id: int | None
    remaining: int
    ends_at: dt.datetime | None


# -- live counters -----------------------------------------------------------------------------


class Totals(BaseModel):
    transactions: int
    served_households: int
    eligible_households: int
    amount: int
    coverage: float


class ProvinceStats(BaseModel):
    code: str
    name_en: str
    name_fa: str
    transactions: int
    served_households: int
    eligible_households: int
    amount: int
    coverage: float
    rank: int


class Stats(BaseModel):
    as_of: dt.datetime
    tranche_id: int | None
    totals: Totals
    provinces: list[ProvinceStats]


# -- audit -------------------------------------------------------------------------------------


class LedgerFilters(Model):
    """The filters of GET /v1/ledger.csv (query parameters)."""

    national_id: NationalId | None = None
    merchant_id: Id | None = None
    terminal_id: Id | None = None
    province: ProvinceCode | None = None
    tranche_id: Id | None = None
    kind: Literal["redemption", "reversal"] | None = None
    from_: Timestamp | None = Field(default=None, alias="from")
    to: Timestamp | None = None
    # offline: purchases forwarded from offline (captured_at set); online: every other entry
    channel: Literal["online", "offline"] | None = None


class LedgerQuery(LedgerFilters):
    """The query parameters of GET /v1/ledger: the filters, and a page."""

    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    after: Annotated[int, Field(ge=0, le=MAX_ID)] = 0


class VerifyQuery(Model):
    """GET /v1/ledger/verify: optionally, a head hash published earlier (sha256, hex)."""

    head: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")] | None = None


class SettlementQuery(Model):
    """GET /v1/reports/settlement: one Asia/Tehran calendar day."""

    date: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")] = Field(
        json_schema_extra={"format": "date"}
    )


class StatsQuery(Model):
    """GET /v1/stats: one tranche, or all of them."""

    tranche_id: Id | None = None


class StreamQuery(StatsQuery):
    """GET /v1/stats/stream: EventSource cannot send headers, so the token may come here."""

    access_token: str | None = None


class LedgerEntry(BaseModel):
    seq: int
    kind: Literal["redemption", "reversal"]
    entry_id: int
    request_id: str
    terminal_id: int
    merchant_id: int
    national_id: str
    province: str
    tranche_id: int
    amount: int
    created_at: dt.datetime
    captured_at: dt.datetime | None  # forwarded from offline: when the terminal captured it


class LedgerPage(BaseModel):
    entries: list[LedgerEntry]
    next: str | None


class Verification(BaseModel):
    ok: bool
    entries: int
    head: str | None
    head_seq: int
    first_bad_seq: int | None
    reason: str | None


class LedgerKey(BaseModel):
    public_key: str  # raw Ed25519 public key, hex
    pem: str
    signs: bool  # this process signs new heads with it (false: a retired key)


class LedgerKeys(BaseModel):
    keys: list[LedgerKey]


class MerchantSettlement(BaseModel):
    merchant_id: int
    name: str
    province: str
    redemptions: int
    reversals: int
    redeemed_amount: int
    reversed_amount: int
    net_amount: int
    # of the redemptions, those forwarded from offline
    offline_redemptions: int
    offline_amount: int
    # offline purchases declined when posted: the store's loss (not in net_amount)
    declined_offline: int
    declined_offline_amount: int


class Settlement(BaseModel):
    date: dt.date
    merchants: list[MerchantSettlement]
