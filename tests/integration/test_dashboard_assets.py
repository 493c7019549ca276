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
    for name, content_type in (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("provinces.json", "application/json"),
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
    ):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] in ("not_found",)


async def test_openapi_describes_the_stream(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    op = doc["paths"]["/v1/stats/stream"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert op["security"] == [{"bearer": []}]
    assert {p["name"] for p in op["parameters"]} == {"tranche_id", "access_token"}
    assert "/dashboard" in doc["paths"]
