"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against
the service on a real port. A missing Chromium fails the test (CI installs it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jdatetime
import pytest

from tests.integration.terminal import Client, World, make_world

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TEHRAN = ZoneInfo("Asia/Tehran")
PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")


def fa(value: int) -> str:
    """An integer as the page shows it in Persian: Persian digits, Persian group separator."""
    return f"{value:,}".translate(PERSIAN_DIGITS).replace(",", "٬")


def en(value: int) -> str:
    return f"{value:,}"


def solar_hijri(moment: dt.datetime) -> jdatetime.date:
    return jdatetime.date.fromgregorian(date=moment.astimezone(TEHRAN).date())


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
            "(apt-get install -y chromium; .ci/run installs it)"
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def world(client: Client, operator: dict[str, str]) -> World:
    return await make_world(client, operator, n=12, provinces=("IR-15", "IR-23", "IR-01"))


async def stats(client: Client, operator: dict[str, str]) -> dict[str, Any]:
    resp = await client.get("/v1/stats", headers=operator)
    body: dict[str, Any] = await resp.json()
    return body


def cell(code: str, column: str) -> str:
    return f'tr[data-code="{code}"] td.{column}'


VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1440, "height": 900}}


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


class Console:
    """What a person with the developer tools open would see: errors and failed requests."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        page.on(
            "response",
            lambda resp: (
                self.errors.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None
            ),
        )


async def open_dashboard(
    browser: Any, client: Client, viewport: str, token: str, lang: str = "fa"
) -> tuple[Any, Console]:
    page = await browser.new_page(viewport=VIEWPORTS[viewport], locale="fa-IR")
    console = Console(page)
    await page.goto(str(client.make_url("/dashboard")))
    await page.wait_for_selector("#login:not([hidden])")
    await page.fill("#token", token)
    await page.click("#login-submit")
    await page.wait_for_selector("#board:not([hidden])")
    await page.wait_for_selector("#status[data-state=live]")
    if lang == "en":
        await page.click("#lang")
    await page.wait_for_function("() => document.querySelectorAll('#map text').length === 31")
    return page, console


async def no_horizontal_overflow(page: Any) -> None:
    widths = await page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths


@pytest.mark.parametrize("lang", ["fa", "en"])
@pytest.mark.parametrize("viewport", ["phone", "desktop"])
async def test_the_dashboard_at_phone_and_desktop_widths(
    world: World, client: Client, operator: dict[str, str], browser: Any, viewport: str, lang: str
) -> None:
    in_lorestan = [nid for nid, code in world.province.items() if code == "IR-15"]
    for nid in in_lorestan[:2]:
        assert (await world.terminal.redeem(nid, 1_500_000)).status == 201
    page, console = await open_dashboard(browser, client, viewport, token_of(operator), lang)
    digits = fa if lang == "fa" else en

    # the language, the direction and the names people use
    assert await page.get_attribute("html", "lang") == lang
    assert await page.get_attribute("html", "dir") == ("rtl" if lang == "fa" else "ltr")
    if lang == "fa":
        assert await page.text_content("h1") == "کالابرگ الکترونیکی — آمار زنده"
    else:
        assert await page.text_content("h1") == "Kalabarg electronic coupon — live counters"

    # every number in the table is /v1/stats's, in the language's digits
    body = await stats(client, operator)
    lorestan = next(p for p in body["provinces"] if p["code"] == "IR-15")
    await page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.textContent === text",
        arg=[cell("IR-15", "transactions"), digits(2)],
    )
    rows = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#provinces tbody tr')].map(
            (tr) => [tr.dataset.code, Object.fromEntries([...tr.cells].map(
                (td) => [td.classList[td.classList.length - 1], td.textContent]))]))"""
    )
    assert len(rows) == 31
    for p in body["provinces"]:
        row = rows[p["code"]]
        assert row["name"] == (p["name_fa"] if lang == "fa" else p["name_en"])
        assert row["rank"] == digits(p["rank"])
        assert row["transactions"] == digits(p["transactions"])
        assert row["served"] == digits(p["served_households"])
        assert row["eligible"] == digits(p["eligible_households"])
    assert lorestan["name_en"] == "Lorestan"
    names = {p["code"]: p["name_en"] for p in body["provinces"]}
    assert names["IR-03"] == "East Azerbaijan" and names["IR-12"] == "Kurdistan"
    assert names["IR-09"] == "Razavi Khorasan" and names["IR-06"] == "Khuzestan"
    # totals: large figures shortened, the exact one in the title
    assert await page.text_content("#total-transactions") == digits(body["totals"]["transactions"])
    amount = await page.get_attribute("#total-amount", "title")
    assert amount == (f"{fa(3_000_000)} ریال" if lang == "fa" else f"{en(3_000_000)} rials")
    short = await page.text_content("#total-amount")
    assert short == ("۳ میلیون ریال" if lang == "fa" else "3 M rials")

    # the map: 31 shapes, each with a label and a name for assistive technology
    assert await page.locator("#map path").count() == 31
    labels = await page.eval_on_selector_all("#map text", "els => els.map(e => e.textContent)")
    assert len(labels) == 31 and all(labels)
    aria = await page.eval_on_selector_all(
        "#map path", "els => els.map(e => e.getAttribute('aria-label'))"
    )
    assert all(aria) and len(aria) == 31
    # a tap shows the province's figures
    await page.dispatch_event('#map path[data-code="IR-15"]', "click")
    await page.wait_for_function("() => document.querySelector('#detail h3') !== null")
    detail = await page.text_content("#detail h3") or ""
    assert (lorestan["name_fa"] if lang == "fa" else "Lorestan") in detail

    # the dates: Solar Hijri in Persian, Gregorian in English, with the time of the snapshot
    shown = await page.text_content("#clock-date") or ""
    today = dt.datetime.now(TEHRAN)
    if lang == "fa":
        days = {solar_hijri(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=s)) for s in (-5, 0)}
        assert any(
            f"{d.j_months_fa[d.month - 1]} {fa(d.year).replace('٬', '')}" in shown for d in days
        )
    else:
        assert today.strftime("%B %Y") in shown, shown
    as_of = await page.text_content("#as-of") or ""
    assert ":" in as_of and len(as_of) > 12, as_of

    # my province: chosen once, remembered, pinned with its rank
    await page.select_option("#mine-select", "IR-15")
    rank = await page.text_content("#mine-rank") or ""
    assert (f"از {fa(31)}" if lang == "fa" else "of 31") in rank, rank
    await page.reload()
    await page.wait_for_selector("#board:not([hidden])")
    await page.wait_for_selector("#mine-body:not([hidden])")
    assert await page.input_value("#mine-select") == "IR-15"
    await page.wait_for_function("() => document.querySelectorAll('#map text').length === 31")
    await page.wait_for_function("() => document.querySelector('#chart-tpm canvas') !== null")
    await page.wait_for_timeout(500)

    await no_horizontal_overflow(page)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{viewport}-{lang}.png"), full_page=True)
    assert console.errors == []
    await page.close()


