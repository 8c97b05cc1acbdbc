"""The Safety page's live "Now" panel in a real browser (Debian's chromium via Playwright)
against a running `python -m dashboard` whose clock starts inside opening hours: requests stored
in PostgreSQL after the page loaded appear without a reload, an emergency is alerted in text, in
the title and, once switched on, with a tone; the panel follows the page's filters, says when it
is offline or cannot hear the database and recovers; and the freshness banner knows the
museum's opening hours."""

from __future__ import annotations

import random
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from lmnh.config import DatabaseSettings
from lmnh.museum import LONDON, OPENS
from tests.integration import test_dashboard_browser
from tests.integration.dashboard_support import (
    Interaction,
    dashboard_db,
    dashboard_process,
    sign_in_browser,
    store,
)
from tests.integration.silent import require_nft, silenced
from tests.integration.test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    PNG_SIGNATURE,
    browser,
    screenshot,
    screenshots,
    sync_api,
    wait_for_cycle,
)

pytestmark = pytest.mark.integration
__all__ = ["browser", "dashboard_db", "screenshots"]

# A Wednesday mid-morning in November (London is on GMT): the museum is open.
OPEN_AT = "2026-11-25T11:00:00+00:00"
CLOCK_OPEN = ("--clock-start", OPEN_AT)
TITLE = "Safety \N{MIDDLE DOT} LMNH live dashboard"
WAIT_MS = 10_000  # a request reaches the page within about a second; this is the test's patience
START_MS = 30_000  # a server starting, and the page's EventSource retrying every 3 s
NOT_LIVE_MS = 10_000  # the listener is judged deaf after 5 s unheard; the page says so at once
expect = sync_api.expect


def at(clock_time: str) -> str:
    """An instant on the test's day, written in UTC (London's clock in November)."""
    return f"{OPEN_AT[:10]}T{clock_time}+00:00"


def history(days: int = 28) -> list[Interaction]:
    """Requests over the opening hours of the days before the test's day, so that the charts
    under the panel have something to draw; none falls in the panel's window."""
    rng = random.Random(25)
    first_day = date.fromisoformat(OPEN_AT[:10])
    rows = []
    for back in range(1, days + 1):
        opens = datetime.combine(first_day - timedelta(days=back), OPENS, LONDON)
        for _ in range(30):
            when = opens + timedelta(seconds=rng.randrange(9 * 3600))
            exhibition = rng.choice(["EXH_00", "EXH_01", "EXH_02", "EXH_03", "EXH_04", "EXH_05"])
            rows.append((exhibition, int(rng.random() < 0.15), when.isoformat()))
    return rows


def open_safety(page: sync_api.Page, url: str) -> sync_api.Locator:
    """Load the Safety page and wait until its charts have loaded and the panel is live."""
    page.goto(url)
    wait_for_cycle(page)
    panel = page.locator("#now")
    expect(panel).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return panel


def item(panel: sync_api.Locator, public_id: str) -> sync_api.Locator:
    return panel.locator(".now-item", has_text=public_id)


def assert_still_when_asked(page: sync_api.Page, alert: sync_api.Locator) -> None:
    """The alert pulses, unless the reader has asked for less motion; it stays asked."""
    animation = "element => getComputedStyle(element).animationName"
    assert alert.evaluate(animation) == "now-pulse"
    page.emulate_media(reduced_motion="reduce")
    assert alert.evaluate(animation) == "none"


