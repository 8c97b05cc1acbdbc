"""The JSON bodies of the API, as its OpenAPI document describes them.

Documentation only: the endpoints build plain dicts, so no answer pays for validation, and the
fuzzing test (tests/integration/test_dashboard_fuzz.py) checks that every answer matches.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx and 503: what is wrong, for the page to show."""

    error: str = Field(description="What is wrong, in one sentence.")
    problems: list[str] = Field(
        default=[], description="With a 400 for filters: every filter that cannot be read."
    )


class Exhibition(BaseModel):
    public_id: str
    exhibition_name: str
    floor_name: str


class RequestType(BaseModel):
    request_value: int
    request_description: str


class RatingValue(BaseModel):
    rating_value: int
    rating_description: str


class Freshness(BaseModel):
    """When the newest interaction happened and when the pipeline last stored a batch."""

    latest_interaction_at: datetime | None
    latest_rating_at: datetime | None
    latest_request_at: datetime | None
    last_loaded_at: datetime | None
    queried_at: datetime | None


class Museum(BaseModel):
    """Whether the museum is open now: outside its hours, quiet kiosks are normal."""

    open: bool
    opens_at: datetime | None = Field(description="When it next opens; null while open.")
    closes_at: datetime | None = Field(description="When it closes today; null while closed.")


class MetaBody(BaseModel):
    """What the filters offer, how fresh the data is, and the server's page settings."""

    refresh_seconds: int
    stale_minutes: int
    today: date = Field(description="Today's date in London.")
    now: datetime = Field(description="The server's clock: pages measure ages against it.")
    museum: Museum
    charts: list[str]
    exhibitions: list[Exhibition]
    floors: list[str] = Field(description="Bottom to top.")
    request_types: list[RequestType]
    ratings: list[RatingValue]
    freshness: Freshness


class ChartBody(BaseModel):
    """One chart's rows, with the filters as read (defaults filled in) in their URL form."""

    chart: str
    filters: dict[str, str | list[str]]
    bucket: Literal["day", "week", "month"] = Field(
        description="The step of rating-over-time for this date range."
    )
    rows: list[dict[str, Any]]


class LiveRequest(BaseModel):
    """One stored assistance or emergency request, as the Now panel lists it."""

    id: int = Field(description="request_interaction_id: Server-Sent Events' id.")
    event_at: datetime = Field(description="When the visitor pressed the button.")
    london_time: str = Field(description="HH:MM:SS on the museum's clock.")
    london_date: date
    public_id: str
    exhibition_name: str
    floor_name: str
    request_value: int = Field(description="0 assistance, 1 emergency.")
    request_description: str


class NowBody(BaseModel):
    """Today's emergencies and the last hour's assistance requests, newest first."""

    now: datetime = Field(description="The server's clock.")
    today: date = Field(description="The London day whose emergencies are listed.")
    recent_minutes: int = Field(description="How far back assistance requests are listed.")
    requests: list[LiveRequest]
    truncated: bool = Field(description="More matched than are listed.")


# Never cache data: a wall screen must see what the database holds now.
NO_STORE = {"Cache-Control": "no-store"}
# What every staff endpoint may answer besides its own: the sign-in and role checks run
# before it (dashboard.access), and the database may be away.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No signed-in session: sign in at /signin."},
    403: {
        "model": ErrorBody,
        "description": "Not for the signed-in member of staff's roles, or a POST without the"
        " session's X-CSRF-Token.",
    },
    503: {"model": ErrorBody, "description": "The database is down, busy or refusing us."},
}


class MeBody(BaseModel):
    """The signed-in member of staff."""

    username: str
    name: str = Field(description="As colleagues see it, e.g. on an incident taken.")
    roles: list[Literal["exhibitions", "security", "operations", "admin"]]
    csrf_token: str = Field(description="Send as X-CSRF-Token with every POST.")
    home: str | None = Field(description="The page this person lands on after signing in.")


class AccountBody(BaseModel):
    username: str
    name: str
    roles: list[Literal["exhibitions", "security", "operations", "admin"]]
    disabled: bool


class AccountsBody(BaseModel):
    accounts: list[AccountBody]
