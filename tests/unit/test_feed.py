"""The Feed page's pure core: the window (its buckets across both of 2026's clock changes), the
query string, raw bytes shown safely (table-driven and with hypothesis: every shown value reads
back to its bytes, and nothing invisible survives), the pipeline's state, and the bodies."""

from __future__ import annotations

import itertools
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.feed import (
    BEHIND_MESSAGES,
    QUIET,
    RAW_HEAD_BYTES,
    RAW_SHOWN_CHARS,
    STALL,
    WINDOWS,
    ShownRaw,
    describe_age,
    exhibitions_body,
    is_quiet,
    judge_pipeline,
    latest_body,
    openapi_parameters,
    parse_window,
    pipeline_body,
    rejected_body,
    show_raw,
    visible_text,
)
from dashboard.feed_queries import Exhibition, PartitionLoad, RejectedRow
from dashboard.filters import FilterError
from lmnh.museum import LONDON, OPENS, in_opening_hours

STATIC = Path(__file__).resolve().parents[2] / "dashboard" / "static"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# The window ------------------------------------------------------------------------------------


def test_the_last_hour_is_the_current_minute_and_the_59_before_it() -> None:
    now = at("2026-11-20T14:35:42.5+00:00")
    starts = WINDOWS["1h"].starts(now)
    assert len(starts) == 60
    assert (starts[0], starts[-1]) == (at("2026-11-20T13:36:00+00:00"), at("2026-11-20T14:35Z"))
    span = WINDOWS["1h"].span(now)
    assert (span.since, span.until, span.unit) == (starts[0], at("2026-11-20T14:36Z"), "minute")


def test_the_last_24_hours_are_whole_hours_even_when_london_repeats_one() -> None:
    # 01:30 GMT on 25 Oct 2026: the second 01:30 of the night the clocks go back.
    now = at("2026-10-25T01:30:00+00:00")
    starts = WINDOWS["24h"].starts(now)
    assert len(starts) == len(set(starts)) == 24
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(starts))
    assert (starts[0], starts[-1]) == (at("2026-10-24T02:00Z"), at("2026-10-25T01:00Z"))
    assert WINDOWS["24h"].span(now).until == at("2026-10-25T02:00Z")


def test_the_last_7_days_are_london_days_of_23_and_25_hours() -> None:
    autumn = WINDOWS["7d"].starts(at("2026-10-26T12:00:00+00:00"))  # Mon 26 Oct, GMT
    assert autumn == [
        at("2026-10-19T23:00Z"),  # Tue 20 Oct, 00:00 BST
        at("2026-10-20T23:00Z"),
        at("2026-10-21T23:00Z"),
        at("2026-10-22T23:00Z"),
        at("2026-10-23T23:00Z"),
        at("2026-10-24T23:00Z"),  # Sun 25 Oct, 00:00 BST: 25 hours long
        at("2026-10-26T00:00Z"),  # Mon 26 Oct, 00:00 GMT
    ]
    assert WINDOWS["7d"].span(at("2026-10-26T12:00Z")).until == at("2026-10-27T00:00Z")
    # 23:30 GMT on Sat 28 Mar is still Saturday in London; Sunday 29 Mar has 23 hours.
    spring = WINDOWS["7d"].span(at("2026-03-29T23:30:00+00:00"))  # 00:30 BST on Mon 30 Mar
    assert (spring.since, spring.until) == (at("2026-03-24T00:00Z"), at("2026-03-30T23:00Z"))
    assert WINDOWS["7d"].starts(at("2026-03-29T23:30Z"))[-2:] == [
        at("2026-03-29T00:00Z"),
        at("2026-03-29T23:00Z"),
    ]


# The query string ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "window"),
    [
        ([], "24h"),
        ([("window", "1h")], "1h"),
        ([("window", "7d")], "7d"),
        ([("window", "")], "24h"),
    ],
)
def test_a_window_is_read_from_the_query(query: list[tuple[str, str]], window: str) -> None:
    assert parse_window(query, ["window"]).name == window


def test_every_problem_of_a_query_is_listed_at_once() -> None:
    with pytest.raises(FilterError) as caught:
        parse_window([("window", "2h"), ("window", "1h"), ("limit", "5")], ["window"])
    assert caught.value.problems == [
        "window is given more than once",
        "unknown parameter 'limit' (known: window)",
        "window='2h' must be one of 1h, 24h, 7d",
    ]


