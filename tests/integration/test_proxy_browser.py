"""The dashboard behind its TLS proxy (deploy/caddy/Caddyfile run by Debian's caddy), with a
throwaway CA that chromium trusts through an NSS database (no certificate error ignored): the
Safety page's Now panel shows an emergency through HTTPS; plain HTTP is redirected to HTTPS; the
HSTS header is sent; the event stream passes through unbuffered and uncompressed, and a
reconnect with Last-Event-ID gets the ids it missed."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.live import CHROMIUM_FLAGS
from bench.proxy import (
    CADDYFILE,
    Certificates,
    Proxy,
    browser_home,
    running_proxy,
    throwaway_certificates,
    unavailable,
)
from dashboard.live import TICK_S
from dashboard.sessions import SECURE_COOKIE
from lmnh.config import DatabaseSettings
from tests.integration import test_dashboard_browser
from tests.integration.dashboard_support import (
    dashboard_db,
    dashboard_process,
    query,
    sign_in_browser,
    staff_session,
    store,
)
from tests.integration.test_dashboard_browser import CHROMIUM, HEIGHT, WIDTH, sync_api
from tests.integration.test_now_browser import CLOCK_OPEN, TITLE, WAIT_MS, at, item, open_safety

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

REASON = unavailable()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

HSTS = "max-age=31536000; includeSubDomains"
EVENT_WAIT_S = 10.0  # an event through the proxy arrives within a second; this is patience
expect = sync_api.expect


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return throwaway_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def proxied(
    dashboard_db: DatabaseSettings, certificates: Certificates, tmp_path: Path
) -> Iterator[Proxy]:
    """`python -m dashboard` on 127.0.0.1 (its clock inside opening hours), Caddy in front."""
    with (
        dashboard_process(dashboard_db, *CLOCK_OPEN) as server,
        running_proxy(f"127.0.0.1:{server.port}", certificates, tmp_path / "caddy") as proxy,
    ):
        yield proxy


@pytest.fixture
def trusting_browser(certificates: Certificates) -> Iterator[sync_api.BrowserContext]:
    """Chromium whose NSS database trusts the throwaway CA, and nothing else changed."""
    with (
        tempfile.TemporaryDirectory(prefix="lmnh-chromium-") as folder,
        sync_api.sync_playwright() as playwright,
    ):
        home = browser_home(Path(folder) / "home", certificates)
        context = playwright.chromium.launch_persistent_context(
            Path(folder) / "profile",
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            env={**os.environ, "HOME": str(home)},
            viewport={"width": WIDTH, "height": HEIGHT},
        )
        try:
            yield context
        finally:
            context.close()


def request_ids(database: DatabaseSettings) -> list[int]:
    rows = query(database, "SELECT request_interaction_id FROM request_interaction ORDER BY 1")
    return [int(row[0]) for row in rows]


def test_an_emergency_reaches_the_now_panel_through_https(
    dashboard_db: DatabaseSettings,
    proxied: Proxy,
    trusting_browser: sync_api.BrowserContext,
) -> None:
    sign_in_browser(trusting_browser, proxied.url, staff_session(dashboard_db))
    page = trusting_browser.new_page()
    problems = test_dashboard_browser.Problems(page)
    answers: list[sync_api.Response] = []

    def note(response: sync_api.Response) -> None:  # Playwright takes a Python function only
        answers.append(response)

    page.on("response", note)
    panel = open_safety(page, f"{proxied.url}/safety")
    assert page.url.startswith("https://")
    [document] = [answer for answer in answers if answer.url == f"{proxied.url}/safety"]
    assert document.headers["strict-transport-security"] == HSTS
    assert document.security_details() is not None

    store(dashboard_db, requests=[("EXH_03", 1, at("11:00:10"))])
    whale = item(panel, "EXH_03")
    expect(whale).to_have_attribute("data-type", "emergency", timeout=WAIT_MS)
    expect(page).to_have_title(f"(1) ⚠ {TITLE}")
    expect(panel).to_have_attribute("data-state", "live")
    assert problems.seen == []


def test_plain_http_is_redirected_and_https_says_hsts(
    proxied: Proxy, certificates: Certificates
) -> None:
    plain = http.client.HTTPConnection(proxied.http_url.removeprefix("http://"), timeout=10)
    try:
        plain.request("GET", "/safety?floor=2")
        answer = plain.getresponse()
        assert answer.status == 308
        assert answer.getheader("Location") == f"{proxied.url}/safety?floor=2"
        assert answer.getheader("Strict-Transport-Security") is None  # only over HTTPS counts
    finally:
        plain.close()

    with urllib.request.urlopen(  # noqa: S310 - the test's own proxy
        f"{proxied.url}/healthz", timeout=10, context=certificates.client_context()
    ) as answer:
        assert answer.status == 200
        assert answer.headers["Strict-Transport-Security"] == HSTS
    # The trust is the throwaway CA's alone: the machine's own CAs refuse the certificate.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{proxied.url}/healthz", timeout=10)  # noqa: S310


class EventStream:
    """/api/now/stream through the proxy, read event by event."""

    def __init__(
        self, proxy: Proxy, certificates: Certificates, last_event_id: int, token: str
    ) -> None:
        self.connection = http.client.HTTPSConnection(
            "localhost", proxy.https_port, context=certificates.client_context(), timeout=5
        )
        headers = {
            "Accept": "text/event-stream",
            "Accept-Encoding": "gzip, br, zstd",
            "Last-Event-ID": str(last_event_id),
            "Cookie": f"{SECURE_COOKIE}={token}",  # the proxy says HTTPS: the secure name
        }
        self.connection.request("GET", "/api/now/stream", headers=headers)
        self.answer = self.connection.getresponse()

    def next(self, name: str) -> dict[str, Any]:
        """The next event called `name` (ticks and others skipped), within EVENT_WAIT_S: its
        id and its data."""
        self.connection.sock.settimeout(EVENT_WAIT_S)
        fields: dict[str, str] = {}
        while True:
            line = self.answer.readline().decode().rstrip("\n")
            if line:
                key, _, value = line.partition(": ")
                fields[key] = value
                continue
            if fields.get("event") == name:
                return {"event_id": fields.get("id"), "data": json.loads(fields["data"])}
            fields = {}

    def close(self) -> None:
        self.connection.close()


def test_the_stream_passes_unbuffered_and_a_reconnect_gets_what_it_missed(
    dashboard_db: DatabaseSettings, proxied: Proxy, certificates: Certificates
) -> None:
    store(dashboard_db, requests=[("EXH_00", 1, at("10:50:00"))])
    [seen] = request_ids(dashboard_db)
    # Stored while this browser was away: it comes back with the last id it had.
    store(dashboard_db, requests=[("EXH_03", 1, at("10:55:00")), ("EXH_04", 0, at("10:56:00"))])
    missed = [i for i in request_ids(dashboard_db) if i != seen]
    stream = EventStream(proxied, certificates, seen, staff_session(dashboard_db))
    try:
        assert stream.answer.status == 200
        assert stream.answer.getheader("Content-Type", "").startswith("text/event-stream")
        assert stream.answer.getheader("Content-Encoding") is None
        assert stream.answer.getheader("Strict-Transport-Security") == HSTS
        snapshot = stream.next("snapshot")
        assert snapshot["data"]["missed"] == missed
        assert snapshot["event_id"] == str(max(missed))

        # Live: a request stored now arrives through the proxy at once, long before the next
        # tick would push a buffer along.
        store(dashboard_db, requests=[("EXH_05", 1, at("11:00:05"))])
        [new] = [i for i in request_ids(dashboard_db) if i not in {seen, *missed}]
        pushed = stream.next("request")
        assert (pushed["event_id"], pushed["data"]["public_id"]) == (str(new), "EXH_05")
    finally:
        stream.close()


def adapt(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["caddy", "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": tempfile.gettempdir(), **env},
    )


def adapted(**env: str) -> dict[str, Any]:
    """The Caddyfile as Caddy reads it (its JSON), with these settings."""
    done = adapt(**env)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _handlers(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for handler in route.get("handle", []):
        yield handler
        for inner in handler.get("routes", []):
            yield from _handlers(inner)


def test_the_caddyfile_never_cuts_or_holds_a_stream() -> None:
    """What the proxy promises, as Caddy itself reads the file: no write timeout (a stream
    lasts while its page is open), each chunk flushed, no compression, a silent dashboard
    given up after several of the stream's ticks, a bounded stop; ACME by default, or the
    museum's files, or Caddy's internal CA, and nothing else."""
    config = adapted(LMNH_SITE="dashboard.museum.example")
    # A stop or reload is not held for ever by open streams; their pages reconnect.
    assert 0 < config["apps"]["http"]["grace_period"] <= 10e9
    [server] = config["apps"]["http"]["servers"].values()
    assert server["listen"] == [":443"]
    assert "write_timeout" not in server
    assert server["read_header_timeout"] > 0
    [route] = server["routes"]
    handlers = list(_handlers(route))
    assert "encode" not in {handler["handler"] for handler in handlers}
    [proxy] = [handler for handler in handlers if handler["handler"] == "reverse_proxy"]
    assert proxy["flush_interval"] == -1
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:8050"}]
    assert proxy["transport"]["read_timeout"] >= 3 * TICK_S * 1e9
    [headers] = [handler for handler in handlers if handler["handler"] == "headers"]
    assert headers["response"]["set"]["Strict-Transport-Security"] == [HSTS]
    assert "tls" not in config["apps"]  # automatic HTTPS (ACME) for a public name

    files = adapted(
        LMNH_SITE="dashboard.museum.example",
        LMNH_TLS="files",
        LMNH_TLS_CERT="/run/credentials/lmnh-proxy.service/tls.crt",
        LMNH_TLS_KEY="/run/credentials/lmnh-proxy.service/tls.key",
    )
    [loaded] = files["apps"]["tls"]["certificates"]["load_files"]
    assert loaded["certificate"].endswith("/tls.crt")
    internal = adapted(LMNH_SITE="dashboard.museum.example", LMNH_TLS="internal")
    [policy] = internal["apps"]["tls"]["automation"]["policies"]
    assert policy["issuers"] == [{"module": "internal"}]
    unknown = adapt(LMNH_SITE="dashboard.museum.example", LMNH_TLS="self")
    assert unknown.returncode != 0
    assert "tls_self" in unknown.stderr
