"""The Feed page in a real browser (Debian's chromium, as test_dashboard_browser.py drives it)
against a running `python -m dashboard`: every section renders with a day of made-up traffic,
the window lives in the URL, a window that cannot be read says so, and raw rejected messages
built to attack the page (markup, script, `javascript:` URLs, bidirectional and zero-width
characters, bytes that are not UTF-8, NUL) are shown as text: no dialog opens, no element of
theirs exists, and their text is on the page as the API shows it. The run also takes a
screenshot of the page (feed.png: see the `screenshots` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from dashboard.feed import show_raw
from lmnh.config import DatabaseSettings
from lmnh.database import connect
from tests.integration.dashboard_support import (
    dashboard_db,
    dashboard_process,
    query,
    sign_in_browser,
    store,
)
from tests.integration.test_dashboard_browser import (
    Problems,
    browser,
    screenshot,
    screenshots,
    sync_api,
    wait_for_cycle,
)

pytestmark = pytest.mark.integration
__all__ = ["browser", "dashboard_db", "screenshots"]

SECTIONS = ["pipeline", "rejected", "exhibitions", "latest"]
REASONS = ["invalid_json", "out_of_hours", "invalid_site", "missing_val", "future_at"]
# (raw value, reason code, reason, named exhibition, Kafka topic), the newest last.
HOSTILE = [
    (b"<img src=x onerror=alert(1)>", "invalid_json", "<img src=x onerror=alert(2)>", None, "k"),
    (b'<script>alert("script")</script>', "invalid_json", "why", None, "<b>topic</b>"),
    (b"</textarea><svg onload=alert(3)><textarea>", "invalid_json", "why", "<i>x</i>", "k"),
    (b'{"site": "javascript:alert(4)", "val": 1}', "invalid_site", "why", None, "k"),
    (b'<a href="javascript:alert(5)">open</a>', "invalid_json", "why", None, "k"),
    ("\u202egnp.exe\u200b<b>zero</b>\u2066width".encode(), "invalid_json", "why", None, "k"),
    (b"\xff\xfe\xc3(<i>not utf-8</i>\xe2\x82", "invalid_encoding", "why", None, "k"),
    (b'{"at": "\x00<b>nul</b>", "site": "1"}', "invalid_json", "why", "EXH_01", "k"),
    (None, "empty", "the record had no value", None, "k"),
]
# What the page's script creates in the table of latest messages: nothing else may appear.
LATEST_TAGS = {"TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "STRONG", "SPAN", "PRE", "P"}


def fill_a_day(database: DatabaseSettings) -> None:
    """A day of traffic at times relative to the database's clock: interactions and rejects
    every hour (the kiosk of EXH_04 going bad over the last four hours), the pipeline's load
    for the last hour, three partitions' offsets, and the hostile messages, received last."""
    [(now,)] = query(database, "SELECT now()")
    now = now.astimezone(UTC)
    ratings = []
    for hours_ago in range(24):
        at = (now - timedelta(hours=hours_ago, minutes=7)).isoformat()
        for n, public_id in enumerate(["EXH_00", "EXH_01", "EXH_02", "EXH_03", "EXH_04", "EXH_05"]):
            ratings += [(public_id, (hours_ago + n) % 5, at)] * (6 + (hours_ago * 7 + n * 3) % 11)
    store(database, ratings)
    rejects: list[tuple[object, ...]] = []
    for hours_ago in range(24):
        received = now - timedelta(hours=hours_ago, minutes=3)
        for n, reason in enumerate(REASONS):
            rejects += [(b'{"site": "9"}', reason, "why", None, "kiosks", received)] * (
                (hours_ago + n * 2) % 4
            )
        if hours_ago < 4:
            rejects += [
                (b'{"site": "4", "val": 9}', "invalid_val", "why", "EXH_04", "kiosks", received)
            ] * (12 - hours_ago * 2)
    for seconds_ago, hostile in zip(range(len(HOSTILE), 0, -1), HOSTILE, strict=True):
        rejects.append((*hostile, now - timedelta(seconds=seconds_ago)))
    conn = connect(database)
    try:
        with conn, conn.cursor() as cur:
            for offset, (raw, code, reason, site, topic, received) in enumerate(rejects):
                cur.execute(
                    "INSERT INTO rejected_message (raw, reason_code, reason, kafka_topic,"
                    " kafka_partition, kafka_offset, received_at, named_exhibition)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (raw, code, reason, topic, offset % 3, offset, received, site),
                )
            current = now.replace(second=0, microsecond=0)
            for minutes_ago in range(61):
                for partition in range(3):
                    cur.execute(
                        "INSERT INTO load_minute VALUES (%s, 'kiosks', %s, %s)",
                        (
                            current - timedelta(minutes=minutes_ago),
                            partition,
                            40 + (minutes_ago * 13 + partition * 7) % 50,
                        ),
                    )
            for partition, lag in ((0, 0), (1, 3), (2, 0)):
                cur.execute(
                    "INSERT INTO kafka_offset (kafka_topic, kafka_partition, next_offset,"
                    " high_watermark, updated_at) VALUES ('kiosks', %s, %s, %s, %s)",
                    (
                        partition,
                        9_000 + partition,
                        9_000 + partition + lag,
                        now - timedelta(seconds=4),
                    ),
                )
    finally:
        conn.close()


