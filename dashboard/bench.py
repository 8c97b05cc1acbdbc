"""`python -m dashboard.bench`: how fast the dashboard answers over 10,000,000 interactions (or
100,000,000).

Fills a dedicated benchmark database (created if missing; default `lmnh_dashboard_bench`) with
generated interactions straight from SQL (`generate_series`, no Kafka), then starts the
dashboard on a free local port and times every data endpoint, with and without filters,
printing p50/p95/max per endpoint. An existing benchmark database of the requested size is
reused. Not part of CI: it takes minutes.

By default the facts go through the same rollup triggers and indexes as the pipeline's COPY.
`--bulk` (for 100,000,000) stores them with every trigger off and without the fact tables'
secondary indexes, in two sessions at once, then makes those indexes again and builds the
rollups with one aggregate each (the rebuild of views.sql): the same end state, in a fraction
of the time.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from dashboard import VIEWS_FILE
from lmnh.cli import load_settings, positive_int, run
from lmnh.config import DatabaseSettings
from lmnh.database import apply_schema, connect, create_database
from lmnh.errors import ConfigError
from lmnh.museum import CLOSES, LONDON, OPENS

DEFAULT_DATABASE = "lmnh_dashboard_bench"
REQUEST_SHARE = 0.06  # of all interactions, as in the live feed
CHUNK_ROWS = 1_000_000
BULK_SESSIONS = 2  # sessions storing at once with --bulk: one per core of a small server
OPEN_FOR = datetime.combine(date.min, CLOSES) - datetime.combine(date.min, OPENS)
WARM_UP_REQUESTS = 2  # untimed requests per endpoint that warm caches and connections

# Interactions spread over the opening hours (on the museum's clock) of a chunk's days, the
# days of all chunks ending yesterday; exhibitions and ratings skewed so that the charts have
# something to show.
_GENERATE = """
WITH exhibitions AS (
    SELECT array_agg(exhibition_id ORDER BY public_id) AS ids FROM exhibition
), {kind}s AS (
    SELECT array_agg({kind}_id ORDER BY {kind}_value) AS ids FROM {kind}
)
INSERT INTO {kind}_interaction
    (exhibition_id, {kind}_id, event_at, kafka_topic, kafka_partition, kafka_offset)
SELECT exhibitions.ids[1 + pick.exhibition],
       {value},
       ((%(last_day)s::date - %(days_back)s - floor(random() * %(day_span)s)::int)
           + %(opens)s::time
           + random() * %(open_for)s::interval) AT TIME ZONE %(clock)s,
       'bench', pick.g %% 6, pick.g
