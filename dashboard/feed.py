"""The Feed page, for operators and kiosk technicians: what the kiosks sent that was rejected
(by reason, by the exhibition it named, the latest ones as they came), and whether the pipeline
is storing (its state, its load per minute, how far behind the topic it is).

The judgements are pure functions of what the database says (`parse_window`, `Window`,
`show_raw`, `judge_pipeline` and the `*_body` shapers); `feed_routes` is the I/O around them.
Windows are measured on the database's clock, which stamped what they count (`load_minute`,
`kafka_offset.updated_at`), not on the server's: a server started with a clock of its own (for
the museum's opening hours in a test) would otherwise look at a window in which nothing
happened.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from dashboard import feed_queries
from dashboard.api_schema import COMMON_ERRORS, NO_STORE, ErrorBody
from dashboard.feed_queries import Exhibition, PartitionLoad, RejectedRow, Span, Unit
from dashboard.filters import FilterError, show_value
from dashboard.pool import ConnectionPool
from lmnh.museum import LONDON, OPENS, in_opening_hours

PAGE = Path(__file__).resolve().parent / "static" / "feed.html"

DEFAULT_WINDOW = "24h"
LATEST = 50  # rejected messages listed, newest first
# A raw value is shown up to this many characters (escapes included), then cut.
RAW_SHOWN_CHARS = 300
# A shown character stands for 4 bytes at most (a 4-byte UTF-8 sequence), so this many bytes
# always hold the first RAW_SHOWN_CHARS and the start of the next: no more is fetched.
RAW_HEAD_BYTES = 4 * RAW_SHOWN_CHARS + 3
# Behind: more messages were waiting when the last batches were stored than one batch of the
# pipeline's default --batch-size (10,000) takes. While it keeps up, what waits at a batch is
# what arrived while the batch before was stored, which the next batch takes whole; beyond a
# batch it needs several batches in a row to catch up (a backlog, or a feed faster than it).
BEHIND_MESSAGES = 10_000
# Stalled: messages waited at the last batch and no batch at all was stored for this long since,
# the rule of the pipeline's own /health at its default --health-stall-seconds. Behind: messages
# waited on one partition at its last batch and none was stored from it for this long, while
# other partitions were stored.
STALL = timedelta(seconds=60)
MINUTE = timedelta(minutes=1)
HOUR_MINUTES = 60
# Quiet: no interaction of an exhibition stored for this long while the museum is open (and
# has been for this long): the time of the alert LmnhKioskQuiet, long enough that the quietest
# room at the quietest hour is not called quiet (docs/deploy.md). Only for an exhibition that
# stored one within SEEN, as the alert only judges a kiosk it has heard from within a week.
QUIET = timedelta(minutes=90)
SEEN = timedelta(days=7)

State = Literal["running", "behind", "stalled", "stopped", "never_run"]
WindowName = Literal["1h", "24h", "7d"]
_STEPS: dict[Unit, timedelta] = {"minute": MINUTE, "hour": timedelta(hours=1)}
# Characters that would be invisible, or would reorder or break the text around them: controls,
# format characters (zero-width, bidirectional overrides, BOM), separators and odd spaces.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Zs"})
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # how surrogateescape decodes a byte that is not UTF-8


@dataclass(frozen=True, slots=True)
class Window:
    """A time window of the page: the current bucket of `unit` and the ones before it."""

    name: WindowName
    unit: Unit
    buckets: int

    def starts(self, now: datetime) -> list[datetime]:
        """Where each bucket starts (UTC), oldest first; the last one holds `now`. Days are
        London days: 23 or 25 hours long on the days the clocks change."""
        if self.unit == "day":
            today = now.astimezone(LONDON).date()
            days = [today - timedelta(days=n) for n in reversed(range(self.buckets))]
            return [_london_midnight(day) for day in days]
        current = _floor(now, self.unit)
        return [current - _STEPS[self.unit] * n for n in reversed(range(self.buckets))]

    def span(self, now: datetime) -> Span:
        """From the first bucket's start to the current one's end."""
        starts = self.starts(now)
        return Span(starts[0], _bucket_end(starts[-1], self.unit), self.unit)


WINDOWS: dict[str, Window] = {
    window.name: window
    for window in (
        Window("1h", "minute", 60),
        Window("24h", "hour", 24),
        Window("7d", "day", 7),
    )
}


def _floor(at: datetime, unit: Unit) -> datetime:
    at = at.astimezone(UTC).replace(second=0, microsecond=0)
    return at.replace(minute=0) if unit == "hour" else at


def _london_midnight(day: date) -> datetime:
    # London changes its clocks at 01:00 UTC: its midnight always exists, exactly once.
    return datetime.combine(day, time(), LONDON).astimezone(UTC)


def _bucket_end(start: datetime, unit: Unit) -> datetime:
    if unit == "day":
        return _london_midnight(start.astimezone(LONDON).date() + timedelta(days=1))
    return start + _STEPS[unit]


# Query string -------------------------------------------------------------------------------


def parse_window(pairs: Iterable[tuple[str, str]], accepted: Collection[str]) -> Window:
    """Read an endpoint's query string: `window` when it is in `accepted` (the endpoints
    without a window take nothing). An empty value counts as not given, as for the charts'
    filters.

    Raises `FilterError` listing every problem: an unknown name, a value given twice, a window
    that `openapi_parameters` does not document.
    """
    problems: list[str] = []
    given: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name not in accepted:
            known = ", ".join(sorted(accepted)) or "none"
            problems.append(f"unknown parameter {show_value(name)} (known: {known})")
        elif name in seen:
            problems.append(f"{name} is given more than once")
        else:
            seen.add(name)
            if value:
                given[name] = value
    window = WINDOWS[DEFAULT_WINDOW]
    if "window" in given:
        if given["window"] in WINDOWS:
            window = WINDOWS[given["window"]]
        else:
            choices = ", ".join(WINDOWS)
            problems.append(f"window={show_value(given['window'])} must be one of {choices}")
    if problems:
        raise FilterError(problems)
    return window


def openapi_parameters() -> list[dict[str, Any]]:
    """The window as OpenAPI documents it, from the choices that `parse_window` takes."""
    return [
        {
            "name": "window",
            "in": "query",
            "required": False,
            "allowEmptyValue": True,  # `window=` is accepted and means "not given"
            "description": "The time window: 1h (by minute), 24h (by hour) or 7d (by London"
            " day), each the bucket holding now and the ones before it.",
            "schema": {"type": "string", "enum": list(WINDOWS), "default": DEFAULT_WINDOW},
        }
    ]


# Raw bytes, shown safely ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShownRaw:
    text: str
    truncated: bool


def show_raw(head: bytes, size: int, limit: int = RAW_SHOWN_CHARS) -> ShownRaw:
    """A message's bytes as text a person can read and nothing can hide in: UTF-8, with a
    backslash shown as \\\\, a byte that is not UTF-8 as \\xNN (80-ff), a control character as
    \\n, \\r, \\t or \\xNN (00-7f), and an invisible, reordering or odd space character as
    \\uNNNN (zero-width, bidirectional overrides, NBSP): every escape reads back to one byte
    sequence. `head` is the first bytes of a message of `size` bytes; the text stops before
    `limit` characters, never within an escape, and `truncated` says so."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    # A head cut within a character holds that character back instead of showing its bytes.
    decoded = decoder.decode(head, final=len(head) >= size)
    shown: list[str] = []
    length = 0
    for char in decoded:
        token = _raw_char(char)
        if length + len(token) > limit:
            return ShownRaw("".join(shown), truncated=True)
        shown.append(token)
        length += len(token)
    return ShownRaw("".join(shown), truncated=len(head) < size)


