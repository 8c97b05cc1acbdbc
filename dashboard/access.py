"""Who may open what. Every route needs a signed-in member of staff with one of its roles,
unless it is one of the few public ones (signing in, the health check, the pages' static
files); state-changing requests also need the session's CSRF token; every answer carries the
security headers a browser needs (OWASP ASVS chapters 3, 4, 13 and 14).

`POLICY` is the one list of which role opens which route; a route missing from it is refused
to everyone, so a new route cannot be public by accident (a test checks the list is complete).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard import accounts
from dashboard.api_schema import COMMON_ERRORS, NO_STORE, AccountsBody, MeBody
from dashboard.pool import ConnectionPool, Unavailable
from dashboard.sessions import COOKIE, SECURE_COOKIE, Sessions, Staff
from lmnh.config import AccessSettings, Secret

SIGNED_IN = frozenset(accounts.ROLES)  # any role will do
CHART_ROLES = {
    "rating-over-time": "exhibitions",
    "popularity": "exhibitions",
    "top-rated": "exhibitions",
    "request-share": "security",
    "requests-by-time-of-day": "security",
    "requests-by-floor": "security",
    "requests-by-exhibition": "security",
    "request-heatmap": "security",
}
# Route template -> the roles that may open it; None: anyone, signed in or not.
POLICY: Mapping[str, frozenset[str] | None] = {
    "/signin": None,
    "/signin/oidc": None,  # to the museum's identity provider, and back
    "/signin/oidc/callback": None,
    "/healthz": None,
    "/static/{path}": None,  # the pages' scripts and styles: no data in them
    "/signout": SIGNED_IN,
    "/": SIGNED_IN,
    "/api/me": SIGNED_IN,
    "/api/meta": SIGNED_IN,  # the filters' choices and the data's freshness
    "/api/openapi.json": SIGNED_IN,
    "/api/charts/{name}": SIGNED_IN,  # and then the chart's own role: CHART_ROLES
    "/exhibitions": frozenset({"exhibitions"}),
    "/safety": frozenset({"security"}),
    "/api/now": frozenset({"security"}),
    "/api/now/stream": frozenset({"security"}),
    "/feed": frozenset({"operations"}),
    "/api/feed/exhibitions": frozenset({"operations"}),
    "/api/feed/rejected": frozenset({"operations"}),
    "/api/feed/latest": frozenset({"operations"}),
    "/api/feed/pipeline": frozenset({"operations"}),
    "/metrics": frozenset({"operations"}),  # or Prometheus with the scrape token
    "/accounts": frozenset({"admin"}),
    "/api/accounts": frozenset({"admin"}),
}
# The pages, in the order a member of staff with several roles lands on them.
HOME_PAGES = (
    ("exhibitions", "/exhibitions"),
    ("security", "/safety"),
    ("operations", "/feed"),
    ("admin", "/accounts"),
)
PAGE_ROUTES = frozenset({"/", "/exhibitions", "/safety", "/feed", "/accounts"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"
SIGN_IN_COOKIE = "lmnh_signin"  # the sign-in form's own CSRF token, before any session
FORM_MAX_BYTES = 4096
RETRY_S = 5  # a page or a call refused while the database is away is tried again after this

# No inline script or style, no eval, nothing from elsewhere, never in a frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)

SIGN_IN_PAGE = Template((Path(__file__).resolve().parent / "signin.html").read_text("utf-8"))
NO_ACCOUNT_YET = (
    "No staff account exists yet. On the server, create the first with"
    ' <code>lmnh-accounts add USERNAME --name "Your Name" --role admin</code>'
    " (and the roles you need: exhibitions, security, operations)."
)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route the router will choose; "unmatched" when none will."""
    return resolve(routes, scope)[0]


def resolve(routes: Sequence[BaseRoute], scope: Scope) -> tuple[str, bool]:
    """The route the router will choose, as Starlette's does: the first full match, else the
    first partial one (a method it does not take: 405), and whether it takes the method."""
    partial = None
    for route in _flat(routes):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return _template(route), True
        if match is Match.PARTIAL and partial is None:
            partial = route
    return ("unmatched", False) if partial is None else (_template(partial), False)


