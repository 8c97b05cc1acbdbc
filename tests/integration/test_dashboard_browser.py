"""Both dashboard pages in a real browser (Debian's chromium, headless, driven by Playwright)
against a running `python -m dashboard`: every chart renders, filters change the URL and the
charts, the empty and error states say what is going on, and nothing is logged as an error.
The run also takes full-page screenshots of both pages and checks them, into a temporary folder;
`--screenshots-to dashboard` saves them as the README's pictures (dashboard/*.png) instead."""

from __future__ import annotations

import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.live import CHROMIUM_FLAGS
from dashboard.bench import fill
from lmnh.config import DatabaseSettings
from tests.integration.dashboard_support import (
    dashboard_db,
    dashboard_process,
    latest_eleven,
    sign_in_browser,
    store,
)
from tests.integration.support import Target

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH, HEIGHT = 1280, 800  # the browser's window, in CSS pixels
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The README's pictures are about 230 KB each; a blank or half-drawn page is a fraction of that.
MIN_SCREENSHOT_BYTES = 50_000
EXHIBITIONS_CHARTS = ["rating-over-time", "popularity", "top-rated"]
SAFETY_CHARTS = [
    "request-share",
    "requests-by-time-of-day",
    "requests-by-floor",
    "requests-by-exhibition",
    "request-heatmap",
]

if not Path(CHROMIUM).exists():
    pytest.skip(
        "Debian's chromium is not installed and could not be installed (run_tests.sh installs"
        " it with apt-get when run as root)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra)")


@pytest.fixture
def server(dashboard_db: DatabaseSettings, browser: sync_api.BrowserContext) -> Iterator[str]:
    """The dashboard over 30 days of generated history, plus a rating a minute old so that the
    data is fresh; its clock inside opening hours, so that the museum is open at any hour."""
    fill(dashboard_db, 20_000, 30)
    opened = latest_eleven(datetime.now(UTC))
    store(dashboard_db, [("EXH_02", 2, (opened - timedelta(minutes=1)).isoformat())])
    with dashboard_process(dashboard_db, "--clock-start", opened.isoformat()) as dashboard:
        sign_in_browser(browser, dashboard.url, dashboard.token)
        yield dashboard.url


@pytest.fixture
def browser() -> Iterator[sync_api.Browser]:
    with (
        tempfile.TemporaryDirectory(prefix="lmnh-chromium-") as profile,
        sync_api.sync_playwright() as playwright,
    ):
        # A persistent context is how Playwright takes a fresh --user-data-dir of our own.
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": WIDTH, "height": HEIGHT},
        )
        try:
            yield context  # type: ignore[misc]
        finally:
            context.close()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where the screenshots go: the test's temporary folder, or --screenshots-to DIR (relative
    to where pytest was started), which refreshes the README's pictures."""
    chosen: Path | None = request.config.getoption("--screenshots-to")
    if chosen is None:
        return tmp_path
    folder = request.config.invocation_params.dir / chosen
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: sync_api.Page, path: Path) -> None:
    """Save a full-page screenshot and check that it is a PNG of the whole page, drawn."""
    page.screenshot(path=path, full_page=True)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert width == WIDTH, f"{path} is {width} px wide"
    assert height >= HEIGHT, f"{path} is {height} px high: not the full page"
    assert len(data) >= MIN_SCREENSHOT_BYTES, f"{path} is {len(data)} bytes: a blank page?"