FROM (
    SELECT g, least(5, floor(power(random(), 1.4) * 6))::int AS exhibition
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
) AS pick, exhibitions, {kind}s
"""
# A triangular spread around 2, shifted per exhibition so that their averages differ.
_RATING_VALUE = (
    "ratings.ids[1 + greatest(0, least(4, floor((random() + random() + random()) * 5 / 3"
    " + (pick.exhibition - 2.5) * 0.2)))::int]"
)
_REQUEST_VALUE = "requests.ids[1 + (random() < 0.15)::int]"


def london_today() -> date:
    return datetime.now(LONDON).date()


@dataclass(frozen=True, slots=True)
class Chunk:
    """Interactions number `first` to `last` (inclusive) of the generated sequence, all of
    one `kind` (rating or request), spread over `day_span` days that end `days_back` days
    before the last."""

    kind: str
    first: int
    last: int
    days_back: int
    day_span: int


def chunks(rows: int, days: int, size: int) -> list[Chunk]:
    """The generated sequence cut into chunks of at most `size`: the requests first (their
    share of `rows`), then the ratings, each kind's chunks over consecutive stretches of the
    `days`, newest first, as a pipeline stores them (in time order, so that each chunk's
    index entries fall close together)."""
    requests = round(rows * REQUEST_SHARE)
    cut = []
    for kind, start, end in (("request", 0, requests), ("rating", requests, rows)):
        for first in range(start, end, size):
            last = min(end, first + size) - 1
            newest = (first - start) * days // (end - start)
            oldest = -(-(last + 1 - start) * days // (end - start))
            cut.append(Chunk(kind, first, last, newest, max(1, oldest - newest)))
    return cut


def fill(database: DatabaseSettings, rows: int, days: int, *, bulk: bool = False) -> None:
    """Make the benchmark database hold exactly `rows` generated interactions; `bulk`: with
    the triggers and secondary indexes off, in parallel, the indexes and rollups made
    afterwards (the same end state)."""
    conn = connect(database, application_name="lmnh-dashboard-bench")
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM rating_interaction)"
                " + (SELECT count(*) FROM request_interaction)"
            )
            row = cur.fetchone()
        if row is not None and row[0] == rows:
            print(f"reusing {rows:,} interactions in {database.name}", flush=True)
            return
        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE rating_interaction, request_interaction")
        started = time.perf_counter()
        parameters = {
            "last_day": london_today() - timedelta(days=1),
            "opens": OPENS,
            "open_for": OPEN_FOR,
            "clock": str(LONDON),
        }
        if bulk:
            indexes = _drop_secondary_indexes(conn)
            try:
                _store_in_parallel(database, chunks(rows, days, CHUNK_ROWS), parameters, started)
                print(f"  stored with the triggers off ({time.perf_counter() - started:.0f} s)")
            finally:
                with conn, conn.cursor() as cur:
                    for definition in indexes:
                        cur.execute(definition)
            print(f"  indexes made again ({time.perf_counter() - started:.0f} s)", flush=True)
            # Rollups that do not add up to their facts are rebuilt by applying views.sql.
            apply_schema(conn, [VIEWS_FILE])
            print(f"  rollups built ({time.perf_counter() - started:.0f} s)", flush=True)
        else:
            for chunk in chunks(rows, days, CHUNK_ROWS):
                _store(conn, chunk, parameters, started)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
        print(f"generated {rows:,} interactions in {time.perf_counter() - started:.0f} s")
    finally:
        conn.close()


def _drop_secondary_indexes(conn: Connection) -> list[str]:
    """Drop the fact tables' indexes that back no constraint (made again afterwards, sorted in
    one pass, far faster than kept up row by row); return the statements that make them."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema()"
            "  AND tablename IN ('rating_interaction', 'request_interaction')"
            "  AND NOT EXISTS (SELECT FROM pg_constraint WHERE conname = indexname)"
        )
        found = cur.fetchall()
        for name, _definition in found:
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    # A partitioned table's index is listed "ON ONLY" the parent: made again on every partition.
    return [definition.replace(" ON ONLY ", " ON ", 1) for _name, definition in found]


