"""The benchmark's pure parts: percentiles, the summary line, the table, freshness delays, the
COPY text of the database ceiling and the original design's validation rules."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from bench.ceilings import build_chunks
from bench.freshness import commit_delays
from bench.local import BenchError
from bench.original_loader import validate_message
from bench.report import (
    format_table,
    parse_sizes,
    parse_summary,
    percentile,
    ratios,
    render,
)
from lmnh.events import KafkaMessage, RatingEvent, Reason, Rejection, RequestEvent
from lmnh.museum import Reference
from lmnh.store import copy_row

REFERENCE = Reference(
    exhibition_start={"EXH_00": date(2021, 8, 23), "EXH_05": date(2023, 2, 1)},
    rating_values=frozenset(range(5)),
    request_values=frozenset(range(2)),
    exhibition_ids={"EXH_00": 1, "EXH_05": 6},
    rating_ids={v: v + 1 for v in range(5)},
    request_ids={0: 1, 1: 2},
)
AT = datetime(2026, 3, 11, 12, 29, 17, 958630, tzinfo=UTC)
RECEIVED = datetime(2026, 3, 11, 12, 30, tzinfo=UTC)


def message(offset: int, value: bytes | None = b"{}", timestamp_ms: int | None = 0) -> KafkaMessage:
    return KafkaMessage("lmnh", 2, offset, value, timestamp_ms)


# Percentiles -------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unordered
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.001) == 1


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.5], 0.5) == 7.5
    assert percentile([7.5], 0.99) == 7.5


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01])
def test_percentile_refuses_a_share_outside_zero_to_one(share: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], share)


def test_percentile_refuses_no_values() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)


# The pipeline's summary line ---------------------------------------------------------------


def test_summary_line_is_parsed() -> None:
    stdout = (
        "something else\n"
        "consumed 1000000, stored 830064 (ratings 780410, requests 49654), rejected 169936"
        " (invalid_val 54904, invalid_type 34712), 37.5 s, 26750 msg/s while loading\n"
    )
    summary = parse_summary(stdout)
    assert summary is not None
    assert (summary.consumed, summary.seconds, summary.rate) == (1_000_000, 37.5, 26750.0)


def test_summary_line_missing_gives_none() -> None:
    assert parse_summary("error: topic 'x' does not exist\n") is None


# --memory ----------------------------------------------------------------------------------


def test_sizes_are_a_comma_list_and_empty_means_none() -> None:
    assert parse_sizes("100000,1000000, 5_000_000") == [100_000, 1_000_000, 5_000_000]
    assert parse_sizes("") == []
    with pytest.raises(ValueError):
        parse_sizes("0")
    with pytest.raises(ValueError):
        parse_sizes("many")


# The table ---------------------------------------------------------------------------------


def test_table_aligns_columns_and_underlines_the_header() -> None:
    table = format_table(
        [["name", "msg/s"], ["ours", "26,750"], ["baseline", "310"]], [False, True]
    )
    assert table.splitlines() == [
        "name       msg/s",
        "--------  ------",
        "ours      26,750",
        "baseline     310",
    ]


def test_table_of_no_rows_is_empty() -> None:
    assert format_table([], []) == ""


def result_figures() -> dict[str, Any]:
    def contender(messages: int, seconds: float) -> dict[str, Any]:
        rate = messages / seconds
        return {"messages": messages, "seconds": seconds, "messages_per_second": rate, "how": "x"}

    return {
        "contenders": {
            "baseline": contender(20_000, 40.0),
            "ours": {**contender(1_000_000, 40.0), "peak_rss_kib": 170_000},
            "database_ceiling": contender(1_000_000, 20.0),
            "kafka_ceiling": contender(1_000_000, 4.0),
        },
        "ratios": {
            "ours_over_baseline": 50.0,
            "ours_over_min_ceiling_percent": 50.0,
            "limiting_ceiling": "the database",
        },
        "freshness": {
            "rate": 2000,
            "seconds": 60,
            "p50_ms": 310.4,
            "p99_ms": 640.0,
            "max_ms": 900.2,
            "resolution_ms": 20.0,
        },
        "memory": [{"messages": 100_000, "peak_rss_kib": 150_000}],
        "machine": {
            "cores": 2,
            "cpu_model": "AMD EPYC",
            "memory_gib": 23.5,
            "python": "3.11.7",
            "confluent_kafka": "2.16.1",
            "librdkafka": "2.16.0",
            "postgresql": "15.18",
            "kafka": "4.3.1",
        },
    }


def test_render_shows_every_figure() -> None:
    text = render(result_figures())
    for expected in (
        "baseline (original design)",
        "    500",  # 20,000 in 40 s
        "25,000",
        "50,000",
        "250,000",
        "50.0x",
        "50.0% (the lower ceiling is the database)",
        "166.0 MiB",
        "p50 310 ms, p99 640 ms, max 900 ms",
        "100,000: 146.5 MiB",
        "2 cores (AMD EPYC)",
        "Kafka 4.3.1",
    ):
        assert expected in text


def test_ratios_put_ours_against_each_reference() -> None:
    figures = result_figures()
    contenders = figures["contenders"]
    compared = [
        {"messages_per_second": 12_500.0, "revision": "abc1234"},
        {"messages_per_second": 20_000.0, "revision": "def5678"},
    ]
    peers = [
        {"label": "slow peer", "messages_per_second": 10_000.0},
        {"label": "fast peer", "messages_per_second": 20_000.0},
    ]
    derived = ratios(contenders, peers, compared)
    assert derived["ours_over_baseline"] == 50.0  # 25,000 over 500
    assert derived["ours_over_min_ceiling_percent"] == 50.0  # of the database's 50,000
    assert derived["limiting_ceiling"] == "the database"
    assert derived["ours_over_fastest_peer"] == 1.25
    assert derived["fastest_peer"] == "fast peer"
    assert derived["ours_over_revision"] == {"abc1234": 2.0, "def5678": 1.25}
    assert "ours_over_fastest_peer" not in ratios(contenders, None)


def test_ratios_put_two_processes_against_two_connections() -> None:
    contenders = result_figures()["contenders"]
    contenders["ours_scaled_out"] = {"messages_per_second": 30_000.0}
    contenders["database_ceiling_2"] = {"messages_per_second": 60_000.0}
    derived = ratios(contenders, [{"label": "peer", "messages_per_second": 24_000.0}])
    assert derived["scaled_out_over_ceiling_2_percent"] == 50.0
    assert derived["scaled_out_over_fastest_peer"] == 1.25
    assert derived["ours_over_min_ceiling_percent"] == 50.0  # one process, one connection


def test_render_shows_peers_and_the_revision_compared() -> None:
    figures = result_figures()
    figures["compared"] = [
        {
            "messages": 1_000_000,
            "seconds": 80.0,
            "messages_per_second": 12_500.0,
            "how": "x",
            "revision": "abc1234",
        }
    ]
    figures["peers"] = [
        {
            "label": "Kafka Connect, tuned",
            "messages": 1_000_000,
            "seconds": 50.0,
            "messages_per_second": 20_000.0,
            "peak_rss_kib": 2_097_152,
            "how": "y",
            "delivery": "at least once",
            "per_message": "one INSERT row",
        }
    ]
    figures["ratios"] = ratios(figures["contenders"], figures["peers"], figures["compared"])
    text = render(figures)
    for expected in (
        "ours at abc1234",
        "12,500",
        "Kafka Connect, tuned",
        "2048.0 MiB",
        "1.25x (the fastest is Kafka Connect, tuned)",
        "at least once; one INSERT row",
        "ours ÷ ours at abc1234",
        "2.00x",
    ):
        assert expected in text


def test_render_leaves_out_what_was_skipped() -> None:
    figures = result_figures()
    figures["freshness"] = None
    figures["memory"] = []
    text = render(figures)
    assert "freshness" not in text
    assert "by run size" not in text


# Freshness ---------------------------------------------------------------------------------


def test_each_delay_runs_to_the_first_poll_past_the_message() -> None:
    seen = {0: [(10.0, 2), (10.5, 5)], 1: [(11.0, 1)]}
    produced = [(0, 0, 9_900), (0, 1, 9_950), (0, 2, 10_000), (0, 4, 10_100), (1, 0, 10_000)]
    assert commit_delays(produced, seen) == [100.0, 50.0, 500.0, 400.0, 1000.0]


def test_a_message_never_seen_committed_is_an_error() -> None:
    with pytest.raises(BenchError, match="partition 0 offset 5"):
        commit_delays([(0, 5, 0)], {0: [(1.0, 5)]})
    with pytest.raises(BenchError, match="partition 3"):
        commit_delays([(3, 0, 0)], {})


# The COPY text the store writes and the database ceiling reuses --------------------------


def test_copy_rows_of_a_rating_and_a_request() -> None:
    received = RECEIVED.isoformat()
    rating = copy_row(message(7), RatingEvent("EXH_05", 4, AT), REFERENCE, received)
    request = copy_row(message(8), RequestEvent("EXH_00", 1, AT), REFERENCE, received)
    assert rating == (0, "6\t5\t2026-03-11T12:29:17.958630+00:00\tlmnh\t2\t7\n")
    assert request == (1, "1\t2\t2026-03-11T12:29:17.958630+00:00\tlmnh\t2\t8\n")


def test_copy_row_of_a_rejection_keeps_its_reason_one_escaped_line() -> None:
    received = RECEIVED.isoformat()
    value = b'{"site": "\\t"}'
    rejected = message(9, value, 1_700_000_000_123)
    rejection = Rejection(Reason.INVALID_SITE, 'site "\t" is not\na known\\ exhibition\r\0')
    table, line = copy_row(rejected, rejection, REFERENCE, received)
    assert table == 2
    assert line.split("\t") == [
        "\\\\x" + value.hex(),
        "invalid_site",
        'site "\\\\x09" is not\\\\x0aa known\\\\ exhibition\\\\x0d\\\\x00',
        "2023-11-14T22:13:20.123000+00:00",
        received,
        "\\N",  # {"site": "\t"} names no known exhibition
        "lmnh",
        "2",
        "9\n",
    ]
    named = message(9, b'{"site": "5", "val": 7}', None)
    _, line = copy_row(named, Rejection(Reason.MISSING_AT, "no at"), REFERENCE, received)
    assert line.split("\t")[5] == "EXH_05"


def test_copy_row_of_a_message_without_value_or_timestamp_is_null() -> None:
    rejected = message(9, None, None)
    _, line = copy_row(rejected, Rejection(Reason.EMPTY, "no value"), REFERENCE, "t")
    assert line == "\\N\tempty\tno value\t\\N\tt\t\\N\tlmnh\t2\t9\n"


def test_chunks_split_the_messages_and_keep_every_row() -> None:
    messages = [message(offset) for offset in range(5)]
    outcomes = {
        0: RatingEvent("EXH_05", 3, AT),
        1: RequestEvent("EXH_00", 0, AT),
        2: Rejection(Reason.MISSING_AT, "the message has no 'at' key"),
        3: RatingEvent("EXH_00", 0, AT),
        4: RatingEvent("EXH_00", 1, AT),
    }
    chunks = build_chunks(messages, lambda m: outcomes[m.offset], REFERENCE, RECEIVED, chunk=2)
    assert len(chunks) == 3
    assert [c.ratings.count("\n") for c in chunks] == [1, 1, 1]
    assert [c.requests.count("\n") for c in chunks] == [1, 0, 0]
    assert [c.rejected.count("\n") for c in chunks] == [0, 1, 0]


# The original design's validation, weaknesses included -------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"at": "2025-03-11T12:29:17.958630+00:00", "site": "5", "val": 3},
        {"at": "2024-10-21T09:22:29.261334+01:00", "site": "3", "val": -1, "type": 0},
        # What the original let through and the pipeline does not:
        {"at": "2025-03-11T12:29:17+00:00", "site": "5", "val": True},
        {"at": "2025-03-11T12:29:17+00:00", "site": "05", "val": 3.0},
        {"at": "2099-03-11T12:29:17+00:00", "site": "5", "val": 3},
    ],
)
def test_original_rules_accept(fields: dict[str, Any]) -> None:
    assert validate_message(fields) == (True, "")


@pytest.mark.parametrize(
    "fields",
    [
        {"site": "5", "val": 3},
        {"at": "2025-03-11T12:29:17+00:00", "val": 3},
        {"at": "2025-03-11T12:29:17+00:00", "site": "5"},
        {"at": "2025-03-11T12:29:17+00:00", "site": "6", "val": 3},
        {"at": "2025-03-11T12:29:17+00:00", "site": "ERR", "val": 3},
        {"at": "2025-03-11T12:29:17+00:00", "site": "5", "val": 5},
        {"at": "2025-03-11T12:29:17+00:00", "site": "5", "val": "INF"},
        {"at": "2025-03-11T12:29:17+00:00", "site": "5", "val": -1},
        {"at": "2025-03-11T12:29:17+00:00", "site": "5", "val": -1, "type": 2},
        {"at": "2025-03-11T18:15:01+00:00", "site": "5", "val": 3},
        {"at": "2025-03-11T08:44:59+00:00", "site": "5", "val": 3},
        {"at": "yesterday", "site": "5", "val": 3},
    ],
)
def test_original_rules_reject(fields: dict[str, Any]) -> None:
    valid, reason = validate_message(fields)
    assert not valid
    assert reason