class Problems:
    """Console errors, uncaught exceptions and failed requests seen by a page."""

    def __init__(self, page: sync_api.Page) -> None:
        self.seen: list[str] = []
        page.on(
            "console",
            lambda message: (
                self.seen.append(f"console: {message.text}") if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: self.seen.append(f"page error: {error}"))
        page.on("requestfailed", self._failed)

    def _failed(self, request: sync_api.Request) -> None:
        # The Safety page's live stream is aborted by the browser whenever the page closes it:
        # on leaving the page, on a reload, on new filters. That is by design, not a failure.
        stream = request.url.split("?")[0].endswith("/api/now/stream")
        if not (stream and request.failure == "net::ERR_ABORTED"):
            self.seen.append(f"failed: {request.url} ({request.failure})")


def wait_for_cycle(page: sync_api.Page, after: int = 0) -> int:
    """Wait until the page has finished a load cycle later than `after`; return its number."""
    # A function, not an expression: the pages' policy forbids evaluating strings.
    loaded = f"() => Number(document.body.dataset.loaded || 0) > {after}"
    page.wait_for_function(loaded, timeout=20_000)
    return int(page.evaluate("document.body.dataset.loaded"))


def assert_all_rendered(page: sync_api.Page, charts: list[str]) -> None:
    for chart in charts:
        card = page.locator(f'[data-chart="{chart}"]')
        assert card.get_attribute("data-state") == "ready", card.inner_text()
        if chart == "top-rated":
            assert card.locator("tbody tr").count() >= 1
        else:
            # Vega draws each mark as SVG paths under a g.mark-* group.
            marks = card.locator(".body svg g[class^='mark-'] path")
            assert marks.count() > 0, f"{chart} drew no marks"


def test_both_pages_render_and_filter(
    server: str, browser: sync_api.Browser, screenshots: Path
) -> None:
    page = browser.new_page()
    problems = Problems(page)

    page.goto(f"{server}/exhibitions")
    cycle = wait_for_cycle(page)
    assert_all_rendered(page, EXHIBITIONS_CHARTS)
    assert page.locator("#banner").is_hidden(), "fresh data must not be called stale"
    assert "Updated" in page.locator("#status").inner_text()
    screenshot(page, screenshots / "exhibitions.png")

    # A filter goes into the URL and narrows every chart: the Vault holds one exhibition.
    page.locator("label.chip", has_text="Vault").click()
    cycle = wait_for_cycle(page, cycle)
    assert "floor=Vault" in page.url
    assert_all_rendered(page, EXHIBITIONS_CHARTS)
    assert page.locator('[data-chart="top-rated"] tbody tr').count() == 1
    assert "EXH_01" in page.locator('[data-chart="top-rated"] tbody').inner_text()

    # The link carries the filters over to the other page, as a shared link would.
    page.locator("nav a", has_text="Safety").click()
    page.wait_for_url("**/safety?floor=Vault")
    cycle = wait_for_cycle(page)
    assert page.locator("label.chip", has_text="Vault").locator("input").is_checked()
    assert_all_rendered(page, SAFETY_CHARTS)

    page.goto(f"{server}/safety")
    cycle = wait_for_cycle(page)
    assert_all_rendered(page, SAFETY_CHARTS)
    screenshot(page, screenshots / "safety.png")

    page.select_option('select[name="request"]', "emergency")
    cycle = wait_for_cycle(page, cycle)
    assert "request=emergency" in page.url
    assert_all_rendered(page, SAFETY_CHARTS)
    assert "Emergency 100.0%" in page.locator('[data-chart="request-share"] svg').inner_html()

    page.select_option('select[data-option="granularity"]', "quarter")
    cycle = wait_for_cycle(page, cycle)
    assert "granularity=quarter" in page.url
    assert_all_rendered(page, SAFETY_CHARTS)

    assert problems.seen == []


def test_empty_and_error_states_say_what_is_going_on(
    server: str, browser: sync_api.Browser
) -> None:
    page = browser.new_page()
    page.goto(f"{server}/safety?from=2020-01-01&to=2020-01-31")
    wait_for_cycle(page)
    for chart in SAFETY_CHARTS:
        card = page.locator(f'[data-chart="{chart}"]')
        assert card.get_attribute("data-state") == "empty"
        assert (
            "No requests match these filters (1 Jan 2020 \N{EN DASH} 31 Jan 2020)"
            in card.inner_text()
        )

    page.goto(f"{server}/exhibitions?hour_from=20&hour_to=9")
    wait_for_cycle(page)
    for chart in EXHIBITIONS_CHARTS:
        card = page.locator(f'[data-chart="{chart}"]')
        assert card.get_attribute("data-state") == "error"
        assert "hour_from 20 is after hour_to 9" in card.inner_text()


def test_pages_follow_the_simulated_stream_live(target: Target, browser: sync_api.Browser) -> None:
    """Kiosks -> Kafka -> pipeline -> PostgreSQL -> a page that refreshes itself every 2 s."""
    first = target.simulate("--backfill", "2", "--count", "400", "--seed", "11")
    target.pipeline()
    with dashboard_process(target.settings.database) as dashboard:
        url = dashboard.url
        sign_in_browser(browser, url, dashboard.token)
        page = browser.new_page()
        problems = Problems(page)
        page.goto(f"{url}/exhibitions?days=3&refresh=2")
        wait_for_cycle(page)
        assert_all_rendered(page, EXHIBITIONS_CHARTS)
        shown = page.locator('[data-chart="top-rated"] tbody').inner_text()
        stored = sum(first["ratings"][e][v] for e in first["ratings"] for v in first["ratings"][e])
        assert stored_ratings(page) == stored, shown

        more = target.simulate("--backfill", "2", "--count", "400", "--seed", "12")
        target.pipeline()
        stored += sum(more["ratings"][e][v] for e in more["ratings"] for v in more["ratings"][e])
        deadline = time.monotonic() + 15
        while stored_ratings(page) != stored:
            assert time.monotonic() < deadline, "the page did not pick up the new ratings"
            page.wait_for_timeout(250)
        assert problems.seen == []


def stored_ratings(page: sync_api.Page) -> int:
    """The ratings the top-rated table counts, summed over its exhibitions."""
    cells = page.locator('[data-chart="top-rated"] tbody td.num').all_inner_texts()
    return sum(int(cell.replace(",", "")) for cell in cells)