def visible_text(text: str) -> str:
    """Text of our own making that may quote a message (a rejection's reason): its invisible
    and reordering characters escaped as in `show_raw`; backslashes are left as they are."""
    return "".join(_escape(char) or char for char in text)


def _raw_char(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    return _escape(char) or char


def _escape(char: str) -> str | None:
    if char == " " or unicodedata.category(char) not in _INVISIBLE:
        return None
    code = ord(char)
    if code < 0x80:  # noqa: PLR2004 - ASCII
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"  # noqa: PLR2004


# The pipeline's state --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PipelineState:
    state: State
    reason: str
    stalled_since: datetime | None = None  # the last batch, when stalled


def judge_pipeline(
    sessions: int, partitions: Sequence[PartitionLoad], now: datetime
) -> PipelineState:
    """Running, behind, stalled, stopped or never run, with why.

    - never run: no pipeline session and no batch ever stored (no kafka_offset row);
    - stopped: no pipeline session connected to this database (whatever it stored before);
    - stalled: connected, messages waited at the last batches (a partition's high watermark
      beyond its next offset), and no batch at all has been stored for more than `STALL`: since
      the last batch. A session whose connection went silent stays listed for as long as the
      server has not noticed, so being connected proves nothing; progress does;
    - behind: connected, and more than `BEHIND_MESSAGES` messages waited at the partitions'
      last batches, or messages waited on a partition whose last batch is older than `STALL`
      while others were stored since;
    - running: connected otherwise (caught up, or just started and storing its first batch).

    What the database cannot show: a pipeline that stalls once caught up leaves no lag behind
    it, and looks idle here until it stores again; its /health and metrics see the topic.
    """
    if sessions == 0:
        if partitions:
            return PipelineState("stopped", "no pipeline is connected to this database")
        return PipelineState("never_run", "no batch has ever been stored in this database")
    waiting = sum(partition.lag or 0 for partition in partitions)
    stalled = _stalled(waiting, partitions, now)
    if stalled is not None:
        return stalled
    behind = _behind(waiting, partitions, now)
    if behind is not None:
        return PipelineState("behind", behind)
    if not partitions:
        reason = "connected; no batch stored yet"
    elif waiting:
        reason = f"connected; {waiting:,} messages waited at the last batches"
    else:
        reason = "connected and caught up at the last batch"
    return PipelineState("running", reason)


def _stalled(
    waiting: int, partitions: Sequence[PartitionLoad], now: datetime
) -> PipelineState | None:
    """The stall, when messages waited and nothing has been stored for longer than `STALL`."""
    if not waiting:
        return None
    last = max(p.stored_at for p in partitions)
    if now - last <= STALL:
        return None
    return PipelineState(
        "stalled",
        f"connected, but no batch stored for {describe_age(now - last)} although"
        f" {waiting:,} messages waited at the last batches",
        last,
    )


def _behind(waiting: int, partitions: Sequence[PartitionLoad], now: datetime) -> str | None:
    """Why the pipeline is behind, or None when it is not."""
    if waiting > BEHIND_MESSAGES:
        return (
            f"{waiting:,} messages waited at the last batches: more than one batch"
            f" ({BEHIND_MESSAGES:,}) takes"
        )
    stalled = [p for p in partitions if p.lag and now - p.stored_at > STALL]
    if not stalled:
        return None
    oldest = min(stalled, key=lambda p: p.stored_at)
    return (
        f"{oldest.lag:,} messages waited on {oldest.kafka_topic}[{oldest.kafka_partition}] at"
        f" its last batch, {describe_age(now - oldest.stored_at)} ago, and none has been stored"
        " from it since"
    )


def describe_age(age: timedelta) -> str:
    """A duration as a person says it: 45 s, 12 min, 3 h 5 min, 2 days."""
    seconds = max(0, int(age.total_seconds()))
    if seconds < 90:  # noqa: PLR2004
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:  # noqa: PLR2004
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{round(minutes / 1440)} days"


# Bodies -----------------------------------------------------------------------------------------


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def _window_fields(window: Window, now: datetime) -> dict[str, Any]:
    span = window.span(now)
    return {
        "now": _iso(now),
        "window": window.name,
        "bucket": window.unit,
        "since": _iso(span.since),
        "until": _iso(span.until),
    }


def rejected_body(
    window: Window, now: datetime, counted: Iterable[tuple[datetime, str, int]]
) -> dict[str, Any]:
    """Rejected messages per bucket and reason code: every bucket of the window for every
    reason seen in it (zero where none), the reasons most frequent first."""
    by_key: Counter[tuple[datetime, str]] = Counter()
    totals: Counter[str] = Counter()
    for bucket, code, rejected in counted:
        by_key[bucket, code] += rejected
        totals[code] += rejected
    codes = sorted(totals, key=lambda code: (-totals[code], code))
    rows = [
        {"bucket": _iso(start), "reason_code": code, "rejected": by_key[start, code]}
        for start in window.starts(now)
        for code in codes
    ]
    return {
        **_window_fields(window, now),
        "rejected": sum(totals.values()),
        "reasons": [{"reason_code": code, "rejected": totals[code]} for code in codes],
        "rows": rows,
    }


def _rate(rejected: int, stored: int) -> float | None:
    return rejected / (rejected + stored) if rejected + stored else None


def is_quiet(last_stored: datetime | None, now: datetime) -> bool:
    """Whether an exhibition's kiosk is quiet at `now`: the museum is open, and no interaction
    of it has been stored with an `event_at` in the last `QUIET` of opening time (counted from
    today's opening, so that the night before does not count). Whatever it sent meanwhile was
    rejected, if anything. An exhibition with no interaction within `SEEN` is not judged: its
    kiosk is not installed yet, or gone."""
    if last_stored is None or now - last_stored > SEEN or not in_opening_hours(now):
        return False
    opened = datetime.combine(now.astimezone(LONDON).date(), OPENS, LONDON)
    return now - max(last_stored, opened) >= QUIET


def exhibitions_body(
    window: Window,
    now: datetime,
    known: Sequence[Exhibition],
    rejected: Iterable[tuple[datetime, str | None, int]],
    stored: Iterable[tuple[datetime, str, int]],
) -> dict[str, Any]:
    """Per known exhibition and bucket: the rejected messages that named it, the interactions
    stored for it, and the reject rate rejected / (rejected + stored), None when both are 0;
    and per exhibition its last stored interaction, whatever the window, and whether it is
    quiet (`is_quiet`)."""
    totals = {exhibition.public_id: [0, 0] for exhibition in known}
    rejects: Counter[tuple[datetime, str]] = Counter()
    unattributed = 0
    for bucket, site, count in rejected:
        if site in totals:
            rejects[bucket, site] += count
        else:
            unattributed += count
    facts: Counter[tuple[datetime, str]] = Counter()
    for bucket, public_id, count in stored:
        facts[bucket, public_id] += count
    rows = []
    for start in window.starts(now):
        for exhibition in known:
            public_id = exhibition.public_id
            rejected_here, stored_here = rejects[start, public_id], facts[start, public_id]
            totals[public_id][0] += rejected_here
            totals[public_id][1] += stored_here
            row = _exhibition_row(exhibition, rejected_here, stored_here)
            rows.append(row | {"bucket": _iso(start)})
    exhibitions = [
        _exhibition_row(e, *totals[e.public_id])
        | {"last_stored_at": _iso(e.last_stored_at), "quiet": is_quiet(e.last_stored_at, now)}
        for e in known
    ]
    return {
        **_window_fields(window, now),
        "exhibitions": exhibitions,
        "unattributed": unattributed,
        "rows": rows,
        "museum_open": in_opening_hours(now),
        "quiet_minutes": int(QUIET / MINUTE),
    }


def _exhibition_row(exhibition: Exhibition, rejected: int, stored: int) -> dict[str, Any]:
    return {
        "public_id": exhibition.public_id,
        "exhibition_name": exhibition.name,
        "rejected": rejected,
        "stored": stored,
        "reject_rate": _rate(rejected, stored),
    }


def latest_body(now: datetime, limit: int, rows: Iterable[RejectedRow]) -> dict[str, Any]:
    """The latest rejected messages, newest first, each raw value shown by `show_raw`."""
    messages = []
    for row in rows:
        shown = None if row.raw_head is None else show_raw(row.raw_head, row.raw_size or 0)
        messages.append(
            {
                "id": row.rejected_message_id,
                "received_at": _iso(row.received_at),
                "reason_code": row.reason_code,
                "reason": visible_text(row.reason),
                "named_exhibition": row.named_exhibition,
                "kafka_topic": visible_text(row.kafka_topic),
                "kafka_partition": row.kafka_partition,
                "kafka_offset": row.kafka_offset,
                "kafka_timestamp": _iso(row.kafka_timestamp),
                "raw_bytes": row.raw_size,
                "raw_shown": None if shown is None else shown.text,
                "raw_truncated": shown is not None and shown.truncated,
            }
        )
    return {"now": _iso(now), "limit": limit, "messages": messages}


def load_span(now: datetime) -> tuple[datetime, datetime]:
    """The minutes `pipeline_body` reads: the last hour's 60 whole minutes and the current."""
    current = _floor(now, "minute")
    return current - HOUR_MINUTES * MINUTE, current + MINUTE


def pipeline_body(
    now: datetime,
    server_now: datetime,
    sessions: int,
    partitions: Sequence[PartitionLoad],
    minutes: Iterable[tuple[datetime, int]],
) -> dict[str, Any]:
    """The pipeline's state, its last batch, its load per minute over the last hour's whole
    minutes (and the current minute so far), and its lag per partition at its last batch."""
    stored = dict(minutes)
    since, until = load_span(now)
    current = until - MINUTE
    hour = [since + MINUTE * n for n in range(HOUR_MINUTES)]
    hour_messages = sum(stored.get(minute, 0) for minute in hour)
    lags = [p.lag for p in partitions if p.lag is not None]
    judged = judge_pipeline(sessions, partitions, now)
    return {
        "now": _iso(now),
        "server_now": _iso(server_now),
        "state": judged.state,
        "state_reason": judged.reason,
        "stalled_since": _iso(judged.stalled_since),
        "sessions": sessions,
        "last_batch_at": _iso(max((p.stored_at for p in partitions), default=None)),
        "hour_since": _iso(since),
        "hour_until": _iso(current),
        "hour_messages": hour_messages,
        "hour_per_second": hour_messages / (HOUR_MINUTES * 60),
        "current_minute_messages": stored.get(current, 0),
        "minutes": [
            {
                "minute": _iso(minute),
                "messages": stored.get(minute, 0),
                "per_second": stored.get(minute, 0) / 60,
            }
            for minute in hour
        ],
        "lag": sum(lags) if lags else None,
        "partitions": [
            {
                "kafka_topic": p.kafka_topic,
                "kafka_partition": p.kafka_partition,
                "next_offset": p.next_offset,
                "high_watermark": p.high_watermark,
                "lag": p.lag,
                "stored_at": _iso(p.stored_at),
            }
            for p in partitions
        ],
        "behind_messages": BEHIND_MESSAGES,
        "stall_seconds": int(STALL.total_seconds()),
    }


# The API's documented bodies ------------------------------------------------------------------


class WindowBody(BaseModel):
    now: datetime = Field(description="The database's clock: the figures are as of then.")
    window: WindowName
    bucket: Unit = Field(description="The buckets' length; days are London days.")
    since: datetime = Field(description="Where the first bucket starts.")
    until: datetime = Field(description="Where the last bucket, the one holding `now`, ends.")


class ReasonCount(BaseModel):
    reason_code: str
    rejected: int


class ReasonBucket(ReasonCount):
    bucket: datetime = Field(description="Where the bucket starts.")


class RejectedBody(WindowBody):
    """Rejected messages by reason code and bucket of their `received_at`."""

    rejected: int = Field(description="Rejected messages received in the window.")
    reasons: list[ReasonCount] = Field(description="Most frequent first.")
    rows: list[ReasonBucket] = Field(
        description="Every bucket for every reason of `reasons`, zero where none."
    )


class ExhibitionRejects(BaseModel):
    public_id: str
    exhibition_name: str
    rejected: int = Field(description="Rejected messages whose `site` named this exhibition.")
    stored: int = Field(description="Ratings and requests stored with `event_at` in the span.")
    reject_rate: float | None = Field(
        description="rejected / (rejected + stored); null when both are 0."
    )


class ExhibitionBucket(ExhibitionRejects):
    bucket: datetime = Field(description="Where the bucket starts.")


class ExhibitionTotals(ExhibitionRejects):
    last_stored_at: datetime | None = Field(
        description="The latest `event_at` of its stored ratings and requests, whatever the"
        " window; null when it has none."
    )
    quiet: bool = Field(
        description="The museum is open and has been for `quiet_minutes`, and no rating or"
        " request of it was stored in them, while one was within the last 7 days."
    )


class ExhibitionsBody(WindowBody):
    """Per known exhibition: rejected messages that named it (by `received_at`) against the
    interactions stored for it (by `event_at`), per bucket and over the window; and whether
    its kiosk has gone quiet."""

    exhibitions: list[ExhibitionTotals] = Field(description="The window's totals.")
    unattributed: int = Field(description="Rejected messages that named no known exhibition.")
    rows: list[ExhibitionBucket] = Field(description="Every bucket for every exhibition.")
    museum_open: bool = Field(description="Whether the museum is open at `now`.")
    quiet_minutes: int = Field(description="How long without a stored interaction is quiet.")


class RejectedMessage(BaseModel):
    id: int
    received_at: datetime = Field(description="When the pipeline received its batch.")
    reason_code: str
    reason: str = Field(description="Invisible and reordering characters escaped.")
    named_exhibition: str | None = Field(description="The known exhibition its `site` named.")
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    kafka_timestamp: datetime | None
    raw_bytes: int | None = Field(description="The raw value's length; null: it had none.")
    raw_shown: str | None = Field(
        description=f"The raw value as UTF-8 with escapes (\\\\, \\xNN, \\n, \\uNNNN), at most"
        f" {RAW_SHOWN_CHARS} characters; null when the message had no value."
    )
    raw_truncated: bool


class LatestBody(BaseModel):
    """The latest rejected messages, newest first."""

    now: datetime
    limit: int
    messages: list[RejectedMessage]


class MinuteLoad(BaseModel):
    minute: datetime
    messages: int = Field(description="Messages stored (facts and rejected) in that minute.")
    per_second: float


class PartitionLag(BaseModel):
    kafka_topic: str
    kafka_partition: int
    next_offset: int = Field(description="The next offset to store.")
    high_watermark: int | None = Field(description="The partition's end at the last batch.")
    lag: int | None = Field(description="high_watermark - next_offset at the last batch.")
    stored_at: datetime = Field(description="When the last batch of it was stored.")


class PipelineBody(BaseModel):
    """Whether the pipeline is storing, how fast, and how far behind the topic."""

    now: datetime = Field(description="The database's clock.")
    server_now: datetime = Field(description="The dashboard server's clock.")
    state: State
    state_reason: str
    stalled_since: datetime | None = Field(
        description="When stalled: the last batch, since which nothing has been stored."
    )
    sessions: int = Field(description="The pipeline's sessions connected to this database.")
    last_batch_at: datetime | None
    hour_since: datetime
    hour_until: datetime
    hour_messages: int = Field(description="Messages stored in the last 60 whole minutes.")
    hour_per_second: float
    current_minute_messages: int
    minutes: list[MinuteLoad] = Field(description="The last 60 whole minutes, oldest first.")
    lag: int | None = Field(description="The partitions' lags added up; null when unknown.")
    partitions: list[PartitionLag]
    behind_messages: int
    stall_seconds: int


# The routes -------------------------------------------------------------------------------------

_BAD_QUERY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The query cannot be read; `problems` lists all."},
    **COMMON_ERRORS,
}


