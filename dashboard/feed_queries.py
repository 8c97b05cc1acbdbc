"""The Feed page's SQL: rejected messages counted over time, the latest ones, each exhibition's
last stored interaction, and what the pipeline left behind about itself (its offsets, its load
per minute, its session).

Every function takes an open cursor and the instants to count between, and returns plain rows;
`dashboard.feed` shapes them. The times compared are each table's own: `received_at` of a
rejected message (when the pipeline received its batch), `event_at` of a stored interaction
(the kiosk's clock; the rollups count by its London date), `minute` of `load_minute` and
`updated_at` of `kafka_offset` (the database's clock, in the storing transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, overload

from psycopg2 import sql
from psycopg2.extensions import cursor as Cursor

Unit = Literal["minute", "hour", "day"]

# The application_name of the pipeline's own database sessions (lmnh.store). Any role can read
# another role's application_name and database in pg_stat_activity (only the query, state and
# client details are hidden), so a login of lmnh_reader sees the pipeline connected.
PIPELINE_APPLICATION = "lmnh-pipeline"
# Buckets of days are London days; minutes and hours are the same on every clock the museum
# uses (London is a whole number of hours from UTC), and UTC has no hour that happens twice.
_ZONES: dict[Unit, str] = {"minute": "UTC", "hour": "UTC", "day": "Europe/London"}


@dataclass(frozen=True, slots=True)
class Span:
    """Count what happened from `since` (inclusive) to `until` (exclusive), in buckets of
    `unit` that start at `since`."""

    since: datetime
    until: datetime
    unit: Unit


@dataclass(frozen=True, slots=True)
class PartitionLoad:
    """One partition's row of kafka_offset: how far the pipeline has stored it, and how far
    the topic went when it stored its last batch there (None before it noted watermarks)."""

    kafka_topic: str
    kafka_partition: int
    next_offset: int
    high_watermark: int | None
    stored_at: datetime

    @property
    def lag(self) -> int | None:
        """Messages not yet stored when its last batch was: high watermark - next offset."""
        if self.high_watermark is None:
            return None
        return max(0, self.high_watermark - self.next_offset)


@dataclass(frozen=True, slots=True)
class Exhibition:
    """A known exhibition, and the `event_at` of its latest stored interaction (None: none)."""

    public_id: str
    name: str
    last_stored_at: datetime | None


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A rejected message, its raw value cut to `raw_head` (the first bytes) of `raw_size`."""

    rejected_message_id: int
    received_at: datetime
    reason_code: str
    reason: str
    named_exhibition: str | None
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    kafka_timestamp: datetime | None
    raw_size: int | None
    raw_head: bytes | None


def _parameters(span: Span) -> dict[str, object]:
    return {"since": span.since, "until": span.until, "unit": span.unit, "zone": _ZONES[span.unit]}


def _bucket(column: str) -> sql.Composable:
    return sql.SQL("date_trunc(%(unit)s, {}, %(zone)s)").format(sql.Identifier(column))


def database_now(cur: Cursor) -> datetime:
    """The database's clock: every figure of one answer is counted as of this instant."""
    cur.execute("SELECT now()")
    [(now,)] = cur.fetchall()
    return now  # type: ignore[no-any-return]


