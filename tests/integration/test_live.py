"""The Safety page's live "Now" against the real database and a running `python -m dashboard`:
the trigger announces committed requests only, a stream pushes what its filters and window
take, a reconnecting browser gets what it missed from the database, one listener serves every
browser, a listener whose connection falls silent says so within seconds and follows, the
streams are capped, and Ctrl-C ends the server with streams open."""

from __future__ import annotations

import http.client
import json
import select
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dashboard.sessions import COOKIE
from lmnh.config import DatabaseSettings
from lmnh.database import connect
from lmnh.errors import ExitCode
from tests.integration.dashboard_support import (
    Dashboard,
    dashboard_db,
    dashboard_process,
    query,
    staff_session,
    store,
)
from tests.integration.silent import require_nft, silenced

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

# A Wednesday mid-morning in London (GMT): the museum is open, whatever the wall clock says.
CLOCK = "2026-11-25T11:00:00+00:00"
TODAY_EARLIER = "2026-11-25T09:30:00Z"
YESTERDAY = "2026-11-24T15:00:00Z"
# The listener proves itself every 2 s and is judged dead after 5 s unheard: a stream says it
# is not live well within this (measured: about 5 s), and hears again within twice it.
NOT_LIVE_WITHIN_S = 10.0


@pytest.fixture
def server(dashboard_db: DatabaseSettings) -> Iterator[Dashboard]:
    with dashboard_process(dashboard_db, "--clock-start", CLOCK) as dashboard:
        yield dashboard


class Stream:
    """A Server-Sent Events connection, read event by event."""

    def __init__(self, server: Dashboard, query: str = "", last_id: int | None = None):
        self.connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        headers = (
            server.headers if last_id is None else {**server.headers, "Last-Event-ID": str(last_id)}
        )
        try:
            self.connection.request("GET", f"/api/now/stream?{query}", headers=headers)
            self.response = self.connection.getresponse()
            assert self.response.status == 200, self.response.read()
            assert self.response.getheader("Content-Type", "").startswith("text/event-stream")
        except BaseException:
            self.connection.close()
            raise

    def next(
        self, timeout: float = 10.0, ticks: bool = False
    ) -> tuple[str, dict[str, Any], str | None]:
        """The next event, ticks skipped unless asked for: (name, data, id)."""
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            line = self.response.readline().decode()
            if line == "":
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "event" in fields:
                if ticks or fields["event"] != "tick":
                    return fields["event"], json.loads(fields["data"]), fields.get("id")
                fields = {}
            else:
                fields = {}
        raise TimeoutError("no event")

    def close(self) -> None:
        self.connection.close()


@contextmanager
def stream(server: Dashboard, query: str = "", last_id: int | None = None) -> Iterator[Stream]:
    opened = Stream(server, query, last_id)
    try:
        yield opened
    finally:
        opened.close()


