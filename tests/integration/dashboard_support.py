"""A database of the test's own for the dashboard, with the schema and views applied, and a
small way to store interactions at exact times (straight into the fact tables, as the
pipeline's COPY does, so that the rollup triggers fire)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as wall_time
from typing import Any

import pytest
from psycopg2 import sql
from psycopg2.extensions import cursor as Cursor

from dashboard.accounts import ROLES
from dashboard.sessions import COOKIE, SECURE_COOKIE, session_without_sign_in
from lmnh.config import DatabaseSettings, Settings
from lmnh.database import connect, drop_database
from lmnh.museum import LONDON
from tests.integration.support import PYTHON, ROOT, clean_env, free_port, schema_database

# The exhibitions of the seed data, by public id.
NAMES = {
    "EXH_00": "Measureless to Man",
    "EXH_01": "Adaptation",
    "EXH_02": "The Crenshaw Collection",
    "EXH_03": "Cetacean Sensations",
    "EXH_04": "Our Polluted World",
    "EXH_05": "Thunder Lizards",
}

# (public_id, rating value or request value, ISO time with offset)
Interaction = tuple[str, int, str]

# A small fixed dataset that straddles both of 2026's clock changes in London (BST starts on
# 29 March at 01:00 UTC and ends on 25 October at 01:00 UTC), so that a query judging dates or
# hours in UTC instead of on the museum's clock gives different numbers.
RATINGS = [
    ("EXH_01", 4, "2026-03-28T09:30:00Z"),  # 09:30 GMT, Sat 28 Mar, hour 9
    ("EXH_01", 2, "2026-03-30T09:30:00Z"),  # 10:30 BST, Mon 30 Mar, hour 10
    ("EXH_01", 3, "2026-03-30T16:59:00Z"),  # 17:59 BST, hour 17
    ("EXH_03", 1, "2026-03-28T12:00:00Z"),  # 12:00 GMT
    ("EXH_03", 0, "2026-03-29T10:00:00Z"),  # 11:00 BST on the day the clocks go forward
    ("EXH_00", 4, "2026-03-31T08:45:00Z"),  # 09:45 BST
    ("EXH_04", 3, "2026-03-28T23:30:00Z"),  # 23:30 GMT, still Sat 28 Mar
    ("EXH_04", 1, "2026-03-31T23:30:00Z"),  # 00:30 BST on Wed 1 Apr: outside to=31 Mar
]
REQUESTS = [  # value 0 assistance, 1 emergency
    ("EXH_01", 1, "2026-10-24T09:00:00Z"),  # 10:00 BST, Sat 24 Oct
    ("EXH_01", 0, "2026-10-26T09:00:00Z"),  # 09:00 GMT, Mon 26 Oct
    ("EXH_03", 0, "2026-10-26T09:14:59Z"),  # 09:14 GMT: quarter 09:00
    ("EXH_03", 0, "2026-10-26T09:15:00Z"),  # quarter 09:15
    ("EXH_04", 1, "2026-10-25T13:40:00Z"),  # 13:40 GMT on the day the clocks go back
    ("EXH_02", 0, "2026-10-25T00:30:00Z"),  # 01:30 BST, the first of the two 01:30s
    ("EXH_00", 0, "2026-10-24T17:10:00Z"),  # 18:10 BST
]


@pytest.fixture
def dashboard_db(settings: Settings) -> Iterator[DatabaseSettings]:
    name = f"test_dash_{uuid.uuid4().hex[:12]}"
    database = schema_database(settings.database, name)
    try:
        yield database
    finally:
        drop_database(settings.database, name)


def store(
    database: DatabaseSettings,
    ratings: Sequence[Interaction] = (),
    requests: Sequence[Interaction] = (),
) -> None:
    """Insert the interactions in one statement per table, Kafka coordinates made up."""
    conn = connect(database)
    try:
        with conn, conn.cursor() as cur:
            for kind, rows in (("rating", ratings), ("request", requests)):
                if not rows:
                    continue
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {fact} (exhibition_id, {kind}_id, event_at, kafka_topic,"
                        " kafka_partition, kafka_offset)"
                        " SELECT e.exhibition_id, v.{kind}_id, i.at::timestamptz, 'fixture', 0,"
                        "  coalesce((SELECT max(kafka_offset) + 1 FROM {fact}), 0) + i.n"
                        " FROM unnest(%s::text[], %s::int[], %s::text[])"
                        "  WITH ORDINALITY AS i (public_id, value, at, n)"
                        " JOIN exhibition AS e USING (public_id)"
                        " JOIN {kind} AS v ON v.{kind}_value = i.value"
                    ).format(fact=sql.Identifier(f"{kind}_interaction"), kind=sql.SQL(kind)),
                    ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
                )
                assert cur.rowcount == len(rows), f"unknown exhibition or value in {rows}"
    finally:
        conn.close()


def query(
    database: DatabaseSettings, statement: str, params: tuple[object, ...] = ()
) -> list[tuple[Any, ...]]:
    conn = connect(database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


ELEVEN = wall_time(11)


def latest_eleven(now: datetime) -> datetime:
    """11:00 London today, or yesterday before then: inside opening hours and not in the
    future, for a dashboard whose clock must say the museum is open whatever the hour."""
    london = now.astimezone(LONDON)
    eleven = datetime.combine(london.date(), ELEVEN, LONDON)
    return eleven if eleven <= now else eleven - timedelta(days=1)


def staff_session(
    database: DatabaseSettings, roles: Sequence[str] = ROLES, name: str = "Test Staff"
) -> str:
    """A signed-in session's token for a member of staff with `roles`."""
    return session_without_sign_in(database, roles, name, f"staff.{uuid.uuid4().hex[:8]}")