def test_an_emergency_appears_alerted_and_acknowledged(
    dashboard_db: DatabaseSettings, browser: sync_api.BrowserContext, screenshots: Path
) -> None:
    store(dashboard_db, requests=[*history(), ("EXH_00", 0, at("10:55:00"))])
    with dashboard_process(dashboard_db, *CLOCK_OPEN) as server:
        sign_in_browser(browser, server.url, server.token)
        page = browser.new_page()
        problems = test_dashboard_browser.Problems(page)
        panel = open_safety(page, f"{server.url}/safety")
        expect(page.get_by_role("region", name="Now")).to_be_visible()
        assistance = item(panel, "EXH_00")
        expect(assistance).to_have_attribute("data-type", "assistance")
        expect(assistance).to_contain_text("Assistance")
        expect(assistance).to_contain_text("10:55:00")
        expect(assistance.locator(".now-ago")).to_contain_text("min ago")  # the server's clock
        assert page.title() == TITLE
        expect(panel.locator(".now-alert")).to_be_empty()

        store(dashboard_db, requests=[("EXH_03", 1, at("11:00:10"))])
        whale = item(panel, "EXH_03")
        expect(whale).to_have_attribute("data-type", "emergency", timeout=WAIT_MS)
        event_at = whale.get_attribute("data-event-at") or ""
        assert datetime.fromisoformat(event_at) == datetime.fromisoformat(at("11:00:10"))
        assert (whale.get_attribute("data-request-id") or "").isdigit()
        expect(whale).to_contain_text("Emergency")
        expect(whale).to_contain_text("Cetacean Sensations")
        expect(whale).to_contain_text("Floor 1")
        alert = page.get_by_role("alert").filter(has_text="Emergency at")
        expect(alert).to_contain_text(
            "Emergency at EXH_03 Cetacean Sensations, floor 1, at 11:00:10 London time."
        )
        expect(page).to_have_title(f"(1) ⚠ {TITLE}")

        store(dashboard_db, requests=[("EXH_04", 1, at("11:00:20"))])
        polluted = item(panel, "EXH_04")
        expect(polluted).to_contain_text("Floor 3", timeout=WAIT_MS)
        expect(page).to_have_title(f"(2) ⚠ {TITLE}")
        expect(alert).to_contain_text("EXH_04 Our Polluted World")
        expect(alert).to_contain_text("2 open emergencies in all")
        newest_first = panel.locator('[data-list="emergency"] .now-item').all_inner_texts()
        assert ["EXH_04" in text for text in newest_first] == [True, False]
        assert_still_when_asked(page, alert)  # a still picture, too
        screenshot(page, screenshots / "now.png")

        polluted.get_by_role("button", name="Acknowledge").click()
        expect(page).to_have_title(f"(1) ⚠ {TITLE}")
        expect(polluted).to_contain_text("Acknowledged")
        expect(polluted.get_by_role("button")).to_have_count(0)
        expect(alert).to_contain_text("EXH_03")

        # Acknowledged on this screen: still so after a reload.
        page.reload()
        expect(panel).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(item(panel, "EXH_04")).to_contain_text("Acknowledged")
        expect(page).to_have_title(f"(1) ⚠ {TITLE}")
        item(panel, "EXH_03").get_by_role("button", name="Acknowledge").click()
        expect(page).to_have_title(TITLE)
        expect(panel.locator(".now-alert")).to_be_empty()
        assert problems.seen == []


def test_the_sound_is_off_until_switched_on(
    dashboard_db: DatabaseSettings, browser: sync_api.BrowserContext
) -> None:
    with dashboard_process(dashboard_db, *CLOCK_OPEN) as server:
        sign_in_browser(browser, server.url, server.token)
        page = browser.new_page()
        problems = test_dashboard_browser.Problems(page)
        panel = open_safety(page, f"{server.url}/safety")
        sound = panel.get_by_role("button", name="Alert sound")
        expect(sound).to_have_attribute("aria-pressed", "false")

        sound.click()
        expect(sound).to_have_attribute("aria-pressed", "true")
        expect(sound.locator(".now-sound-note")).to_be_empty()  # the click started the audio
        store(dashboard_db, requests=[("EXH_03", 1, at("11:00:10"))])
        expect(item(panel, "EXH_03")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("body")).to_have_attribute("data-tones-played", "1")

        # Remembered; the browser lets it play only after a click on the new page.
        page.reload()
        expect(panel).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(sound).to_have_attribute("aria-pressed", "true")
        expect(sound).to_contain_text("blocked by the browser")
        page.locator("#now-title").click()
        expect(sound.locator(".now-sound-note")).to_be_empty()
        expect(page.locator("body")).to_have_attribute("data-tones-played", "0")
        store(dashboard_db, requests=[("EXH_02", 1, at("11:00:20"))])
        expect(item(panel, "EXH_02")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("body")).to_have_attribute("data-tones-played", "1")

        sound.click()
        expect(sound).to_have_attribute("aria-pressed", "false")
        store(dashboard_db, requests=[("EXH_04", 1, at("11:00:30"))])
        expect(item(panel, "EXH_04")).to_be_visible(timeout=WAIT_MS)
        expect(page).to_have_title(f"(3) ⚠ {TITLE}")
        assert page.locator("body").get_attribute("data-tones-played") == "1"
        assert problems.seen == []