def test_an_endpoint_without_a_window_takes_nothing() -> None:
    assert parse_window([], []) == WINDOWS["24h"]
    with pytest.raises(FilterError) as caught:
        parse_window([("window", "1h")], [])
    assert caught.value.problems == ["unknown parameter 'window' (known: none)"]


def test_the_documented_window_is_the_one_parsed() -> None:
    [parameter] = openapi_parameters()
    assert parameter["name"] == "window"
    assert parameter["schema"]["enum"] == ["1h", "24h", "7d"]
    for name in parameter["schema"]["enum"]:
        assert parse_window([("window", name)], ["window"]).name == name
    assert parse_window([], ["window"]).name == parameter["schema"]["default"]


# Raw bytes, shown safely -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b'{"site": "3", "val": 4}', '{"site": "3", "val": 4}'),
        (b"a\\b", "a\\\\b"),  # a backslash is doubled: \x41 in a message is not an escape
        (b"\xff\xfeok", "\\xff\\xfeok"),  # bytes that are not UTF-8
        (b"\xe2\x82", "\\xe2\\x82"),  # a character cut short, at the end of the whole message
        (b"nul\x00here", "nul\\x00here"),
        (b"line\nbreak\r\ttab", "line\\nbreak\\r\\ttab"),
        (b"\x1b[31mred\x7f", "\\x1b[31mred\\x7f"),  # a terminal escape, DEL
        ("\u0085next line".encode(), "\\u0085next line"),  # a C1 control
        ("abc\u202edcba".encode(), "abc\\u202edcba"),  # right-to-left override
        ("zero\u200bwidth\ufeff".encode(), "zero\\u200bwidth\\ufeff"),
        ("no\u00a0break\u2028line".encode(), "no\\u00a0break\\u2028line"),
        ("tag\U000e0041".encode(), "tag\\U000e0041"),  # an invisible tag character
        ("Cetacean 🐋 ü".encode(), "Cetacean 🐋 ü"),  # letters and emoji are themselves
        (b"<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>"),  # text: for the page
        (b"", ""),
    ],
)
def test_raw_bytes_are_shown_as_readable_unambiguous_text(raw: bytes, shown: str) -> None:
    assert show_raw(raw, len(raw)) == ShownRaw(shown, False)


def test_a_long_value_is_cut_before_the_limit_never_within_an_escape() -> None:
    raw = b"ab" + b"\x00" * 10
    assert show_raw(raw, len(raw), limit=9) == ShownRaw("ab\\x00", True)  # "ab\x00\x" would be 10
    assert show_raw(raw, len(raw), limit=10) == ShownRaw("ab\\x00\\x00", True)
    assert show_raw(raw, len(raw), limit=42) == ShownRaw("ab" + "\\x00" * 10, False)


def test_a_head_cut_within_a_character_holds_it_back() -> None:
    whale = "🐋".encode()  # 4 bytes
    assert show_raw(whale[:3], 4) == ShownRaw("", True)
    assert show_raw(b"ok" + whale[:2], 100) == ShownRaw("ok", True)


def test_the_fetched_head_always_holds_the_shown_characters() -> None:
    # The most bytes per shown character: 4-byte characters.
    for count in (RAW_SHOWN_CHARS - 1, RAW_SHOWN_CHARS, RAW_SHOWN_CHARS + 1, 2000):
        raw = ("🐋" * count).encode()
        shown = show_raw(raw[:RAW_HEAD_BYTES], len(raw))
        assert shown.text == "🐋" * min(count, RAW_SHOWN_CHARS)
        assert shown.truncated == (count > RAW_SHOWN_CHARS)


_ESCAPE = re.compile(r"\\(\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
_NAMED = {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}


def read_back(text: str) -> bytes:
    """The bytes a shown value stands for, read from the escapes as the page explains them."""
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        out += text[position : match.start()].encode()
        escape = match.group(1)
        if escape in _NAMED:
            out += _NAMED[escape]
        elif escape[0] == "x":
            out.append(int(escape[1:], 16))  # a control character (00-7f) or a byte (80-ff)
        else:
            out += chr(int(escape[1:], 16)).encode()
        position = match.end()
    return bytes(out + text[position:].encode())


def hidden(char: str) -> bool:
    return char != " " and unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp", "Zs"}


raw_values = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(["🐋", "\u202e", "\x00", "\\", "x", "\xe9", "\u200b"])).map(
        lambda parts: "".join(parts).encode()
    ),
)


