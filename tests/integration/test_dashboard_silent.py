"""The dashboard's connection pool under faults that do not announce themselves, and its limit.

- Its idle connections silenced (every packet dropped, nothing closed): a new visitor's
  `/api/now` and a chart answer from fresh connections within seconds.
- The server frozen in the middle of a query (a proxy of the test's own stops forwarding, its
  sockets open): the answer is a 503 once the statement timeout and the grace have passed,
  and the next ones within the connect timeout; no answer names the database's coordinates.
- More concurrent requests than the pool's maximum, on a slow network: never more connections
  than the maximum, and every request answered.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import pytest

from dashboard.pool import GRACE_S, NOT_ANSWERING
from lmnh.config import DatabaseSettings
from tests.integration.dashboard_support import (
    Dashboard,
    dashboard_db,
    dashboard_process,
    latest_eleven,
    query,
)
from tests.integration.silent import require_nft, silenced

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]  # the fixture

CHART = "/api/charts/popularity"
NOW_QUERY_MARK = b"request_detail"  # in /api/now's query, not in the pool's ping


def get(dashboard: Dashboard, path: str, timeout: float = 30) -> tuple[int, dict[str, Any], float]:
    """Status, JSON body and seconds taken, signed in."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(dashboard.request(path), timeout=timeout) as response:  # noqa: S310
            return response.status, json.load(response), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), time.monotonic() - started


def clock_option() -> str:
    return f"--clock-start={latest_eleven(datetime.now(UTC)).isoformat()}"


def warm(dashboard: Dashboard, requests: int = 8) -> None:
    """Concurrent requests, so that the pool holds several idle connections."""
    paths = [CHART, "/api/now", "/api/meta", "/api/charts/top-rated"] * (requests // 4)
    with ThreadPoolExecutor(requests) as workers:
        answers = list(workers.map(lambda path: get(dashboard, path), paths))
    assert [status for status, _, _ in answers] == [200] * len(paths), answers


def dashboard_connections(database: DatabaseSettings) -> int:
    rows = query(
        database,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = %s AND application_name = 'lmnh-dashboard'",
        (database.name,),
    )
    return int(rows[0][0])


class FreezableProxy:
    """A TCP proxy to PostgreSQL, of the test's own. Frozen, it forwards nothing either way and
    answers nothing, its sockets and new ones open: a frozen server, as its clients see it. It
    freezes by itself on the first client packet holding `freeze_on`; `delay_s` delays every
    packet from the server (a slow network)."""

    def __init__(self, upstream: tuple[str, int], delay_s: float = 0.0) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.freeze_on: bytes | None = None
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        for sock in [self._listener, *self._sockets]:
            with suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._sockets.append(client)
            if self.frozen.is_set():
                continue  # accepted, never answered
            server = socket.create_connection(self.upstream)
            self._sockets.append(server)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                if from_client and self.freeze_on and self.freeze_on in data:
                    self.frozen.set()
                if self.frozen.is_set():
                    continue  # swallowed: a frozen server answers nothing
                if not from_client and self.delay_s:
                    time.sleep(self.delay_s)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)


@contextmanager
def proxied(database: DatabaseSettings, delay_s: float = 0.0) -> Iterator[FreezableProxy]:
    proxy = FreezableProxy((database.host, database.port), delay_s)
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def dashboard_through(
    proxy: FreezableProxy,
    database: DatabaseSettings,
    *options: str,
) -> Iterator[Dashboard]:
    """`python -m dashboard` connecting through `proxy`: in clear, so that the proxy can see
    which query it freezes on, and with a short connect timeout."""
    through = {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(proxy.port),
        "DB_USERNAME": database.username,
        "DB_PASSWORD": database.password.reveal(),
        "DB_SSLMODE": "disable",
        "DB_CONNECT_TIMEOUT": "2",
    }
    with dashboard_process(database, *options, env=through) as dashboard:
        yield dashboard


def names_no_coordinates(body: dict[str, Any], database: DatabaseSettings, port: int) -> None:
    text = json.dumps(body)
    for coordinate in (database.host, str(port), database.name, f"{database.username}@"):
        assert coordinate not in text, body


def test_a_new_visitor_gets_an_answer_when_the_idle_connections_are_silenced(
    dashboard_db: DatabaseSettings,
) -> None:
    require_nft()
    with dashboard_process(dashboard_db, clock_option()) as dashboard:
        for _ in range(10):  # until requests overlapped enough to leave several idle
            warm(dashboard, 16)
            if dashboard_connections(dashboard_db) >= 3:
                break
        with silenced(dashboard.process.pid, [dashboard_db.port]) as silent:
            assert len(silent) >= 3, silent  # the pool's idle connections
            status, body, now_s = get(dashboard, "/api/now")
            assert status == 200, body
            status, body, chart_s = get(dashboard, CHART)
            assert status == 200, body
    print(f"silenced: {len(silent)} connections; /api/now {now_s:.2f} s, chart {chart_s:.2f} s")
    # A ping of 2 s on the first dead one, then a fresh connection (its siblings are dropped).
    assert now_s < 6
    assert chart_s < 3


def test_a_frozen_server_is_a_503_within_the_bounds_naming_nothing(
    dashboard_db: DatabaseSettings,
) -> None:
    with (
        proxied(dashboard_db) as proxy,
        dashboard_through(
            proxy, dashboard_db, clock_option(), "--statement-timeout", "1"
        ) as dashboard,
    ):
        warm(dashboard)
        proxy.freeze_on = NOW_QUERY_MARK
        status, body, query_s = get(dashboard, "/api/now")
        assert proxy.frozen.is_set()
        assert (status, body["error"]) == (503, NOT_ANSWERING)
        names_no_coordinates(body, dashboard_db, proxy.port)
        answers = [get(dashboard, path) for path in (CHART, "/healthz")]
    for status, body, _ in answers:
        assert status == 503, body
        names_no_coordinates(body, dashboard_db, proxy.port)
    connect_s = max(seconds for _, _, seconds in answers)
    print(f"frozen: query cut off after {query_s:.2f} s; new connections: {connect_s:.2f} s")
    assert 1 + GRACE_S - 0.5 <= query_s < 1 + GRACE_S + 3  # statement timeout + grace
    assert connect_s < 2 + 3  # the connect timeout


def test_no_more_connections_than_the_pool_maximum(dashboard_db: DatabaseSettings) -> None:
    most = 0
    done = threading.Event()

    def count() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, dashboard_connections(dashboard_db))
            time.sleep(0.02)

    with (
        proxied(dashboard_db, delay_s=0.05) as proxy,
        dashboard_through(proxy, dashboard_db, "--pool-size", "3") as dashboard,
    ):
        counter = threading.Thread(target=count)
        counter.start()
        try:
            with ThreadPoolExecutor(16) as workers:
                answers = list(workers.map(lambda _: get(dashboard, CHART), range(32)))
        finally:
            done.set()
            counter.join()
    print(f"pool maximum 3: at most {most} connections for 16 concurrent requests")
    assert [status for status, _, _ in answers] == [200] * 32
    assert most == 3