def test_the_panel_follows_the_filters(
    dashboard_db: DatabaseSettings, browser: sync_api.BrowserContext
) -> None:
    with dashboard_process(dashboard_db, *CLOCK_OPEN) as server:
        sign_in_browser(browser, server.url, server.token)
        page = browser.new_page()
        problems = test_dashboard_browser.Problems(page)
        panel = open_safety(page, f"{server.url}/safety?floor=2")
        # Stored one after the other: by the time the second is shown, the first was heard.
        store(dashboard_db, requests=[("EXH_03", 1, at("11:00:10"))])  # floor 1
        store(dashboard_db, requests=[("EXH_02", 1, at("11:00:20"))])  # floor 2
        expect(item(panel, "EXH_02")).to_be_visible(timeout=WAIT_MS)
        expect(item(panel, "EXH_03")).to_have_count(0)
        expect(page).to_have_title(f"(1) ⚠ {TITLE}")

        # Another floor ticked: the panel reconnects with the new filters.
        page.locator("label.chip", has_text="Floor 1").click()
        expect(item(panel, "EXH_03")).to_be_visible(timeout=WAIT_MS)
        expect(page).to_have_title(f"(2) ⚠ {TITLE}")
        assert "floor=1&floor=2" in page.url

        page.select_option('select[name="request"]', "assistance")
        expect(panel.locator('[data-type="emergency"]')).to_have_count(0, timeout=WAIT_MS)
        expect(page).to_have_title(TITLE)
        store(dashboard_db, requests=[("EXH_05", 0, at("11:00:30")), ("EXH_05", 1, at("11:00:31"))])
        expect(item(panel, "EXH_05")).to_have_attribute("data-type", "assistance", timeout=WAIT_MS)
        expect(item(panel, "EXH_05")).to_have_count(1)
        assert problems.seen == []

        # A hand-edited address the server cannot read is said, not retried for ever.
        page.goto(f"{server.url}/safety?request=both")
        expect(panel).to_have_attribute("data-state", "error", timeout=WAIT_MS)
        expect(panel.locator(".now-connection")).to_have_text(
            "The filters cannot be read: request='both' must be assistance or emergency."
        )


def test_the_panel_says_offline_and_recovers(
    dashboard_db: DatabaseSettings, browser: sync_api.BrowserContext
) -> None:
    # Something shown, so that the browser has a last request id to reconnect with.
    store(dashboard_db, requests=[("EXH_00", 0, at("10:50:00"))])
    with dashboard_process(dashboard_db, *CLOCK_OPEN) as server:
        sign_in_browser(browser, server.url, server.token)
        page = browser.new_page()
        panel = open_safety(page, f"{server.url}/safety")

        server.process.kill()
        expect(panel).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
        expect(panel.locator(".now-connection")).to_contain_text(
            "Offline — reconnecting… (since 11:0"
        )
        # Stored while the panel could not hear: alerted as new once it is back.
        store(dashboard_db, requests=[("EXH_03", 1, at("11:00:40"))])
        # A new server at the same address.
        with dashboard_process(dashboard_db, *CLOCK_OPEN, port=server.port):
            expect(panel).to_have_attribute("data-state", "live", timeout=START_MS)
            expect(item(panel, "EXH_03")).to_contain_text("Emergency")
            expect(item(panel, "EXH_00")).to_have_count(1)
            expect(page.locator(".now-alert")).to_contain_text("EXH_03 Cetacean Sensations")
            expect(page).to_have_title(f"(1) ⚠ {TITLE}")


def test_the_panel_never_says_live_while_the_database_is_silent(
    dashboard_db: DatabaseSettings, browser: sync_api.BrowserContext, screenshots: Path
) -> None:
    """Every packet of the server's connections to PostgreSQL dropped, nothing closed: the
    web server still ticks, but the panel says "Reconnecting" within seconds; once the
    listener hears again on a new connection, it is live with the emergency it missed."""
    require_nft()
    store(dashboard_db, requests=[("EXH_00", 0, at("10:50:00"))])
    with dashboard_process(dashboard_db, *CLOCK_OPEN) as server:
        sign_in_browser(browser, server.url, server.token)
        page = browser.new_page()
        panel = open_safety(page, f"{server.url}/safety")
        connection = panel.locator(".now-connection")
        with silenced(server.process.pid, [dashboard_db.port]):
            started = time.monotonic()
            store(dashboard_db, requests=[("EXH_03", 1, at("11:00:40"))])
            expect(panel).to_have_attribute("data-state", "reconnecting", timeout=NOT_LIVE_MS)
            not_live_s = time.monotonic() - started
            expect(connection).to_contain_text("Reconnecting… not live since 11:0")
            panel.screenshot(path=screenshots / "now-reconnecting.png")
            assert (screenshots / "now-reconnecting.png").read_bytes()[:8] == PNG_SIGNATURE
            expect(panel).to_have_attribute("data-state", "live", timeout=START_MS)
            live_s = time.monotonic() - started
            expect(connection).to_have_text("Live")
            expect(page.locator(".now-alert")).to_contain_text("EXH_03 Cetacean Sensations")
            shown_s = time.monotonic() - started
        expect(item(panel, "EXH_03")).to_contain_text("Emergency")
        expect(item(panel, "EXH_00")).to_have_count(1)
        expect(page).to_have_title(f"(1) ⚠ {TITLE}")
        print(
            f"not live after {not_live_s:.1f} s, live after {live_s:.1f} s, the missed"
            f" emergency shown after {shown_s:.1f} s; {screenshots / 'now-reconnecting.png'}"
        )