@given(raw_values)
def test_every_shown_value_reads_back_to_its_bytes_and_hides_nothing(raw: bytes) -> None:
    shown = show_raw(raw, len(raw), limit=10 * len(raw) + 10)
    assert not shown.truncated
    assert read_back(shown.text) == raw
    assert not any(hidden(char) for char in shown.text)


@given(raw_values.map(lambda raw: raw * 8))
def test_a_cut_value_is_the_start_of_the_whole_one(raw: bytes) -> None:
    whole = show_raw(raw, len(raw), limit=10 * len(raw) + 10).text
    shown = show_raw(raw[:RAW_HEAD_BYTES], len(raw))
    assert whole.startswith(shown.text)
    assert len(shown.text) <= RAW_SHOWN_CHARS
    assert shown.truncated == (shown.text != whole)


def test_a_reason_keeps_its_backslashes_and_loses_its_invisible_characters() -> None:
    assert visible_text('at "\\u202e" is\u202e odd\x00') == 'at "\\u202e" is\\u202e odd\\x00'


# The pipeline's state ----------------------------------------------------------------------------

NOW = at("2026-11-20T14:00:00+00:00")


def partition(
    number: int, lag: int | None, seconds_ago: float, now: datetime = NOW
) -> PartitionLoad:
    high = None if lag is None else 1000 + lag
    return PartitionLoad("kiosks", number, 1000, high, now - timedelta(seconds=seconds_ago))


