"""Who may open what, without a database: every route of the app is in the policy (a new route
cannot be public by accident), where a sign-in may send the browser (never to another site),
the throttle on failed sign-ins, and the rules for usernames, roles and passwords."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.routing import Route

from dashboard import accounts
from dashboard.access import (
    CHART_ROLES,
    POLICY,
    SIGNED_IN,
    Throttle,
    home_page,
    local_path,
    roles_needed,
    route_template,
    route_templates,
)
from dashboard.app import CHARTS, create_app
from dashboard.oidc import roles_from_claims, who
from lmnh.config import IdentityProvider, load_config
from lmnh.errors import ConfigError


def test_every_route_of_the_app_is_in_the_policy_and_every_entry_is_a_route() -> None:
    app = create_app(load_config({}).database)  # nothing here touches the database
    templates = route_templates(app.routes)
    assert "/api/now/stream" in templates  # those of included routers too
    assert set(templates) == set(POLICY)


def test_a_route_missing_from_the_policy_is_refused_to_every_role() -> None:
    assert roles_needed("/api/something-new", "/api/something-new") == frozenset()


@pytest.mark.parametrize(
    ("path", "needed"),
    [
        ("/signin", None),
        ("/healthz", None),
        ("/static/dashboard.js", None),
        ("/exhibitions", {"exhibitions"}),
        ("/safety", {"security"}),
        ("/api/now/stream", {"security"}),
        ("/feed", {"operations"}),
        ("/api/feed/rejected", {"operations"}),
        ("/metrics", {"operations"}),
        ("/api/accounts", {"admin"}),
        ("/api/charts/top-rated", {"exhibitions"}),
        ("/api/charts/request-heatmap", {"security"}),
        # A chart that does not exist: a 404 for anyone signed in, nothing for anyone else.
        ("/api/charts/no-such-chart", SIGNED_IN),
        ("/no/such/page", SIGNED_IN),
    ],
)
def test_each_route_needs_its_role(path: str, needed: set[str] | None) -> None:
    app = create_app(load_config({}).database)
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    template = route_template(app.routes, scope)
    assert roles_needed(template, path) == (None if needed is None else frozenset(needed))


def test_every_chart_belongs_to_exactly_one_page() -> None:
    assert set(CHART_ROLES) == set(CHARTS)
    assert set(CHART_ROLES.values()) == {"exhibitions", "security"}


@pytest.mark.parametrize(
    ("roles", "page"),
    [
        ({"security"}, "/safety"),
        ({"operations", "security"}, "/safety"),
        ({"exhibitions", "admin"}, "/exhibitions"),
        ({"admin"}, "/accounts"),
        ({"operations"}, "/feed"),
    ],
)
def test_staff_land_on_the_first_page_their_roles_open(roles: set[str], page: str) -> None:
    assert home_page(frozenset(roles)) == page


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "evil.example",
        "javascript:alert(1)",
        "/safety\r\nSet-Cookie: x=1",
        "",
        None,
    ],
)
def test_a_sign_in_never_sends_the_browser_elsewhere(target: str | None) -> None:
    assert local_path(target) is None


@pytest.mark.parametrize("target", ["/safety", "/safety?floor=2&request=emergency", "/"])
def test_a_sign_in_returns_to_the_page_asked_for(target: str) -> None:
    assert local_path(target) == target


@given(st.text())
def test_whatever_next_says_the_redirect_stays_on_this_server(target: str) -> None:
    kept = local_path(target)
    if kept is not None:
        assert kept.startswith("/")
        assert not kept.startswith(("//", "/\\"))
        assert all(ord(c) >= 0x20 for c in kept)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_sign_ins_past_the_limit_wait_until_the_oldest_ages_out() -> None:
    clock = Clock()
    throttle = Throttle(per_user=3, per_address=100, window_s=600, clock=clock)
    for _ in range(3):
        assert throttle.wait_s("guard", "10.0.0.1") == 0
        throttle.failed("guard", "10.0.0.1")
        clock.now += 10
    assert throttle.wait_s("guard", "10.0.0.1") == pytest.approx(600 - 30)
    assert throttle.wait_s("someone-else", "10.0.0.2") == 0
    clock.now += 571
    assert throttle.wait_s("guard", "10.0.0.1") == 0


def test_one_address_trying_many_usernames_is_throttled_too() -> None:
    throttle = Throttle(per_user=5, per_address=4, window_s=600, clock=Clock())
    for name in ("a", "b", "c", "d"):
        throttle.failed(name, "10.0.0.9")
    assert throttle.wait_s("e", "10.0.0.9") > 0
    assert throttle.wait_s("e", "10.0.0.10") == 0


def test_a_success_clears_the_usernames_failures_but_not_the_addresses() -> None:
    throttle = Throttle(per_user=2, per_address=3, window_s=600, clock=Clock())
    throttle.failed("guard", "10.0.0.1")
    throttle.failed("guard", "10.0.0.1")
    throttle.succeeded("guard")
    assert throttle.wait_s("guard", "10.0.0.2") == 0
    throttle.failed("other", "10.0.0.1")
    assert throttle.wait_s("guard", "10.0.0.1") > 0


def test_a_flood_of_usernames_keeps_the_throttle_bounded() -> None:
    throttle = Throttle(max_keys=100, clock=Clock())
    for n in range(1000):
        throttle.failed(f"user{n}", f"10.0.{n // 250}.{n % 250}")
    assert len(throttle._failures) <= 100


@pytest.mark.parametrize(
    ("username", "ok"),
    [
        ("r.pelkman", True),
        ("guard-7@lmnh.org.uk", True),
        ("R.Pelkman", False),
        ("", False),
        (".hidden", False),
        ("a" * 101, False),
        ("name with space", False),
        ("nul\x00", False),
        ("ümlaut", False),
    ],
)
def test_usernames(username: str, ok: bool) -> None:
    assert (accounts.username_problem(username) is None) is ok


def test_passwords_are_twelve_to_128_characters_of_anything_but_nul() -> None:
    assert accounts.password_problem("correct horse battery staple") is None
    assert accounts.password_problem("ünïcödé pässwörd 🦕") is None
    assert accounts.password_problem("short") is not None
    assert accounts.password_problem("x" * 129) is not None
    assert accounts.password_problem("twelve chars\x00") is not None


def test_roles_are_the_four_known_ones() -> None:
    assert accounts.roles_problem(["security", "admin"]) is None
    assert accounts.roles_problem(["security", "superuser"]) == (
        "no role 'superuser'; roles: exhibitions, security, operations, admin"
    )


def test_passwords_are_hashed_with_argon2id() -> None:
    hashed = accounts.HASHER.hash("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert "correct" not in hashed


@pytest.mark.parametrize("route", [Route("/x", lambda _: None)])
def test_route_template_of_a_path_no_route_answers(route: Route) -> None:
    scope = {"type": "http", "path": "/elsewhere", "method": "GET", "root_path": ""}
    assert route_template([route], scope) == "unmatched"


PROVIDER_ENV = {
    "OIDC_ISSUER": "https://login.microsoftonline.com/tenant-id/v2.0/",
    "OIDC_CLIENT_ID": "dashboard",
    "OIDC_CLIENT_SECRET": "s3cret",
    "OIDC_GROUPS_SECURITY": " LMNH Security , LMNH Control Room,",
    "OIDC_GROUPS_ADMIN": "IT",
}


def provider(env: dict[str, str] | None = None) -> IdentityProvider:
    found = load_config({**PROVIDER_ENV, **(env or {})}).access.identity_provider
    assert found is not None
    return found


def test_the_identity_providers_settings_are_read_and_its_groups_listed() -> None:
    idp = provider()
    assert idp.issuer == "https://login.microsoftonline.com/tenant-id/v2.0"
    assert dict(idp.role_groups)["security"] == {"LMNH Security", "LMNH Control Room"}
    assert dict(idp.role_groups)["exhibitions"] == frozenset()
    assert "s3cret" not in repr(load_config(PROVIDER_ENV))


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"OIDC_CLIENT_SECRET": ""}, "go together"),
        ({"OIDC_ISSUER": "http://idp.museum.example"}, "must be an https:// URL"),
        ({"DASHBOARD_METRICS_TOKEN": "short"}, "at least 32"),
    ],
)
def test_incomplete_or_unsafe_sign_in_settings_are_refused(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config({**PROVIDER_ENV, **env})


def test_a_provider_on_this_machine_may_speak_plain_http() -> None:
    assert provider({"OIDC_ISSUER": "http://127.0.0.1:8443"}).issuer == "http://127.0.0.1:8443"


@pytest.mark.parametrize(
    ("groups", "roles"),
    [
        (["LMNH Control Room"], ("security",)),
        (["IT", "LMNH Security", "Cafe"], ("security", "admin")),
        ("IT", ("admin",)),  # one group, as a string
        (["Cafe"], ()),
        ([["LMNH Security"]], ()),  # not a list of names
        ({"LMNH Security": True}, ()),
        (None, ()),
    ],
)
def test_roles_come_from_the_groups_claim(groups: object, roles: tuple[str, ...]) -> None:
    assert roles_from_claims({"groups": groups, "sub": "x"}, provider()) == roles


def test_a_person_is_named_by_username_email_or_subject() -> None:
    assert who({"preferred_username": "rita", "name": "Rita Pelkman"}) == ("rita", "Rita Pelkman")
    assert who({"email": "rita@lmnh.example", "sub": "1"}) == (
        "rita@lmnh.example",
        "rita@lmnh.example",
    )
    assert who({"sub": "0f3a"}) == ("0f3a", "0f3a")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["groups", "sub", "name", "email"]), JSON))
def test_any_claims_give_known_roles_or_none_and_never_raise(claims: dict[str, object]) -> None:
    assert set(roles_from_claims(claims, provider())) <= {"security", "admin"}
