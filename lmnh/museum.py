"""The museum's facts, in one place: its clock, its opening hours, and which exhibitions,
ratings and requests exist.

The vocabularies are data (the reference tables), not constants spread through the code: the
pipeline loads a `Reference` from PostgreSQL and reloads it when an unknown key appears.
`KIOSK_REFERENCE` mirrors the seed rows of `schema.sql` so that `validate_message` can be used
without a database; a test keeps the two equal. The validator, the simulator, the dashboard
and the benchmark all take the clock and the hours from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from time import monotonic
from zoneinfo import ZoneInfo

LONDON = ZoneInfo("Europe/London")
"""The museum's wall clock: opening hours, dashboards' days and hours are London time."""
OPENS = time(8, 45, 0)
CLOSES = time(18, 15, 0)  # inclusive: 18:15:00.000000 is open, 18:15:00.000001 is not


def in_opening_hours(at: datetime) -> bool:
    """True when `at`, on the London wall clock, is within 08:45:00-18:15:00 inclusive."""
    return OPENS <= at.astimezone(LONDON).time() <= CLOSES


def next_opening(at: datetime) -> datetime:
    """When the museum next opens after `at` (the same day's 08:45 before it, else the next
    day's: it opens every day)."""
    local = at.astimezone(LONDON)
    day = local.date() if local.time() < OPENS else local.date() + timedelta(days=1)
    return datetime.combine(day, OPENS, LONDON)


def closing_time(at: datetime) -> datetime:
    """When the museum closes on `at`'s London day."""
    return datetime.combine(at.astimezone(LONDON).date(), CLOSES, LONDON)


def clock_from(start: datetime) -> Callable[[], datetime]:
    """A clock that reads `start` now and runs on at real speed: how a demo or a test puts the
    dashboard inside opening hours whatever the hour (the museum is closed when tests run)."""
    began = monotonic()
    return lambda: start + timedelta(seconds=monotonic() - began)


@dataclass(frozen=True, slots=True)
class Reference:
    """Exhibition public id -> start date, and the valid rating and request values."""

    exhibition_start: Mapping[str, date]
    rating_values: frozenset[int]
    request_values: frozenset[int]
    # Database keys, filled when loaded from PostgreSQL; the validator does not need them.
    exhibition_ids: Mapping[str, int] = field(default_factory=dict)
    rating_ids: Mapping[int, int] = field(default_factory=dict)
    request_ids: Mapping[int, int] = field(default_factory=dict)
    # Kiosk site string -> public id, for the known exhibitions only: one dict look-up judges
    # a site ("05", " 5" and 5 are simply absent).
    sites: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sites = {str(int(public_id[4:])): public_id for public_id in self.exhibition_start}
        object.__setattr__(self, "sites", sites)


def public_id_for_site(site: str) -> str:
    """Site "N" is the exhibition whose public id is EXH_0N (two digits at least)."""
    return f"EXH_{int(site):02d}"


KIOSK_REFERENCE = Reference(
    exhibition_start={
        "EXH_00": date(2021, 8, 23),
        "EXH_01": date(2019, 7, 1),
        "EXH_02": date(2021, 3, 3),
        "EXH_03": date(2019, 7, 1),
        "EXH_04": date(2021, 5, 12),
        "EXH_05": date(2023, 2, 1),
    },
    rating_values=frozenset(range(5)),
    request_values=frozenset(range(2)),
)