def _flat(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes in the order the router tries them, those of included routers in their
    place (FastAPI keeps an included router as one route that holds it)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is None:
            yield route
        else:
            yield from _flat(included.routes)


def route_templates(routes: Sequence[BaseRoute]) -> list[str]:
    return [_template(route) for route in _flat(routes)]


def _template(route: BaseRoute) -> str:
    path = str(getattr(route, "path", "")) or "unmatched"
    return f"{path}/{{path}}" if isinstance(route, Mount) else path


def roles_needed(template: str, path: str) -> frozenset[str] | None:
    """Who may open `path`, answered by the route `template`: None for anyone. An unknown
    route, or a path no route answers, needs a signed-in member of staff (who then gets the
    404): an anonymous visitor learns nothing of what exists."""
    if template == "/api/charts/{name}":
        role = CHART_ROLES.get(path.rsplit("/", 1)[-1])
        return frozenset({role}) if role else SIGNED_IN
    if template == "unmatched":
        return SIGNED_IN
    return POLICY.get(template, frozenset())


def home_page(roles: frozenset[str]) -> str | None:
    return next((page for role, page in HOME_PAGES if role in roles), None)


def local_path(target: str | None) -> str | None:
    """`target` if it is a path on this server (where to go after signing in), else None: never
    another site (an open redirect), nor a scheme-relative //host."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(c) < 0x20 for c in target):  # noqa: PLR2004
        return None
    return target


def error_answer(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> Response:
    """Every error of the API: the same JSON body (api_schema.ErrorBody), never cached."""
    return JSONResponse(
        {"error": message, **extra}, status_code=status, headers={**NO_STORE, **(headers or {})}
    )


@dataclass
class Throttle:
    """Failed sign-ins counted per username and per client address over `window_s`: past
    `per_user` (or `per_address`) the next try is refused until the oldest failure ages out,
    so guessing a password costs hours, not seconds. Kept per server process."""

    per_user: int = 5
    per_address: int = 20
    window_s: float = 15 * 60
    max_keys: int = 10_000
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def wait_s(self, username: str, address: str) -> float:
        """Seconds until a sign-in may be tried again; 0 if now."""
        now = self.clock()
        waits = [0.0]
        limits = ((("user", username), self.per_user), (("address", address), self.per_address))
        for key, limit in limits:
            times = self._recent(key, now)
            if len(times) >= limit:
                waits.append(times[0] + self.window_s - now)
        return max(waits)

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        for key in (("user", username), ("address", address)):
            if key not in self._failures and len(self._failures) >= self.max_keys:
                # A flood of names: forget the one that failed longest ago.
                stalest = min(self._failures, key=lambda known: self._failures[known][-1])
                del self._failures[stalest]
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str) -> None:
        self._failures.pop(("user", username), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times


class AccessMiddleware:
    """Signs every request in or refuses it, before any route runs, and adds the security
    headers to every answer."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        sessions: Sessions,
        metrics_token: Secret | None,
    ) -> None:
        self._app = app
        self._routes = routes  # the app's own list: routes added later are in it too
        self._sessions = sessions
        self._scrape = f"Bearer {metrics_token.reveal()}".encode() if metrics_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        send = _with_security_headers(send)
        template, takes_method = resolve(self._routes, scope)
        needed = roles_needed(template, scope["path"])
        if needed is None or (template == "/metrics" and self._scraper(scope)):
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        try:
            staff = await run_in_threadpool(self._sessions.find, session_token(request))
        except Unavailable as error:
            answer = (
                sign_in_page(503, "Not answering", f"{escape(str(error))}.", refresh_s=RETRY_S)
                if template in PAGE_ROUTES
                else error_answer(503, str(error), {"Retry-After": str(RETRY_S)})
            )
            await answer(scope, receive, send)
            return
        refusal = _refusal(request, template, needed, staff, takes_method)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope.setdefault("state", {})["staff"] = staff
        await self._app(scope, receive, send)

    def _scraper(self, scope: Scope) -> bool:
        sent = dict(scope["headers"]).get(b"authorization", b"")
        return self._scrape is not None and hmac.compare_digest(sent, self._scrape)