def _store(conn: Connection, chunk: Chunk, parameters: dict[str, object], started: float) -> None:
    value = _RATING_VALUE if chunk.kind == "rating" else _REQUEST_VALUE
    with conn, conn.cursor() as cur:
        cur.execute(
            _GENERATE.format(kind=chunk.kind, value=value),
            {
                **parameters,
                "first": chunk.first,
                "last": chunk.last,
                "days_back": chunk.days_back,
                "day_span": chunk.day_span,
            },
        )
    print(
        f"  {chunk.kind}s up to #{chunk.last + 1:,} ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )


def _store_in_parallel(
    database: DatabaseSettings, todo: list[Chunk], parameters: dict[str, object], started: float
) -> None:
    """Store `todo` in BULK_SESSIONS sessions, each with every trigger off (the rollups' and
    the foreign keys': the generated references are valid), which needs a superuser."""
    sessions = [
        connect(database, application_name="lmnh-dashboard-bench") for _ in range(BULK_SESSIONS)
    ]
    try:
        for session in sessions:
            with session, session.cursor() as cur:
                cur.execute("SET session_replication_role = replica")
        with ThreadPoolExecutor(BULK_SESSIONS) as pool:
            work = [
                pool.submit(_store_each, session, todo[n::BULK_SESSIONS], parameters, started)
                for n, session in enumerate(sessions)
            ]
            for done in work:
                done.result()
    finally:
        for session in sessions:
            session.close()


def _store_each(
    conn: Connection, todo: list[Chunk], parameters: dict[str, object], started: float
) -> None:
    for chunk in todo:
        _store(conn, chunk, parameters, started)


@dataclass(frozen=True, slots=True)
class Case:
    """One column of the printed table: the query string of the charts, the Feed page's
    window, and the filters of "Now" (which take no dates)."""

    label: str
    charts: str
    window: str
    now: str


def cases(last_day: date, days: int) -> list[Case]:
    """What to time: the pages' defaults, everything there is, and every filter."""
    whole = f"from={last_day - timedelta(days=days - 1)}&to={last_day}"
    year = f"from={last_day - timedelta(days=364)}&to={last_day}"
    places = "exhibition=EXH_01&exhibition=EXH_03&floor=1&floor=Vault&request=emergency"
    return [
        Case("default (last 30 days)", "", "", ""),
        Case(f"all {days} days", whole, "window=7d", ""),
        Case(
            "filtered (1 year, 2 exhibitions, floor, emergencies, 10-14 h)",
            f"{year}&{places}&hour_from=10&hour_to=14&granularity=quarter&heatmap=exhibition",
            "window=1h",
            places,
        ),
    ]


def calls(case: Case, charts: Sequence[str]) -> list[tuple[str, str]]:
    """(endpoint, path and query string) of every data endpoint under `case`."""
    with_window = ("/api/feed/rejected", "/api/feed/exhibitions")
    plain = ("/api/meta", "/api/feed/latest", "/api/feed/pipeline")
    paths = [
        *((path, "") for path in plain),
        *((f"/api/charts/{name}", case.charts) for name in sorted(charts)),
        *((path, case.window) for path in with_window),
        ("/api/now", case.now),
    ]
    return [
        (path.removeprefix("/api/charts/"), path + (f"?{query}" if query else ""))
        for path, query in paths
    ]


def time_endpoints(base_url: str, every: list[Case], repeat: int) -> list[tuple[str, ...]]:
    """Time every data endpoint under every case; rows of the printed table."""
    from dashboard.app import CHARTS

    table: list[tuple[str, ...]] = []
    for case in every:
        for endpoint, path in calls(case, list(CHARTS)):
            timings = []
            for attempt in range(WARM_UP_REQUESTS + repeat):
                started = time.perf_counter()
                with urllib.request.urlopen(base_url + path, timeout=30) as response:  # noqa: S310 - local
                    json.load(response)
                if attempt >= WARM_UP_REQUESTS:
                    timings.append((time.perf_counter() - started) * 1000)
            timings.sort()
            p95 = timings[max(0, -(-len(timings) * 95 // 100) - 1)]
            table.append(
                (
                    endpoint,
                    case.label,
                    f"{statistics.median(timings):.1f}",
                    f"{p95:.1f}",
                    f"{timings[-1]:.1f}",
                )
            )
            print(" | ".join(table[-1]), flush=True)
    return table


def serve_in_background(database: DatabaseSettings) -> tuple[str, threading.Thread]:
    """Start the dashboard on a free local port in a daemon thread; return its URL."""
    import uvicorn

    from dashboard.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(database), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}", thread


def copy_cost(admin: DatabaseSettings, rows: int, batch: int, runs: int) -> None:
    """How much the rollup triggers slow the pipeline's COPY: `rows` ratings in batches of
    `batch` rows (one transaction each, as the pipeline does), with and without the triggers,
    into a scratch database emptied before every run."""
    database = create_database(admin, f"{DEFAULT_DATABASE}_copy", extensions=[VIEWS_FILE])
    conn = connect(database, application_name="lmnh-dashboard-bench")
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT array_agg(exhibition_id), (SELECT array_agg(rating_id) FROM rating)"
                " FROM exhibition"
            )
            exhibitions, ratings = cur.fetchone() or ([], [])
        start = datetime(2026, 10, 1, 9, tzinfo=LONDON)
        # Spread over 30 days of opening hours, like a backfill: more rollup keys than live data.
        lines = [
            f"{exhibitions[n % len(exhibitions)]}\t{ratings[n * 7 % len(ratings)]}\t"
            f"{(start + timedelta(days=n % 30, seconds=n * 37 % 32_400)).isoformat()}"
            f"\tcopycost\t{n % 6}\t{n}\n"
            for n in range(rows)
        ]
        batches = ["".join(lines[i : i + batch]) for i in range(0, rows, batch)]
        timings: dict[str, list[float]] = {"with triggers": [], "without triggers": []}
        for run in range(runs * 2):
            label = "with triggers" if run % 2 == 0 else "without triggers"
            state = "ENABLE" if label == "with triggers" else "DISABLE"
            with conn, conn.cursor() as cur:
                cur.execute(f"ALTER TABLE rating_interaction {state} TRIGGER USER")
                cur.execute("TRUNCATE rating_interaction, rating_rollup")
            started = time.perf_counter()
            for text in batches:
                with conn, conn.cursor() as cur:
                    cur.copy_expert(
                        "COPY rating_interaction (exhibition_id, rating_id, event_at,"
                        " kafka_topic, kafka_partition, kafka_offset) FROM STDIN",
                        io.StringIO(text),
                    )
            timings[label].append(time.perf_counter() - started)
        with conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE rating_interaction ENABLE TRIGGER USER")
        with_triggers = statistics.median(timings["with triggers"])
        without = statistics.median(timings["without triggers"])
        print(
            f"COPY of {rows:,} ratings in batches of {batch:,} (median of {runs}):"
            f" {with_triggers:.2f} s with the rollup triggers, {without:.2f} s without"
            f" (+{(with_triggers / without - 1) * 100:.1f}%)"
        )
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard.bench",
        description="Time the dashboard's data endpoints over a large generated database.",
    )
    parser.add_argument("--rows", type=positive_int, default=10_000_000, help="interactions")
    parser.add_argument("--days", type=positive_int, default=730, help="days they span")
    parser.add_argument("--repeat", type=positive_int, default=30, help="timed calls per endpoint")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="benchmark database name")
    parser.add_argument("--env-file", type=Path, help="settings file (default ./.env)")
    parser.add_argument(
        "--bulk",
        action="store_true",
        help="fill with the triggers off, two sessions at once, then build the rollups in one"
        " aggregate each (for 100,000,000; needs a superuser)",
    )
    parser.add_argument(
        "--copy-cost",
        action="store_true",
        help="instead: measure what the rollup triggers add to a COPY of 100,000 rows",
    )
    args = parser.parse_args(argv)
    return run("python -m dashboard.bench", partial(_measure, args))


def _measure(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    if args.copy_cost:
        for batch in (100_000, 5_000):
            copy_cost(settings.database, 100_000, batch, runs=5)
        return 0
    if args.database == settings.database.name:
        raise ConfigError(["--database must not be the pipeline's own database"])
    database = create_database(settings.database, args.database, extensions=[VIEWS_FILE])
    fill(database, args.rows, args.days, bulk=args.bulk)
    base_url, _thread = serve_in_background(database)
    print(f"\n{args.repeat} calls each over HTTP, milliseconds")
    print("endpoint | case | p50 | p95 | max")
    last_day = london_today() - timedelta(days=1)
    time_endpoints(base_url, cases(last_day, args.days), args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
