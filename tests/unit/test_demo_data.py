"""The demo's census weights and how it splits households and stores over the provinces."""

from __future__ import annotations

import pytest

from coupon import demo
from coupon.provinces import iran_provinces


def test_the_census_table_covers_every_province_and_adds_up() -> None:
    population = demo.census_population()
    assert set(population) == {p.code for p in iran_provinces()}
    # the national total the Statistical Centre of Iran published for the 2016 census
    assert sum(population.values()) == 79_926_270
    assert max(population, key=population.__getitem__) == "IR-23"  # Tehran
    assert min(population, key=population.__getitem__) == "IR-16"  # Ilam


def test_allocate_is_proportional_exact_and_keeps_the_minimum() -> None:
    shares = demo.allocate(30_000, demo.census_population(), minimum=25)
    assert sum(shares.values()) == 30_000
    assert min(shares.values()) >= 25
    whole = sum(demo.census_population().values())
    for code, people in demo.census_population().items():
        ideal = 25 + (30_000 - 25 * 31) * people / whole
        assert abs(shares[code] - ideal) < 1
    assert demo.allocate(3, {"a": 1, "b": 1, "c": 1}) == {"a": 1, "b": 1, "c": 1}
    with pytest.raises(ValueError):
        demo.allocate(10, {"a": 1, "b": 1}, minimum=6)


def test_demo_households_are_valid_distinct_and_deterministic() -> None:
    rows = demo.demo_households(2_000)
    assert rows == demo.demo_households(2_000)
    assert len({r[0] for r in rows}) == 2_000
    tehran = sum(1 for r in rows if r[1] == "IR-23")
    assert 0.15 < tehran / 2_000 < 0.17  # Tehran is 16.6 % of Iran
    assert all(1 <= r[2] <= 30 and 1 <= r[3] <= 10 for r in rows)