def staff_cookies(database: DatabaseSettings, roles: Sequence[str] = ROLES) -> dict[str, str]:
    """The cookies of a signed-in browser (plain HTTP), for an in-process client."""
    return {COOKIE: staff_session(database, roles)}


@dataclass(frozen=True)
class Dashboard:
    host: str
    port: int
    process: subprocess.Popen[str]
    token: str = ""  # a signed-in session with every role, on the dashboard's database

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What a browser signed in with every role sends."""
        return {"Cookie": f"{COOKIE}={self.token}"}

    def request(self, path: str) -> urllib.request.Request:
        """A GET of `path` as the signed-in member of staff."""
        return urllib.request.Request(f"{self.url}{path}", headers=self.headers)  # noqa: S310


def sign_in_browser(context: Any, url: str, token: str) -> None:
    """Give a Playwright browser context the session cookie of `token` for the dashboard at
    `url`: its pages then open as after a sign-in (over HTTPS, the cookie's secure name)."""
    name = SECURE_COOKIE if url.startswith("https:") else COOKIE
    context.add_cookies([{"name": name, "value": token, "url": url}])


@contextmanager
def dashboard_process(
    database: DatabaseSettings,
    *options: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Dashboard]:
    """`python -m dashboard` on `database` and `port` (default: a free one), with these options
    and `env` on top of the tests' environment, until the block ends."""
    if port is None:
        port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "dashboard", "--port", str(port), "--env-file", "/dev/null", *options],
        cwd=ROOT,
        env={**clean_env(), "DB_NAME": database.name, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    dashboard = Dashboard("127.0.0.1", port, process, staff_session(database))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{dashboard.url}/healthz", timeout=2):  # noqa: S310
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()  # else reading its output waits for it for ever
                    output = process.stdout.read() if process.stdout else ""
                    pytest.fail(f"the dashboard did not start: {output[-2000:]}")
                time.sleep(0.1)
        yield dashboard
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()  # and its pipe closed below: a hung server fails its own test only
            process.wait()
            pytest.fail("the dashboard did not stop within 10 s of SIGTERM")
        finally:
            if process.stdout:
                process.stdout.close()


_DETAIL = "public_id, exhibition_name, floor_name, department_name"
# The rollup views (and the rollup that the time-of-day charts sum by ids), counted straight
# from the facts.
FROM_FACTS = {
    "rating_hourly": (
        f"SELECT london_date, hour_of_day, {_DETAIL}, rating_value, rating_description,"
        " count(*) AS interactions FROM rating_detail GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
    ),
    "rating_daily": (
        f"SELECT london_date, {_DETAIL}, rating_value, rating_description,"
        " count(*) AS interactions FROM rating_detail GROUP BY 1, 2, 3, 4, 5, 6, 7"
    ),
    "request_quarter_hourly": (
        "SELECT london_date, hour_of_day,"
        " make_time(london_quarter_hour(event_at) / 4, (london_quarter_hour(event_at) % 4) * 15,"
        f" 0) AS quarter_hour_start, {_DETAIL}, request_value, request_description,"
        " count(*) AS interactions FROM request_detail GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9"
    ),
    "request_rollup": (
        "SELECT london_date(event_at) AS london_date,"
        " london_quarter_hour(event_at) AS quarter_hour, exhibition_id, request_id,"
        " count(*) AS interactions FROM request_interaction GROUP BY 1, 2, 3, 4"
    ),
    "request_daily": (
        f"SELECT london_date, {_DETAIL}, request_value, request_description,"
        " count(*) AS interactions FROM request_detail GROUP BY 1, 2, 3, 4, 5, 6, 7"
    ),
}


def count_the_facts(cur: Cursor) -> None:
    """Make the charts of this cursor's session count the facts: temporary views named as the
    rollups they read, gone with the session."""
    for name, counted in FROM_FACTS.items():
        view = sql.SQL("CREATE TEMPORARY VIEW {} AS ").format(sql.Identifier(name))
        cur.execute(view + sql.SQL(counted))
