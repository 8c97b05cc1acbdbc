"""The kiosk simulator is pure: same seed, same bytes; every label is what the validator says."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, time, timedelta
from functools import cache

import pytest

from lmnh.events import RatingEvent, Reason, Rejection, RequestEvent
from lmnh.museum import KIOSK_REFERENCE, LONDON, in_opening_hours
from simulator.traffic import (
    EXHIBITIONS,
    LIVE_FEED_DEFECTS,
    LiveFeed,
    SimulatedMessage,
    Tally,
    TrafficMix,
    backfill,
)

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=LONDON)
# Both DST changes of 2025: clocks go forward on 30 March and back on 26 October.
SPRING = (datetime(2025, 3, 28, tzinfo=LONDON), datetime(2025, 4, 1, 12, tzinfo=LONDON))
AUTUMN = (datetime(2025, 10, 24, tzinfo=LONDON), datetime(2025, 10, 28, 12, tzinfo=LONDON))
# Monday 2 June 2025 to the end of Sunday 8 June: five weekdays and a weekend.
WEEK = (datetime(2025, 6, 2, tzinfo=LONDON), datetime(2025, 6, 9, tzinfo=LONDON))


@cache
def sample(seed: int, start: datetime, end: datetime, count: int | None) -> list[SimulatedMessage]:
    return list(backfill(seed, start, end, NOW, count))


def fields(message: SimulatedMessage) -> dict[str, object]:
    decoded = json.loads(message.value)
    assert isinstance(decoded, dict)
    return decoded


def sent_at(message: SimulatedMessage) -> datetime | None:
    at = fields(message).get("at")
    return datetime.fromisoformat(at) if isinstance(at, str) else None


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    first = [m.value for m in backfill(7, *SPRING, NOW, count=2_000)]
    again = [m.value for m in backfill(7, *SPRING, NOW, count=2_000)]
    other = [m.value for m in backfill(8, *SPRING, NOW, count=2_000)]
    assert first == again
    assert first != other
    live = LiveFeed(7), LiveFeed(7)
    assert [live[0].message(NOW).value for _ in range(200)] == [
        live[1].message(NOW).value for _ in range(200)
    ]


def test_messages_look_like_the_feed() -> None:
    messages = sample(1, *WEEK, None)
    rating = next(m for m in messages if isinstance(m.truth, RatingEvent))
    request = next(m for m in messages if isinstance(m.truth, RequestEvent))
    assert list(fields(rating)) == ["at", "site", "val"]
    assert list(fields(request)) == ["at", "site", "val", "type"]
    assert rating.value.startswith(b'{"at": "2025-06-0')
    assert all(m.value.isascii() and b"\n" not in m.value for m in messages)
    at = datetime.fromisoformat(str(fields(rating)["at"]))
    assert str(fields(rating)["at"]) == at.isoformat()


def test_every_label_is_what_the_validator_says() -> None:
    validation = pytest.importorskip("lmnh.validation")
    messages = [
        *sample(3, *SPRING, 10_000),
        *sample(3, *AUTUMN, 10_000),
        *live_messages(datetime(2025, 7, 1, 11, 30, 5, 120_000, tzinfo=LONDON), 2_000),
        *live_messages(datetime(2025, 12, 1, 22, 0, tzinfo=LONDON), 2_000),
        # Opening hours are inclusive to the microsecond, on both sides.
        *live_messages(datetime(2025, 3, 29, 8, 44, 59, 999_999, tzinfo=LONDON), 200),
        *live_messages(datetime(2025, 3, 29, 8, 45, tzinfo=LONDON), 200),
        *live_messages(datetime(2025, 3, 31, 18, 15, tzinfo=LONDON), 200),
        *live_messages(datetime(2025, 3, 31, 18, 15, 0, 1, tzinfo=LONDON), 200),
    ]
    for message in messages:
        outcome = validation.validate(message.value, KIOSK_REFERENCE, NOW)
        verdict = outcome.code if isinstance(outcome, Rejection) else outcome
        assert verdict == message.truth, message.value


def live_messages(now: datetime, count: int) -> list[SimulatedMessage]:
    feed = LiveFeed(11)
    return [feed.message(now) for _ in range(count)]


@pytest.mark.parametrize("share", [0.17, 0.05, 0.4])
def test_invalid_share_and_its_mix_follow_the_setting(share: float) -> None:
    messages = list(backfill(5, *WEEK, NOW, 20_000, TrafficMix(invalid_share=share)))
    rejected = Counter(m.truth for m in messages if isinstance(m.truth, Reason))
    assert len(messages) == 20_000
    assert rejected.total() / 20_000 == pytest.approx(share, abs=0.012)
    assert set(rejected) == set(LIVE_FEED_DEFECTS)
    for reason, default_share in LIVE_FEED_DEFECTS.items():
        expected = default_share * share / 0.17
        assert rejected[reason] / 20_000 == pytest.approx(expected, abs=0.006 + expected / 4)


@pytest.mark.parametrize("window", [SPRING, AUTUMN, WEEK])
def test_timestamps_are_in_the_window_in_order_and_in_london_time(
    window: tuple[datetime, datetime],
) -> None:
    start, end = window
    stamps = [at for m in sample(2, start, end, None) if (at := sent_at(m)) is not None]
    assert stamps == sorted(stamps)
    assert start <= stamps[0] and stamps[-1] < end <= NOW
    for at in stamps:
        assert at.utcoffset() == at.astimezone(LONDON).utcoffset()
    offsets = {at.utcoffset() for at in stamps}
    expected = {timedelta(hours=1)} if window is WEEK else {timedelta(0), timedelta(hours=1)}
    assert offsets == expected


def test_out_of_hours_messages_are_exactly_those_sent_while_closed() -> None:
    for message in sample(2, *AUTUMN, None):
        at = sent_at(message)
        if at is not None and not in_opening_hours(at):
            assert message.truth is Reason.OUT_OF_HOURS
        elif message.truth is Reason.OUT_OF_HOURS:
            pytest.fail(f"{message.value!r} is labelled out of hours but is not")


def test_a_window_may_not_end_in_the_future() -> None:
    with pytest.raises(ValueError, match="future"):
        backfill(1, NOW - timedelta(days=1), NOW + timedelta(seconds=1), NOW)


def test_no_message_predates_its_exhibition() -> None:
    # Thunder Lizards (site 5) opened on 1 February 2023.
    start, end = datetime(2023, 1, 30, tzinfo=LONDON), datetime(2023, 2, 2, tzinfo=LONDON)
    days = {
        at.date().day
        for m in backfill(4, start, end, NOW)
        if fields(m).get("site") == "5" and (at := sent_at(m)) is not None
    }
    assert days == {1}


def test_a_weekday_has_about_1500_visits_and_the_weekend_more() -> None:
    messages = sample(1, *WEEK, None)
    visits = Counter(
        m.truth.at.weekday() for m in messages if isinstance(m.truth, RatingEvent | RequestEvent)
    )
    weekday = sum(visits[day] for day in range(5)) / 5
    weekend = (visits[5] + visits[6]) / 2
    assert weekday == pytest.approx(1500, rel=0.05)
    assert weekend / weekday == pytest.approx(1.6, rel=0.1)


def test_midday_is_busier_than_the_first_and_last_hours() -> None:
    times = [
        m.truth.at.time()
        for m in sample(1, *WEEK, None)
        if isinstance(m.truth, RatingEvent | RequestEvent)
    ]
    first_hour = sum(time(8, 45) <= t < time(9, 45) for t in times)
    midday = sum(time(12, 30) <= t < time(13, 30) for t in times)
    last_hour = sum(time(17, 15) <= t <= time(18, 15) for t in times)
    assert midday > 2 * first_hour and midday > 2 * last_hour


def test_popular_exhibitions_are_busier_and_better_rated() -> None:
    ratings: dict[str, list[int]] = {}
    for message in sample(1, *WEEK, None):
        if isinstance(message.truth, RatingEvent):
            ratings.setdefault(message.truth.exhibition_public_id, []).append(
                message.truth.rating_value
            )
    assert len(ratings["EXH_05"]) > 2 * len(ratings["EXH_02"])
    mean = {exhibition: sum(values) / len(values) for exhibition, values in ratings.items()}
    assert mean["EXH_05"] > mean["EXH_04"] + 0.5


def test_requests_are_a_small_share_and_emergencies_rarer_than_assistance() -> None:
    messages = sample(1, *WEEK, None)
    valid = [m.truth for m in messages if isinstance(m.truth, RatingEvent | RequestEvent)]
    requests = Counter(t.request_value for t in valid if isinstance(t, RequestEvent))
    assert requests.total() / len(valid) == pytest.approx(0.06, abs=0.015)
    assert 0 < requests[1] < requests[0] / 4


def test_live_feed_is_honest_about_closed_hours() -> None:
    night = datetime(2025, 12, 1, 22, 0, tzinfo=LONDON)
    closed = live_messages(night, 500)
    assert all(sent_at(m) in (night, None) for m in closed)
    assert not any(isinstance(m.truth, RatingEvent | RequestEvent) for m in closed)

    day = datetime(2025, 7, 1, 11, 30, tzinfo=LONDON)
    opened = live_messages(day, 3_000)
    late = [m for m in opened if m.truth is Reason.OUT_OF_HOURS]
    assert late, "out-of-hours messages arrive during the day too, delayed from last night"
    for message in late:
        at = sent_at(message)
        last_night = datetime(2025, 6, 30, 18, 15, tzinfo=LONDON), day.replace(hour=8, minute=45)
        assert at is not None and last_night[0] < at < last_night[1]
        assert not in_opening_hours(at)
    assert all(sent_at(m) in (day, None) for m in opened if m.truth is not Reason.OUT_OF_HOURS)


def test_tally_reports_every_exhibition_button_and_reason() -> None:
    tally = Tally()
    tally.add(RatingEvent("EXH_03", 4, NOW))
    tally.add(RequestEvent("EXH_00", 1, NOW))
    tally.add(Reason.INVALID_SITE)
    summary = tally.summary()
    exhibitions = [profile.public_id for profile in EXHIBITIONS]
    assert summary["valid"] == 2 and tally.total == 3
    assert summary["ratings"] == {
        e: {str(v): int(e == "EXH_03" and v == 4) for v in range(5)} for e in exhibitions
    }
    assert summary["requests"] == {e: {"0": 0, "1": int(e == "EXH_00")} for e in exhibitions}
    assert summary["rejected"] == {
        reason.value: int(reason is Reason.INVALID_SITE) for reason in LIVE_FEED_DEFECTS
    }