@pytest.mark.parametrize(
    ("sessions", "partitions", "state", "reason"),
    [
        (0, [], "never_run", "no batch has ever been stored in this database"),
        (0, [partition(0, 0, 5)], "stopped", "no pipeline is connected to this database"),
        (0, [partition(0, 50_000, 5)], "stopped", "no pipeline is connected to this database"),
        (1, [], "running", "connected; no batch stored yet"),
        (2, [partition(0, 0, 5), partition(1, 0, 3600)], "running", "connected and caught up"),
        (1, [partition(0, 12, 59)], "running", "connected; 12 messages waited at the last"),
        (1, [partition(0, None, 600)], "running", "connected and caught up"),  # no watermark yet
        (
            1,
            [partition(0, BEHIND_MESSAGES // 2, 1), partition(1, BEHIND_MESSAGES // 2, 1)],
            "running",
            "connected; 10,000 messages waited",
        ),
        (
            1,
            [partition(0, BEHIND_MESSAGES // 2, 1), partition(1, BEHIND_MESSAGES // 2 + 1, 1)],
            "behind",
            "10,001 messages waited at the last batches: more than one batch (10,000) takes",
        ),
        (
            1,
            [partition(0, 0, 1), partition(3, 7, 61), partition(4, 2, 300)],
            "behind",
            "2 messages waited on kiosks[4] at its last batch, 5 min ago, and none has been",
        ),
        # Nothing stored anywhere for over a minute, though messages waited: stalled, however
        # many sessions are listed (a silent connection's stay until the server notices).
        (
            2,
            [partition(0, 0, 61), partition(3, 7, 300)],
            "stalled",
            "connected, but no batch stored for 61 s although 7 messages waited at the last",
        ),
        (
            1,
            [partition(0, 3, 125), partition(1, BEHIND_MESSAGES, 125)],
            "stalled",
            "connected, but no batch stored for 2 min although 10,003 messages waited",
        ),
        # Caught up at the last batch, an hour ago: idle, as far as the database can tell.
        (1, [partition(0, 0, 3600), partition(1, 0, 3605)], "running", "connected and caught"),
    ],
)
def test_the_pipeline_state_is_judged_from_its_session_and_its_last_batches(
    sessions: int, partitions: list[PartitionLoad], state: str, reason: str
) -> None:
    judged = judge_pipeline(sessions, partitions, NOW)
    assert (judged.state, judged.reason[: len(reason)]) == (state, reason)


def test_a_stall_is_counted_from_the_last_batch_of_any_partition() -> None:
    seconds = STALL.total_seconds()
    assert judge_pipeline(1, [partition(0, 1, seconds)], NOW).state == "running"
    judged = judge_pipeline(1, [partition(0, 1, seconds + 0.001)], NOW)
    assert (judged.state, judged.stalled_since) == ("stalled", NOW - STALL - timedelta(0, 0, 1000))
    # Another partition stored 30 s ago: that one is behind, the pipeline is not stalled.
    stored_since = [partition(0, 1, seconds + 50), partition(1, 0, 30)]
    assert judge_pipeline(1, stored_since, NOW).state == "behind"
    # Stalled since the last batch, whichever partition it stored.
    judged = judge_pipeline(1, [partition(0, 4, 600), partition(1, 0, 90)], NOW)
    assert (judged.state, judged.stalled_since) == ("stalled", at("2026-11-20T13:58:30+00:00"))
    assert judged.reason == (
        "connected, but no batch stored for 2 min although 4 messages waited at the last batches"
    )


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (-3, "0 s"),
        (45, "45 s"),
        (89, "89 s"),
        (90, "2 min"),
        (3599, "60 min"),
        (5400, "1 h 30 min"),
        (47 * 3600, "47 h 0 min"),
        (49 * 3600, "2 days"),
    ],
)
def test_an_age_is_said_as_a_person_would(seconds: int, said: str) -> None:
    assert describe_age(timedelta(seconds=seconds)) == said


# The bodies ---------------------------------------------------------------------------------------


def test_rejects_by_reason_fill_every_bucket_of_every_reason_seen() -> None:
    now = at("2026-11-20T14:35:00+00:00")
    body = rejected_body(
        WINDOWS["24h"],
        now,
        [
            (at("2026-11-20T14:00Z"), "invalid_json", 2),
            (at("2026-11-20T13:00Z"), "out_of_hours", 5),
            (at("2026-11-19T15:00Z"), "invalid_json", 1),
        ],
    )
    assert (body["now"], body["window"], body["bucket"]) == (
        "2026-11-20T14:35:00+00:00",
        "24h",
        "hour",
    )
    assert (body["since"], body["until"]) == (
        "2026-11-19T15:00:00+00:00",
        "2026-11-20T15:00:00+00:00",
    )
    assert body["rejected"] == 8
    assert body["reasons"] == [
        {"reason_code": "out_of_hours", "rejected": 5},
        {"reason_code": "invalid_json", "rejected": 3},
    ]
    assert len(body["rows"]) == 24 * 2
    counted = {
        (r["bucket"], r["reason_code"]): r["rejected"] for r in body["rows"] if r["rejected"]
    }
    assert counted == {
        ("2026-11-19T15:00:00+00:00", "invalid_json"): 1,
        ("2026-11-20T13:00:00+00:00", "out_of_hours"): 5,
        ("2026-11-20T14:00:00+00:00", "invalid_json"): 2,
    }


def test_the_reject_rate_is_rejected_over_rejected_and_stored() -> None:
    now = at("2026-11-20T14:35:00+00:00")
    first, second = at("2026-11-20T14:34Z"), at("2026-11-20T14:00Z")
    body = exhibitions_body(
        WINDOWS["1h"],
        now,
        [
            Exhibition("EXH_01", "Adaptation", first),
            Exhibition("EXH_02", "The Crenshaw Collection", at("2026-11-20T13:00Z")),
            Exhibition("EXH_03", "Whales", None),
        ],
        [
            (first, "EXH_01", 1),
            (second, "EXH_01", 3),
            (first, "EXH_02", 2),
            (first, None, 4),  # named no known exhibition: unattributed
            (second, "EXH_99", 1),
        ],
        [(first, "EXH_01", 3), (second, "EXH_01", 1), (first, "EXH_03", 6)],
    )
    assert body["exhibitions"] == [
        {
            "public_id": "EXH_01",
            "exhibition_name": "Adaptation",
            "rejected": 4,
            "stored": 4,
            "reject_rate": 0.5,
            "last_stored_at": "2026-11-20T14:34:00+00:00",
            "quiet": False,
        },
        {
            "public_id": "EXH_02",
            "exhibition_name": "The Crenshaw Collection",
            "rejected": 2,
            "stored": 0,
            "reject_rate": 1.0,
            # Open, and its last interaction 95 minutes ago: quiet, sending only rejects.
            "last_stored_at": "2026-11-20T13:00:00+00:00",
            "quiet": True,
        },
        {
            "public_id": "EXH_03",
            "exhibition_name": "Whales",
            "rejected": 0,
            "stored": 6,
            "reject_rate": 0.0,
            "last_stored_at": None,  # the rollups' figures aside, none in the fact tables
            "quiet": False,
        },
    ]
    assert (body["museum_open"], body["quiet_minutes"]) == (True, 90)
    assert body["unattributed"] == 5
    assert len(body["rows"]) == 60 * 3
    rates = {(r["bucket"], r["public_id"]): r["reject_rate"] for r in body["rows"]}
    assert rates["2026-11-20T14:34:00+00:00", "EXH_01"] == 0.25
    assert rates["2026-11-20T14:00:00+00:00", "EXH_01"] == 0.75
    assert rates["2026-11-20T14:34:00+00:00", "EXH_03"] == 0.0
    assert rates["2026-11-20T14:33:00+00:00", "EXH_01"] is None


@pytest.mark.parametrize(
    ("now", "last_stored", "quiet"),
    [
        # 20 Nov: London on GMT, open 08:45-18:15 UTC.
        ("2026-11-20T14:35:00Z", "2026-11-20T13:05:00Z", True),  # 90 minutes to the second
        ("2026-11-20T14:35:00Z", "2026-11-20T13:05:01Z", False),
        ("2026-11-20T14:35:00Z", "2026-11-14T10:00:00Z", True),  # 6 days ago: seen
        ("2026-11-20T14:35:00Z", "2026-11-13T10:00:00Z", False),  # over a week ago: not judged
        ("2026-11-20T14:35:00Z", None, False),  # never stored: not judged
        # The night does not count: quiet 90 minutes after opening at the earliest.
        ("2026-11-20T10:14:59Z", "2026-11-19T18:10:00Z", False),
        ("2026-11-20T10:15:00Z", "2026-11-19T18:10:00Z", True),
        # Closed, at closing time (inclusive) and just before opening.
        ("2026-11-20T18:15:00Z", "2026-11-20T16:00:00Z", True),
        ("2026-11-20T18:15:01Z", "2026-11-20T16:00:00Z", False),
        ("2026-11-21T08:44:59Z", "2026-11-20T16:00:00Z", False),
        # 1 July: London on BST, 08:45 is 07:45 UTC.
        ("2026-07-01T09:14:59Z", "2026-06-30T16:00:00Z", False),
        ("2026-07-01T09:15:00Z", "2026-06-30T16:00:00Z", True),
        ("2026-07-01T17:16:00Z", "2026-07-01T15:00:00Z", False),  # 18:16 BST: closed
    ],
)
def test_a_kiosk_is_quiet_after_90_minutes_of_opening_time_without_a_stored_interaction(
    now: str, last_stored: str | None, quiet: bool
) -> None:
    assert is_quiet(None if last_stored is None else at(last_stored), at(now)) is quiet


@given(
    now=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    silent=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=9)),
)
def test_quiet_means_open_for_90_minutes_with_nothing_stored_in_them(
    now: datetime, silent: timedelta
) -> None:
    opened = datetime.combine(now.astimezone(LONDON).date(), OPENS, LONDON)
    expected = (
        in_opening_hours(now) and now - opened >= QUIET and QUIET <= silent <= timedelta(days=7)
    )
    assert is_quiet(now - silent, now) is expected


