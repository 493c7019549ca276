"""Province names and map shapes come from the data files, complete and consistent."""

from __future__ import annotations

from coupon import provinces


def test_english_names_are_the_ones_people_use() -> None:
    names = {p.code: p.name_en for p in provinces.iran_provinces()}
    assert len(names) == 31
    assert names["IR-03"] == "East Azerbaijan" and names["IR-04"] == "West Azerbaijan"
    assert names["IR-12"] == "Kurdistan" and names["IR-06"] == "Khuzestan"
    assert names["IR-09"] == "Razavi Khorasan" and names["IR-23"] == "Tehran"
    assert all(name.isascii() for name in names.values())
    # every override names a real province
    assert set(provinces._english_names()) <= set(names)


def test_every_province_has_one_shape() -> None:
    (width, height), shapes = provinces.province_shapes()
    assert width == provinces.MAP_WIDTH and 800 < height < 1000
    assert [s.code for s in shapes] == [p.code for p in provinces.iran_provinces()]
    assert sum(len(s.path) for s in shapes) < 100_000