@overload
def rejected_by(
    cur: Cursor, span: Span, column: Literal["reason_code"]
) -> list[tuple[datetime, str, int]]: ...
@overload
def rejected_by(
    cur: Cursor, span: Span, column: Literal["named_exhibition"]
) -> list[tuple[datetime, str | None, int]]: ...
def rejected_by(
    cur: Cursor, span: Span, column: Literal["reason_code", "named_exhibition"]
) -> list[tuple[datetime, Any, int]]:
    """(bucket, `column`, rejected messages received in it), by bucket then `column`: the
    reason code, or the named exhibition (None for the messages that named none)."""
    query = sql.SQL(
        "SELECT {bucket} AS bucket, {column}, count(*) FROM rejected_message"
        " WHERE received_at >= %(since)s AND received_at < %(until)s"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(bucket=_bucket("received_at"), column=sql.Identifier(column))
    cur.execute(query, _parameters(span))
    return [(bucket, value, int(count)) for bucket, value, count in cur.fetchall()]


def stored_by_exhibition(cur: Cursor, span: Span) -> list[tuple[datetime, str, int]]:
    """(bucket, public id, interactions stored with event_at in it): ratings and requests.

    Days are summed from the daily rollups of views.sql, which count by the London date of
    event_at (a week of a busy museum is hundreds of thousands of facts). Minutes and hours
    are counted from the fact tables (a range scan of their event_at indexes, over a day at
    most): the rollups have no minutes, and their London hours cannot tell the two 01:00s of
    the autumn clock change apart.
    """
    if span.unit == "day":
        days = sql.SQL(
            "london_date >= london_date(%(since)s) AND london_date < london_date(%(until)s)"
        )
        query = sql.SQL(
            "WITH stored AS ("
            "  SELECT london_date, public_id, interactions FROM rating_daily WHERE {days}"
            "  UNION ALL"
            "  SELECT london_date, public_id, interactions FROM request_daily WHERE {days})"
            " SELECT london_date::timestamp AT TIME ZONE %(zone)s AS bucket, public_id,"
            "  sum(interactions)"
            " FROM stored GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(days=days)
    else:
        query = sql.SQL(
            "WITH stored AS ("
            "  SELECT exhibition_id, event_at FROM rating_interaction"
            "  WHERE event_at >= %(since)s AND event_at < %(until)s"
            "  UNION ALL"
            "  SELECT exhibition_id, event_at FROM request_interaction"
            "  WHERE event_at >= %(since)s AND event_at < %(until)s)"
            " SELECT {bucket} AS bucket, e.public_id, count(*)"
            " FROM stored JOIN exhibition AS e USING (exhibition_id)"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(bucket=_bucket("event_at"))
    cur.execute(query, _parameters(span))
    return [(bucket, public_id, int(count)) for bucket, public_id, count in cur.fetchall()]


def exhibitions(cur: Cursor) -> list[Exhibition]:
    """Every known exhibition, by public id, with the latest `event_at` of its stored ratings
    and requests: a backward step of each fact table's (exhibition_id, event_at) index per
    exhibition, however many rows the tables hold."""
    cur.execute(
        "SELECT e.public_id, e.exhibition_name, greatest("
        "  (SELECT max(event_at) FROM rating_interaction AS r"
        "   WHERE r.exhibition_id = e.exhibition_id),"
        "  (SELECT max(event_at) FROM request_interaction AS q"
        "   WHERE q.exhibition_id = e.exhibition_id))"
        " FROM exhibition AS e ORDER BY e.public_id"
    )
    return [Exhibition(*row) for row in cur.fetchall()]


def latest_rejected(cur: Cursor, limit: int, raw_head_bytes: int) -> list[RejectedRow]:
    """The `limit` rejected messages received last, newest first, each raw value cut to its
    first `raw_head_bytes` bytes (a rejected message can be megabytes long)."""
    cur.execute(
        "SELECT rejected_message_id, received_at, reason_code, reason, named_exhibition,"
        " kafka_topic, kafka_partition, kafka_offset, kafka_timestamp,"
        " octet_length(raw), substring(raw FROM 1 FOR %(head)s)"
        " FROM rejected_message ORDER BY received_at DESC, rejected_message_id DESC"
        " LIMIT %(limit)s",
        {"limit": limit, "head": raw_head_bytes},
    )
    rows = []
    for *fields, head in cur.fetchall():
        raw_head = None if head is None else bytes(head)  # psycopg2 gives a memoryview
        rows.append(RejectedRow(*(*fields, raw_head)))
    return rows


def pipeline_sessions(cur: Cursor) -> int:
    """How many of the pipeline's sessions are connected to this database now."""
    # A transaction keeps its first look at pg_stat_activity: look afresh.
    cur.execute("SELECT pg_stat_clear_snapshot()")
    cur.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        (PIPELINE_APPLICATION,),
    )
    row = cur.fetchone()
    return int(row[0]) if row else 0


def partition_loads(cur: Cursor) -> list[PartitionLoad]:
    """Every partition the pipeline has stored a batch of, by topic and partition."""
    cur.execute(
        "SELECT kafka_topic, kafka_partition, next_offset, high_watermark, updated_at"
        " FROM kafka_offset ORDER BY kafka_topic, kafka_partition"
    )
    return [PartitionLoad(*row) for row in cur.fetchall()]


def messages_per_minute(
    cur: Cursor, since: datetime, until: datetime
) -> list[tuple[datetime, int]]:
    """(minute, messages stored in it, every partition together) for the minutes that stored
    any, from `since` (inclusive) to `until` (exclusive)."""
    cur.execute(
        "SELECT minute, sum(messages) FROM load_minute"
        " WHERE minute >= %s AND minute < %s GROUP BY 1 ORDER BY 1",
        (since, until),
    )
    return [(minute, int(messages)) for minute, messages in cur.fetchall()]
