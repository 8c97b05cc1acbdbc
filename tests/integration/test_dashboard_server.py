"""`python -m dashboard` as a process: it starts without a database and says why the data is
missing (on its terminal with the database's coordinates, in its answers without them), names
bad filters, unknown charts and paths, and refuses a port that is taken."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dashboard.pool import NOT_ANSWERING, REFUSED
from dashboard.sessions import COOKIE
from lmnh.config import DatabaseSettings, Settings
from tests.integration.dashboard_support import dashboard_db, dashboard_process
from tests.integration.support import PYTHON, ROOT, clean_env, free_port

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]


CLOSED = free_port()  # nothing listens there: the database is "down"
DATABASE = {
    "DB_HOST": "127.0.0.1",
    "DB_PORT": str(CLOSED),
    "DB_NAME": "museum_feedback",
    "DB_USERNAME": "wallboard",
    "DB_PASSWORD": "x",
    "DB_SSLMODE": "disable",
}


@pytest.fixture
def server_without_database() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "dashboard", "--port", str(port), "--env-file", "/dev/null"],
        cwd=ROOT,
        env={**clean_env(), **DATABASE},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/signin", timeout=2):  # noqa: S310
                    break
            except urllib.error.HTTPError:
                break  # it answers: the database's absence is the answer
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
        assert "database unreachable" in output  # said at start-up, on the terminal


def get(url: str, token: str = "x") -> tuple[int, dict[str, Any]]:  # noqa: S107
    """GET with a session cookie: `token` a session's, or anything where no database can
    check it."""
    request = urllib.request.Request(url, headers={"Cookie": f"{COOKIE}={token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_pages_load_and_the_api_explains_a_missing_database(server_without_database: str) -> None:
    for path in ("/api/meta", "/api/charts/popularity", "/api/now", "/healthz", "/api/feed/latest"):
        status, body = get(f"{server_without_database}{path}")
        assert (status, body["error"]) == (503, NOT_ANSWERING), path
        for coordinate in ("127.0.0.1", str(CLOSED), "museum_feedback", "wallboard"):
            assert coordinate not in json.dumps(body), (path, body)
    # A wall screen's page says so in a page, and loads itself again.
    request = urllib.request.Request(  # noqa: S310 - local
        f"{server_without_database}/safety", headers={"Cookie": f"{COOKIE}=x"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 - local
    page = refused.value.read().decode()
    refused.value.close()
    assert (refused.value.code, refused.value.headers["Refresh"]) == (503, "5")
    assert NOT_ANSWERING in page
    assert "wallboard" not in page and str(CLOSED) not in page


def test_bad_requests_are_named(dashboard_db: DatabaseSettings) -> None:
    with dashboard_process(dashboard_db) as server:
        status, body = get(f"{server.url}/api/charts/pie", server.token)
        assert status == 404
        assert "no chart 'pie'" in body["error"] and "request-share" in body["error"]
        path = "/api/charts/popularity?hour_from=25&request=fire"
        status, body = get(f"{server.url}{path}", server.token)
        assert status == 400
        assert len(body["problems"]) == 2
        status, body = get(f"{server.url}/api/chart/popularity", server.token)
        assert (status, body["error"]) == (404, "GET /api/chart/popularity: Not Found")


def test_a_taken_port_is_refused_with_a_hint() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [PYTHON, "-m", "dashboard", "--port", str(port), "--env-file", "/dev/null"],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 2
    assert "is the dashboard already running?" in result.stderr


def test_a_refused_login_is_a_503_that_names_nothing(settings: Settings) -> None:
    port = free_port()
    database = settings.database
    process = subprocess.Popen(
        [PYTHON, "-m", "dashboard", "--port", str(port), "--env-file", "/dev/null"],
        cwd=ROOT,
        env={
            **clean_env(),
            "DB_HOST": database.host,
            "DB_PORT": str(database.port),
            "DB_USERNAME": database.username,
            "DB_PASSWORD": "not-the-password",
            "DB_SSLMODE": "disable",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/api/meta")
                break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.1)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert (status, body["error"]) == (503, REFUSED)
    text = json.dumps(body)
    for coordinate in (database.host, str(database.port), f"{database.username}@"):
        assert coordinate not in text, body
    assert f"{database.username}@" in output  # the log says which login was refused
