"""The Safety page's "Now": requests pushed to browsers the moment PostgreSQL commits them.

One listening connection per server (`RequestListener`, a thread) hears the `request_interaction`
channel that views.sql's trigger announces stored requests on, reads those rows, and hands them
to every connected browser's queue; each browser's Server-Sent Events stream (`stream`) keeps
the ones its filters and "Now" window take. A stream starts with a snapshot read from the
database, so a browser that reconnects has what it missed, whatever happened meanwhile.

A listening connection is silent by nature, so a dead one looks like a quiet museum: the
listener proves every few seconds that it hears (a NOTIFY to itself that must come back), and
a watchdog shuts a connection down that cannot. Streams carry the proof's age, and say `stale`
the moment it lapses, so that no page calls itself live on the web server's word alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import partial
from itertools import count
from time import monotonic
from typing import Any

import anyio
import psycopg2
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor
from starlette.types import Receive, Scope, Send

from dashboard.access import session_token
from dashboard.api_schema import COMMON_ERRORS, NO_STORE, ErrorBody, NowBody
from dashboard.filters import (
    NOW_FILTER_NAMES,
    FilterError,
    Filters,
    openapi_parameters,
    parse_filters,
)
from dashboard.pool import ConnectionPool, Unavailable
from dashboard.sessions import Sessions
from lmnh import backoff
from lmnh.config import DatabaseSettings
from lmnh.database import connect, sever
from lmnh.errors import FatalError, TransientError
from lmnh.museum import LONDON

CHANNEL = "request_interaction"
EMERGENCY = 1
RECENT = timedelta(minutes=60)  # how long an assistance request stays in "Now"
MOST_SHOWN = 500  # a snapshot's rows at most, newest first
LISTEN_WAIT_S = 3.0  # how long a stream waits for the listener before its snapshot
PROBE_EVERY_S = 2.0  # how often the listener proves that its connection hears
HEARD_WITHIN_S = 5.0  # its own probe unheard for longer: the connection is dead, and severed
TICK_S = 3.0  # a stream's heartbeat: the server's clock and the age of the listener's proof
# How often an open stream asks whether its viewer is still signed in: a wall screen's stream
# outlives no sign-out, disabled account or expiry by more than this.
SESSION_CHECK_S = 30.0
RETRY_MS = 3000  # how soon a browser reconnects after the stream ends
RETRY_AFTER_S = 10  # what a browser refused for too many streams is told to wait
MAX_STREAMS = 200  # open streams per server: each holds a socket, a queue and a task
QUEUE_SIZE = 2000  # requests waiting for one browser; beyond, it is made to reconnect
SENT_IDS_KEPT = 10_000  # ids remembered, to drop those a second range takes in again
_WAIT_S = 1.0  # the listener's longest wait, so that it sees `close`
_WATCH_S = 0.5  # how often the watchdog looks at the age of the listener's proof
_PROBE = "SELECT pg_notify(%s, %s)"
# Said to browsers when the database does not answer; the details (which host) go to the log.
_NOT_ANSWERING = "the database does not answer"
_NOT_HEARING = "the live feed cannot hear the database"
_REQUEST_ID = re.compile(r"[0-9]{1,18}")  # a bigint, read without int()'s surprises
_LAST_ID = 2**63 - 1  # bigint's

# The columns of an item, as the page gets them.
_ITEM = (
    "SELECT request_interaction_id AS id, event_at, to_char(london_time, 'HH24:MI:SS')"
    " AS london_time, london_date, public_id, exhibition_name, floor_name, request_value,"
    " request_description FROM request_detail"
)
# Within "Now" (Window's parameters by name): a backfill's or a replay's old requests are not.
_IN_WINDOW = (
    " ((request_value = 1 AND event_at >= %(day_start)s AND event_at < %(day_end)s)"
    " OR (request_value <> 1 AND event_at >= %(recent_from)s))"
)

log = logging.getLogger(__name__)


class Signal:
    """What a stream's queue carries besides requests."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


