"""Iran's 31 provinces from maintained data: ISO 3166-2:IR codes and names from pycountry,
Persian names from the iso3166-2 package, and the English names people use where they differ
from the ISO romanisation (data/province_names_en.csv)."""

from __future__ import annotations

import csv
import math
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources
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


def _english_names() -> dict[str, str]:
    """code -> the common English spelling ('Kordestan' is 'Kurdistan' to its readers)."""
    text = resources.files("coupon").joinpath("data", "province_names_en.csv").read_text("utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {row["code"]: row["name_en"] for row in rows}


@cache
def iran_provinces() -> tuple[Province, ...]:
    """All provinces of Iran, ordered by code."""
    import iso3166_2
    import pycountry

    local: Any = iso3166_2.Subdivisions()["IR"]
    english = _english_names()
    provinces = []
    for sub in pycountry.subdivisions.get(country_code="IR"):  # type: ignore[no-untyped-call]
        name_fa = _persian_name(local[sub.code]["localOtherName"])
        name_en = english.get(sub.code) or _ascii_name(sub.name)
        provinces.append(Province(sub.code, name_en, name_fa))
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


@dataclass(frozen=True, slots=True)
class Shape:
    code: str
    path: str  # SVG path data in the map's coordinates
    label: tuple[float, float]  # where the name goes: the centroid of its largest polygon


MAP_WIDTH = 1000  # the map's width in its own units; one unit is about 1.8 km


def _data(name: str) -> str:
    return resources.files("coupon").joinpath("data", name).read_text("utf-8")


def _rows(name: str) -> list[dict[str, str]]:
    lines = (line for line in _data(name).splitlines() if not line.startswith("#"))
    return list(csv.DictReader(lines))


def _decode_arcs(topology: Any) -> list[list[tuple[float, float]]]:
    """TopoJSON's quantised, delta-encoded arcs as (longitude, latitude) points."""
    (sx, sy), (tx, ty) = topology["transform"]["scale"], topology["transform"]["translate"]
    arcs = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def _ring(arcs: list[list[tuple[float, float]]], indexes: list[int]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for i in indexes:
        arc = arcs[i] if i >= 0 else arcs[~i][::-1]  # ~i: the arc walked backwards
        points.extend(arc if not points else arc[1:])
    return points


def _centroid(ring: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(area, x, y) of a closed ring, by the shoelace formula."""
    area = cx = cy = 0.0
    for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1], strict=True):
        cross = x1 * y2 - x2 * y1
        area += cross
        cx += (x1 + x2) * cross
        cy += (y1 + y2) * cross
    if area == 0:
        return 0.0, ring[0][0], ring[0][1]
    return abs(area) / 2, cx / (3 * area), cy / (3 * area)


@cache
def province_shapes() -> tuple[tuple[int, int], tuple[Shape, ...]]:
    """(width, height) of the map and each province's outline, from Natural Earth's admin-1
    shapes (data/iran_provinces.NOTICE.md), projected and rounded to whole map units."""
    import orjson

    topology = orjson.loads(_data("iran_provinces.topo.json"))
    iso = {row["hasc"]: row["iso"] for row in _rows("iran_provinces.codes.csv")}
    arcs = _decode_arcs(topology)
    geometries = [g for g in topology["objects"]["irn"]["geometries"] if g["id"] in iso]
    polygons = {
        iso[g["id"]]: [
            [_ring(arcs, ring) for ring in polygon]
            for polygon in (g["arcs"] if g["type"] == "MultiPolygon" else [g["arcs"]])
        ]
        for g in geometries
    }
    points = [p for shape in polygons.values() for poly in shape for ring in poly for p in ring]
    west, east = min(p[0] for p in points), max(p[0] for p in points)
    south, north = min(p[1] for p in points), max(p[1] for p in points)
    squeeze = math.cos(math.radians((south + north) / 2))
    scale = MAP_WIDTH / ((east - west) * squeeze)

    def project(lng: float, lat: float) -> tuple[int, int]:
        return round((lng - west) * squeeze * scale), round((north - lat) * scale)

    shapes = []
    for code, shape in sorted(polygons.items()):
        parts = []
        for polygon in shape:
            for ring in polygon:
                projected: list[tuple[int, int]] = []
                for lng, lat in ring:
                    point = project(lng, lat)
                    if not projected or projected[-1] != point:
                        projected.append(point)
                if len(projected) >= 3:
                    head, *rest = projected
                    steps = "".join(f"L{x} {y}" for x, y in rest)
                    parts.append(f"M{head[0]} {head[1]}{steps}Z")
        _, lx, ly = max((_centroid(poly[0]) for poly in shape), key=lambda c: c[0])
        label = project(lx, ly)
        shapes.append(Shape(code, "".join(parts), (float(label[0]), float(label[1]))))
    height = round((north - south) * scale)
    return (MAP_WIDTH, height), tuple(shapes)
