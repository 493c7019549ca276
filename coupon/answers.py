"""The terminal path's HTTP contract: the SQL functions say what happened as typed columns
(an outcome, a reason, ids, amounts); this module is the one place that makes the SPEC's status
and body of it -- for the first answer and for every replay of it alike, so a replay is the same
bytes. An outcome with no answer here is a refusal: the domain error of that code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from coupon import errors
from coupon.models import (
    Approved,
    Balance,
    Declined,
    PendingOriginal,
    RedemptionRequest,
    ReversalRequest,
    Reversed,
)

# outcome -> (HTTP status, the model that describes its body)
ANSWERS: Mapping[str, tuple[int, type[BaseModel]]] = {
    "approved": (201, Approved),
    "declined": (402, Declined),
    "reversed": (201, Reversed),
    "pending_original": (202, PendingOriginal),
    "balance": (200, Balance),
}


class Row(Protocol):
    """A row of the terminal functions (asyncpg's Record, or a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """What the terminal gets: status, JSON body, whether it replays a stored answer, and the
    outcome as logs and metrics name it (approved, declined:<reason>, ...)."""

    status: int
    body: bytes
    replayed: bool
    label: str


def redemption(row: Row, terminal_id: int, request: RedemptionRequest) -> Answer:
    outcome = _admitted(row)
    if outcome == "declined":
        body: dict[str, Any] = {
            "status": "declined",
            "reason": row["reason"],
            "request_id": request.request_id,
        }
        return _answer(outcome, body, row, f"declined:{row['reason']}")
    body = {
        "redemption_id": row["entry_id"],
        "request_id": request.request_id,
        "status": "approved",
        "national_id": request.national_id,
        "amount": row["amount"],
        "remaining": row["remaining"],
        "tranche_id": row["tranche_id"],
        "province": row["province"],
        "merchant_id": row["merchant_id"],
        "terminal_id": terminal_id,
        "created_at": row["created_at"],
    }
    if request.allow_partial:
        body["requested_amount"] = request.amount
    return _answer(outcome, body, row, outcome)


def reversal(row: Row, request: ReversalRequest) -> Answer:
    outcome = _admitted(row)
    if outcome == "pending_original":
        body: dict[str, Any] = {
            "status": "pending_original",
            "request_id": request.request_id,
            "original_request_id": request.original_request_id,
        }
    else:
        body = {
            "status": "reversed",
            "reversal_id": row["entry_id"],
            "request_id": request.request_id,
            "original_request_id": request.original_request_id,
            "amount": row["amount"],
            "remaining": row["remaining"],
        }
    return _answer(outcome, body, row, outcome)


def balance(row: Row, national_id: str) -> Answer:
    outcome = _admitted(row)
    body = {
        "national_id": national_id,
        "eligible": row["reason"] is None,
        "reason": row["reason"],
        "tranche_id": row["tranche_id"],
        "remaining": row["remaining"],
        "ends_at": row["ends_at"],
    }
    return _answer(outcome, body, row, "ok")


def _admitted(row: Row) -> str:
    """The row's outcome when it has an answer; raise the refusal it is otherwise."""
    outcome: str = row["outcome"]
    if outcome not in ANSWERS:
        raise errors.by_code(outcome)
    return outcome


def _answer(outcome: str, body: dict[str, Any], row: Row, label: str) -> Answer:
    status = ANSWERS[outcome][0]
    # balance inquiries store nothing: never a replay
    replayed = outcome != "balance" and bool(row["replayed"])
    return Answer(status, orjson.dumps(body), replayed, label)
