"""The pure parts of the Safety page's "Now": its window on the museum's clock (across both
clock changes), the filters, the ids a browser sends back, the events' framing, what a stream
says when the listener stops hearing, and the cap on streams."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard import live
from dashboard.filters import FilterError, Filters
from dashboard.live import (
    LOST,
    SIGNED_OUT,
    Resync,
    Viewer,
    Window,
    _Forward,
    _Slots,
    announced_range,
    event,
    matches,
    parse_after,
)
from lmnh.museum import LONDON, clock_from, closing_time, next_opening


def item(value: int, at: str, public_id: str = "EXH_03", floor: str = "1") -> dict[str, object]:
    return {"request_value": value, "event_at": at, "public_id": public_id, "floor_name": floor}


@pytest.mark.parametrize(
    ("now", "day_start", "day_end"),
    [
        # GMT: midnight is 00:00 UTC.
        ("2026-11-25T11:00:00+00:00", "2026-11-25T00:00:00+00:00", "2026-11-26T00:00:00+00:00"),
        # BST: midnight is 23:00 UTC the day before; 23:30 UTC is already tomorrow in London.
        ("2026-07-01T23:30:00+00:00", "2026-07-01T23:00:00+00:00", "2026-07-02T23:00:00+00:00"),
        # The day the clocks go forward is 23 hours long, the day they go back 25.
        ("2026-03-29T12:00:00+00:00", "2026-03-29T00:00:00+00:00", "2026-03-29T23:00:00+00:00"),
        ("2026-10-25T12:00:00+00:00", "2026-10-24T23:00:00+00:00", "2026-10-26T00:00:00+00:00"),
    ],
)
def test_todays_emergencies_are_those_of_londons_day(
    now: str, day_start: str, day_end: str
) -> None:
    window = Window.at(datetime.fromisoformat(now))
    assert (window.day_start, window.day_end) == (
        datetime.fromisoformat(day_start),
        datetime.fromisoformat(day_end),
    )
    start, end = window.day_start, window.day_end
    assert window.holds(item(1, start.isoformat()))
    assert not window.holds(item(1, (start - timedelta(microseconds=1)).isoformat()))
    assert window.holds(item(1, (end - timedelta(microseconds=1)).isoformat()))
    assert not window.holds(item(1, end.isoformat()))


def test_assistance_stays_for_an_hour() -> None:
    now = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    window = Window.at(now)
    assert window.holds(item(0, "2026-11-25T10:00:00+00:00"))
    assert not window.holds(item(0, "2026-11-25T09:59:59.999999+00:00"))
    # An emergency of the morning stays all day; assistance of the morning does not.
    assert window.holds(item(1, "2026-11-25T09:00:00+00:00"))
    assert not window.holds(item(0, "2026-11-25T09:00:00+00:00"))


def test_the_filters_take_where_and_what() -> None:
    today = date(2026, 11, 25)
    everything = Filters(today, today)
    assert matches(everything, item(0, ""))
    assert matches(Filters(today, today, floors=("1",)), item(1, ""))
    assert not matches(Filters(today, today, floors=("2",)), item(1, ""))
    assert not matches(Filters(today, today, exhibitions=("EXH_01",)), item(1, ""))
    assert matches(Filters(today, today, request_values=(1,)), item(1, ""))
    assert not matches(Filters(today, today, request_values=(1,)), item(0, ""))


def test_a_browsers_last_id_is_a_whole_number_or_refused() -> None:
    assert parse_after(None) is None
    assert parse_after("0") == 0
    assert parse_after("123456789012345678") == 123456789012345678
    for bad in ("", "-1", "1.0", " 1", "١٢", "1234567890123456789", "1e3"):
        with pytest.raises(FilterError):
            parse_after(bad)


# No example database (nothing written to disk), no deadline (a loaded machine is no failure).
PROPERTY = settings(database=None, deadline=None)


@PROPERTY
@given(st.text())
def test_any_last_id_gives_a_number_or_a_refusal(text: str) -> None:
    try:
        assert 0 <= (parse_after(text) or 0) < 10**18
    except FilterError as error:
        assert "is not a request id" in str(error)


@PROPERTY
@given(st.dictionaries(st.text(), st.text() | st.integers()))
def test_an_event_is_one_frame_whatever_its_text(data: dict[str, object]) -> None:
    frame = event("request", data, 7).decode()
    assert frame.endswith("\n\n") and frame.count("\n\n") == 1
    lines = frame[:-2].split("\n")
    assert lines[:2] == ["event: request", "id: 7"]
    assert lines[2].startswith("data: ") and len(lines) == 3
    assert json.loads(lines[2][len("data: ") :]) == data


@pytest.mark.parametrize(
    ("at", "opens"),
    [
        ("2026-11-25T08:44:59+00:00", "2026-11-25T08:45:00+00:00"),  # before opening
        ("2026-11-25T08:45:00+00:00", "2026-11-26T08:45:00+00:00"),  # open: the next day's
        ("2026-11-25T20:00:00+00:00", "2026-11-26T08:45:00+00:00"),  # evening
        ("2026-03-28T22:00:00+00:00", "2026-03-29T07:45:00+00:00"),  # the clocks go forward
        ("2026-10-24T22:00:00+00:00", "2026-10-25T08:45:00+00:00"),  # and back
    ],
)
def test_the_next_opening_is_on_the_london_clock(at: str, opens: str) -> None:
    assert next_opening(datetime.fromisoformat(at)) == datetime.fromisoformat(opens)


def test_closing_time_and_a_clock_started_elsewhere() -> None:
    summer = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert closing_time(summer) == datetime(2026, 7, 1, 17, 15, tzinfo=UTC)
    assert closing_time(summer).tzinfo == LONDON
    start = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    clock = clock_from(start)
    first, second = clock(), clock()
    assert start <= first <= second < start + timedelta(seconds=5)


def test_only_the_triggers_announcements_are_read() -> None:
    assert announced_range('{"first": 3, "last": 9}') == (3, 9)
    assert announced_range('{"last": 9, "first": 9, "other": 1}') == (9, 9)
    for payload in (
        "",
        "garbage",
        "[1, 2]",
        '{"first": 3}',
        '{"first": 9, "last": 3}',
        '{"first": 0, "last": 3}',
        '{"first": "3", "last": "9"}',
        '{"first": 3.0, "last": 9}',
        '{"first": true, "last": 9}',
        '{"first": 1, "last": 9223372036854775808}',
        "[" * 100_000,
    ):
        assert announced_range(payload) is None, payload


@PROPERTY
@given(st.text())
def test_any_notification_is_read_or_ignored(payload: str) -> None:
    announced = announced_range(payload)
    assert announced is None or 0 < announced[0] <= announced[1] < 2**63


def test_a_lapse_is_said_and_the_next_connection_ends_the_forward() -> None:
    """`LOST` becomes `stale` and the stream waits on; a Resync of the snapshot's own
    connection is nothing new; a later one makes the stream read a fresh snapshot."""

    async def forwarded() -> tuple[list[bytes], object]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        for signal in (LOST, Resync(1), Resync(2)):
            queue.put_nowait(signal)
        at = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
        viewer = Viewer(Filters(at.date(), at.date()))
        forward = _Forward(queue, viewer, lambda: at, 1, lambda: None)
        return [chunk async for chunk in forward], forward.ended

    chunks, ended = asyncio.run(forwarded())
    assert chunks == [event("stale", {"error": "the live feed cannot hear the database"})]
    assert isinstance(ended, Resync) and ended.generation == 2


def test_a_stream_whose_session_has_ended_says_so_and_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked at a tick once SESSION_CHECK_S has passed: while the session goes on, ticks; once
    it has ended, `signed-out` is the last event."""
    monkeypatch.setattr(live, "TICK_S", 0.01)
    monkeypatch.setattr(live, "SESSION_CHECK_S", 0.0)
    answers = iter([True, True, False])

    async def forwarded() -> tuple[list[bytes], object]:
        at = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
        viewer = Viewer(Filters(at.date(), at.date()), signed_in=lambda: next(answers))
        forward = _Forward(asyncio.Queue(), viewer, lambda: at, 1, lambda: 0.5)
        return [chunk async for chunk in forward], forward.ended

    chunks, ended = asyncio.run(forwarded())
    tick = event("tick", {"now": "2026-11-25T11:00:00+00:00", "heard": 0.5})
    assert chunks == [tick, tick, event("signed-out", {"error": "the session has ended"})]
    assert ended is SIGNED_OUT


def test_streams_are_capped_and_their_slots_given_back() -> None:
    slots = _Slots(2)
    assert [slots.take() for _ in range(3)] == [True, True, False]
    slots.give_back()
    assert slots.take() is True
    assert slots.take() is False
