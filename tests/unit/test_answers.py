"""Every outcome the terminal functions can return has one meaning in Python: an answer (status
and a body its model accepts) or a refusal with a stable code."""

from __future__ import annotations

import datetime as dt
import re
import typing
from importlib import resources

import orjson
import pytest

from coupon import answers, errors
from coupon.models import DeclineReason, RedemptionRequest, ReversalRequest

SCHEMA = resources.files("coupon").joinpath("sql/schema.sql").read_text(encoding="utf-8")


def _returned_outcomes() -> set[str]:
    found = set(re.findall(r"\b(?:a_)?outcome(?:\[i\])? := '([a-z_]+)'", SCHEMA))
    assert {"approved", "declined", "reversed", "pending_original", "balance"} <= found, found
    return found


@pytest.mark.parametrize("outcome", sorted(_returned_outcomes()))
def test_every_outcome_is_an_answer_or_a_refusal_with_a_code(outcome: str) -> None:
    if outcome in answers.ANSWERS:
        status, model = answers.ANSWERS[outcome]
        assert 200 <= status < 500 and model.__name__
    else:
        refusal = errors.by_code(outcome)
        assert refusal.code == outcome and 400 <= refusal.status < 500


def test_every_decline_reason_is_one_the_contract_names() -> None:
    walk = SCHEMA[SCHEMA.index("why := CASE") : SCHEMA.index("END;", SCHEMA.index("why := CASE"))]
    reasons = set(re.findall(r"THEN '([a-z_]+)'", walk)) | {"insufficient_balance"}
    assert reasons <= set(typing.get_args(DeclineReason)), reasons


NOW = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)
APPROVED = {
    "outcome": "approved", "reason": None, "entry_id": 7, "amount": 900, "remaining": 100,
    "tranche_id": 1, "province": "IR-15", "merchant_id": 3, "created_at": NOW, "replayed": False,
}  # fmt: skip


@pytest.mark.parametrize("partial", [False, True])
def test_an_approval_is_the_approved_model(partial: bool) -> None:
    request = RedemptionRequest(
        request_id="r1", national_id="0084575948", amount=1000, allow_partial=partial
    )
    answer = answers.redemption(APPROVED, 9, request)
    body = orjson.loads(answer.body)
    answers.ANSWERS["approved"][1].model_validate(body)
    assert (answer.status, answer.label, answer.replayed) == (201, "approved", False)
    assert ("requested_amount" in body) is partial
    replay = answers.redemption({**APPROVED, "replayed": True}, 9, request)
    assert replay.body == answer.body and replay.replayed


def test_declines_reversals_and_balances_are_their_models() -> None:
    request = RedemptionRequest(request_id="r1", national_id="0084575948", amount=1000)
    declined = {**APPROVED, "outcome": "declined", "reason": "not_eligible"}
    answer = answers.redemption(declined, 9, request)
    assert (answer.status, answer.label) == (402, "declined:not_eligible")
    answers.ANSWERS["declined"][1].model_validate_json(answer.body)

    reversal = ReversalRequest(request_id="v1", original_request_id="r1")
    for outcome, status in (("reversed", 201), ("pending_original", 202)):
        row = {"outcome": outcome, "entry_id": 8, "amount": 900, "remaining": 1000}
        answer = answers.reversal({**row, "replayed": False}, reversal)
        assert answer.status == status
        answers.ANSWERS[outcome][1].model_validate_json(answer.body)

    row = {"outcome": "balance", "reason": None, "tranche_id": 1, "remaining": 5, "ends_at": NOW}
    answer = answers.balance(row, "0084575948")
    assert answer.status == 200 and orjson.loads(answer.body)["eligible"] is True
    answers.ANSWERS["balance"][1].model_validate_json(answer.body)


def test_a_refusal_raises_its_domain_error() -> None:
    with pytest.raises(errors.NonceReused):
        answers.balance({"outcome": "nonce_reused"}, "0084575948")
    with pytest.raises(errors.CouponError) as raised:
        answers.balance({"outcome": "no_such_outcome"}, "0084575948")
    assert raised.value.status == 500  # a bug, never a KeyError
