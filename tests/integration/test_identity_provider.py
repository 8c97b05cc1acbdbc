"""The local OpenID Connect provider (stack/identity) that the dashboard's sign-in is tested
against: a real authorization server, driven here over HTTP as a browser and the dashboard
would drive it, so that what these tests pass is what the sign-in can rely on."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import pytest

from stack.identity_provider import Account, Client, Provider, identity_provider

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("node") is None,
        reason="the local OpenID Connect provider (stack/identity) needs Node.js: no node found",
    ),
]

ADA = Account(
    username="ada",
    password="fossil-hunter-1799",  # noqa: S106 - an account of the test provider only
    name="Ada Lovelace",
    email="ada@lmnh.example",
    groups=("curators", "staff"),
)
DASHBOARD = Client(
    client_id="dashboard",
    client_secret="dashboard-secret",  # noqa: S106 - a client of the test provider only
    redirect_uris=("http://127.0.0.1:8000/auth/callback",),
)
REDIRECT_URI = DASHBOARD.redirect_uris[0]
TIMEOUT_S = 5.0
MAX_REDIRECTS = 10
# The DER prefix of a SHA-256 DigestInfo (RFC 8017, section 9.2, note 1).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


@dataclass(frozen=True)
class Request:
    """One authorization request's secrets, as the dashboard will keep them in its session."""

    state: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        return b64encode(hashlib.sha256(self.verifier.encode()).digest())


class BadSignatureError(Exception):
    """An ID token that its issuer's keys did not sign as it is."""


@dataclass(frozen=True)
class Response:
    """One answer of the provider, read whole."""

    url: str
    status: int
    headers: dict[str, str]  # names in lower case
    text: str

    @property
    def location(self) -> str | None:
        """Where a redirect points, as an absolute URL."""
        if self.status not in {301, 302, 303, 307, 308}:
            return None
        return urljoin(self.url, self.headers["location"])

    def json(self) -> Any:
        return json.loads(self.text)