async def test_the_table_sorts_and_exports_what_is_on_screen(
    world: World, client: Client, operator: dict[str, str], browser: Any
) -> None:
    nid = next(nid for nid, code in world.province.items() if code == "IR-23")
    assert (await world.terminal.redeem(nid, 2_000_000)).status == 201
    page, console = await open_dashboard(browser, client, "desktop", token_of(operator), "en")
    await page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.textContent === text",
        arg=[cell("IR-23", "transactions"), "1"],
    )
    await page.click("th.name button")
    names = await page.eval_on_selector_all("td.name", "els => els.map(e => e.textContent)")
    assert names == sorted(names)
    await page.click("th.amount button")
    assert await page.get_attribute("th.amount", "aria-sort") == "descending"
    assert await page.text_content("#provinces tbody tr:first-child td.name") == "Tehran"
    async with page.expect_download() as info:
        await page.click("#export")
    download = await info.value
    saved = Path(await download.path())
    text = (await asyncio.to_thread(saved.read_bytes)).decode("utf-8-sig")
    lines = text.splitlines()
    header = "code,rank,name,transactions,served,eligible,coverage,amount_rials"
    assert lines[0].startswith(header)
    assert lines[1].startswith("IR-23,") and ",2000000," in lines[1]
    assert len(lines) == 32
    assert console.errors == []
    await page.close()


