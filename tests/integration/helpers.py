"""Data builders shared by the integration tests."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from coupon.national_id import is_valid, with_check_digit


def national_ids(n: int, seed: int = 7) -> list[str]:
    """n distinct valid national ids."""
    rng = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < n:
        nid = with_check_digit(f"{rng.randrange(10**9):09d}")
        if is_valid(nid):
            found[nid] = None
    return list(found)


def households_csv(rows: list[tuple[str, str, int, int]], status: list[str] | None = None) -> str:
    header = "national_id,province,members,decile" + (",status" if status else "")
    lines = [header]
    for i, (nid, province, members, decile) in enumerate(rows):
        line = f"{nid},{province},{members},{decile}"
        lines.append(line + (f",{status[i]}" if status else ""))
    return "\n".join(lines) + "\n"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def tranche_body(
    *,
    start: dt.timedelta = dt.timedelta(hours=-1),
    length: dt.timedelta = dt.timedelta(days=30),
    bands: list[dict[str, Any]] | None = None,
    carry_over: bool = False,
    categories: list[str] | None = None,
    name: str = "Phase",
) -> dict[str, Any]:
    starts = now() + start
    return {
        "name": name,
        "starts_at": starts.isoformat(),
        "ends_at": (starts + length).isoformat(),
        "categories": categories or ["rice", "cooking_oil", "dairy", "eggs"],
        "carry_over": carry_over,
        "bands": bands
        if bands is not None
        else [
            {"up_to_decile": 3, "per_member_credit": 5_000_000},
            {"up_to_decile": 7, "per_member_credit": 3_500_000},
        ],
    }