class Browser:
    """A user agent that keeps cookies (the provider's session) but follows no redirect and
    returns every status as it is, so that a test sees each step of a sign-in."""

    def __init__(self) -> None:
        # An opener without urllib's redirect and error handlers: every answer comes back as is.
        self.opener = urllib.request.OpenerDirector()
        self.opener.add_handler(urllib.request.HTTPHandler())
        self.opener.add_handler(urllib.request.HTTPCookieProcessor(CookieJar()))

    def get(self, url: str, params: dict[str, str] | None = None) -> Response:
        return self.send(f"{url}?{urlencode(params)}" if params else url)

    def post(
        self, url: str, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> Response:
        return self.send(url, urlencode(form).encode(), headers)

    def send(
        self, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        assert url.startswith("http://127.0.0.1:"), url
        request = urllib.request.Request(url, body, headers or {})  # noqa: S310 - checked above
        with self.opener.open(request, timeout=TIMEOUT_S) as answer:
            return Response(
                url,
                answer.status,
                {name.lower(): value for name, value in answer.headers.items()},
                answer.read().decode(),
            )


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with identity_provider([ADA], [DASHBOARD]) as running:
        yield running


@pytest.fixture(scope="module")
def discovery(provider: Provider) -> dict[str, Any]:
    response = Browser().get(provider.discovery_url)
    assert response.status == 200, response.text
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture
def browser() -> Browser:
    """A user agent of each test's own, so that no test inherits another's provider session."""
    return Browser()


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def follow(browser: Browser, response: Response) -> Response:
    """Follow the provider's redirects, stopping at the one to the dashboard's redirect_uri
    (which nothing serves here)."""
    for _ in range(MAX_REDIRECTS):
        location = response.location
        if location is None or location.startswith(REDIRECT_URI):
            return response
        response = browser.get(location)
    raise AssertionError(f"more than {MAX_REDIRECTS} redirects")


def authorize(
    browser: Browser, discovery: dict[str, Any], request: Request, *, pkce: bool = True
) -> Response:
    """Start signing in at the authorization endpoint, as the dashboard's redirect would."""
    params = {
        "response_type": "code",
        "client_id": DASHBOARD.client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile email groups",
        "state": request.state,
        "nonce": request.nonce,
    }
    if pkce:
        params |= {"code_challenge": request.challenge, "code_challenge_method": "S256"}
    return follow(browser, browser.get(discovery["authorization_endpoint"], params=params))


def submit_login(browser: Browser, page: Response, username: str, password: str) -> Response:
    """Fill in and send the login form as a browser would."""
    assert page.status in {200, 401}, page.text
    form = re.search(r'<form method="post" action="([^"]+)">', page.text)
    assert form is not None, page.text
    assert 'name="username"' in page.text
    assert 'name="password"' in page.text
    return browser.post(
        urljoin(page.url, form.group(1)), {"username": username, "password": password}
    )


def callback(response: Response) -> dict[str, str]:
    """The parameters of the redirect to the dashboard's redirect_uri."""
    location = response.location
    assert location is not None, response.text
    assert location.startswith(f"{REDIRECT_URI}?"), location
    return dict(parse_qsl(urlsplit(location).query))


def sign_in(browser: Browser, discovery: dict[str, Any], request: Request) -> str:
    """Ada's authorization code, after she signed in on the login page."""
    page = authorize(browser, discovery, request)
    params = callback(follow(browser, submit_login(browser, page, ADA.username, ADA.password)))
    assert params["state"] == request.state
    return params["code"]


def redeem(browser: Browser, discovery: dict[str, Any], code: str, verifier: str) -> Response:
    """Exchange the code at the token endpoint as the dashboard will (client_secret_basic)."""
    credentials = f"{DASHBOARD.client_id}:{DASHBOARD.client_secret}".encode()
    return browser.post(
        discovery["token_endpoint"],
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        {"Authorization": f"Basic {base64.b64encode(credentials).decode()}"},
    )


def verified_claims(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The claims of an RS256 JWT, once its signature checks out against the key in `jwks` that
    its header names: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017, section 8.2.2), by hand, since
    .venv has no cryptography package."""
    header_part, payload_part, signature_part = token.split(".")
    header = json.loads(b64decode(header_part))
    assert header["alg"] == "RS256"
    key = next(key for key in jwks["keys"] if key["kid"] == header["kid"])
    modulus = int.from_bytes(b64decode(key["n"]), "big")
    exponent = int.from_bytes(b64decode(key["e"]), "big")
    size = (modulus.bit_length() + 7) // 8
    signature = b64decode(signature_part)
    if len(signature) != size:
        raise BadSignatureError("signature of the wrong length")
    decrypted = pow(int.from_bytes(signature, "big"), exponent, modulus).to_bytes(size, "big")
    digest = hashlib.sha256(f"{header_part}.{payload_part}".encode()).digest()
    padding = b"\xff" * (size - 3 - len(SHA256_DIGEST_INFO) - len(digest))
    expected = b"\x00\x01" + padding + b"\x00" + SHA256_DIGEST_INFO + digest
    if not hmac.compare_digest(decrypted, expected):
        raise BadSignatureError("signature does not match")
    claims: dict[str, Any] = json.loads(b64decode(payload_part))
    return claims


def test_discovery_describes_a_code_flow_with_pkce_and_rsa_keys(
    provider: Provider, discovery: dict[str, Any]
) -> None:
    assert discovery["issuer"] == provider.issuer
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        assert discovery[endpoint].startswith(f"{provider.issuer}/")
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert discovery["response_types_supported"] == ["code"]
    assert "RS256" in discovery["id_token_signing_alg_values_supported"]
    assert {"openid", "profile", "email", "groups"} <= set(discovery["scopes_supported"])
    assert "groups" in discovery["claims_supported"]
    keys = Browser().get(discovery["jwks_uri"]).json()["keys"]
    assert [(key["kty"], key["alg"], key["use"]) for key in keys] == [("RSA", "RS256", "sig")]
    assert keys[0]["kid"]
    assert not {"d", "p", "q"} & set(keys[0]), "the JWKS must publish public keys only"


def test_sign_in_with_pkce_gives_a_signed_id_token_with_the_groups(
    provider: Provider, discovery: dict[str, Any], browser: Browser
) -> None:
    request = Request()
    response = redeem(browser, discovery, sign_in(browser, discovery, request), request.verifier)
    assert response.status == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"  # noqa: S105 - a token type, not a secret
    jwks = browser.get(discovery["jwks_uri"]).json()
    claims = verified_claims(tokens["id_token"], jwks)
    assert claims["iss"] == provider.issuer
    assert claims["aud"] == DASHBOARD.client_id
    assert claims["nonce"] == request.nonce
    assert claims["sub"] == ADA.username
    assert claims["groups"] == list(ADA.groups)
    assert (claims["name"], claims["email"], claims["preferred_username"]) == (
        ADA.name,
        ADA.email,
        ADA.username,
    )
    assert claims["iat"] <= time.time() + 5 < claims["exp"]
    # The check above is a real one: the same token with other groups fails it.
    header, _, signature = tokens["id_token"].split(".")
    forged = b64encode(json.dumps({**claims, "groups": ["admins"]}).encode())
    with pytest.raises(BadSignatureError):
        verified_claims(f"{header}.{forged}.{signature}", jwks)


@pytest.mark.parametrize(
    ("username", "password"),
    [(ADA.username, "not-her-password"), ("mallory", ADA.password)],
    ids=["wrong password", "unknown user"],
)
def test_a_failed_login_is_refused_with_an_error_and_no_code(
    discovery: dict[str, Any], browser: Browser, username: str, password: str
) -> None:
    request = Request()
    page = authorize(browser, discovery, request)
    refused = submit_login(browser, page, username, password)
    assert refused.status == 401
    assert "location" not in refused.headers
    assert "Wrong username or password." in refused.text
    # The page asks again, and the right password still gets through.
    params = callback(follow(browser, submit_login(browser, refused, ADA.username, ADA.password)))
    assert params["state"] == request.state
    assert params["code"]


def test_a_wrong_code_verifier_is_refused_at_the_token_endpoint(
    discovery: dict[str, Any], browser: Browser
) -> None:
    code = sign_in(browser, discovery, Request())
    response = redeem(browser, discovery, code, Request().verifier)
    assert response.status == 400
    assert response.json()["error"] == "invalid_grant"
    assert "id_token" not in response.text


def test_an_authorization_request_without_pkce_is_refused(
    discovery: dict[str, Any], browser: Browser
) -> None:
    request = Request()
    params = callback(authorize(browser, discovery, request, pkce=False))
    assert params["error"] == "invalid_request"
    assert "code" not in params