async def test_auditors_see_no_403_and_nothing_fails_before_sign_in(
    world: World, client: Client, auditor: dict[str, str], browser: Any
) -> None:
    page = await browser.new_page(viewport=VIEWPORTS["phone"])
    console = Console(page)
    await page.goto(str(client.make_url("/dashboard")))
    await page.wait_for_selector("#login:not([hidden])")
    await page.wait_for_timeout(300)
    assert console.errors == []  # no favicon 404, no 401 before signing in
    await page.fill("#token", token_of(auditor))
    await page.click("#login-submit")
    await page.wait_for_selector("#status[data-state=live]")
    await page.wait_for_selector(f'#tranche option[value="{world.tranche_id}"]', state="attached")
    label = await page.text_content(f'#tranche option[value="{world.tranche_id}"]') or ""
    assert "Phase" in label and "–" in label  # its window's dates
    await page.wait_for_function("() => document.querySelector('#chart-served canvas') !== null")
    await page.wait_for_timeout(500)
    assert console.errors == []
    await page.close()


async def test_the_stale_state_shows_when_the_server_stops_and_clears_on_reconnect(
    dsn: str, conn: Any, browser: Any
) -> None:
    from coupon import tokens
    from tests.reliability.harness import Server

    token = await tokens.create_token(conn, "operator", "browser")
    server = Server(dsn, workers=1)
    await server.start()
    try:
        for viewport, lang in (("phone", "fa"), ("desktop", "en")):
            page = await browser.new_page(viewport=VIEWPORTS[viewport])
            await page.goto(f"{server.base}/dashboard")
            await page.fill("#token", token)
            await page.click("#login-submit")
            await page.wait_for_selector("#status[data-state=live]")
            if lang == "en":
                await page.click("#lang")
            assert await page.is_hidden("#stale")

            server.kill9()
            stopped = time.monotonic()
            await page.wait_for_selector("body.stale", timeout=3000)
            assert time.monotonic() - stopped < 3
            await page.wait_for_selector("#stale:not([hidden])")
            await page.wait_for_timeout(1100)
            age = await page.text_content("#stale-age") or ""
            assert ("ثانیه" in age) if lang == "fa" else ("second" in age), age
            opacity = await page.eval_on_selector(
                ".cards", "el => Number(getComputedStyle(el).opacity)"
            )
            assert opacity < 0.6
            await no_horizontal_overflow(page)
            await page.screenshot(
                path=str(ARTIFACTS / f"dashboard-stale-{viewport}-{lang}.png"), full_page=True
            )

            await server.start()
            await page.wait_for_function(
                "() => !document.body.classList.contains('stale')", timeout=15000
            )
            assert await page.is_hidden("#stale")
            assert await page.get_attribute("#status", "data-state") == "live"
            await page.close()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill9()


@pytest.mark.parametrize(
    "moment",
    [
        "2025-03-20T20:29:59+00:00",  # 23:59:59 on 30 Esfand 1403 (a leap year) in Tehran
        "2025-03-20T20:30:00+00:00",  # Nowruz 1404, midnight in Tehran
        "2021-06-21T20:00:00+00:00",  # still 1 Tir 1400 in Tehran: summer time then (+04:30)
        "2026-11-27T21:00:00+00:00",  # already the next day in Tehran
    ],
)
async def test_solar_hijri_dates_match_jdatetime(client: Client, browser: Any, moment: str) -> None:
    page = await browser.new_page()
    await page.goto(str(client.make_url("/dashboard")))
    await page.wait_for_function("() => window.kalabarg !== undefined")
    at = dt.datetime.fromisoformat(moment)
    local = at.astimezone(TEHRAN)
    expected = solar_hijri(at)
    for lang, months, digits in (
        ("fa", expected.j_months_fa, PERSIAN_DIGITS),
        ("en", expected.j_months_en, str.maketrans("", "")),
    ):
        parts = await page.evaluate(
            "([ms, lang]) => window.kalabarg.solarHijri(new Date(ms), lang)",
            [int(at.timestamp() * 1000), lang],
        )
        assert parts["day"] == str(expected.day).translate(digits)
        assert parts["month"] == months[expected.month - 1]
        assert parts["year"] == str(expected.year).translate(digits)
        assert parts["time"] == local.strftime("%H:%M:%S").translate(digits)
    await page.close()