LOST = Signal("lost")  # the listener cannot hear the database: what is stored now is unknown


class Resync(Signal):
    """The listener hears again (its `generation`-th connection): what was stored while it
    did not is only in the database, so a stream whose snapshot is older reads it anew."""

    def __init__(self, generation: int) -> None:
        super().__init__("resync")
        self.generation = generation


BEHIND = Signal("behind")  # more than a browser should take one by one: read a snapshot
CLOSING = Signal("closing")  # the server is stopping
SIGNED_OUT = Signal("signed out")  # the viewer's session has ended: the stream ends


@dataclass(frozen=True, slots=True)
class Window:
    """What "Now" shows at an instant: today's emergencies (London's day) and assistance
    requests of the last hour."""

    day_start: datetime
    day_end: datetime
    recent_from: datetime

    @classmethod
    def at(cls, now: datetime) -> Window:
        day = now.astimezone(LONDON).date()
        start = datetime.combine(day, time(), LONDON)
        end = datetime.combine(day + timedelta(days=1), time(), LONDON)
        return cls(start, end, now - RECENT)

    def parameters(self) -> dict[str, datetime]:
        return {
            "day_start": self.day_start,
            "day_end": self.day_end,
            "recent_from": self.recent_from,
        }

    def holds(self, item: dict[str, Any]) -> bool:
        at = datetime.fromisoformat(item["event_at"])
        if item["request_value"] == EMERGENCY:
            return self.day_start <= at < self.day_end
        return at >= self.recent_from


def matches(filters: Filters, item: dict[str, Any]) -> bool:
    """Whether the page's filters (exhibition, floor, request type) take a request."""
    return (
        (not filters.exhibitions or item["public_id"] in filters.exhibitions)
        and (not filters.floors or item["floor_name"] in filters.floors)
        and (not filters.request_values or item["request_value"] in filters.request_values)
    )


