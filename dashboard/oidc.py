"""Sign-in through the museum's identity provider over OpenID Connect: the authorization code
flow with PKCE (S256), state and nonce, by authlib, which also verifies the ID token (its
signature against the provider's published keys, issuer, audience, expiry and nonce).

A member of staff's roles come from the groups the provider lists for them (OIDC_GROUPS_*);
someone in none of the dashboard's groups is told so and gets no session. Between the redirect
to the provider and its callback, the flow's state, nonce and PKCE verifier wait in a signed
cookie of their own, for that path only and ten minutes at most.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from html import escape
from typing import Any

import httpx
from authlib.integrations.starlette_client import OAuth, OAuthError
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dashboard.access import local_path, set_session_cookie, sign_in_page
from dashboard.sessions import Sessions
from lmnh.config import AccessSettings, IdentityProvider

START = "/signin/oidc"
CALLBACK = "/signin/oidc/callback"
FLOW_COOKIE = "lmnh_signin_flow"
FLOW_MAX_AGE_S = 600
PROVIDER_TIMEOUT_S = 10.0  # discovery, keys and the token exchange: each bounded

log = logging.getLogger(__name__)


def roles_from_claims(claims: Mapping[str, Any], provider: IdentityProvider) -> tuple[str, ...]:
    """The dashboard roles that the groups in `claims` give, in the order of STAFF_ROLES. The
    groups claim may be a list or one string; anything else gives nothing."""
    listed = claims.get(provider.groups_claim)
    if isinstance(listed, str):
        listed = [listed]
    if not isinstance(listed, list):
        return ()
    groups = {group for group in listed if isinstance(group, str)}
    return tuple(role for role, given_by in provider.role_groups if given_by & groups)


def who(claims: Mapping[str, Any]) -> tuple[str, str]:
    """A username and a name to show for the person the claims describe."""
    username = next(
        str(claims[key]) for key in ("preferred_username", "email", "sub") if claims.get(key)
    )
    return username, str(claims.get("name") or username)


def flow_cookie() -> dict[str, Any]:
    """Starlette's SessionMiddleware options for the signed cookie that carries a flow from
    the redirect to the callback. Its key is made at start: a flow begun on one server process
    finishes on the same one."""
    return {
        "secret_key": secrets.token_urlsafe(32),
        "session_cookie": FLOW_COOKIE,
        "max_age": FLOW_MAX_AGE_S,
        "path": "/signin",
        "same_site": "lax",
    }


def oidc_routes(settings: AccessSettings, sessions: Sessions) -> APIRouter:
    """/signin/oidc (to the provider) and its callback, each a 404 without a provider."""
    router = APIRouter()
    provider = settings.identity_provider
    oauth = OAuth()
    if provider is not None:
        oauth.register(
            "museum",
            server_metadata_url=f"{provider.issuer}/.well-known/openid-configuration",
            client_id=provider.client_id,
            client_secret=provider.client_secret.reveal(),
            client_kwargs={
                "scope": provider.scopes,
                "code_challenge_method": "S256",
                "timeout": PROVIDER_TIMEOUT_S,
            },
        )

    @router.get(START, include_in_schema=False)
    async def to_the_provider(request: Request) -> Response:
        if provider is None:
            return sign_in_page(404, "Sign in", "No identity provider is set up here.")
        request.session["next"] = local_path(request.query_params.get("next")) or "/"
        callback = str(request.url_for("from_the_provider"))
        try:
            answer: Response = await oauth.museum.authorize_redirect(request, callback)
        except (httpx.HTTPError, ValueError) as error:  # no discovery document, or not JSON
            log.warning("identity provider %s: %s", provider.issuer, error)
            return _provider_failed(provider)
        return answer

    @router.get(CALLBACK, include_in_schema=False)
    async def from_the_provider(request: Request) -> Response:
        if provider is None:
            return sign_in_page(404, "Sign in", "No identity provider is set up here.")
        try:
            token = await oauth.museum.authorize_access_token(request)
        except OAuthError as error:
            log.warning("sign-in through %s refused: %s", provider.issuer, error)
            return sign_in_page(
                400,
                "Sign in",
                f"The sign-in could not be completed ({escape(error.error)}); "
                '<a href="/signin">try again</a>.',
            )
        except httpx.HTTPError as error:  # the provider does not answer: try again later
            log.warning("identity provider %s: %s", provider.issuer, error)
            return _provider_failed(provider)
        except Exception:  # an ID token that does not verify, however: this sign-in is refused
            log.exception(
                "sign-in through %s: the provider's answer did not verify", provider.issuer
            )
            return sign_in_page(
                400,
                "Sign in",
                'The sign-in could not be verified; <a href="/signin">try again</a>.',
            )
        claims = token.get("userinfo") or {}
        roles = roles_from_claims(claims, provider)
        username, name = who(claims)
        if not roles:
            log.info("%s signed in through %s with no dashboard group", username, provider.issuer)
            return sign_in_page(
                403,
                "No access",
                f"{escape(name)}, your account is in none of the dashboard's groups; ask IT to"
                " add you to the group of your role.",
            )
        session = await run_in_threadpool(sessions.start, username, name, roles)
        target = local_path(request.session.pop("next", None)) or "/"
        answer = RedirectResponse(target, status_code=303)
        set_session_cookie(request, answer, session, settings.session_hours)
        return answer

    return router


def _provider_failed(provider: IdentityProvider) -> Response:
    return sign_in_page(
        503,
        "Sign in",
        f"{escape(provider.name)} is not answering; try again shortly, or sign in with a local"
        " account.",
    )