@pytest.fixture
def feed_server(dashboard_db: DatabaseSettings, browser: sync_api.BrowserContext) -> Iterator[str]:
    """The dashboard over a day of traffic, with the pipeline connected."""
    fill_a_day(dashboard_db)
    pipeline = connect(dashboard_db, application_name="lmnh-pipeline")
    try:
        with dashboard_process(dashboard_db) as dashboard:
            sign_in_browser(browser, dashboard.url, dashboard.token)
            yield dashboard.url
    finally:
        pipeline.close()


def assert_sections(page: sync_api.Page, states: dict[str, str]) -> None:
    for section, state in states.items():
        card = page.locator(f'[data-section="{section}"]')
        assert card.get_attribute("data-state") == state, card.inner_text()


def test_the_feed_renders_and_shows_hostile_messages_as_text(
    feed_server: str, dashboard_db: DatabaseSettings, browser: sync_api.Browser, screenshots: Path
) -> None:
    # The last batches were just stored: however long the set-up took, the pipeline is running
    # (messages waiting at a batch over a minute old would make it stalled).
    query(dashboard_db, "UPDATE kafka_offset SET updated_at = now()")
    page = browser.new_page()
    problems = Problems(page)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(f"{feed_server}/feed")
    cycle = wait_for_cycle(page)
    assert_sections(page, dict.fromkeys(SECTIONS, "ready"))
    assert page.locator(".badge").inner_text().strip() == "● Running"
    assert page.locator("#banner").is_hidden()
    for section in ("pipeline", "rejected", "exhibitions"):
        marks = page.locator(f'[data-section="{section}"] svg g[class^="mark-"] path')
        assert marks.count() > 0, f"{section} drew no marks"
    rates = page.locator('[data-section="exhibitions"] table.rates tbody tr').first.inner_text()
    assert rates.startswith("EXH_04"), "the kiosk going bad is listed first"
    screenshot(page, screenshots / "feed.png")

    latest = page.locator('[data-section="latest"] tbody')
    assert latest.locator("tr").count() == 50
    shown = latest.locator("pre.raw").all_text_contents()
    for raw, *_ in HOSTILE:
        if raw is not None:
            assert show_raw(raw, len(raw)).text in shown, raw
    text = latest.inner_text()
    assert "no value: the Kafka record had none" in text
    assert "<img src=x onerror=alert(2)>" in text  # a hostile reason
    assert "<b>topic</b>[" in text  # a hostile topic
    assert "<i>x</i>" in text  # a hostile named exhibition
    tags = set(
        page.eval_on_selector_all(
            '[data-section="latest"] .body *', "els => els.map(e => e.tagName)"
        )
    )
    assert tags <= LATEST_TAGS, tags - LATEST_TAGS
    for injected in (
        "img",
        "svg[onload]",
        "textarea",
        "a[href^='javascript']",
        "script:not([src])",
    ):
        assert page.locator(injected).count() == 0, injected
    # vega, vega-lite, vega-interpreter, the pages' shared script and its own
    assert page.locator("script").count() == 5

    # The window is in the URL; the charts follow it.
    page.select_option('select[name="window"]', "1h")
    cycle = wait_for_cycle(page, cycle)
    assert page.url.endswith("/feed?window=1h")
    assert page.locator('[data-section="rejected"] [data-bucket]').inner_text() == "minute"
    assert_sections(page, dict.fromkeys(SECTIONS, "ready"))
    assert dialogs == []
    assert problems.seen == []


def test_a_window_that_cannot_be_read_and_a_stopped_pipeline_say_so(
    dashboard_db: DatabaseSettings, browser: sync_api.Browser
) -> None:
    query(
        dashboard_db,
        "INSERT INTO kafka_offset (kafka_topic, kafka_partition, next_offset, updated_at)"
        " VALUES ('kiosks', 0, 10, now() - interval '3 hours')",
    )
    with dashboard_process(dashboard_db) as dashboard:
        url = dashboard.url
        sign_in_browser(browser, url, dashboard.token)
        page = browser.new_page()
        page.goto(f"{url}/feed?window=2h")
        wait_for_cycle(page)
        assert_sections(page, {"rejected": "error", "exhibitions": "error", "latest": "empty"})
        state = page.locator('[data-section="rejected"] .state').inner_text()
        assert "window='2h' must be one of 1h, 24h, 7d" in state
        assert page.locator(".badge").inner_text().strip() == "■ Stopped"
        banner = page.locator("#banner")
        assert banner.is_visible()
        assert banner.inner_text().startswith("The pipeline is stopped: no pipeline is connected")
        assert "It last stored a batch at" in banner.inner_text()
        assert (
            "No rejected message is stored yet."
            in page.locator('[data-section="latest"]').inner_text()
        )