def test_the_latest_messages_show_their_raw_values_safely() -> None:
    received = at("2026-11-20T14:30:00+00:00")
    long_value = b"x" * 1000
    raw = b"<b>\xff\x00</b>"
    rows = [
        RejectedRow(
            3, received, "invalid_json", "bad\u202e", "EXH_01", "kiosks", 2, 40, None, len(raw), raw
        ),
        RejectedRow(2, received, "empty", "no value", None, "kiosks", 0, 7, received, None, None),
        RejectedRow(
            1,
            received,
            "invalid_site",
            "x",
            None,
            "kiosks",
            1,
            3,
            None,
            1000,
            long_value[:RAW_HEAD_BYTES],
        ),
    ]
    body = latest_body(NOW, 50, rows)
    assert (body["now"], body["limit"]) == ("2026-11-20T14:00:00+00:00", 50)
    first, empty, long = body["messages"]
    assert first == {
        "id": 3,
        "received_at": "2026-11-20T14:30:00+00:00",
        "reason_code": "invalid_json",
        "reason": "bad\\u202e",
        "named_exhibition": "EXH_01",
        "kafka_topic": "kiosks",
        "kafka_partition": 2,
        "kafka_offset": 40,
        "kafka_timestamp": None,
        "raw_bytes": 9,
        "raw_shown": "<b>\\xff\\x00</b>",
        "raw_truncated": False,
    }
    assert (empty["raw_bytes"], empty["raw_shown"], empty["raw_truncated"]) == (None, None, False)
    assert empty["kafka_timestamp"] == "2026-11-20T14:30:00+00:00"
    assert (long["raw_bytes"], long["raw_shown"], long["raw_truncated"]) == (1000, "x" * 300, True)


