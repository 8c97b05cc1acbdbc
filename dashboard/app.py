"""The web app: the pages (Exhibitions, Safety), their static files, one JSON endpoint per
chart, each answered by a server-side SQL aggregate over the reporting views, and the Safety
page's live "Now" (dashboard.live)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from psycopg2.extensions import cursor as Cursor
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard import live, queries
from dashboard.access import (
    AccessMiddleware,
    error_answer,
    home_page,
    route_template,
    staff_of,
    staff_routes,
)
from dashboard.api_schema import COMMON_ERRORS, NO_STORE, ChartBody, ErrorBody, MetaBody
from dashboard.feed import feed_routes
from dashboard.filters import RULES, FilterError, Filters, openapi_parameters, parse_filters
from dashboard.oidc import flow_cookie, oidc_routes
from dashboard.pool import (
    NOT_ANSWERING,
    REFUSED,
    SIZE,
    STATEMENT_TIMEOUT_S,
    ConnectionPool,
    Unavailable,
    ValueRefused,
)
from dashboard.sessions import Sessions
from lmnh.config import AccessSettings, DatabaseSettings
from lmnh.errors import FatalError, TransientError
from lmnh.metrics import RequestMetrics
from lmnh.museum import LONDON, closing_time, in_opening_hours, next_opening

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"exhibitions": STATIC / "exhibitions.html", "safety": STATIC / "safety.html"}
CHARTS: dict[str, Callable[[Cursor, Filters], list[queries.Row]]] = {
    "rating-over-time": queries.rating_over_time,
    "popularity": queries.popularity,
    "top-rated": queries.top_rated,
    "request-share": queries.request_share,
    "requests-by-time-of-day": queries.requests_by_time_of_day,
    "requests-by-floor": queries.requests_by_floor,
    "requests-by-exhibition": queries.requests_by_exhibition,
    "request-heatmap": queries.request_heatmap,
}
RETRY_SOON = {"Retry-After": "5"}
CHART_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The chart (see /api/meta's `charts`); any other name is a 404.",
    "schema": {"type": "string", "enum": sorted(CHARTS)},
}

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PageSettings:
    """The pages refresh every `refresh_seconds` unless their URL says otherwise, and call the
    data stale once the newest interaction is older than `stale_minutes`."""

    refresh_seconds: int = 30
    stale_minutes: int = 15


@dataclass(frozen=True, slots=True)
class Limits:
    """What one server may hold: database connections for the pages' reads (the live feed has
    one more), how long one of their queries may run, and live streams open at once."""

    pool_size: int = SIZE
    statement_timeout_s: int = STATEMENT_TIMEOUT_S
    max_streams: int = live.MAX_STREAMS


def create_app(
    database: DatabaseSettings,
    *,
    access: AccessSettings | None = None,
    pages: PageSettings | None = None,
    limits: Limits | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """The dashboard app on `database`: staff sign in as `access` says, the pages behave as
    `pages` says, within `limits` (each by default as its class). `clock` gives "now"
    (default: the real one): what today is, whether the museum is open, what "Now" shows.
    `app.state.listener.close()` ends the live streams."""
    limits = limits or Limits()
    access = access or AccessSettings()
    pages = pages or PageSettings()
    pool = ConnectionPool(
        database, limits.pool_size, statement_timeout_s=limits.statement_timeout_s
    )
    sessions = Sessions(
        pool,
        idle=timedelta(minutes=access.session_idle_minutes),
        lifetime=timedelta(hours=access.session_hours),
    )
    metrics = RequestMetrics("lmnh_dashboard")
    now = clock or (lambda: datetime.now(LONDON))
    listener = live.RequestListener(database, now)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            listener.close()
            pool.close()

    app = FastAPI(
        title="LMNH dashboards",
        description="Live kiosk feedback for the Exhibitions Manager and the Head of Security."
        " Every error answers with a JSON body whose `error` says what is wrong.",
        lifespan=lifespan,
        # Swagger UI would load its scripts from a CDN, which the pages' policy forbids: the
        # document itself is at /api/openapi.json, for signed-in staff.
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        # One schema per model: an error without `problems` must match the documented one.
        separate_input_output_schemas=False,
    )
    _wrap(app, metrics, sessions, access)
    app.state.listener = listener
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> RedirectResponse:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{home_page(staff_of(request).roles)}{query}")

    @app.get("/exhibitions", include_in_schema=False)
    def exhibitions_page() -> FileResponse:
        return FileResponse(PAGES["exhibitions"], headers=NO_STORE)

    @app.get("/safety", include_in_schema=False)
    def safety_page() -> FileResponse:
        return FileResponse(PAGES["safety"], headers=NO_STORE)

    @app.get("/api/meta", responses={200: {"model": MetaBody}, **COMMON_ERRORS})
    def meta() -> Response:
        """What the filters offer, how fresh the data is, and the server's page settings."""
        at = now()
        body: dict[str, Any] = {
            "refresh_seconds": pages.refresh_seconds,
            "stale_minutes": pages.stale_minutes,
            "today": at.astimezone(LONDON).date().isoformat(),
            "now": at.isoformat(),
            "museum": _museum(at),
            "charts": sorted(CHARTS),
        }
        with pool.cursor() as cur:
            body.update(queries.choices(cur))
            body["freshness"] = queries.freshness(cur)
        return JSONResponse(body, headers=NO_STORE)

    @app.get(
        "/api/charts/{name}",
        description=f"The rows of one chart under the filters in the query string. {RULES}",
        responses={
            200: {"model": ChartBody},
            400: {
                "model": ErrorBody,
                "description": "The filters cannot be read; `problems` lists every one.",
            },
            404: {"model": ErrorBody, "description": "No chart of that name."},
            **COMMON_ERRORS,
        },
        # Documented here rather than read by FastAPI, so that parse_filters alone judges them
        # (FastAPI would keep the last of a repeated value and ignore unknown names).
        openapi_extra={"parameters": [CHART_NAME, *openapi_parameters()]},
    )
    def chart(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in CHARTS:
            known = ", ".join(sorted(CHARTS))
            return error_answer(404, f"no chart {name!r}; charts: {known}")
        filters = parse_filters(request.query_params.multi_items(), now().astimezone(LONDON).date())
        with pool.cursor() as cur:
            rows = CHARTS[name](cur, filters)
        body = {"chart": name, "filters": filters.as_query(), "bucket": filters.bucket}
        return JSONResponse({**body, "rows": rows}, headers=NO_STORE)

    app.include_router(live.routes(listener, pool, now, sessions, max_streams=limits.max_streams))
    app.include_router(feed_routes(pool, now))
    app.include_router(staff_routes(pool, sessions, access))
    app.include_router(oidc_routes(access, sessions))

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={**NO_STORE, "Content-Type": content_type})

    @app.get("/healthz", include_in_schema=False)
    def health() -> Response:
        with pool.cursor() as cur:
            cur.execute("SELECT 1")
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    _answer_errors_in_json(app)
    return app


