"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against
the service on a real port. A missing Chromium fails the test (CI installs it)."""

from __future__ import annotations

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


async def test_the_dashboard_signs_in_streams_and_speaks_both_languages(
    world: World, client: Client, operator: dict[str, str], browser: Any
) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 1800}, locale="fa-IR")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(str(client.make_url("/dashboard")))

    # Persian, right to left, and a token is asked for first
    assert await page.get_attribute("html", "lang") == "fa"
    assert await page.get_attribute("html", "dir") == "rtl"
    await page.wait_for_selector("#login:not([hidden])")
    assert await page.is_hidden("#board")
    assert await page.text_content("label[for=token]") == "توکن اپراتور را وارد کنید"
    await page.fill("#token", "wrong-token")
    await page.click("#login-submit")
    # a function, not an expression: polling an expression evals a string, which the page's
    # CSP (no 'unsafe-eval') refuses whenever the text is not there at the first look
    await page.wait_for_function(
        "() => document.getElementById('login-error').textContent.includes('نامعتبر')"
    )
    await page.fill("#token", operator["Authorization"].removeprefix("Bearer "))
    await page.click("#login-submit")
    await page.wait_for_selector("#board:not([hidden])")
    await page.wait_for_selector("#status[data-state=live]")

    # the right numbers for a province, in Persian digits, under its Persian name
    before = await stats(client, operator)
    lorestan = next(p for p in before["provinces"] if p["code"] == "IR-15")
    await page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.textContent === text",
        arg=[cell("IR-15", "eligible"), fa(lorestan["eligible_households"])],
    )
    assert await page.text_content(cell("IR-15", "name")) == lorestan["name_fa"] == "لرستان"
    assert await page.text_content(cell("IR-15", "transactions")) == fa(0)
    assert await page.text_content("#total-eligible") == fa(12)
    assert await page.text_content("h1") == "کالابرگ الکترونیکی — آمار زنده"
    assert await page.locator("tr.top").count() == 0  # nobody served yet: no top five
    assert await page.locator("#map circle").count() == 31
    # an operator may pick a tranche
    assert await page.locator(f'#tranche option[value="{world.tranche_id}"]').count() == 1

    # a Solar Hijri date in Tehran: day, month and year as jdatetime computes them
    shown = await page.text_content("#clock-date") or ""
    today = {solar_hijri(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=s)) for s in (-5, 0)}
    assert any(
        f"{fa(d.day)} {d.j_months_fa[d.month - 1]} {d.year}".translate(PERSIAN_DIGITS) in shown
        for d in today
    ), shown

    # redemptions made through the signed API show up within a couple of seconds
    in_lorestan = [nid for nid, code in world.province.items() if code == "IR-15"]
    for nid in in_lorestan[:2]:
        resp = await world.terminal.redeem(nid, 1_500_000)
        assert resp.status == 201, resp.body
    started = time.monotonic()
    await page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.textContent === text",
        arg=[cell("IR-15", "transactions"), fa(2)],
        timeout=3000,
    )
    assert time.monotonic() - started < 3
    assert await page.text_content(cell("IR-15", "served")) == fa(2)
    assert await page.text_content("#total-amount") == fa(3_000_000)
    assert await page.text_content(cell("IR-15", "rank")) == fa(1)
    assert await page.locator("tr.top").count() == 1  # the top five who served anyone
    assert await page.get_attribute('tr[data-code="IR-15"]', "class") == "top"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.wait_for_timeout(1200)  # a sparkline sample or two
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # English after the switch: left to right, English names, Latin digits
    await page.click("#lang")
    assert await page.get_attribute("html", "lang") == "en"
    assert await page.get_attribute("html", "dir") == "ltr"
    assert await page.text_content("h1") == "Kalabarg electronic coupon — live counters"
    assert await page.text_content(cell("IR-15", "name")) == "Lorestan"
    assert await page.text_content(cell("IR-15", "transactions")) == en(2)
    assert await page.text_content("#total-amount") == en(3_000_000)
    shown = await page.text_content("#clock-date") or ""
    assert any(f"{d.day} {d.j_months_en[d.month - 1]} {d.year}" in shown for d in today), shown
    await page.screenshot(path=str(ARTIFACTS / "dashboard-en.png"), full_page=True)
    assert errors == []


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