def _refusal(
    request: Request,
    template: str,
    needed: frozenset[str],
    staff: Staff | None,
    takes_method: bool,
) -> Response | None:
    """Why `staff` may not make this request, as the answer to send; None if they may. A
    method the route does not take is left to the router's 405: it changes nothing."""
    page = template in PAGE_ROUTES and request.method in SAFE_METHODS
    if staff is None:
        if page:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
        return error_answer(401, "sign in first", {"WWW-Authenticate": "Session"})
    if not needed & staff.roles:
        roles = " or ".join(sorted(needed))
        what = f"{request.method} {request.url.path} " + (
            f"needs the role {roles}" if roles else "is open to no role"
        )
        if page:
            return sign_in_page(403, "Not for your role", f"{escape(what)}; ask an admin.")
        return error_answer(403, what)
    if request.method not in SAFE_METHODS and takes_method:
        sent = request.headers.get(CSRF_HEADER, "")
        cross_site = request.headers.get("sec-fetch-site", "same-origin") not in (
            "same-origin",
            "none",
        )
        if cross_site or not hmac.compare_digest(sent.encode(), staff.csrf_token.encode()):
            return error_answer(403, f"{request.method} {request.url.path}: no valid CSRF token")
    return None


def session_token(request: Request) -> str:
    return request.cookies.get(SECURE_COOKIE if _secure(request) else COOKIE, "")


def _secure(request: Request) -> bool:
    """Whether the browser sees HTTPS (behind the TLS proxy, uvicorn takes the scheme from
    its X-Forwarded-Proto)."""
    return request.url.scheme == "https"


def _with_security_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {name for name, _ in message.get("headers", [])}
            extra = [(name, value) for name, value in SECURITY_HEADERS if name not in names]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers


def sign_in_page(
    status: int, title: str, body_html: str, refresh_s: int | None = None
) -> HTMLResponse:
    """A page of the sign-in family: `body_html` is already escaped. With `refresh_s`, the
    browser loads it again after so many seconds (a wall screen recovers by itself)."""
    html = SIGN_IN_PAGE.substitute(title=escape(title), body=body_html)
    headers = {**NO_STORE, **({"Refresh": str(refresh_s)} if refresh_s else {})}
    return HTMLResponse(html, status_code=status, headers=headers)