def snapshot(cur: Cursor, filters: Filters, now: datetime) -> dict[str, Any]:
    """What "Now" holds at `now` under the filters, newest first (the /api/now body)."""
    window = Window.at(now)
    cur.execute(
        _ITEM
        + " WHERE"
        + _IN_WINDOW
        + " AND (cardinality(%(exhibitions)s::text[]) = 0 OR public_id = ANY(%(exhibitions)s))"
        " AND (cardinality(%(floors)s::text[]) = 0 OR floor_name = ANY(%(floors)s))"
        " AND (cardinality(%(values)s::int[]) = 0 OR request_value = ANY(%(values)s))"
        " ORDER BY event_at DESC, request_interaction_id DESC LIMIT %(limit)s",
        {
            **window.parameters(),
            "exhibitions": list(filters.exhibitions),
            "floors": list(filters.floors),
            "values": list(filters.request_values),
            "limit": MOST_SHOWN + 1,
        },
    )
    items = _items(cur)
    return {
        "now": now.isoformat(),
        "today": window.day_start.date().isoformat(),
        "recent_minutes": int(RECENT.total_seconds() // 60),
        "requests": items[:MOST_SHOWN],
        "truncated": len(items) > MOST_SHOWN,
    }


def _items(cur: Cursor) -> list[dict[str, Any]]:
    names = [column.name for column in cur.description or ()]
    items = []
    for row in cur.fetchall():
        item = dict(zip(names, row, strict=True))
        item["event_at"] = item["event_at"].isoformat()
        item["london_date"] = item["london_date"].isoformat()
        items.append(item)
    return items


def event(name: str, data: object, event_id: int | None = None) -> bytes:
    """One Server-Sent Event. JSON has no raw line breaks, so `data` is one line."""
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class RequestListener:
    """The server's one LISTEN connection, on a thread of its own, started by the first
    subscriber: each stored request is read once and offered to every subscriber. The
    connection proves every `PROBE_EVERY_S` that it hears; a second thread (the watchdog)
    severs it when it has not for `HEARD_WITHIN_S`, and the listener connects again."""

    def __init__(self, database: DatabaseSettings, clock: Callable[[], datetime]) -> None:
        self._database = database
        self._clock = clock
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent: deque[int] = deque(maxlen=SENT_IDS_KEPT)
        self._sent_set: set[int] = set()
        # A channel of this listener's own: the probes of another server are not its proof.
        self._probe_channel = f"lmnh_dashboard_probe_{uuid.uuid4().hex}"
        self._probes = count(1)  # the probes' payloads: an old probe heard late proves nothing
        self._probe_sent = ""
        # The connection under watch and when it last heard; the watchdog and the listener
        # change them under this lock, so that a connection is never severed once closed.
        self._watched = threading.Lock()
        self._conn: Connection | None = None
        self._backend_pid = 0
        self._heard_at = 0.0
        self.listening = threading.Event()
        self.generation = 0  # connections made so far: a snapshot read during one is current

    def subscribe(self) -> asyncio.Queue[Any]:
        """A queue of this browser's share of what is heard: request items and `Signal`s."""
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
        with self._lock:
            self._subscribers.add((asyncio.get_running_loop(), queue))
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="lmnh-dashboard-listener", daemon=True
                )
                self._thread.start()
                threading.Thread(
                    target=self._watch, name="lmnh-dashboard-listener-watchdog", daemon=True
                ).start()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        with self._lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}

    def heard_age(self) -> float | None:
        """Seconds since the listening connection last proved that it hears the database;
        None while there is no such connection (the pages must not say live)."""
        with self._watched:
            if not self.listening.is_set():
                return None
            return round(max(monotonic() - self._heard_at, 0.0), 1)

    def close(self) -> None:
        """Stop listening and end every stream (uvicorn waits for open answers to finish)."""
        self._stop.set()
        self._publish([CLOSING])

    def _publish(self, items: Iterable[object]) -> None:
        batch = list(items)
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(_offer, queue, batch)
            except RuntimeError:  # its loop has closed
                self.unsubscribe(queue)

    def _run(self) -> None:
        delays = backoff.delays(0.5, 10.0)
        while not self._stop.is_set():
            conn = None
            try:
                conn = connect(self._database, application_name="lmnh-dashboard-listener")
                with self._watched:  # watched from here: a LISTEN that hangs is severed too
                    self._conn, self._heard_at = conn, monotonic()
                    self._backend_pid = conn.get_backend_pid()
                conn.autocommit = True
                with conn.cursor() as cur:
                    for channel in (CHANNEL, self._probe_channel):
                        cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                with self._watched:
                    self._heard_at = monotonic()  # LISTEN answered: it hears
                    self.generation += 1
                    self.listening.set()
                if self.generation > 1:
                    log.info(
                        "live requests: listening again (connection %d, server process %d);"
                        " every page reads a fresh snapshot",
                        self.generation,
                        self._backend_pid,
                    )
                delays = backoff.delays(0.5, 10.0)
                self._publish([Resync(self.generation)])
                self._listen(conn)
            except (psycopg2.Error, TransientError, FatalError) as error:
                log.warning("live requests: %s; listening again shortly", _first_line(error))
            except Exception:  # never a silent end of the live feed: say it, and listen again
                log.exception("live requests: unexpected failure; listening again shortly")
            finally:
                with self._watched:  # unwatched before it is closed: never severed after
                    self._conn = None
                    self._lapse()
                if conn is not None:
                    conn.close()
            self._stop.wait(next(delays))

    def _watch(self) -> None:
        """The watchdog: a connection that has not heard its own probe is severed, so that the
        listener, blocked on it or not, fails at once and connects again."""
        while not self._stop.wait(_WATCH_S):
            with self._watched:
                silent_s = monotonic() - self._heard_at
                if self._conn is None or silent_s <= HEARD_WITHIN_S:
                    continue
                conn, self._conn = self._conn, None
                log.warning(
                    "live requests: the listening connection (server process %d) has not heard"
                    " its own probe for %.1f s: closing it and connecting again; the pages say"
                    " they are not live until it hears",
                    self._backend_pid,
                    silent_s,
                )
                self._lapse()
                sever(conn)

    def _lapse(self) -> None:
        """The pages stop being live (under `_watched`; once per connection)."""
        if self.listening.is_set():
            self.listening.clear()
            self._publish([LOST])

    def _listen(self, conn: Connection) -> None:
        probe_due = monotonic()
        with conn.cursor() as cur:
            while not self._stop.is_set():
                left = probe_due - monotonic()
                if left <= 0:
                    self._probe_sent = str(next(self._probes))
                    cur.execute(_PROBE, (self._probe_channel, self._probe_sent))
                    probe_due = monotonic() + PROBE_EVERY_S
                elif select.select([conn], [], [], min(left, _WAIT_S)) != ([], [], []):
                    conn.poll()
                self._hear(conn)

    def _hear(self, conn: Connection) -> None:
        """What the connection heard: its own probe (the proof), or the trigger's ranges."""
        ranges = []
        while conn.notifies:
            notice = conn.notifies.pop(0)
            if notice.channel == self._probe_channel:
                if notice.payload == self._probe_sent:
                    with self._watched:
                        self._heard_at = monotonic()
                continue
            announced = announced_range(notice.payload)
            if announced is None:  # anyone who may connect can NOTIFY on the channel
                log.warning("live requests: ignored a notification %.80r", notice.payload)
            else:
                ranges.append(announced)
        if ranges:
            self._publish(self._read(conn, ranges))

    def _read(self, conn: Connection, ranges: list[tuple[int, int]]) -> list[Any]:
        """The announced requests that are within "Now", once each; `BEHIND` instead when there
        are more than a stream would want pushed one by one (a burst: a snapshot is cheaper)."""
        window = Window.at(self._clock())
        heard = []
        with conn.cursor() as cur:
            for first, last in ranges:  # each statement's, so that one far off costs nothing
                cur.execute(
                    _ITEM
                    + " WHERE request_interaction_id BETWEEN %(first)s AND %(last)s AND"
                    + _IN_WINDOW
                    + " ORDER BY request_interaction_id LIMIT %(limit)s",
                    {**window.parameters(), "first": first, "last": last, "limit": MOST_SHOWN + 1},
                )
                heard.extend(_items(cur))
                if len(heard) > MOST_SHOWN:
                    return [BEHIND]
        return self._unsent(heard)

    def _unsent(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fresh = []
        for item in items:
            if item["id"] in self._sent_set:
                continue
            if len(self._sent) == self._sent.maxlen:
                self._sent_set.discard(self._sent[0])
            self._sent.append(item["id"])
            self._sent_set.add(item["id"])
            fresh.append(item)
        return fresh


def announced_range(payload: str) -> tuple[int, int] | None:
    """The ids the trigger announced ({"first": lowest, "last": highest}), or None for a
    payload it did not write. Never raises."""
    try:
        announced = json.loads(payload)
        first, last = announced["first"], announced["last"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    ids = (first, last)
    if not all(type(i) is int for i in ids) or not 0 < first <= last <= _LAST_ID:
        return None
    return first, last


def _offer(queue: asyncio.Queue[Any], batch: list[object]) -> None:
    """On the stream's loop: queue what was heard, or, if the browser has fallen that far
    behind, tell it to start over from a snapshot."""
    for item in batch:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(BEHIND)
            return


@dataclass(frozen=True, slots=True)
class Viewer:
    """One browser's stream: the requests its filters take, the last request id it saw, and
    whether the session of the member of staff watching goes on."""

    filters: Filters
    after: int | None = None
    signed_in: Callable[[], bool] = lambda: True


async def stream(
    listener: RequestListener,
    pool: ConnectionPool,
    viewer: Viewer,
    clock: Callable[[], datetime],
) -> AsyncIterator[bytes]:
    """One browser's events: a snapshot (with the ids above `viewer.after` it had not seen),
    then each request its filters and the window take, and a tick every `TICK_S`. Snapshots
    and ticks carry `heard`, the age of the listener's proof that it hears (null: it does
    not); `stale` when that proof lapses, and a fresh snapshot once it hears again; `offline`
    and the end when no snapshot can be read, so that the browser reconnects; `signed-out` and
    the end once `viewer.signed_in` (asked every `SESSION_CHECK_S`) says it has ended."""
    filters, after = viewer.filters, viewer.after
    queue = listener.subscribe()  # before the snapshot: nothing falls between the two
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        # The first browser starts the listener: let it hear before the snapshot is read, or
        # its first Resync would make this stream read the snapshot twice.
        await anyio.to_thread.run_sync(listener.listening.wait, LISTEN_WAIT_S)
        while True:
            generation = listener.generation  # what is stored from now on will be heard
            heard = listener.heard_age()  # before the read: a lapse during it comes after
            body = await anyio.to_thread.run_sync(_read_snapshot, pool, filters, clock())
            if body is None:
                yield event("offline", {"error": _NOT_ANSWERING})
                return
            ids = [item["id"] for item in body["requests"]]
            body["missed"] = sorted(i for i in ids if after is not None and i > after)
            body["heard"] = heard
            last = max([*ids, after or 0]) or None
            yield event("snapshot", body, last)
            forward = _Forward(queue, viewer, clock, generation, listener.heard_age)
            async for chunk in forward:
                yield chunk
            if forward.ended in (CLOSING, SIGNED_OUT):
                return
            after = forward.last_id or last  # Resync or BEHIND: start again from a snapshot
    finally:
        listener.unsubscribe(queue)


class _Forward:
    """The requests of a queue as events, until a signal other than a request or `LOST`
    arrives; `LOST` is said (`stale`) and the wait goes on for the listener's `Resync`."""

    def __init__(
        self,
        queue: asyncio.Queue[Any],
        viewer: Viewer,
        clock: Callable[[], datetime],
        generation: int,
        heard: Callable[[], float | None],
    ) -> None:
        self._queue = queue
        self._filters = viewer.filters
        self._signed_in = viewer.signed_in
        self._clock = clock
        self._generation = generation  # the listener's, when the snapshot was read
        self._heard = heard
        self._tick_due = monotonic() + TICK_S
        self._session_check_due = monotonic() + SESSION_CHECK_S
        self.ended: Signal | None = None
        self.last_id: int | None = None

    def __aiter__(self) -> _Forward:
        return self

    async def __anext__(self) -> bytes:
        if self.ended is SIGNED_OUT:  # its event was the last
            raise StopAsyncIteration
        while True:
            # A tick every TICK_S whatever else is sent: the page counts the proof's age by it.
            left = self._tick_due - monotonic()
            try:
                item = await asyncio.wait_for(self._queue.get(), max(left, 0.0))
            except TimeoutError:
                self._tick_due = monotonic() + TICK_S
                if monotonic() >= self._session_check_due:
                    self._session_check_due = monotonic() + SESSION_CHECK_S
                    if not await anyio.to_thread.run_sync(self._signed_in):
                        self.ended = SIGNED_OUT
                        return event("signed-out", {"error": "the session has ended"})
                return event("tick", {"now": self._clock().isoformat(), "heard": self._heard()})
            if isinstance(item, Resync) and item.generation <= self._generation:
                continue  # the snapshot already holds what this one would re-read
            if item is LOST:
                return event("stale", {"error": _NOT_HEARING})
            if isinstance(item, Signal):
                self.ended = item
                raise StopAsyncIteration
            if matches(self._filters, item) and Window.at(self._clock()).holds(item):
                self.last_id = item["id"]
                return event("request", item, item["id"])


class _Slots:
    """The live streams a server holds at most: a reader can never starve the writer."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._held = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._held >= self.most:
                return False
            self._held += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._held -= 1


class _HeldStream(StreamingResponse):
    """A stream that gives its slot back when its answer ends, however it ends (the browser
    gone before the first byte included, when the events' own `finally` never runs)."""

    def __init__(self, events: AsyncIterator[bytes], slots: _Slots) -> None:
        # no-transform: a compressing proxy would hold events back to fill its buffer.
        headers = {"Cache-Control": "no-store, no-transform", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.give_back()


def routes(
    listener: RequestListener,
    pool: ConnectionPool,
    clock: Callable[[], datetime],
    sessions: Sessions,
    *,
    max_streams: int = MAX_STREAMS,
) -> APIRouter:
    """/api/now (JSON) and /api/now/stream (Server-Sent Events), under the page's filters; at
    most `max_streams` streams open at once, a 503 beyond."""
    router = APIRouter()
    slots = _Slots(max_streams)

    @router.get(
        "/api/now",
        description="What the Safety page's Now panel holds: today's emergencies (London's"
        " day) and the assistance requests of the last hour, newest first, at most"
        f" {MOST_SHOWN}. /api/now/stream pushes the same as Server-Sent Events.",
        responses={200: {"model": NowBody}, 400: {"model": ErrorBody}, **COMMON_ERRORS},
        openapi_extra={"parameters": openapi_parameters(NOW_FILTER_NAMES)},
    )
    def now_requests(request: Request) -> Response:
        at = clock()
        filters = _filters(request.query_params.multi_items(), at)
        with pool.cursor() as cur:
            body = snapshot(cur, filters, at)
        return JSONResponse(body, headers=NO_STORE)

    # Not in the OpenAPI document: an answer that never ends is not an API call to fuzz.
    @router.get("/api/now/stream", include_in_schema=False)
    def now_stream(request: Request) -> Response:
        pairs = request.query_params.multi_items()
        after = [value for name, value in pairs if name == "after"]
        seen = request.headers.get("last-event-id") or (after[-1] if after else None)
        filters = _filters([(n, v) for n, v in pairs if n != "after"], clock())
        after_id = parse_after(seen)
        if not slots.take():
            log.warning("live requests: refused a stream: %d open, the most allowed", slots.most)
            refusal = f"too many live streams on this server (at most {slots.most}); retry shortly"
            return JSONResponse(
                {"error": refusal},
                status_code=503,
                headers={**NO_STORE, "Retry-After": str(RETRY_AFTER_S)},
            )
        signed_in = partial(still_signed_in, sessions, session_token(request))
        viewer = Viewer(filters, after_id, signed_in)
        return _HeldStream(stream(listener, pool, viewer, clock), slots)

    return router


def still_signed_in(sessions: Sessions, token: str) -> bool:
    """Whether the session of `token` goes on; yes while the database cannot say (an outage
    must not sign a control room out: the stream says it is offline instead)."""
    try:
        return sessions.find(token) is not None
    except Unavailable:
        return True


def parse_after(seen: str | None) -> int | None:
    """The last request id a browser saw (`after=`, or EventSource's Last-Event-ID)."""
    if seen is None:
        return None
    if not _REQUEST_ID.fullmatch(seen):
        raise FilterError([f"after (or Last-Event-ID) {seen[:40]!r} is not a request id"])
    return int(seen)


def _filters(pairs: list[tuple[str, str]], at: datetime) -> Filters:
    return parse_filters(pairs, at.astimezone(LONDON).date(), NOW_FILTER_NAMES)


def _read_snapshot(pool: ConnectionPool, filters: Filters, now: datetime) -> dict[str, Any] | None:
    """The snapshot, or None when the database does not answer (logged: which server and why
    is for the log, never for a browser)."""
    try:
        with pool.cursor() as cur:
            return snapshot(cur, filters, now)
    except Unavailable as error:
        log.warning("live requests: no snapshot: %s", error.detail)
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
