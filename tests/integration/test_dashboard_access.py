"""Sign-in and roles on a real database: what every route answers to an anonymous visitor, to
each role and to a signed-out session; the sign-in form with its throttle and CSRF token;
sessions that expire, idle out, or end when their account is disabled; the security headers
of every answer; and `lmnh-accounts`, the command that manages local accounts."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import partial
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import accounts, live
from dashboard.access import CONTENT_SECURITY_POLICY, SIGN_IN_COOKIE
from dashboard.app import create_app
from dashboard.filters import Filters
from dashboard.pool import ConnectionPool
from dashboard.sessions import COOKIE, SECURE_COOKIE, Sessions
from lmnh.config import AccessSettings, DatabaseSettings, Secret
from lmnh.database import connect
from lmnh.museum import LONDON
from tests.integration.dashboard_support import dashboard_db, query, staff_session
from tests.integration.support import PYTHON, ROOT, clean_env

pytestmark = pytest.mark.integration
__all__ = ["dashboard_db"]

PASSWORD = "a long enough passphrase"  # noqa: S105 - a test account's
SCRAPE_TOKEN = "0123456789abcdef0123456789abcdef"  # noqa: S105 - the test's own
SERVER_NOW = datetime(2026, 11, 25, 11, 0, tzinfo=LONDON)

# One path per route, and what each principal gets: anonymous, then each role alone, then a
# session that has signed out. 200 for a page or an answer, 303 a page's way to /signin, 401 an
# API's "sign in first", 403 "not for your role", 204 signed out.
ROUTES = [
    ("GET", "/healthz", 200, {}),
    ("GET", "/signin", 200, {}),
    ("GET", "/static/dashboard.js", 200, {}),
    ("GET", "/", 303, {"exhibitions": 307, "security": 307, "operations": 307, "admin": 307}),
    ("GET", "/exhibitions", 303, {"exhibitions": 200}),
    ("GET", "/safety", 303, {"security": 200}),
    ("GET", "/feed", 303, {"operations": 200}),
    ("GET", "/accounts", 303, {"admin": 200}),
    ("GET", "/api/me", 401, {"exhibitions": 200, "security": 200, "operations": 200, "admin": 200}),
    (
        "GET",
        "/api/meta",
        401,
        {"exhibitions": 200, "security": 200, "operations": 200, "admin": 200},
    ),
    (
        "GET",
        "/api/openapi.json",
        401,
        {"exhibitions": 200, "security": 200, "operations": 200, "admin": 200},
    ),
    ("GET", "/api/charts/top-rated", 401, {"exhibitions": 200}),
    ("GET", "/api/charts/popularity", 401, {"exhibitions": 200}),
    ("GET", "/api/charts/rating-over-time", 401, {"exhibitions": 200}),
    ("GET", "/api/charts/request-share", 401, {"security": 200}),
    ("GET", "/api/charts/request-heatmap", 401, {"security": 200}),
    ("GET", "/api/now", 401, {"security": 200}),
    ("GET", "/api/feed/rejected", 401, {"operations": 200}),
    ("GET", "/api/feed/exhibitions", 401, {"operations": 200}),
    ("GET", "/api/feed/latest", 401, {"operations": 200}),
    ("GET", "/api/feed/pipeline", 401, {"operations": 200}),
    ("GET", "/metrics", 401, {"operations": 200}),
    ("GET", "/api/accounts", 401, {"admin": 200}),
    (
        "GET",
        "/no/such/page",
        401,
        {"exhibitions": 404, "security": 404, "operations": 404, "admin": 404},
    ),
    (
        "POST",
        "/signout",
        401,
        {"exhibitions": 204, "security": 204, "operations": 204, "admin": 204},
    ),
]
PRINCIPALS = ("anonymous", *accounts.ROLES, "signed out")


def expected(anonymous: int, by_role: dict[str, int], principal: str) -> int:
    if principal in ("anonymous", "signed out"):
        return anonymous
    if anonymous == 200:  # public
        return 200
    return by_role.get(principal, 403)


@pytest.fixture
def app(dashboard_db: DatabaseSettings) -> FastAPI:
    access = AccessSettings(metrics_token=Secret(SCRAPE_TOKEN))
    return create_app(dashboard_db, access=access, clock=lambda: SERVER_NOW)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as client:
        yield client


def csrf_of(client: TestClient) -> str:
    token: str = client.get("/api/me").json()["csrf_token"]
    return token


def test_every_route_answers_each_principal_as_its_role_allows(
    app: FastAPI, dashboard_db: DatabaseSettings
) -> None:
    table = [f"{'route':<34}" + "".join(f"{p:>12}" for p in PRINCIPALS)]
    wrong = []
    for method, path, anonymous, by_role in ROUTES:
        row = f"{method} {path:<29}"
        for principal in PRINCIPALS:
            with TestClient(app, follow_redirects=False) as client:
                if principal == "signed out":
                    client.cookies[COOKIE] = staff_session(dashboard_db, accounts.ROLES)
                    assert client.post("/signout", headers={"X-CSRF-Token": csrf_of(client)})
                elif principal != "anonymous":
                    client.cookies[COOKIE] = staff_session(dashboard_db, [principal])
                headers = (
                    {"X-CSRF-Token": csrf_of(client)}
                    if method == "POST" and principal not in ("anonymous", "signed out")
                    else {}
                )
                answer = client.request(method, path, headers=headers)
            want = expected(anonymous, by_role, principal)
            row += f"{answer.status_code:>12}"
            if answer.status_code != want:
                wrong.append(f"{method} {path} as {principal}: {answer.status_code}, not {want}")
            if answer.status_code in (401, 403):
                assert "application/json" in answer.headers["content-type"] or path in (
                    "/exhibitions",
                    "/safety",
                    "/feed",
                    "/accounts",
                ), path
        table.append(row)
    print("\n".join(table))  # the route table of the closing note, shown with -rP
    assert wrong == []


def test_an_anonymous_page_is_sent_to_sign_in_and_back(client: TestClient) -> None:
    answer = client.get("/safety?floor=2&request=emergency")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/signin?next=%2Fsafety%3Ffloor%3D2%26request%3Demergency"


def sign_in(client: TestClient, username: str, password: str, next_page: str = "") -> object:
    form = client.get(f"/signin?next={next_page}")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, form.text
    fields = {"csrf": token.group(1), "username": username, "password": password}
    return client.post("/signin", data={**fields, "next": next_page})


def as_owner(database: DatabaseSettings, change: Callable[..., None], *args: object) -> None:
    """An account change as `lmnh-accounts` makes it, on a connection of its own."""
    conn = connect(database)
    try:
        change(conn, *args)
    finally:
        conn.close()


def add_account(database: DatabaseSettings, username: str, roles: list[str]) -> None:
    as_owner(database, accounts.add, username, "R. Pelkman", roles, PASSWORD)


def test_with_no_account_the_sign_in_page_says_how_to_make_the_first(client: TestClient) -> None:
    page = client.get("/signin")
    assert page.status_code == 200
    assert "lmnh-accounts add" in page.text
    assert "--role admin" in page.text


def test_signing_in_with_a_local_account_then_out(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    assert "lmnh-accounts add" not in client.get("/signin").text
    answer = sign_in(client, "r.pelkman", PASSWORD, "/safety?floor=2")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/safety?floor=2"
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie
    for flag in ("HttpOnly", "SameSite=lax", "Path=/"):
        assert flag in cookie, cookie
    me = client.get("/api/me").json()
    assert (me["name"], me["roles"], me["home"]) == ("R. Pelkman", ["security"], "/safety")
    assert client.get("/safety").status_code == 200
    assert client.get("/exhibitions").status_code == 403
    # Signing out needs the session's CSRF token, then ends the session on the server.
    assert client.post("/signout").status_code == 403
    token = client.cookies[COOKIE]
    assert client.post("/signout", headers={"X-CSRF-Token": me["csrf_token"]}).status_code == 204
    client.cookies[COOKIE] = token  # a copy of the cookie kept from before
    assert client.get("/api/me").status_code == 401


def test_over_https_the_cookie_is_secure_and_host_only(
    app: FastAPI, dashboard_db: DatabaseSettings
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    with TestClient(app, base_url="https://dashboard.example", follow_redirects=False) as client:
        answer = sign_in(client, "r.pelkman", PASSWORD)
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{SECURE_COOKIE}=")
        assert "Secure" in cookie
        assert "Domain" not in cookie
        assert client.get("/api/me").status_code == 200


def test_a_wrong_password_an_unknown_user_and_a_disabled_account_are_refused_alike(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    add_account(dashboard_db, "gone", ["security"])
    as_owner(dashboard_db, accounts.disable, "gone")
    for username, password in (
        ("r.pelkman", "not the password"),
        ("nobody", PASSWORD),
        ("gone", PASSWORD),
        ("r.pelkman\x00", PASSWORD),
        ("r.pelkman", PASSWORD + "x" * 1000),  # past the longest password: not even hashed
    ):
        answer = sign_in(client, username, password)
        assert answer.status_code == 401, username
        assert "Wrong username or password." in answer.text
        assert COOKIE not in client.cookies
    assert sign_in(client, "r.pelkman", "x" * 5000).status_code == 413  # a form past 4 KiB


def test_the_sign_in_form_refuses_a_forged_or_missing_token(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    client.get("/signin")
    fields = {"username": "r.pelkman", "password": PASSWORD}
    for forged in ({}, {"csrf": "forged"}):
        answer = client.post("/signin", data={**fields, **forged})
        assert answer.status_code == 403
        assert "expired" in answer.text
    client.cookies.delete(SIGN_IN_COOKIE, path="/signin")
    assert client.post("/signin", data={**fields, "csrf": ""}).status_code == 403
    assert COOKIE not in client.cookies


def test_failed_sign_ins_are_throttled_even_for_the_right_password(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    for _ in range(5):
        assert sign_in(client, "r.pelkman", "a wrong guess").status_code == 401
    answer = sign_in(client, "r.pelkman", PASSWORD)
    assert answer.status_code == 429
    assert int(answer.headers["retry-after"]) > 800
    assert "Too many failed sign-ins" in answer.text


def test_a_next_page_elsewhere_is_ignored(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    answer = sign_in(client, "r.pelkman", PASSWORD, "https://evil.example/")
    assert answer.headers["location"] == "/"


@pytest.mark.parametrize(
    "ended",
    [
        "UPDATE staff_session SET expires_at = now() - interval '1 second'",
        "UPDATE staff_session SET last_seen_at = now() - interval '31 minutes'",
        "UPDATE staff_account SET disabled_at = now()",
    ],
    ids=["expired", "idle", "disabled"],
)
def test_a_session_ends_when_it_expires_idles_out_or_its_account_is_disabled(
    client: TestClient, dashboard_db: DatabaseSettings, ended: str
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    sign_in(client, "r.pelkman", PASSWORD)
    assert client.get("/api/now").status_code == 200
    query(dashboard_db, ended)
    assert client.get("/api/now").status_code == 401
    assert client.get("/safety").status_code == 303


def test_a_changed_role_counts_at_the_next_request(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    sign_in(client, "r.pelkman", PASSWORD)
    assert client.get("/api/feed/latest").status_code == 403
    as_owner(dashboard_db, accounts.set_roles, "r.pelkman", ["operations"])
    assert client.get("/api/feed/latest").status_code == 200
    assert client.get("/api/now").status_code == 403


def test_a_new_password_ends_every_session_of_the_account(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    add_account(dashboard_db, "r.pelkman", ["security"])
    sign_in(client, "r.pelkman", PASSWORD)
    as_owner(dashboard_db, accounts.set_password, "r.pelkman", "another long passphrase")
    assert client.get("/api/now").status_code == 401


def test_a_state_changing_request_from_another_site_is_refused(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    client.cookies[COOKIE] = staff_session(dashboard_db)
    csrf = csrf_of(client)
    cross = {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
    assert client.post("/signout", headers=cross).status_code == 403
    assert client.post("/signout", headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.get("/api/me").status_code == 200


def test_every_answer_carries_the_security_headers(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    answers = [
        client.get(path)
        for path in ("/healthz", "/signin", "/static/common.js", "/safety", "/api/now")
    ]
    client.cookies[COOKIE] = staff_session(dashboard_db)
    answers += [client.get(path) for path in ("/safety", "/api/now", "/no/such", "/api/charts/x")]
    for answer in answers:
        headers = answer.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, answer.url
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "same-origin"


def test_prometheus_scrapes_metrics_with_its_token_alone(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401
    wrong = {"Authorization": f"Bearer {SCRAPE_TOKEN[:-1]}x"}
    assert client.get("/metrics", headers=wrong).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert answer.status_code == 200
    assert "lmnh_dashboard_requests_total" in answer.text


def test_the_api_documentation_is_our_own_document_for_staff_only(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    assert client.get("/api/docs").status_code == 401
    client.cookies[COOKIE] = staff_session(dashboard_db)
    assert client.get("/api/docs").status_code == 404  # no page that loads scripts from a CDN
    assert client.get("/api/openapi.json").json()["info"]["title"] == "LMNH dashboards"


def lmnh_accounts(
    database: DatabaseSettings, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "dashboard.accounts", "--env-file", "/dev/null", *args],
        cwd=ROOT,
        env={**clean_env(), "DB_NAME": database.name},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lmnh_accounts_adds_lists_changes_and_disables(
    client: TestClient, dashboard_db: DatabaseSettings
) -> None:
    added = lmnh_accounts(
        dashboard_db,
        "add",
        "r.pelkman",
        "--name",
        "R. Pelkman",
        "--role",
        "security",
        "--role",
        "admin",
        "--password-stdin",
        stdin=f"{PASSWORD}\n",
    )
    assert added.returncode == 0, added.stderr
    assert sign_in(client, "r.pelkman", PASSWORD).status_code == 303
    assert (
        lmnh_accounts(dashboard_db, "set-role", "r.pelkman", "--role", "operations").returncode == 0
    )
    listed = lmnh_accounts(dashboard_db, "list")
    assert listed.stdout == "r.pelkman\tR. Pelkman\toperations\n"
    assert client.get("/api/feed/latest").status_code == 200
    assert lmnh_accounts(dashboard_db, "disable", "r.pelkman").returncode == 0
    assert client.get("/api/feed/latest").status_code == 401
    assert "(disabled)" in lmnh_accounts(dashboard_db, "list").stdout
    [(stored,)] = query(dashboard_db, "SELECT password_hash FROM staff_account")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


@pytest.mark.parametrize(
    ("args", "stdin", "problem"),
    [
        (
            ("add", "R.Pelkman", "--name", "R", "--role", "security", "--password-stdin"),
            f"{PASSWORD}\n",
            "username 'R.Pelkman'",
        ),
        (
            ("add", "guard", "--name", "G", "--role", "security", "--password-stdin"),
            "short\n",
            "12 to 128",
        ),
        (
            ("add", "guard", "--name", "G", "--role", "superuser", "--password-stdin"),
            f"{PASSWORD}\n",
            "invalid choice",
        ),
        (("disable", "nobody"), "", "no account 'nobody'"),
    ],
)
def test_lmnh_accounts_refuses_with_exit_2_and_says_why(
    dashboard_db: DatabaseSettings, args: tuple[str, ...], stdin: str, problem: str
) -> None:
    result = lmnh_accounts(dashboard_db, *args, stdin=stdin)
    assert result.returncode == 2, result.stderr
    assert problem in result.stderr
    assert query(dashboard_db, "SELECT count(*) FROM staff_account") == [(0,)]


def test_an_open_stream_ends_once_its_session_has_ended(
    dashboard_db: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wall screen's Now stream outlives a sign-out by at most SESSION_CHECK_S (here made
    short): the stream's own check against the database, with the session ended there."""
    monkeypatch.setattr(live, "TICK_S", 0.05)
    monkeypatch.setattr(live, "SESSION_CHECK_S", 0.2)
    pool = ConnectionPool(dashboard_db, 2)
    sessions = Sessions(pool, idle=timedelta(minutes=30), lifetime=timedelta(hours=1))
    token = sessions.start("guard", "A Guard", ["security"])
    listener = live.RequestListener(dashboard_db, lambda: SERVER_NOW)
    today = SERVER_NOW.date()
    viewer = live.Viewer(
        Filters(today, today), None, partial(live.still_signed_in, sessions, token)
    )

    async def watch() -> list[bytes]:
        events = []
        async for chunk in live.stream(listener, pool, viewer, lambda: SERVER_NOW):
            events.append(chunk)
            if chunk.startswith(b"event: tick"):
                sessions.end(token)  # signed out, elsewhere
        return events

    try:
        events = asyncio.run(asyncio.wait_for(watch(), 20))
    finally:
        listener.close()
        pool.close()
    assert events[-1].startswith(b"event: signed-out"), events
    assert b"event: snapshot" in b"".join(events)


FIELD = st.one_of(st.text(), st.binary().map(lambda raw: raw.decode("latin-1")))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=st.dictionaries(st.sampled_from(["csrf", "username", "password", "next"]), FIELD))
def test_any_sign_in_form_is_refused_with_a_reason_never_an_error(
    client: TestClient, fields: dict[str, str]
) -> None:
    """Whatever a form holds (any Unicode, surrogates and NUL included, any bytes), a sign-in
    without an account is refused: never a 500, never a session."""
    body = "&".join(
        f"{quote(name, safe='')}={quote(value, safe='', errors='surrogatepass')}"
        for name, value in fields.items()
    )
    answer = client.post(
        "/signin", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code in (401, 403, 413, 429), answer.text
    assert COOKIE not in client.cookies