@dataclass
class SignIn:
    """The sign-in and sign-out routes' work."""

    pool: ConnectionPool
    sessions: Sessions
    settings: AccessSettings
    throttle: Throttle

    def form(
        self, request: Request, problem: str = "", status: int = 200, target: str | None = None
    ) -> Response:
        """The sign-in form, saying `problem` if any; after it, the browser goes to `target`
        (default: the page's own ?next=)."""
        with self.pool.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT FROM staff_account)")
            row = cur.fetchone()
        anyone = bool(row and row[0])
        token = secrets.token_urlsafe(24)
        target = local_path(target or request.query_params.get("next")) or ""
        notice = f'<p class="problem" role="alert">{escape(problem)}</p>' if problem else ""
        body = (
            f"{notice}"
            '<form method="post" action="/signin">'
            f'<input type="hidden" name="csrf" value="{token}">'
            f'<input type="hidden" name="next" value="{escape(target)}">'
            '<label>Username <input name="username" autocomplete="username" required'
            ' autofocus maxlength="100"></label>'
            '<label>Password <input name="password" type="password"'
            ' autocomplete="current-password" required maxlength="128"></label>'
            '<button type="submit">Sign in</button></form>'
        )
        provider = self.settings.identity_provider
        if provider is not None:
            back = f"?next={quote(target, safe='')}" if target else ""
            body = (
                f'<p><a class="provider" href="/signin/oidc{back}">Sign in with'
                f' {escape(provider.name)}</a></p><p class="or">or with a local account:</p>{body}'
            )
        elif not anyone:
            body = f'<p class="notice">{NO_ACCOUNT_YET}</p>{body}'
        answer = sign_in_page(status, "Sign in", body)
        answer.set_cookie(
            SIGN_IN_COOKIE,
            token,
            max_age=3600,
            path="/signin",
            secure=_secure(request),
            httponly=True,
            samesite="strict",
        )
        return answer

    async def submit(self, request: Request) -> Response:
        fields = await _form_fields(request)
        if fields is None:
            return error_answer(413, "the sign-in form is too large")
        target = local_path(fields.get("next"))
        expected = request.cookies.get(SIGN_IN_COOKIE, "")
        sent = fields.get("csrf", "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return self.form(request, "The form had expired; please sign in again.", 403, target)
        username = fields.get("username", "").strip().lower()
        address = request.client.host if request.client else ""
        wait_s = self.throttle.wait_s(username, address)
        if wait_s > 0:
            minutes = max(1, round(wait_s / 60))
            problem = f"Too many failed sign-ins; try again in {minutes} minutes."
            answer = self.form(request, problem, 429, target)
            answer.headers["Retry-After"] = str(int(wait_s) + 1)
            return answer
        account = await run_in_threadpool(self._verify, username, fields.get("password", ""))
        if account is None:
            self.throttle.failed(username, address)
            return self.form(request, "Wrong username or password.", 401, target)
        self.throttle.succeeded(username)
        token = await run_in_threadpool(
            self.sessions.start,
            account.username,
            account.display_name,
            account.roles,
            account.account_id,
        )
        answer = RedirectResponse(target or "/", status_code=303, headers=NO_STORE)
        set_session_cookie(request, answer, token, self.settings.session_hours)
        answer.delete_cookie(SIGN_IN_COOKIE, path="/signin")
        return answer

    def sign_out(self, request: Request) -> Response:
        token = session_token(request)
        if token:
            self.sessions.end(token)
        answer = Response(status_code=204, headers=NO_STORE)
        answer.delete_cookie(SECURE_COOKIE if _secure(request) else COOKIE, path="/")
        return answer

    def _verify(self, username: str, password: str) -> accounts.Account | None:
        with self.pool.cursor() as cur:
            return accounts.verify(cur, username, password)


def set_session_cookie(request: Request, answer: Response, token: str, hours: int) -> None:
    secure = _secure(request)
    answer.set_cookie(
        SECURE_COOKIE if secure else COOKIE,
        token,
        max_age=hours * 3600,
        path="/",
        secure=secure,
        httponly=True,
        samesite="lax",  # sent when a colleague's link is followed; never on a cross-site POST
    )


async def _form_fields(request: Request) -> dict[str, str] | None:
    """An url-encoded form's fields (the first of each name), or None past FORM_MAX_BYTES."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            return None
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def accounts_html(found: Sequence[accounts.Account]) -> Response:
    """The admin's list of local accounts; `lmnh-accounts` on the server changes them."""
    rows = "".join(
        f"<tr><td>{escape(a.username)}</td><td>{escape(a.display_name)}</td>"
        f"<td>{escape(', '.join(a.roles) or '-')}</td>"
        f"<td>{'disabled' if a.disabled else 'active'}</td></tr>"
        for a in found
    )
    body = (
        "<table><thead><tr><th>Username</th><th>Name</th><th>Roles</th><th></th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        "<p>Add, change or disable an account on the server with <code>lmnh-accounts</code>"
        " (<code>lmnh-accounts --help</code>).</p>"
    )
    return sign_in_page(200, "Staff accounts", body)


def staff_of(request: Request) -> Staff:
    """The signed-in member of staff whom AccessMiddleware let through."""
    staff: Staff = request.state.staff
    return staff


def me(request: Request) -> dict[str, Any]:
    staff = staff_of(request)
    return {
        "username": staff.username,
        "name": staff.display_name,
        "roles": sorted(staff.roles),
        "csrf_token": staff.csrf_token,
        "home": home_page(staff.roles),
    }


def staff_routes(pool: ConnectionPool, sessions: Sessions, settings: AccessSettings) -> APIRouter:
    """Signing in and out, who is signed in, and the admin's list of accounts."""
    sign_in = SignIn(pool, sessions, settings, Throttle())
    router = APIRouter()

    @router.get("/signin", include_in_schema=False)
    def sign_in_form(request: Request) -> Response:
        return sign_in.form(request)

    @router.post("/signin", include_in_schema=False)
    async def sign_in_submit(request: Request) -> Response:
        return await sign_in.submit(request)

    @router.post("/signout", include_in_schema=False)
    def sign_out(request: Request) -> Response:
        return sign_in.sign_out(request)

    @router.get("/api/me", responses={200: {"model": MeBody}, **COMMON_ERRORS})
    def who_am_i(request: Request) -> Response:
        """The signed-in member of staff: name, roles, and the CSRF token that every
        state-changing request must send as X-CSRF-Token."""
        return JSONResponse(me(request), headers=NO_STORE)

    @router.get("/accounts", include_in_schema=False)
    def accounts_page() -> Response:
        with pool.cursor() as cur:
            return accounts_html(accounts.accounts(cur))

    @router.get("/api/accounts", responses={200: {"model": AccountsBody}, **COMMON_ERRORS})
    def accounts_list() -> Response:
        """Every local account and its roles; `lmnh-accounts` on the server changes them."""
        with pool.cursor() as cur:
            found = accounts.accounts(cur)
        rows = [
            {
                "username": a.username,
                "name": a.display_name,
                "roles": list(a.roles),
                "disabled": a.disabled,
            }
            for a in found
        ]
        return JSONResponse({"accounts": rows}, headers=NO_STORE)

    return router