def _wrap(
    app: FastAPI, metrics: RequestMetrics, sessions: Sessions, access: AccessSettings
) -> None:
    """What every request passes through, outermost last."""
    if access.identity_provider is not None:
        app.add_middleware(SessionMiddleware, **flow_cookie())
    # The charting library is about 0.8 MB; compressed it loads fast on a wall screen's Wi-Fi.
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    app.add_middleware(
        AccessMiddleware, routes=app.routes, sessions=sessions, metrics_token=access.metrics_token
    )
    # Outermost, so that it times the whole answer, compression and refusals included.
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, routes=app.routes)


def _answer_errors_in_json(app: FastAPI) -> None:
    """Every error as the same JSON body, with the status that says whose fault it is."""

    @app.exception_handler(FilterError)
    def bad_filters(_request: Request, error: FilterError) -> Response:
        return error_answer(400, f"the filters cannot be read: {error}", problems=error.problems)

    @app.exception_handler(ValueRefused)
    def value_refused(_request: Request, error: ValueRefused) -> Response:
        log.warning("%s", error)  # parse_filters should have caught it: worth a look
        return error_answer(400, f"the filters cannot be used: {error}")

    @app.exception_handler(HTTPException)
    def http_error(request: Request, error: HTTPException) -> Response:
        """No route, or a method it does not take: the same JSON error body as the rest."""
        message = f"{request.method} {request.url.path}: {error.detail}"
        return error_answer(error.status_code, message, headers=error.headers)

    # A database's user, host, port and name are for the log, never for an answer.
    @app.exception_handler(Unavailable)
    def database_unavailable(_request: Request, error: Unavailable) -> Response:
        log.warning("%s", error.detail)
        return error_answer(503, str(error), headers=RETRY_SOON)

    @app.exception_handler(TransientError)
    def database_down(_request: Request, error: TransientError) -> Response:
        log.warning("%s", error)
        return error_answer(503, NOT_ANSWERING, headers=RETRY_SOON)

    @app.exception_handler(FatalError)
    def database_refused(_request: Request, error: FatalError) -> Response:
        log.error("%s", error)
        return error_answer(503, REFUSED, headers=RETRY_SOON)

    @app.exception_handler(Exception)
    def unexpected(request: Request, _exception: Exception) -> Response:
        # Starlette logs the traceback; the answer says nothing of the server's insides.
        return error_answer(500, f"{request.method} {request.url.path}: internal error")


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by the template of the route that takes it
    (/api/charts/{name}, /static/{path}: never the path asked for, nor its query), "unmatched"
    when none does."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics, routes: Sequence[BaseRoute]) -> None:
        self._app = app
        self._metrics = metrics
        self._routes = routes  # the app's own list: routes added later are in it too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        route = route_template(self._routes, scope)  # before routing rewrites the scope
        status = 500  # unless the app starts an answer: an exception becomes a 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_and_note)
        finally:
            seconds = time.perf_counter() - started
            self._metrics.observe(route, scope["method"], status, seconds)


def _museum(at: datetime) -> dict[str, Any]:
    is_open = in_opening_hours(at)
    return {
        "open": is_open,
        "opens_at": None if is_open else next_opening(at).isoformat(),
        "closes_at": closing_time(at).isoformat() if is_open else None,
    }
