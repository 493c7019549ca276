"""The dashboard's files and the stream's place in /openapi.json, without a browser."""

from __future__ import annotations

from tests.integration.terminal import Client


async def test_the_page_and_its_files_are_served(client: Client) -> None:
    resp = await client.get("/dashboard")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assert '<html lang="fa" dir="rtl">' in page
    assert "/dashboard/dashboard.js" in page and "/dashboard/dashboard.css" in page
    assert "/dashboard/favicon.svg" in page and "/dashboard/vendor/uPlot.iife.min.js" in page
    for name, content_type in (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("provinces.json", "application/json"),
        ("map.json", "application/json"),
        ("favicon.svg", "image/svg+xml"),
        ("vendor/uPlot.iife.min.js", "text/javascript"),
        ("vendor/uPlot.min.css", "text/css"),
        ("vendor/uPlot.LICENSE", "text/plain"),
    ):
        resp = await client.get(f"/dashboard/{name}")
        assert resp.status == 200, name
        assert resp.content_type == content_type
    provinces = await (await client.get("/dashboard/provinces.json")).json()
    assert len(provinces) == 31
    tehran = next(p for p in provinces if p["code"] == "IR-23")
    assert tehran["name_fa"] == "تهران"
    assert 35 < tehran["lat"] < 36 and 51 < tehran["lng"] < 52


async def test_unknown_dashboard_files_are_404(client: Client) -> None:
    for path in (
        "/dashboard/secret.txt",
        "/dashboard/..%2Fschema.sql",
        "/dashboard/dashboard.html",
        "/dashboard/vendor/secret.txt",
        "/dashboard/vendor/..%2F..%2Fschema.sql",
        "/dashboard/vendor/%2E%2E/dashboard.html",
        "/dashboard/vendor/vendor/uPlot.min.css",
        "/dashboard/data/iran_provinces.topo.json",
    ):
        resp = await client.get(path)
        assert resp.status == 404, path
        if resp.content_type == "application/json":
            assert (await resp.json())["error"]["code"] in ("not_found",)


async def test_openapi_describes_the_stream(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    op = doc["paths"]["/v1/stats/stream"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert op["security"] == [{"bearer": []}]
    assert {p["name"] for p in op["parameters"]} == {"tranche_id", "access_token"}
    assert "/dashboard" in doc["paths"]


async def test_the_map_has_every_province_and_stays_small(client: Client) -> None:
    resp = await client.get("/dashboard/map.json")
    raw = await resp.read()
    assert len(raw) < 300_000
    body = await resp.json()
    codes = {p["code"] for p in await (await client.get("/dashboard/provinces.json")).json()}
    assert {s["code"] for s in body["shapes"]} == codes and len(codes) == 31
    for shape in body["shapes"]:
        assert shape["path"].startswith("M") and shape["path"].endswith("Z")
        assert 0 <= shape["x"] <= body["width"] and 0 <= shape["y"] <= body["height"]
    by_code = {s["code"]: s for s in body["shapes"]}
    # west of east, north of south: Kurdistan lies west of Razavi Khorasan, Gilan north of Fars
    assert by_code["IR-12"]["x"] < by_code["IR-09"]["x"]
    assert by_code["IR-01"]["y"] < by_code["IR-07"]["y"]