@pytest.mark.parametrize(
    ("clock_start", "kind", "said"),
    [
        (
            "2026-11-25T20:00:00+00:00",
            "closed",
            "The museum is closed; kiosks are quiet until it opens at 08:45 on Thu 26 Nov."
            " Latest interaction at 17:30 today.",
        ),
        (
            "2026-11-26T07:00:00+00:00",
            "closed",
            "The museum is closed; kiosks are quiet until it opens at 08:45 today."
            " Latest interaction at 17:30 on Wed 25 Nov.",
        ),
        (
            "2026-11-26T11:00:00+00:00",
            "stale",
            "Stale data: no new interaction for 17 h 30 min (latest at 25 Nov, 17:30).",
        ),
    ],
    ids=["evening", "early-morning", "open"],
)
def test_the_banner_knows_the_opening_hours(
    dashboard_db: DatabaseSettings,
    browser: sync_api.BrowserContext,
    clock_start: str,
    kind: str,
    said: str,
) -> None:
    """Quiet kiosks outside opening hours are normal: said calmly, with when the museum opens;
    the same silence during opening hours is the stale-data warning."""
    store(dashboard_db, ratings=[("EXH_01", 3, at("17:30:00"))])
    with dashboard_process(dashboard_db, "--clock-start", clock_start) as server:
        sign_in_browser(browser, server.url, server.token)
        page = browser.new_page()
        page.goto(f"{server.url}/exhibitions")
        wait_for_cycle(page)
        banner = page.locator("#banner")
        expect(banner).to_have_attribute("data-kind", kind)
        expect(banner).to_contain_text(said)


PHONE = {"width": 390, "height": 844}
TOUCH_TARGET_PX = 44  # WCAG 2.5.5


def test_on_a_phone_the_safety_page_fits_and_an_emergency_is_acknowledged_by_touch(
    dashboard_db: DatabaseSettings, screenshots: Path
) -> None:
    """A guard on the floor, with a 390 px phone: no sideways scrolling anywhere on the page,
    the Now panel's cards and buttons inside the screen, a thumb-sized Acknowledge that a tap
    works."""
    store(dashboard_db, requests=[*history(), ("EXH_00", 0, at("10:55:00"))])
    with (
        dashboard_process(dashboard_db, *CLOCK_OPEN) as server,
        sync_api.sync_playwright() as playwright,
    ):
        phone = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = phone.new_context(
                viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
            )
            sign_in_browser(context, server.url, server.token)
            page = context.new_page()
            problems = test_dashboard_browser.Problems(page)
            panel = open_safety(page, f"{server.url}/safety")
            store(dashboard_db, requests=[("EXH_03", 1, at("11:00:10"))])
            whale = item(panel, "EXH_03")
            expect(whale).to_have_attribute("data-type", "emergency", timeout=WAIT_MS)
            wait_for_cycle(page)
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            for element in (whale, panel.locator(".now-alert"), page.locator(".card").first):
                box = element.bounding_box()
                assert box is not None and box["x"] >= 0, element
                assert box["x"] + box["width"] <= PHONE["width"], element
            button = whale.locator(".now-ack")
            box = button.bounding_box()
            assert box is not None and box["height"] >= TOUCH_TARGET_PX, box
            assert box["x"] + box["width"] <= PHONE["width"], box
            page.locator("#now").screenshot(path=screenshots / "now-phone.png")
            button.tap()
            expect(whale).to_have_attribute("data-open", "false")
            assert problems.seen == []
        finally:
            phone.close()
