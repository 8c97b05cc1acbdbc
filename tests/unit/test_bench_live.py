"""The live benchmark's pure parts: the pretend clock and its start, the emergencies' schedule
and messages, matching what the pages saw to what was produced, the memory slope, the
report and the checks that make a run wrong."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.live import (
    BACKGROUND_MIX,
    NOW_PANEL,
    OBSERVER_SCRIPT,
    PretendClock,
    Sighting,
    choose_clock_start,
    emergency_message,
    emergency_offsets,
    interval_s,
    latency_figures,
    latency_results,
    match_sightings,
    parse_args,
    problems_of,
    render_live,
    rss_figures,
    slope_per_minute,
    vm_rss_kib,
)
from bench.local import BenchError
from lmnh.events import RequestEvent
from lmnh.museum import KIOSK_REFERENCE, LONDON, in_opening_hours
from lmnh.validation import validate
from simulator.traffic import LiveFeed

HOUR = timedelta(hours=1)


def london(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=LONDON)


WEDNESDAY = date(2026, 11, 25)
SPRING_FORWARD = date(2026, 3, 29)  # London goes from GMT to BST at 01:00 UTC
FALL_BACK = date(2026, 10, 25)


# The pretend clock's start --------------------------------------------------------------


def test_while_open_with_time_to_spare_the_pretend_clock_is_the_real_one() -> None:
    now = london(WEDNESDAY, 14, 30)
    assert choose_clock_start(now, HOUR) == now


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (london(WEDNESDAY, 17, 30), london(WEDNESDAY, 11)),  # open, but closing within the hour
        (london(WEDNESDAY, 20, 0), london(WEDNESDAY, 11)),  # closed for the night
        (london(WEDNESDAY, 8, 0), london(WEDNESDAY - timedelta(days=1), 11)),  # not open yet
        (london(WEDNESDAY, 0, 30), london(WEDNESDAY - timedelta(days=1), 11)),
        # The morning after the clocks went forward: yesterday's 11:00 was GMT.
        (london(SPRING_FORWARD + timedelta(days=1), 7), london(SPRING_FORWARD, 11)),
    ],
)
def test_otherwise_it_is_the_latest_eleven_oclock_in_london(
    now: datetime, expected: datetime
) -> None:
    assert choose_clock_start(now, HOUR) == expected


def test_a_run_longer_than_the_rest_of_the_day_falls_back_too() -> None:
    now = london(WEDNESDAY, 14, 30)
    assert choose_clock_start(now, timedelta(hours=5)) == london(WEDNESDAY, 11)


def test_a_run_longer_than_a_museum_day_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        choose_clock_start(london(WEDNESDAY, 20), timedelta(hours=8))


@given(
    now=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    minutes=st.integers(min_value=1, max_value=6 * 60),
)
def test_the_whole_run_is_in_the_past_and_inside_opening_hours(now: datetime, minutes: int) -> None:
    needed = timedelta(minutes=minutes)
    start = choose_clock_start(now, needed)
    assert start <= now
    assert in_opening_hours(start)
    assert in_opening_hours(start.astimezone(UTC) + needed)
    assert (
        start.astimezone(LONDON).date()
        == (start.astimezone(UTC) + needed).astimezone(LONDON).date()
    ), "the run must not cross midnight: the panel lists today's emergencies"


# The pretend clock -----------------------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_pretend_clock_runs_at_real_speed_from_its_start() -> None:
    monotonic = FakeMonotonic()
    start = london(WEDNESDAY, 11)
    clock = PretendClock(start, 100.0, monotonic)
    assert clock.now() == start
    monotonic.now = 102.5
    assert clock.now() == start + timedelta(seconds=2.5)
    assert clock.now().tzinfo is LONDON


def test_the_pretend_clock_never_gives_the_same_instant_twice() -> None:
    monotonic = FakeMonotonic()
    clock = PretendClock(london(FALL_BACK, 11), 100.0, monotonic)
    stamps = [clock.now() for _ in range(1000)]  # the monotonic clock does not move
    assert len(set(stamps)) == len(stamps)
    assert stamps == sorted(stamps)
    assert stamps[-1] - stamps[0] == timedelta(microseconds=999)


# Emergencies --------------------------------------------------------------------------------


def test_emergencies_are_spaced_with_jitter_around_the_interval() -> None:
    offsets = emergency_offsets(240, 0.5, seed=1)
    gaps = [b - a for a, b in pairwise(offsets)]
    assert len(offsets) == 240
    assert offsets[0] == 0.0
    assert all(0.25 <= gap <= 0.75 for gap in gaps)
    assert 0.45 < sum(gaps) / len(gaps) < 0.55
    assert max(gaps) - min(gaps) > 0.3, "the gaps must vary"
    assert emergency_offsets(240, 0.5, seed=1) == offsets
    assert emergency_offsets(240, 0.5, seed=2) != offsets


def test_an_emergency_message_is_one_the_pipeline_stores_as_an_emergency() -> None:
    at = london(WEDNESDAY, 11, 0) + timedelta(microseconds=123456)
    sites = set()
    for number in range(6):
        value = emergency_message(at, number)
        outcome = validate(value, KIOSK_REFERENCE, at + timedelta(seconds=1))
        assert isinstance(outcome, RequestEvent), outcome
        assert outcome.request_value == 1
        assert outcome.at == at
        sites.add(json.loads(value)["site"])
    assert sites == {"0", "1", "2", "3", "4", "5"}


def test_the_background_traffic_carries_no_emergency() -> None:
    feed = LiveFeed(1, BACKGROUND_MIX)
    now = london(WEDNESDAY, 12)
    for _ in range(20_000):
        outcome = validate(feed.message(now).value, KIOSK_REFERENCE, now)
        assert not (isinstance(outcome, RequestEvent) and outcome.request_value == 1)


# What the pages saw -------------------------------------------------------------------------

AT = [london(WEDNESDAY, 11) + timedelta(seconds=n, microseconds=n) for n in range(3)]
PRODUCED = {at: 1_700_000_000.0 + n for n, at in enumerate(AT)}


def sighting(at: str, shown_ms: float, request_id: str = "1") -> Sighting:
    return Sighting(request_id, at, shown_ms)


def test_each_emergency_is_matched_by_its_instant_whatever_the_offset_it_is_written_in() -> None:
    seen = [
        sighting(AT[0].astimezone(UTC).isoformat(), 1_700_000_000_250.0),
        sighting(AT[1].astimezone(LONDON).isoformat(), 1_700_000_001_500.0),
        sighting(AT[2].astimezone(UTC).isoformat().replace("+00:00", "Z"), 1_700_000_002_125.5),
    ]
    latencies, missing = match_sightings(PRODUCED, seen)
    assert latencies == {AT[0]: 250.0, AT[1]: 500.0, AT[2]: 125.5}
    assert missing == []


def test_the_first_sighting_counts_and_other_requests_are_ignored() -> None:
    other = (AT[0] + timedelta(microseconds=1)).isoformat()  # not one of ours
    seen = [
        sighting(AT[0].isoformat(), 1_700_000_000_900.0, "7"),
        sighting(AT[0].isoformat(), 1_700_000_000_300.0, "7"),  # redrawn after a reconnect
        sighting(other, 1_700_000_000_100.0, "8"),
    ]
    latencies, missing = match_sightings(PRODUCED, seen)
    assert latencies == {AT[0]: 300.0}
    assert missing == [AT[1], AT[2]]


@pytest.mark.parametrize("written", ["", "11:00:00", "2026-11-25T11:00:00"])
def test_an_item_without_an_instant_is_a_page_bug(written: str) -> None:
    with pytest.raises(BenchError, match="data-event-at"):
        match_sightings(PRODUCED, [sighting(written, 0.0)])


def test_latency_figures_and_the_target() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100 ms
    figures = latency_figures(values, missing=0)
    assert figures == {
        "n": 100,
        "missing": 0,
        "p50_ms": 50.0,
        "p99_ms": 99.0,
        "max_ms": 100.0,
        "mean_ms": 50.5,
        "target_met": True,
    }
    assert latency_figures([*values, 2500.0, 2600.0], 0)["target_met"] is False  # p99 2.5 s
    assert latency_figures(values, missing=1)["target_met"] is False
    assert latency_figures([], missing=3) == {"n": 0, "missing": 3, "target_met": False}


def test_per_emergency_the_first_and_the_last_page_to_show_it() -> None:
    per_page = [
        ({AT[0]: 100.0, AT[1]: 900.0}, [AT[2]]),
        ({AT[0]: 300.0, AT[1]: 200.0, AT[2]: 2500.0}, []),
    ]
    figures = latency_results(per_page, [True, False], AT)
    assert [page["n"] for page in figures["pages"]] == [2, 3]
    assert [page["live_at_end"] for page in figures["pages"]] == [True, False]
    assert figures["latency"]["n"] == 5
    assert figures["latency"]["missing"] == 1
    assert figures["missing"] == [f"0 {AT[2].isoformat()}"]
    # The first page to show each: 100, 200, 2500; the last, only where both did: 300, 900.
    assert (figures["first_page"]["n"], figures["first_page"]["max_ms"]) == (3, 2500.0)
    assert figures["first_page"]["missing"] == 0
    assert (figures["last_page"]["n"], figures["last_page"]["max_ms"]) == (2, 900.0)
    assert figures["last_page"]["missing"] == 1
    assert figures["by_emergency"] == [
        {"at": AT[0].isoformat(), "pages": 2, "first_ms": 100.0, "last_ms": 300.0},
        {"at": AT[1].isoformat(), "pages": 2, "first_ms": 200.0, "last_ms": 900.0},
        {"at": AT[2].isoformat(), "pages": 1, "first_ms": 2500.0, "last_ms": 2500.0},
    ]


def test_an_emergency_no_page_showed_has_no_first_page() -> None:
    figures = latency_results([({}, [AT[0]])], [True], AT[:1])
    assert figures["first_page"] == {"n": 0, "missing": 1, "target_met": False}
    assert figures["by_emergency"][0]["first_ms"] is None


# The server's memory ------------------------------------------------------------------------

STATUS = "Name:\tpython\nVmPeak:\t  300000 kB\nVmRSS:\t   81234 kB\nThreads:\t4\n"


def test_vm_rss_is_read_from_the_process_status() -> None:
    assert vm_rss_kib(STATUS) == 81234
    with pytest.raises(BenchError, match="VmRSS"):
        vm_rss_kib("Name:\tzombie\n")


def test_the_slope_is_that_of_the_second_half_only() -> None:
    # Start-up: 50 MiB more in the first minute; then 60 KiB a minute.
    samples = [(0.0, 100_000), (30.0, 150_000)]
    samples += [(60.0 + 10 * n, 160_000 + 10 * n) for n in range(31)]  # to 6 minutes
    assert slope_per_minute(samples) == pytest.approx(60.0)


def test_a_flat_line_has_no_slope_and_too_few_samples_none() -> None:
    assert slope_per_minute([(t, 5000) for t in range(0, 100, 10)]) == pytest.approx(0.0)
    assert slope_per_minute([(0.0, 1)]) is None
    assert slope_per_minute([]) is None


def test_rss_figures() -> None:
    figures = rss_figures([(0.0, 1000), (10.0, 3000), (20.0, 2000)])
    assert figures["start_kib"] == 1000
    assert figures["end_kib"] == 2000
    assert figures["max_kib"] == 3000
    assert figures["second_half_slope_kib_per_minute"] == pytest.approx(-6000.0)
    assert figures["samples"] == [[0.0, 1000], [10.0, 3000], [20.0, 2000]]


# The report and its checks ------------------------------------------------------------------


def result(**changes: Any) -> dict[str, Any]:
    page = {**latency_figures([400.0, 800.0, 1200.0], 0), "page": 0, "live_at_end": True}
    figures: dict[str, Any] = {
        "settings": {
            "rate": 500,
            "interval_s": 0.5,
            "clock_start": "2026-11-25T11:00:00+00:00",
        },
        "traffic": {"background": 60_000, "emergencies": 3, "per_second": 499.6, "seconds": 120},
        "pages": [page],
        "latency": latency_figures([400.0, 800.0, 1200.0], 0),
        "missing": [],
        "listeners": {"at_end": 1, "min": 1, "max": 1, "samples": 13},
        "dashboard_rss": rss_figures([(0.0, 81_920), (60.0, 82_944), (120.0, 83_968)]),
        "freshness": {
            "messages": 60_003,
            "p50_ms": 40.0,
            "p99_ms": 95.0,
            "max_ms": 180.0,
            "resolution_ms": 20.0,
        },
        "machine": {
            "cores": 2,
            "cpu_model": "Some CPU",
            "memory_gib": 23.6,
            "load_average": [0.5, 0.4, 0.3],
        },
        "load_average_at_end": [1.25, 0.5, 0.3],
        "git": {"commit": "0123456789abcdef", "modified_files": []},
        "problems": [],
    }
    figures.update(changes)
    return figures


def test_the_report_shows_the_figures_and_the_target() -> None:
    text = render_live(result())
    lines = text.splitlines()
    header, row = lines[0], lines[2]
    assert header.split()[:1] == ["emergency"]
    assert row.split() == [
        "the",
        "page",
        "3",
        "800",
        "ms",
        "1,200",
        "ms",
        "1,200",
        "ms",
        "0",
        "met",
    ]
    assert "60,000 background messages at 500 msg/s" in text
    assert "p50 40 ms, p99 95 ms, max 180 ms over 60,003 messages" in text
    assert "1 at the end; 1-1 over 13 samples" in text
    assert "start 80.0 MiB, end 82.0 MiB, max 82.0 MiB; second half +1.00 MiB/min" in text
    assert "2 cores (Some CPU), 23.6 GiB; load average 0.50 at the start, 1.25 at the end" in text
    assert "0123456789ab" in text
    assert "!!!" not in text


def several(count: int) -> dict[str, Any]:
    """A run over `count` pages, page n showing its one emergency after (n + 1) * 300 ms."""
    latencies = [300.0 * (n + 1) for n in range(count)]
    pages = [
        {**latency_figures([ms], 0), "page": n, "live_at_end": True}
        for n, ms in enumerate(latencies)
    ]
    return result(
        pages=pages,
        latency=latency_figures(latencies, 0),
        first_page=latency_figures(latencies[:1], 0),
        last_page=latency_figures(latencies[-1:], 0),
    )


def test_the_report_lists_a_few_pages_and_the_first_and_last_to_show_each() -> None:
    text = render_live(several(10))
    rows = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "page 0" in rows
    assert "page 9" in rows
    assert rows["first page to show each"].split()[-1] == "met"
    assert "3,000 ms" in rows["last page to show each"]
    assert rows["last page to show each"].split()[-2:] == ["NOT", "MET"]
    assert "all 10 pages, all emergencies" in rows
    assert "10 of 10" in text
    assert "pages' own p99" not in text


def test_the_report_sums_up_many_pages() -> None:
    text = render_live(several(50))
    assert "page 0 " not in text
    assert "best 300 ms (page 0), median 7,800 ms, worst 15,000 ms (page 49)" in text
    assert "all 50 pages, all emergencies" in text


def test_a_missing_emergency_a_dead_page_or_a_second_listener_make_the_run_wrong() -> None:
    assert problems_of(result()) == []
    missing = result(
        latency=latency_figures([400.0], 2),
        missing=["0 2026-11-25T11:00:01+00:00", "0 2026-11-25T11:00:02+00:00"],
    )
    [problem] = problems_of(missing)
    assert problem.startswith("2 emergencies never appeared")
    assert "2026-11-25T11:00:02+00:00" in problem
    dead = result(pages=[{**result()["pages"][0], "live_at_end": False}])
    assert problems_of(dead) == ["pages no longer live at the end: 0"]
    two = result(listeners={"at_end": 1, "min": 1, "max": 2, "samples": 13})
    assert "exactly one" in problems_of(two)[0]
    text = render_live({**missing, "problems": problems_of(missing)})
    assert "!!! 2 emergencies never appeared" in text


# The command ----------------------------------------------------------------------------


def test_the_defaults_time_240_emergencies_half_a_second_apart_on_one_page() -> None:
    args = parse_args([])
    assert (args.rate, args.emergencies, args.browsers, args.soak_minutes) == (500, 240, 1, None)
    assert args.save is False
    assert args.proxy is False
    assert interval_s(args) == 0.5


def test_the_proxy_is_asked_for_and_said_in_the_report() -> None:
    assert parse_args(["--proxy"]).proxy is True
    direct = render_live(result())
    assert "plain HTTP, direct" in direct
    proxied = result()
    proxied["settings"] = {**proxied["settings"], "proxy": True}
    assert "HTTPS through Caddy (deploy/caddy/Caddyfile)" in render_live(proxied)


def test_a_soak_spreads_the_emergencies_over_it_unless_told() -> None:
    assert interval_s(parse_args(["--browsers", "50", "--soak-minutes", "30"])) == 7.5
    assert interval_s(parse_args(["--soak-minutes", "1"])) == 0.5  # never closer than 0.5 s
    assert interval_s(parse_args(["--soak-minutes", "30", "--interval", "2"])) == 2.0


def test_the_clock_start_needs_an_offset() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--clock-start", "2026-11-25T11:00:00"])
    assert parse_args(["--clock-start", "2026-11-25T11:00:00Z"]).clock_start == datetime(
        2026, 11, 25, 11, tzinfo=UTC
    )


def test_the_observer_watches_the_now_panel() -> None:
    assert f"const panel = {json.dumps(NOW_PANEL)};" in OBSERVER_SCRIPT
    assert "__NOW_PANEL__" not in OBSERVER_SCRIPT