def test_the_pipeline_body_counts_the_last_hours_whole_minutes() -> None:
    now = at("2026-11-20T14:35:20+00:00")
    minutes = [
        (at("2026-11-20T13:34Z"), 999),  # 61 minutes before the current one: outside
        (at("2026-11-20T13:35Z"), 120),  # the first of the last 60 whole minutes
        (at("2026-11-20T14:34Z"), 60),  # the last of them
        (at("2026-11-20T14:35Z"), 7),  # the current minute, so far
    ]
    partitions = [partition(0, 5, 30, now), partition(1, None, 20, now)]
    body = pipeline_body(now, at("2026-11-20T14:40:00+00:00"), 1, partitions, minutes)
    assert (body["state"], body["stalled_since"]) == ("running", None)
    assert body["server_now"] == "2026-11-20T14:40:00+00:00"
    assert (body["hour_since"], body["hour_until"]) == (
        "2026-11-20T13:35:00+00:00",
        "2026-11-20T14:35:00+00:00",
    )
    assert (body["hour_messages"], body["hour_per_second"]) == (180, 180 / 3600)
    assert body["current_minute_messages"] == 7
    assert len(body["minutes"]) == 60
    assert body["minutes"][0] == {
        "minute": "2026-11-20T13:35:00+00:00",
        "messages": 120,
        "per_second": 2.0,
    }
    assert body["minutes"][-1] == {
        "minute": "2026-11-20T14:34:00+00:00",
        "messages": 60,
        "per_second": 1.0,
    }
    assert sum(m["messages"] for m in body["minutes"]) == 180
    assert body["lag"] == 5
    assert body["last_batch_at"] == "2026-11-20T14:35:00+00:00"
    assert body["partitions"][1] == {
        "kafka_topic": "kiosks",
        "kafka_partition": 1,
        "next_offset": 1000,
        "high_watermark": None,
        "lag": None,
        "stored_at": "2026-11-20T14:35:00+00:00",
    }


def test_a_stalled_pipeline_says_since_when() -> None:
    partitions = [partition(0, 12, 240), partition(1, 0, 180)]
    body = pipeline_body(NOW, NOW, 2, partitions, [])
    assert (body["state"], body["stalled_since"], body["last_batch_at"]) == (
        "stalled",
        "2026-11-20T13:57:00+00:00",
        "2026-11-20T13:57:00+00:00",
    )
    assert body["state_reason"] == (
        "connected, but no batch stored for 3 min although 12 messages waited at the last batches"
    )


def test_a_pipeline_that_never_ran_has_no_lag_nor_last_batch() -> None:
    body = pipeline_body(NOW, NOW, 0, [], [])
    assert (body["state"], body["lag"], body["last_batch_at"], body["hour_messages"]) == (
        "never_run",
        None,
        None,
        0,
    )


# The page ----------------------------------------------------------------------------------------


def test_the_page_script_never_parses_text_as_html() -> None:
    script = (STATIC / "feed.js").read_text(encoding="utf-8")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "DOMParser",
    ):
        assert sink not in script, sink
    assert "textContent" in script


def test_the_page_links_the_shared_look_and_marks_itself_current() -> None:
    page = (STATIC / "feed.html").read_text(encoding="utf-8")
    assert '<link rel="stylesheet" href="/static/dashboard.css">' in page
    assert '<link rel="stylesheet" href="/static/feed.css">' in page
    assert '<a href="/feed" aria-current="page">Feed</a>' in page
    assert page.count("aria-current") == 1
