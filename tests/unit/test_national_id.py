import pytest

from coupon.national_id import is_valid, mask, with_check_digit

# Computed by hand from the SPEC rule: s = sum(d[i] * (10 - i)) % 11 over the first 9 digits.
VALID = [
    "0084575948",  # s = 3 -> check 11 - 3 = 8
    "0499370899",  # s = 2 -> check 9
    "1000000060",  # s = (10 + 12) % 11 = 0 -> check 0
    "0000000019",  # s = 1*2 % 11 = 2 -> check 9
    "4608968882",
]
INVALID = [
    "0084575947",  # wrong check digit
    "0012345678",
    "1111111111",  # all the same digit
    "0000000000",
    "123456789",  # 9 digits
    "12345678901",  # 11 digits
    "00845759a8",  # a letter
    "۰۰۸۴۵۷۵۹۴۸",  # Persian digits are not ASCII digits
    " 084575948",
    "",
]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids(value: str) -> None:
    assert is_valid(value)


@pytest.mark.parametrize("value", INVALID)
def test_invalid_ids(value: str) -> None:
    assert not is_valid(value)


def test_every_check_digit_but_one_is_wrong() -> None:
    first9 = "008457594"
    good = [d for d in "0123456789" if is_valid(first9 + d)]
    assert good == ["8"]
    assert with_check_digit(first9) == "0084575948"


def test_mask_keeps_only_three_digits() -> None:
    assert mask("0084575948") == "*******948"
