"""The Feed's API on a database of its own: known rejected messages, interactions, loads per
minute and offsets, stored at times relative to the database's clock, and every figure the API
returns compared with values worked out by hand. The answers are also checked against the
OpenAPI document. And the pipeline is seen connected by a plain lmnh_reader login."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from psycopg2.extensions import connection as Connection
from schemathesis.checks import not_a_server_error

from dashboard import feed_queries
from dashboard.app import create_app
from dashboard.feed import WINDOWS, exhibitions_body
from dashboard.feed_queries import pipeline_sessions
from dashboard.sessions import COOKIE
from lmnh.config import DatabaseSettings, load_config
from lmnh.database import connect
from lmnh.museum import LONDON, OPENS, in_opening_hours
from tests.integration.conftest import MakeLogin
from tests.integration.dashboard_support import NAMES, dashboard_db, query, staff_cookies, store
from tests.integration.support import Target, free_port

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

# The server's own clock, far from the database's: the Feed counts on the database's clock.
SERVER_NOW = datetime(2026, 10, 24, 9, 0, tzinfo=UTC)

# Read once, from an app that never connects.
schema = schemathesis.openapi.from_dict(
    create_app(load_config({}).database, clock=lambda: SERVER_NOW).openapi()
)


@pytest.fixture
def app(dashboard_db: DatabaseSettings) -> FastAPI:
    return create_app(dashboard_db, clock=lambda: SERVER_NOW)


@pytest.fixture
def staff(dashboard_db: DatabaseSettings) -> dict[str, str]:
    """Signed in with every role."""
    return staff_cookies(dashboard_db)


def call(
    app: FastAPI, staff: dict[str, str], path: str, **query: str | list[str]
) -> tuple[int, dict[str, Any]]:
    """GET an endpoint in process; the answer must match the document and never be cached (a
    503 too: it is documented, so only the check that calls every 5xx a failure is left out)."""
    case = schema[path]["GET"].Case(query=query)
    response = case.call(app=app, cookies=staff)
    case.validate_response(response, excluded_checks=[not_a_server_error])
    assert response.headers["cache-control"] == ["no-store"]
    body: dict[str, Any] = response.json()
    return response.status_code, body


def database_now(database: DatabaseSettings) -> datetime:
    [(now,)] = query(database, "SELECT now()")
    return now.astimezone(UTC)  # type: ignore[no-any-return]


def early_in_a_minute(database: DatabaseSettings) -> datetime:
    """The database's clock once it is at most 45 s into a minute: what a test stores and asks
    then falls within one minute of the clock."""
    now = database_now(database)
    if now.second > 45:
        time.sleep(60.5 - now.second - now.microsecond / 1e6)
        now = database_now(database)
    return now


def reject(
    database: DatabaseSettings, rows: Sequence[tuple[Any, ...]], *, topic: str = "kiosks"
) -> None:
    """Store rejected messages: (received_at, reason_code, named exhibition[, raw, offset])."""
    conn = connect(database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(kafka_offset) + 1, 0) FROM rejected_message")
            [(offset,)] = cur.fetchall()
            for n, (received_at, code, site, *rest) in enumerate(rows):
                raw = rest[0] if rest else b"{}"
                cur.execute(
                    "INSERT INTO rejected_message (raw, reason_code, reason, kafka_topic,"
                    " kafka_partition, kafka_offset, received_at, named_exhibition)"
                    " VALUES (%s, %s, %s, %s, 0, %s, %s, %s)",
                    (raw, code, f"why {code}", topic, offset + n, received_at, site),
                )
    finally:
        conn.close()


def hour(at: datetime) -> str:
    return at.replace(minute=0, second=0, microsecond=0).isoformat()


def minute(at: datetime) -> str:
    return at.replace(second=0, microsecond=0).isoformat()


def london_day(at: datetime) -> str:
    day: date = at.astimezone(LONDON).date()
    return datetime.combine(day, datetime.min.time(), LONDON).astimezone(UTC).isoformat()


def nonzero(rows: list[dict[str, Any]], key: str, value: str) -> dict[tuple[str, str], Any]:
    return {(row["bucket"], row[key]): row[value] for row in rows if row[value]}


# Rejected messages by reason ---------------------------------------------------------------------


def test_rejected_messages_are_counted_by_reason_in_each_window(
    app: FastAPI, staff: dict[str, str], dashboard_db: DatabaseSettings
) -> None:
    now = database_now(dashboard_db)
    recent, earlier, yesterday, long_ago = (
        now - timedelta(minutes=10),
        now - timedelta(hours=3),
        now - timedelta(hours=30),
        now - timedelta(days=9),
    )
    reject(
        dashboard_db,
        [(recent, "invalid_json", None)] * 3
        + [(earlier, "out_of_hours", "EXH_01")] * 2
        + [(yesterday, "invalid_site", None), (long_ago, "empty", None)],
    )

    status, body = call(app, staff, "/api/feed/rejected", window="1h")
    assert status == 200, body
    assert (body["window"], body["bucket"], body["rejected"]) == ("1h", "minute", 3)
    assert body["reasons"] == [{"reason_code": "invalid_json", "rejected": 3}]
    assert len(body["rows"]) == 60
    assert nonzero(body["rows"], "reason_code", "rejected") == {(minute(recent), "invalid_json"): 3}
    assert body["until"] == minute(datetime.fromisoformat(body["now"]) + timedelta(minutes=1))

    status, body = call(app, staff, "/api/feed/rejected")  # 24 h by default
    assert (status, body["window"], body["bucket"], body["rejected"]) == (200, "24h", "hour", 5)
    assert body["reasons"] == [
        {"reason_code": "invalid_json", "rejected": 3},
        {"reason_code": "out_of_hours", "rejected": 2},
    ]
    assert len(body["rows"]) == 24 * 2
    assert nonzero(body["rows"], "reason_code", "rejected") == {
        (hour(recent), "invalid_json"): 3,
        (hour(earlier), "out_of_hours"): 2,
    }

    status, body = call(app, staff, "/api/feed/rejected", window="7d")
    assert (status, body["bucket"], body["rejected"]) == (200, "day", 6)
    assert [r["reason_code"] for r in body["reasons"]] == [
        "invalid_json",
        "out_of_hours",
        "invalid_site",
    ]
    assert len(body["rows"]) == 7 * 3
    assert nonzero(body["rows"], "reason_code", "rejected") == {
        (london_day(recent), "invalid_json"): 3,
        (london_day(earlier), "out_of_hours"): 2,
        (london_day(yesterday), "invalid_site"): 1,
    }
    assert body["since"] == london_day(datetime.fromisoformat(body["now"]) - timedelta(days=6))


def test_no_rejected_message_is_an_empty_window(app: FastAPI, staff: dict[str, str]) -> None:
    status, body = call(app, staff, "/api/feed/rejected", window="1h")
    assert (status, body["rejected"], body["reasons"], body["rows"]) == (200, 0, [], [])


def test_buckets_are_london_days_and_whole_hours_across_the_autumn_clock_change(
    dashboard_db: DatabaseSettings,
) -> None:
    """Fixed instants around 25 Oct 2026 (a London day of 25 hours, 01:00-01:59 twice), counted
    by the queries themselves: stored interactions and rejected messages alike."""
    instants = [
        "2026-10-24T22:59:59Z",  # 23:59:59 BST, Saturday 24 Oct
        "2026-10-25T00:30:00Z",  # 01:30 BST, Sunday 25 Oct: the first 01:30
        "2026-10-25T01:30:00Z",  # 01:30 GMT: the second 01:30
        "2026-10-25T23:59:59Z",  # 23:59:59 GMT, still Sunday
        "2026-10-26T00:00:00Z",  # Monday 26 Oct
    ]
    store(dashboard_db, ratings=[("EXH_02", 2, at) for at in instants])
    reject(dashboard_db, [(at, "invalid_val", "EXH_02") for at in instants])
    conn = connect(dashboard_db)
    try:
        with conn, conn.cursor() as cur:
            days = WINDOWS["7d"].span(datetime.fromisoformat("2026-10-26T12:00:00Z"))
            by_day = {
                (bucket.astimezone(UTC).isoformat(), n)
                for bucket, _public_id, n in feed_queries.stored_by_exhibition(cur, days)
            }
            rejects_by_day = {
                (bucket.astimezone(UTC).isoformat(), n)
                for bucket, _site, n in feed_queries.rejected_by(cur, days, "named_exhibition")
            }
            hours = WINDOWS["24h"].span(datetime.fromisoformat("2026-10-25T02:10:00Z"))
            by_hour = [
                (bucket.astimezone(UTC).isoformat(), n)
                for bucket, _public_id, n in feed_queries.stored_by_exhibition(cur, hours)
            ]
    finally:
        conn.close()
    expected_days = {
        ("2026-10-23T23:00:00+00:00", 1),  # Saturday from 00:00 BST
        ("2026-10-24T23:00:00+00:00", 3),  # Sunday, 25 hours long
        ("2026-10-26T00:00:00+00:00", 1),  # Monday from 00:00 GMT
    }
    assert by_day == rejects_by_day == expected_days
    assert by_hour == [
        ("2026-10-24T22:00:00+00:00", 1),
        ("2026-10-25T00:00:00+00:00", 1),
        ("2026-10-25T01:00:00+00:00", 1),
    ]


# Rejects by exhibition -----------------------------------------------------------------------


def test_the_reject_rate_per_exhibition_is_rejected_over_rejected_and_stored(
    app: FastAPI, staff: dict[str, str], dashboard_db: DatabaseSettings
) -> None:
    now = database_now(dashboard_db)
    two_hours_ago, yesterday = now - timedelta(hours=2), now - timedelta(hours=26)
    store(
        dashboard_db,
        ratings=[("EXH_01", 3, two_hours_ago.isoformat())] * 3
        + [("EXH_01", 4, yesterday.isoformat())],
        requests=[("EXH_03", 0, two_hours_ago.isoformat())] * 5,
    )
    reject(
        dashboard_db,
        [
            (two_hours_ago, "invalid_val", "EXH_01"),
            (two_hours_ago, "invalid_val", "EXH_02"),
            (two_hours_ago, "invalid_at", "EXH_02"),
            (two_hours_ago, "invalid_json", None),  # named no exhibition
            (two_hours_ago, "invalid_site", "EXH_99"),  # named one that is not known
            (yesterday, "invalid_val", "EXH_01"),
        ],
    )

    status, body = call(app, staff, "/api/feed/exhibitions", window="24h")
    assert status == 200, body
    rates = {
        e["public_id"]: (e["exhibition_name"], e["rejected"], e["stored"], e["reject_rate"])
        for e in body["exhibitions"]
    }
    assert rates == {
        "EXH_00": (NAMES["EXH_00"], 0, 0, None),
        "EXH_01": (NAMES["EXH_01"], 1, 3, 0.25),
        "EXH_02": (NAMES["EXH_02"], 2, 0, 1.0),
        "EXH_03": (NAMES["EXH_03"], 0, 5, 0.0),
        "EXH_04": (NAMES["EXH_04"], 0, 0, None),
        "EXH_05": (NAMES["EXH_05"], 0, 0, None),
    }
    assert body["unattributed"] == 2
    assert len(body["rows"]) == 24 * 6
    in_bucket = {
        (row["bucket"], row["public_id"]): (row["rejected"], row["stored"], row["reject_rate"])
        for row in body["rows"]
        if row["rejected"] or row["stored"]
    }
    assert in_bucket == {
        (hour(two_hours_ago), "EXH_01"): (1, 3, 0.25),
        (hour(two_hours_ago), "EXH_02"): (2, 0, 1.0),
        (hour(two_hours_ago), "EXH_03"): (0, 5, 0.0),
    }

    status, body = call(app, staff, "/api/feed/exhibitions", window="7d")
    totals = {
        e["public_id"]: (e["rejected"], e["stored"], e["reject_rate"]) for e in body["exhibitions"]
    }
    assert totals["EXH_01"] == (2, 4, 2 / 6)
    assert body["unattributed"] == 2
    by_day = {
        (row["bucket"], row["public_id"]): (row["rejected"], row["stored"])
        for row in body["rows"]
        if row["public_id"] == "EXH_01" and (row["rejected"] or row["stored"])
    }
    assert by_day == {
        (london_day(two_hours_ago), "EXH_01"): (1, 3),
        (london_day(yesterday), "EXH_01"): (1, 1),
    }

    status, body = call(app, staff, "/api/feed/exhibitions", window="1h")
    assert all(e["rejected"] == e["stored"] == 0 for e in body["exhibitions"])
    assert (body["unattributed"], len(body["rows"])) == (0, 60 * 6)


def test_each_exhibitions_last_stored_interaction_tells_a_quiet_kiosk(
    dashboard_db: DatabaseSettings,
) -> None:
    """The query over real rows, at fixed instants, judged at a fixed moment while the museum
    is open (tests run at any hour): 14:35 on Friday 20 Nov 2026, London on GMT."""
    store(
        dashboard_db,
        ratings=[
            ("EXH_01", 3, "2026-11-20T14:20:00Z"),
            ("EXH_01", 2, "2026-11-20T09:00:00Z"),
            ("EXH_02", 4, "2026-11-20T12:10:00Z"),  # quiet since: only rejects after it
            ("EXH_03", 1, "2026-11-12T10:00:00Z"),  # over a week ago: not judged
        ],
        requests=[
            ("EXH_02", 0, "2026-11-20T11:00:00Z"),
            ("EXH_04", 1, "2026-11-20T13:04:59Z"),  # 90 minutes and a second ago: quiet
            ("EXH_05", 0, "2026-11-20T13:05:01Z"),  # a second under 90 minutes: not yet
        ],
    )
    reject(dashboard_db, [(datetime.fromisoformat("2026-11-20T14:30Z"), "invalid_val", "EXH_02")])
    conn = connect(dashboard_db)
    try:
        with conn, conn.cursor() as cur:
            known = feed_queries.exhibitions(cur)
    finally:
        conn.close()
    last = {e.public_id: e.last_stored_at and e.last_stored_at.astimezone(UTC) for e in known}
    assert last == {
        "EXH_00": None,
        "EXH_01": datetime(2026, 11, 20, 14, 20, tzinfo=UTC),
        "EXH_02": datetime(2026, 11, 20, 12, 10, tzinfo=UTC),
        "EXH_03": datetime(2026, 11, 12, 10, tzinfo=UTC),
        "EXH_04": datetime(2026, 11, 20, 13, 4, 59, tzinfo=UTC),
        "EXH_05": datetime(2026, 11, 20, 13, 5, 1, tzinfo=UTC),
    }
    assert [e.name for e in known] == [NAMES[public_id] for public_id in sorted(NAMES)]
    open_now = datetime(2026, 11, 20, 14, 35, tzinfo=UTC)
    body = exhibitions_body(WINDOWS["1h"], open_now, known, [], [])
    assert [e["public_id"] for e in body["exhibitions"] if e["quiet"]] == ["EXH_02", "EXH_04"]
    closed_now = datetime(2026, 11, 20, 18, 50, tzinfo=UTC)
    body = exhibitions_body(WINDOWS["1h"], closed_now, known, [], [])
    assert not any(e["quiet"] for e in body["exhibitions"])


def test_the_api_says_when_each_exhibition_last_stored_and_whether_it_is_quiet(
    app: FastAPI, staff: dict[str, str], dashboard_db: DatabaseSettings
) -> None:
    now = database_now(dashboard_db)
    store(
        dashboard_db,
        ratings=[("EXH_01", 3, (now - timedelta(hours=3)).isoformat())],
        requests=[("EXH_01", 0, (now - timedelta(minutes=100)).isoformat())],
    )
    status, body = call(app, staff, "/api/feed/exhibitions", window="1h")
    assert status == 200, body
    answered = datetime.fromisoformat(body["now"])
    exhibitions = {e["public_id"]: e for e in body["exhibitions"]}
    assert exhibitions["EXH_01"]["last_stored_at"] == (now - timedelta(minutes=100)).isoformat()
    assert exhibitions["EXH_02"]["last_stored_at"] is None
    # Quiet as the rule says at the answer's moment: open for 90 minutes or not, whenever run.
    opened_for = answered - datetime.combine(answered.astimezone(LONDON).date(), OPENS, LONDON)
    quiet = in_opening_hours(answered) and opened_for >= timedelta(minutes=90)
    assert exhibitions["EXH_01"]["quiet"] is quiet
    assert exhibitions["EXH_02"]["quiet"] is False
    assert (body["museum_open"], body["quiet_minutes"]) == (in_opening_hours(answered), 90)


# The latest rejected messages --------------------------------------------------------------------


def test_the_latest_50_rejected_messages_are_listed_newest_first_and_shown_safely(
    app: FastAPI, staff: dict[str, str], dashboard_db: DatabaseSettings
) -> None:
    now = database_now(dashboard_db)
    long_value = "🐋".encode() * 1000  # 4,000 bytes
    rows: list[tuple[Any, ...]] = [
        (now - timedelta(seconds=100 + n), "invalid_json", None, b"older", n) for n in range(52)
    ]
    rows += [
        (now - timedelta(seconds=3), "invalid_json", "EXH_02", b"\xff\x00<b>\n\\"),
        (now - timedelta(seconds=2), "empty", None, None),
        (now - timedelta(seconds=1), "invalid_site", None, long_value),
    ]
    reject(dashboard_db, [row[:4] for row in rows])
    query(
        dashboard_db,
        "UPDATE rejected_message SET kafka_timestamp = %s, reason = %s WHERE raw = %s",
        (now - timedelta(seconds=9), "site \u202e is odd", b"\xff\x00<b>\n\\"),
    )
    [(first_offset,)] = query(dashboard_db, "SELECT min(kafka_offset) FROM rejected_message")

    status, body = call(app, staff, "/api/feed/latest")
    assert status == 200, body
    assert body["limit"] == 50
    messages = body["messages"]
    assert len(messages) == 50
    received = [m["received_at"] for m in messages]
    assert received == sorted(received, reverse=True)
    newest, empty, odd = messages[:3]
    assert newest == {
        "id": newest["id"],
        "received_at": (now - timedelta(seconds=1)).isoformat(),
        "reason_code": "invalid_site",
        "reason": "why invalid_site",
        "named_exhibition": None,
        "kafka_topic": "kiosks",
        "kafka_partition": 0,
        "kafka_offset": first_offset + 54,
        "kafka_timestamp": None,
        "raw_bytes": 4000,
        "raw_shown": "🐋" * 300,
        "raw_truncated": True,
    }
    assert (empty["reason_code"], empty["raw_bytes"], empty["raw_shown"]) == ("empty", None, None)
    assert empty["raw_truncated"] is False
    assert odd == {
        "id": odd["id"],
        "received_at": (now - timedelta(seconds=3)).isoformat(),
        "reason_code": "invalid_json",
        "reason": "site \\u202e is odd",
        "named_exhibition": "EXH_02",
        "kafka_topic": "kiosks",
        "kafka_partition": 0,
        "kafka_offset": first_offset + 52,
        "kafka_timestamp": (now - timedelta(seconds=9)).isoformat(),
        "raw_bytes": 7,
        "raw_shown": "\\xff\\x00<b>\\n\\\\",
        "raw_truncated": False,
    }
    # Of the 52 older ones, the 47 received last: offsets 0-46 of them (n seconds before).
    assert [m["kafka_offset"] - first_offset for m in messages[3:]] == list(range(47))
    assert {m["raw_shown"] for m in messages[3:]} == {"older"}


# The pipeline ------------------------------------------------------------------------------------


@contextmanager
def sessions(database: DatabaseSettings, *names: str) -> Iterator[list[Connection]]:
    """Database sessions with these application names, open until the block ends."""
    opened = [connect(database, application_name=name) for name in names]
    try:
        yield opened
    finally:
        for conn in opened:
            conn.close()


def offsets(database: DatabaseSettings, rows: Sequence[tuple[Any, ...]]) -> None:
    """Replace kafka_offset: (partition, next offset, high watermark, updated_at) of `kiosks`."""
    query(database, "DELETE FROM kafka_offset")
    for partition, next_offset, high, updated_at in rows:
        query(
            database,
            "INSERT INTO kafka_offset (kafka_topic, kafka_partition, next_offset,"
            " high_watermark, updated_at) VALUES ('kiosks', %s, %s, %s, %s)",
            (partition, next_offset, high, updated_at),
        )


def test_a_pipeline_that_never_ran_says_so(app: FastAPI, staff: dict[str, str]) -> None:
    status, body = call(app, staff, "/api/feed/pipeline")
    assert status == 200, body
    assert (body["state"], body["sessions"], body["last_batch_at"], body["lag"]) == (
        "never_run",
        0,
        None,
        None,
    )
    assert body["state_reason"] == "no batch has ever been stored in this database"
    assert (body["hour_messages"], body["current_minute_messages"], body["partitions"]) == (
        0,
        0,
        [],
    )
    assert [m["messages"] for m in body["minutes"]] == [0] * 60
    assert body["server_now"] == SERVER_NOW.isoformat()  # the app's clock, not the database's


def test_the_pipelines_load_lag_and_state(
    app: FastAPI, staff: dict[str, str], dashboard_db: DatabaseSettings
) -> None:
    now = early_in_a_minute(dashboard_db)
    current = now.replace(second=0, microsecond=0)
    loads = [
        (current - timedelta(minutes=61), 0, 999),  # before the last hour: not counted
        (current - timedelta(minutes=60), 0, 30),  # the first whole minute of the last hour
        (current - timedelta(minutes=30), 0, 120),
        (current - timedelta(minutes=1), 0, 600),  # the last whole minute, two partitions
        (current - timedelta(minutes=1), 1, 60),
        (current, 0, 7),  # the current minute, so far
    ]
    for at, partition, messages in loads:
        query(
            dashboard_db,
            "INSERT INTO load_minute (minute, kafka_topic, kafka_partition, messages)"
            " VALUES (%s, 'kiosks', %s, %s)",
            (at, partition, messages),
        )
    offsets(
        dashboard_db,
        [
            (0, 1000, 1004, now - timedelta(seconds=20)),
            (1, 500, 500, now - timedelta(minutes=2)),
            (2, 10, None, now - timedelta(hours=1)),  # stored before watermarks were noted
        ],
    )

    status, body = call(app, staff, "/api/feed/pipeline")
    assert status == 200, body
    assert (body["state"], body["state_reason"], body["sessions"]) == (
        "stopped",
        "no pipeline is connected to this database",
        0,
    )
    assert body["last_batch_at"] == (now - timedelta(seconds=20)).isoformat()
    assert (body["hour_since"], body["hour_until"]) == (
        (current - timedelta(minutes=60)).isoformat(),
        current.isoformat(),
    )
    assert body["hour_messages"] == 30 + 120 + 600 + 60
    assert body["hour_per_second"] == pytest.approx(810 / 3600)
    assert body["current_minute_messages"] == 7
    per_minute = {m["minute"]: (m["messages"], m["per_second"]) for m in body["minutes"]}
    assert len(per_minute) == 60
    assert {k: v for k, v in per_minute.items() if v[0]} == {
        (current - timedelta(minutes=60)).isoformat(): (30, 0.5),
        (current - timedelta(minutes=30)).isoformat(): (120, 2.0),
        (current - timedelta(minutes=1)).isoformat(): (660, 11.0),
    }
    assert body["lag"] == 4
    assert [
        (p["kafka_partition"], p["next_offset"], p["high_watermark"], p["lag"])
        for p in body["partitions"]
    ] == [
        (0, 1000, 1004, 4),
        (1, 500, 500, 0),
        (2, 10, None, None),
    ]
    assert body["partitions"][2]["stored_at"] == (now - timedelta(hours=1)).isoformat()

    with sessions(dashboard_db, "lmnh-pipeline", "lmnh-pipeline", "lmnh-pipeline-cancel"):
        status, body = call(app, staff, "/api/feed/pipeline")
        assert (body["state"], body["sessions"]) == ("running", 2)
        assert body["state_reason"] == "connected; 4 messages waited at the last batches"

        # Messages waited on partition 1 at a batch 5 minutes ago, and nothing since: stalled.
        offsets(dashboard_db, [(0, 1000, 1000, now), (1, 500, 503, now - timedelta(minutes=5))])
        status, body = call(app, staff, "/api/feed/pipeline")
        assert (body["state"], body["lag"]) == ("behind", 3)
        assert body["state_reason"].startswith("3 messages waited on kiosks[1] at its last batch")

        # More waited than one batch takes.
        offsets(dashboard_db, [(0, 0, 6_000, now), (1, 0, 4_001, now)])
        status, body = call(app, staff, "/api/feed/pipeline")
        assert (body["state"], body["lag"]) == ("behind", 10_001)
        assert body["state_reason"].startswith("10,001 messages waited at the last batches")

        offsets(dashboard_db, [(0, 0, 6_000, now), (1, 0, 4_000, now)])
        status, body = call(app, staff, "/api/feed/pipeline")
        assert (body["state"], body["lag"]) == ("running", 10_000)


def test_a_connected_pipeline_that_stores_nothing_while_messages_wait_is_stalled(
    app: FastAPI, staff: dict[str, str], dashboard_db: DatabaseSettings
) -> None:
    """Its sessions are listed (a connection gone silent stays listed until the server notices)
    but nothing was stored for over a minute though messages waited: stalled, since the last
    batch. A batch stored ends it."""
    now = database_now(dashboard_db)
    last_batch = now - timedelta(seconds=75)
    offsets(dashboard_db, [(0, 1000, 1000, last_batch), (1, 500, 507, now - timedelta(minutes=4))])
    with sessions(dashboard_db, "lmnh-pipeline", "lmnh-pipeline"):
        status, body = call(app, staff, "/api/feed/pipeline")
        assert status == 200, body
        assert (body["state"], body["sessions"], body["lag"]) == ("stalled", 2, 7)
        assert body["stalled_since"] == body["last_batch_at"] == last_batch.isoformat()
        # 75 s or a little more by the time the app asks: said in whole seconds or minutes.
        assert re.fullmatch(
            r"connected, but no batch stored for (7[5-9] s|2 min) although 7 messages waited"
            r" at the last batches",
            body["state_reason"],
        ), body["state_reason"]

        # A batch stored just now, of another partition: that one is behind, not stalled.
        offsets(dashboard_db, [(0, 1000, 1000, now), (1, 500, 507, now - timedelta(minutes=4))])
        status, body = call(app, staff, "/api/feed/pipeline")
        assert (body["state"], body["stalled_since"]) == ("behind", None)

        # Caught up, long ago: idle, as far as the database can tell.
        old = now - timedelta(hours=1)
        offsets(dashboard_db, [(0, 1000, 1000, old), (1, 507, 507, old)])
        status, body = call(app, staff, "/api/feed/pipeline")
        assert (body["state"], body["stalled_since"]) == ("running", None)

    # The same rows with no session: stopped, not stalled.
    offsets(dashboard_db, [(0, 1000, 1000, last_batch), (1, 500, 507, last_batch)])
    status, body = call(app, staff, "/api/feed/pipeline")
    assert (body["state"], body["stalled_since"]) == ("stopped", None)


def test_the_dashboards_login_sees_the_pipeline_connected(
    target: Target, login: MakeLogin, dashboard_db: DatabaseSettings
) -> None:
    """A non-superuser, without pg_read_all_stats, sees other users' application_name and
    database in pg_stat_activity: only the pipeline's sessions on its own database count."""
    reader = login("lmnh_dashboard")
    staff = staff_cookies(target.settings.database)
    with sessions(dashboard_db, "lmnh-pipeline"):  # another database's pipeline
        conn = connect(reader)
        try:
            with conn, conn.cursor() as cur:  # one transaction: it must still look afresh
                cur.execute(
                    "SELECT rolsuper, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')"
                    " FROM pg_roles WHERE rolname = current_user"
                )
                assert cur.fetchall() == [(False, False)]
                assert pipeline_sessions(cur) == 0
                with sessions(target.settings.database, "lmnh-pipeline"):
                    assert pipeline_sessions(cur) == 1
        finally:
            conn.close()

        with sessions(target.settings.database, "lmnh-pipeline"):
            app = create_app(reader, clock=lambda: SERVER_NOW)
            status, body = call(app, staff, "/api/feed/pipeline")
    assert (status, body["state"], body["sessions"]) == (200, "running", 1)
    assert body["state_reason"] == "connected; no batch stored yet"


# Errors ----------------------------------------------------------------------------------------


def test_a_query_that_cannot_be_read_is_refused_with_every_problem(
    app: FastAPI, staff: dict[str, str]
) -> None:
    status, body = call(app, staff, "/api/feed/rejected", window=["2h", "1h"])
    assert status == 400, body
    assert body["problems"] == [
        "window is given more than once",
        "window='2h' must be one of 1h, 24h, 7d",
    ]
    assert body["error"].startswith("the filters cannot be read: ")
    status, body = call(app, staff, "/api/feed/pipeline", window="1h")
    assert (status, body["problems"]) == (400, ["unknown parameter 'window' (known: none)"])


def test_a_database_that_does_not_answer_is_a_503(dashboard_db: DatabaseSettings) -> None:
    closed = free_port()  # nothing listens there
    app = create_app(replace(dashboard_db, host="127.0.0.1", port=closed), clock=lambda: SERVER_NOW)
    staff = {COOKIE: "unchecked"}  # the database that would check it does not answer either
    for path in ("/api/feed/pipeline", "/api/feed/latest", "/api/feed/rejected"):
        status, body = call(app, staff, path)
        assert status == 503, body
        assert "database" in body["error"]
