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
from lmnh.config import Settings
from tests.integration.support import PYTHON, ROOT, clean_env

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
                with urllib.request.urlopen(f"{url}/exhibitions", timeout=2):  # noqa: S310
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
        assert "database unreachable" in output  # said at start-up, on the terminal


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_pages_load_and_the_api_explains_a_missing_database(server_without_database: str) -> None:
    for path in ("/api/meta", "/api/charts/popularity", "/api/now", "/healthz", "/api/feed/latest"):
        status, body = get(f"{server_without_database}{path}")
        assert (status, body["error"]) == (503, NOT_ANSWERING), path
        for coordinate in ("127.0.0.1", str(CLOSED), "museum_feedback", "wallboard"):
            assert coordinate not in json.dumps(body), (path, body)


def test_bad_requests_are_named(server_without_database: str) -> None:
    status, body = get(f"{server_without_database}/api/charts/pie")
    assert status == 404
    assert "no chart 'pie'" in body["error"] and "request-share" in body["error"]
    status, body = get(f"{server_without_database}/api/charts/popularity?hour_from=25&request=fire")
    assert status == 400
    assert len(body["problems"]) == 2
    status, body = get(f"{server_without_database}/api/chart/popularity")
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