def _answer(body: dict[str, Any]) -> Response:
    return JSONResponse(body, headers=NO_STORE)


def feed_routes(pool: ConnectionPool, clock: Callable[[], datetime]) -> APIRouter:
    """The /feed page and its JSON endpoints on `pool`; `clock` is the server's clock, which
    /api/feed/pipeline reports beside the database's (the page notes when they disagree).

    Errors are the app's: a `FilterError` is a 400, a database that fails a 503."""
    router = APIRouter()

    def read(request: Request, accepted: Collection[str]) -> Window:
        return parse_window(request.query_params.multi_items(), accepted)

    @router.get("/feed", include_in_schema=False)
    def feed_page() -> FileResponse:
        return FileResponse(PAGE, headers=NO_STORE)

    @router.get(
        "/api/feed/rejected",
        responses={200: {"model": RejectedBody}, **_BAD_QUERY},
        openapi_extra={"parameters": openapi_parameters()},
    )
    def rejected(request: Request) -> Response:
        """Rejected messages over time by reason code."""
        window = read(request, ["window"])
        with pool.cursor() as cur:
            now = feed_queries.database_now(cur)
            counted = feed_queries.rejected_by(cur, window.span(now), "reason_code")
        return _answer(rejected_body(window, now, counted))

    @router.get(
        "/api/feed/exhibitions",
        responses={200: {"model": ExhibitionsBody}, **_BAD_QUERY},
        openapi_extra={"parameters": openapi_parameters()},
    )
    def exhibitions(request: Request) -> Response:
        """Rejected messages and the reject rate per exhibition over time; quiet kiosks."""
        window = read(request, ["window"])
        with pool.cursor() as cur:
            now = feed_queries.database_now(cur)
            span = window.span(now)
            known = feed_queries.exhibitions(cur)
            rejects = feed_queries.rejected_by(cur, span, "named_exhibition")
            stored = feed_queries.stored_by_exhibition(cur, span)
        return _answer(exhibitions_body(window, now, known, rejects, stored))

    @router.get("/api/feed/latest", responses={200: {"model": LatestBody}, **_BAD_QUERY})
    def latest(request: Request) -> Response:
        """The latest rejected messages, their raw values shown safely."""
        read(request, [])
        with pool.cursor() as cur:
            now = feed_queries.database_now(cur)
            rows = feed_queries.latest_rejected(cur, LATEST, RAW_HEAD_BYTES)
        return _answer(latest_body(now, LATEST, rows))

    @router.get("/api/feed/pipeline", responses={200: {"model": PipelineBody}, **_BAD_QUERY})
    def pipeline(request: Request) -> Response:
        """The pipeline's state, messages per second over the last hour, and its lag."""
        read(request, [])
        server_now = clock()
        with pool.cursor() as cur:
            now = feed_queries.database_now(cur)
            sessions = feed_queries.pipeline_sessions(cur)
            partitions = feed_queries.partition_loads(cur)
            minutes = feed_queries.messages_per_minute(cur, *load_span(now))
        return _answer(pipeline_body(now, server_now, sessions, partitions, minutes))

    return router