def get(server: Dashboard, path: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = get_with_headers(server, path)
    return status, body


def get_with_headers(
    server: Dashboard, path: str
) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request("GET", path, headers=server.headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.msg
    finally:
        connection.close()


def open_when_free(server: Dashboard, within_s: float) -> Stream:
    deadline = time.monotonic() + within_s
    while True:
        try:
            return Stream(server)
        except AssertionError:  # refused: not yet given back
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def names_no_database(text: str, database: DatabaseSettings) -> bool:
    """Whether an answer keeps the database's coordinates to itself."""
    said = text.lower()
    return not any(
        secret.lower() in said
        for secret in (database.name, database.username, str(database.port), "127.0.0.1")
    )


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["id"] for item in items]


def test_the_trigger_announces_committed_requests_only(dashboard_db: DatabaseSettings) -> None:
    listening = connect(dashboard_db)
    listening.autocommit = True
    try:
        with listening.cursor() as cur:
            cur.execute("LISTEN request_interaction")
        store(dashboard_db, requests=[("EXH_01", 1, TODAY_EARLIER), ("EXH_03", 0, YESTERDAY)])
        store(dashboard_db, ratings=[("EXH_01", 4, TODAY_EARLIER)])
        writer = connect(dashboard_db)
        with writer.cursor() as cur:  # stored, then rolled back: never announced
            cur.execute(
                "INSERT INTO request_interaction (exhibition_id, request_id, event_at,"
                " kafka_topic, kafka_partition, kafka_offset) SELECT 1, 1, now(), 'x', 0, 99"
            )
        writer.rollback()
        writer.close()
        select.select([listening], [], [], 2.0)
        time.sleep(0.3)  # anything else would have arrived by now
        listening.poll()
        payloads = [json.loads(n.payload) for n in listening.notifies]
        stored = query(dashboard_db, "SELECT request_interaction_id FROM request_interaction")
        assert payloads == [{"first": min(stored)[0], "last": max(stored)[0]}]
    finally:
        listening.close()


def test_a_stream_pushes_what_its_filters_and_window_take(
    dashboard_db: DatabaseSettings, server: Dashboard
) -> None:
    store(dashboard_db, requests=[("EXH_03", 1, TODAY_EARLIER)])  # Cetacean Sensations, floor 1
    with stream(server, "floor=1&request=emergency") as live:
        name, body, event_id = live.next()
        assert name == "snapshot"
        assert body["today"] == "2026-11-25"
        [earlier] = body["requests"]
        assert (earlier["public_id"], earlier["london_time"]) == ("EXH_03", "09:30:00")
        assert event_id == str(earlier["id"])
        store(
            dashboard_db,
            requests=[
                ("EXH_02", 1, "2026-11-25T10:59:00Z"),  # floor 2: not taken
                ("EXH_03", 0, "2026-11-25T10:59:00Z"),  # assistance: not taken
                ("EXH_03", 1, YESTERDAY),  # not today: not taken
                ("EXH_05", 1, "2026-11-25T10:59:30Z"),  # Thunder Lizards, floor 1: taken
            ],
        )
        name, item, event_id = live.next()
        assert (name, item["public_id"], item["request_description"]) == (
            "request",
            "EXH_05",
            "Emergency",
        )
        assert (item["floor_name"], item["london_time"], event_id) == (
            "1",
            "10:59:30",
            str(item["id"]),
        )
        with pytest.raises(TimeoutError):
            live.next(timeout=1.5)  # nothing else was for this page


def test_a_reconnecting_browser_gets_what_it_missed(
    dashboard_db: DatabaseSettings, server: Dashboard
) -> None:
    store(dashboard_db, requests=[("EXH_01", 1, TODAY_EARLIER)])
    with stream(server) as first:
        _, body, last_id = first.next()
    assert last_id is not None
    store(  # while the browser is away
        dashboard_db,
        requests=[("EXH_04", 1, "2026-11-25T10:40:00Z"), ("EXH_02", 0, "2026-11-25T10:45:00Z")],
    )
    with stream(server, last_id=int(last_id)) as again:
        name, body, new_id = again.next()
    assert name == "snapshot"
    missed = [item for item in body["requests"] if item["id"] > int(last_id)]
    assert sorted(item["public_id"] for item in missed) == ["EXH_02", "EXH_04"]
    assert body["missed"] == sorted(ids(missed))
    times = [item["event_at"] for item in body["requests"]]
    assert times == sorted(times, reverse=True)  # newest first
    assert new_id == str(max(ids(body["requests"])))
    # The same through ?after= (a page that reconnects by itself), and the JSON endpoint.
    with stream(server, f"after={last_id}") as again:
        assert again.next()[1]["missed"] == body["missed"]
    _, now = get(server, "/api/now?request=assistance")
    assert [item["public_id"] for item in now["requests"]] == ["EXH_02"]


def test_a_forged_notification_does_not_stop_the_feed(
    dashboard_db: DatabaseSettings, server: Dashboard
) -> None:
    with stream(server) as live:
        assert live.next()[0] == "snapshot"
        for payload in ("garbage", '{"first": 1, "last": 99999999999999999999}', "[" * 7000):
            query(dashboard_db, "SELECT pg_notify('request_interaction', %s)", (payload,))
        store(dashboard_db, requests=[("EXH_02", 1, "2026-11-25T10:59:00Z")])
        name, item, _ = live.next()
    assert (name, item["public_id"]) == ("request", "EXH_02")


def test_a_burst_comes_as_one_snapshot(dashboard_db: DatabaseSettings, server: Dashboard) -> None:
    with stream(server, "request=emergency") as live:
        assert live.next()[0] == "snapshot"
        store(
            dashboard_db,
            requests=[
                ("EXH_01", 1, f"2026-11-25T10:{n // 60:02d}:{n % 60:02d}Z") for n in range(600)
            ],
        )
        name, body, _ = live.next()
    assert name == "snapshot"  # not 600 request events
    assert (len(body["requests"]), body["truncated"]) == (500, True)
    assert body["requests"][0]["london_time"] == "10:09:59"  # the newest first


def test_bad_filters_and_ids_are_refused_before_streaming(server: Dashboard) -> None:
    for path, problem in (
        ("/api/now/stream?after=12x", "is not a request id"),
        ("/api/now/stream?from=2026-11-01", "unknown filter 'from'"),
        ("/api/now?floor=1&request=fire", "request"),
    ):
        status, body = get(server, path)
        assert status == 400, path
        assert problem in body["error"], path


def test_the_stream_is_for_the_security_role_alone(
    dashboard_db: DatabaseSettings, server: Dashboard
) -> None:
    for token, status in (
        ("", 401),
        (staff_session(dashboard_db, ["exhibitions", "operations", "admin"]), 403),
        (staff_session(dashboard_db, ["security"]), 200),
    ):
        connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
        try:
            connection.request("GET", "/api/now/stream", headers={"Cookie": f"{COOKIE}={token}"})
            with connection.getresponse() as answer:
                assert answer.status == status, token
        finally:
            connection.close()


def test_one_listener_serves_every_browser(
    dashboard_db: DatabaseSettings, server: Dashboard
) -> None:
    streams: list[Stream] = []
    try:
        streams.extend(Stream(server) for _ in range(12))  # each kept as soon as it opens
        for live in streams:
            assert live.next()[0] == "snapshot"
        store(dashboard_db, requests=[("EXH_00", 1, "2026-11-25T10:58:00Z")])
        for live in streams:
            assert live.next()[1]["public_id"] == "EXH_00"
        listeners = query(
            dashboard_db,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            ("lmnh-dashboard-listener",),
        )
        assert listeners == [(1,)]
    finally:
        for live in streams:
            live.close()


def test_a_silent_listener_is_said_within_seconds_and_followed(
    dashboard_db: DatabaseSettings, server: Dashboard
) -> None:
    """Every packet of the server's connections to PostgreSQL dropped, nothing closed: the
    stream says `stale` within seconds instead of ticking on, the listener connects again (new
    connections pass), and a fresh snapshot brings the emergency stored meanwhile."""
    require_nft()
    store(dashboard_db, requests=[("EXH_01", 1, TODAY_EARLIER)])
    with stream(server) as live:
        name, body, last_id = live.next()
        assert (name, type(body["heard"])) == ("snapshot", float)
        name, tick, _ = live.next(ticks=True)  # the proof's age rides on every tick
        assert name == "tick" and 0 <= tick["heard"] < 5
        with silenced(server.process.pid, [dashboard_db.port]):
            started = time.monotonic()
            store(dashboard_db, requests=[("EXH_04", 1, "2026-11-25T10:59:00Z")])
            name, stale, _ = live.next(timeout=30)
            not_live_s = time.monotonic() - started
            assert name == "stale", (name, stale)
            assert "cannot hear the database" in stale["error"]
            assert names_no_database(json.dumps(stale), dashboard_db)
            name, body, _ = live.next(timeout=30)
            live_again_s = time.monotonic() - started
        assert (name, type(body["heard"])) == ("snapshot", float)
        [missed] = [item for item in body["requests"] if item["id"] in body["missed"]]
        assert (missed["public_id"], int(last_id or 0) < missed["id"]) == ("EXH_04", True)
        store(dashboard_db, requests=[("EXH_05", 1, "2026-11-25T10:59:30Z")])
        name, item, _ = live.next()
        assert (name, item["public_id"]) == ("request", "EXH_05")  # it hears again
    print(f"not live after {not_live_s:.1f} s; live again after {live_again_s:.1f} s")
    assert not_live_s < NOT_LIVE_WITHIN_S
    assert live_again_s < 3 * NOT_LIVE_WITHIN_S


def test_streams_beyond_the_most_are_refused(dashboard_db: DatabaseSettings) -> None:
    with dashboard_process(dashboard_db, "--clock-start", CLOCK, "--max-streams", "3") as server:
        streams: list[Stream] = []
        try:
            streams.extend(Stream(server) for _ in range(3))
            for live in streams:
                assert live.next()[0] == "snapshot"
            status, body, headers = get_with_headers(server, "/api/now/stream")
            assert status == 503
            assert "too many live streams on this server (at most 3)" in body["error"]
            assert int(headers["Retry-After"]) > 0
            assert names_no_database(json.dumps(body), dashboard_db)
            streams.pop().close()  # its slot is given back once the server sees it gone
            streams.append(open_when_free(server, within_s=10))
            assert streams[-1].next()[0] == "snapshot"
        finally:
            for live in streams:
                live.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_server_with_browsers_connected(
    dashboard_db: DatabaseSettings, stop: signal.Signals
) -> None:
    with dashboard_process(dashboard_db, "--clock-start", CLOCK) as server:
        streams: list[Stream] = []
        try:
            streams.extend(Stream(server) for _ in range(3))
            for live in streams:
                live.next()
            started = time.monotonic()
            server.process.send_signal(stop)
            server.process.wait(timeout=10)
            assert time.monotonic() - started < 5
            assert server.process.returncode == ExitCode.OK  # stopped as asked
            for live in streams:
                with pytest.raises(EOFError):
                    live.next(timeout=5)
        finally:
            for live in streams:
                live.close()


def test_a_stop_as_the_first_browser_connects_never_hangs(dashboard_db: DatabaseSettings) -> None:
    """The signal lands while the first stream starts the listener (under the listener's
    lock, which the stop takes too): it once waited on itself for ever, one stop in two."""
    for _ in range(5):
        with dashboard_process(dashboard_db, "--clock-start", CLOCK) as server:
            connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
            try:
                connection.request("GET", "/api/now/stream", headers=server.headers)
                with connection.getresponse() as answer:
                    assert answer.status == 200
            finally:
                connection.close()
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=10)
            assert server.process.returncode == ExitCode.OK
