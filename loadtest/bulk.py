"""Bulk speed: generate N households, import them (the CLI's code path), open a tranche.

python -m loadtest.bulk --households 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from coupon import households, national_id, tranches
from coupon.models import Band, TrancheCreate
from coupon.provinces import iran_provinces
from loadtest.common import OUT, bench_database, print_result


def generate_csv(n: int, seed: int = 1) -> str:
    """n households with valid, distinct national ids spread over the 31 provinces."""
    rng = random.Random(seed)
    codes = [p.code for p in iran_provinces()]
    step = 10**9 // n  # distinct 9-digit prefixes, in a shuffled order
    prefixes = list(range(0, step * n, step))
    rng.shuffle(prefixes)
    lines = ["national_id,province,members,decile\n"]
    for prefix in prefixes:
        nid = national_id.with_check_digit(f"{prefix + 1:09d}")
        lines.append(f"{nid},{rng.choice(codes)},{rng.randint(1, 8)},{rng.randint(1, 10)}\n")
    return "".join(lines)


async def file_blocks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            yield block


async def run(n: int) -> dict[str, object]:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"households-{n}.csv"
    if not path.exists():
        t = time.perf_counter()
        path.write_text(generate_csv(n))
        print(f"generated {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    async with bench_database("coupon_bench_bulk") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            started = time.perf_counter()
            result = await households.import_csv(conn, file_blocks(path))
            import_s = time.perf_counter() - started
            assert result.imported == n and not result.rejected, result.as_response()

            started = time.perf_counter()
            again = await households.import_csv(conn, file_blocks(path))
            reimport_s = time.perf_counter() - started
            assert again.updated == n

            now = dt.datetime.now(dt.UTC)
            started = time.perf_counter()
            created = await tranches.open_tranche(
                conn,
                TrancheCreate(
                    name="bench",
                    starts_at=now,
                    ends_at=now + dt.timedelta(days=30),
                    categories=["rice"],
                    carry_over=False,
                    bands=[
                        Band(up_to_decile=3, per_member_credit=5_000_000),
                        Band(up_to_decile=7, per_member_credit=3_500_000),
                    ],
                ),
            )
            open_s = time.perf_counter() - started
            started = time.perf_counter()
            later = await tranches.open_tranche(
                conn,
                TrancheCreate(
                    name="bench 2",
                    starts_at=now + dt.timedelta(days=40),
                    ends_at=now + dt.timedelta(days=70),
                    categories=["rice"],
                    carry_over=False,
                    bands=[Band(up_to_decile=10, per_member_credit=5_000_000)],
                ),
            )
            open2_s = time.perf_counter() - started
        finally:
            await conn.close()
    figures = {
        "households": n,
        "import_s": round(import_s, 2),
        "import_rows_per_s": round(n / import_s),
        "reimport_unchanged_rows_per_s": round(n / reimport_s),
        "tranche_households_credited": created.households_credited,
        "tranche_open_s": round(open_s, 2),
        "tranche_households_per_s": round(created.households_credited / open_s),
        "second_tranche_households_per_s": round(later.households_credited / open2_s),
        "projected_21m_import_min": round(21_000_000 / (n / import_s) / 60, 2),
        "projected_21m_open_min": round(
            21_000_000 / (created.households_credited / open_s) / 60, 2
        ),
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--households", type=int, default=1_000_000)
    args = parser.parse_args()
    figures = asyncio.run(run(args.households))
    print_result("loadtest.bulk", figures)


if __name__ == "__main__":
    main()
