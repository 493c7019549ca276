"""Iran's 31 provinces from maintained data: ISO 3166-2:IR codes and names from pycountry,
Persian names from the iso3166-2 package. Nothing here is typed by hand."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True, slots=True)
class Province:
    code: str
    name_en: str
    name_fa: str


def _ascii_name(iso_name: str) -> str:
    """'Khorāsān-e Raẕavī' -> 'Khorasan-e Razavi': the ISO romanisation without diacritics."""
    decomposed = unicodedata.normalize("NFKD", iso_name)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _persian_name(local_names: str) -> str:
    """Pick the Persian entry out of iso3166-2's 'مرکزی (fas), Markazi (eng)' list."""
    for part in local_names.split(","):
        name, _, lang = part.strip().rpartition(" ")
        if lang == "(fas)":
            return name.strip()
    raise LookupError(f"no Persian name in {local_names!r}")


@cache
def iran_provinces() -> tuple[Province, ...]:
    """All provinces of Iran, ordered by code."""
    import iso3166_2
    import pycountry

    local: Any = iso3166_2.Subdivisions()["IR"]
    provinces = []
    for sub in pycountry.subdivisions.get(country_code="IR"):  # type: ignore[no-untyped-call]
        name_fa = _persian_name(local[sub.code]["localOtherName"])
        provinces.append(Province(sub.code, _ascii_name(sub.name), name_fa))
    return tuple(sorted(provinces, key=lambda p: p.code))


@cache
def province_locations() -> dict[str, tuple[float, float]]:
    """(latitude, longitude) of each province by code, from the iso3166-2 package."""
    import iso3166_2

    local: Any = iso3166_2.Subdivisions()["IR"]
    locations = {}
    for province in iran_provinces():
        lat, lng = local[province.code]["latLng"]
        locations[province.code] = (float(lat), float(lng))
    return locations
