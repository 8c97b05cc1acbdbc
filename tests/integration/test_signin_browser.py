"""Signing in, in a real browser (Debian's chromium): with a local account, and through a real
OpenID Connect provider (the `oidc-provider` library under Node.js, stack/identity) with its
own login page. A wrong password, a person in none of the dashboard's groups, a forged state
and an expired session each end where they should."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api
from playwright.sync_api import expect

from dashboard.accounts import add
from lmnh.config import DatabaseSettings
from lmnh.database import connect
from stack.identity_provider import Account, Client, Provider, identity_provider
from tests.integration.dashboard_support import Dashboard, dashboard_db, dashboard_process, query
from tests.integration.support import free_port
from tests.integration.test_dashboard_browser import Problems, browser, screenshot, screenshots
from tests.integration.test_now_browser import CLOCK_OPEN

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("node") is None, reason="the identity provider needs node"),
]
__all__ = ["browser", "dashboard_db", "screenshots"]

PASSWORD = "a long enough passphrase"  # noqa: S105 - the test accounts'
CLIENT_SECRET = "the dashboard's client secret"  # noqa: S105 - the test provider's
RITA = Account("rita", PASSWORD, "Rita Pelkman", "rita@lmnh.example", ["lmnh-security"])
EVE = Account("eve", PASSWORD, "Eve Visitor", "eve@lmnh.example", ["volunteers"])
WAIT_MS = 15_000


@pytest.fixture
def signed_out_server(dashboard_db: DatabaseSettings) -> Iterator[tuple[Dashboard, Provider]]:
    """The dashboard with the museum's identity provider set up (security from the group
    lmnh-security), nobody signed in."""
    port = free_port()
    callback = f"http://127.0.0.1:{port}/signin/oidc/callback"
    with identity_provider(
        [RITA, EVE], [Client("lmnh-dashboard", CLIENT_SECRET, [callback])]
    ) as idp:
        env = {
            "OIDC_ISSUER": idp.issuer,
            "OIDC_CLIENT_ID": "lmnh-dashboard",
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_PROVIDER_NAME": "LMNH staff sign-in",
            "OIDC_SCOPES": "openid profile email groups",
            "OIDC_GROUPS_SECURITY": "lmnh-security, lmnh-control-room",
            "OIDC_GROUPS_EXHIBITIONS": "lmnh-exhibitions",
        }
        with dashboard_process(dashboard_db, *CLOCK_OPEN, port=port, env=env) as server:
            yield server, idp


def test_a_local_account_signs_in_after_a_wrong_password_and_out_again(
    dashboard_db: DatabaseSettings,
    signed_out_server: tuple[Dashboard, Provider],
    browser: sync_api.BrowserContext,
    screenshots: Path,
) -> None:
    server, _ = signed_out_server
    conn = connect(dashboard_db)
    try:
        add(conn, "g.hughes", "Gwen Hughes", ["exhibitions"], PASSWORD)
    finally:
        conn.close()
    page = browser.new_page()
    problems = Problems(page)
    page.goto(f"{server.url}/exhibitions?days=7")
    expect(page).to_have_url(f"{server.url}/signin?next=%2Fexhibitions%3Fdays%3D7")
    page.fill('input[name="username"]', "g.hughes")
    page.fill('input[name="password"]', "not the password")
    page.click('button[type="submit"]')
    expect(page.locator(".problem")).to_have_text("Wrong username or password.")
    page.fill('input[name="username"]', "g.hughes")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    expect(page).to_have_url(f"{server.url}/exhibitions?days=7")
    expect(page.locator("#staff")).to_contain_text("Gwen Hughes", timeout=WAIT_MS)
    expect(page.locator('nav a[href="/safety"]')).to_be_hidden()  # not her role
    screenshot(page, screenshots / "signed-in.png")
    page.click("#staff button")
    expect(page).to_have_url(f"{server.url}/signin")
    page.goto(f"{server.url}/exhibitions")
    expect(page).to_have_url(f"{server.url}/signin?next=%2Fexhibitions")
    # The wrong password is the sign-in page's 401, said on the page; a sign-out's answer may be
    # cut short by the page leaving (the server had answered: the session is gone, as above).
    # Nothing else went wrong.
    benign = ("401", "/signout (net::ERR_ABORTED)")
    assert [seen for seen in problems.seen if not any(b in seen for b in benign)] == []


def sign_in_at_the_provider(
    page: sync_api.Page, account: Account, password: str, start: str | None = None
) -> None:
    """From the sign-in page (or first to `start`, which leads there), through the provider's
    own login page."""
    if start is not None:
        page.goto(start)
    page.click("a.provider")
    page.fill('input[name="username"]', account.username)
    page.fill('input[name="password"]', password)
    page.click('button[type="submit"]')


def test_the_museums_identity_provider_signs_rita_in_to_her_role_only(
    signed_out_server: tuple[Dashboard, Provider], browser: sync_api.BrowserContext
) -> None:
    server, idp = signed_out_server
    page = browser.new_page()
    page.goto(f"{server.url}/safety?floor=2")
    expect(page.locator("a.provider")).to_have_text("Sign in with LMNH staff sign-in")
    sign_in_at_the_provider(page, RITA, "not her password")
    assert page.url.startswith(idp.issuer)
    expect(page.get_by_text("Wrong username or password.")).to_be_visible()
    page.fill('input[name="username"]', RITA.username)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    expect(page).to_have_url(f"{server.url}/safety?floor=2", timeout=WAIT_MS)
    expect(page.locator("#staff")).to_contain_text("Rita Pelkman", timeout=WAIT_MS)
    expect(page.locator("#now")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    answer = page.goto(f"{server.url}/exhibitions")
    assert answer is not None and answer.status == 403
    expect(page.locator("main")).to_contain_text("needs the role exhibitions")


def test_someone_in_none_of_the_dashboards_groups_gets_no_session(
    dashboard_db: DatabaseSettings,
    signed_out_server: tuple[Dashboard, Provider],
    browser: sync_api.BrowserContext,
) -> None:
    server, _ = signed_out_server
    page = browser.new_page()
    sign_in_at_the_provider(page, EVE, PASSWORD, f"{server.url}/signin")
    expect(page.locator("main")).to_contain_text("none of the dashboard's groups", timeout=WAIT_MS)
    assert query(dashboard_db, "SELECT count(*) FROM staff_session WHERE username = 'eve'") == [
        (0,)
    ]


def test_a_forged_state_is_refused(
    dashboard_db: DatabaseSettings,
    signed_out_server: tuple[Dashboard, Provider],
    browser: sync_api.BrowserContext,
) -> None:
    """The provider's answer comes back with a state this browser's flow never sent (an
    attacker's own code, for example): refused, no session."""
    server, _ = signed_out_server
    page = browser.new_page()
    redirected: list[str] = []
    page.on(
        "request",
        lambda request: redirected.append(request.url) if "/callback?" in request.url else None,
    )
    sign_in_at_the_provider(page, RITA, PASSWORD, f"{server.url}/signin")
    expect(page).to_have_url(f"{server.url}/safety", timeout=WAIT_MS)
    [callback] = redirected
    forged = callback.replace("state=", "state=forged")
    page.context.clear_cookies()
    page.goto(f"{server.url}/signin")
    page.click("a.provider")  # a new flow of this browser's own, then the forgery
    expect(page.locator('input[name="password"]')).to_be_visible()
    answer = page.goto(forged)
    assert answer is not None and answer.status == 400
    expect(page.locator("main")).to_contain_text("could not be completed (mismatching_state)")
    rita = "SELECT count(*) FROM staff_session WHERE username = 'rita'"
    assert query(dashboard_db, rita) == [(1,)]  # the first sign-in's alone


def test_an_expired_session_is_sent_back_to_sign_in(
    dashboard_db: DatabaseSettings,
    signed_out_server: tuple[Dashboard, Provider],
    browser: sync_api.BrowserContext,
) -> None:
    server, _ = signed_out_server
    page = browser.new_page()
    sign_in_at_the_provider(page, RITA, PASSWORD, f"{server.url}/safety")
    expect(page.locator("#now")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    query(dashboard_db, "UPDATE staff_session SET expires_at = now() - interval '1 second'")
    page.reload()
    expect(page).to_have_url(f"{server.url}/signin?next=%2Fsafety")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.request("/api/now"), timeout=10)  # noqa: S310 - local
    refused.value.close()
    assert refused.value.code == 401  # the fixture's own session expired with the rest
