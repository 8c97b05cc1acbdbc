"""The kiosk traffic generator: believable museum days plus the live feed's invalid mix.

Pure: no I/O and no clock. The caller passes the seed, the time window and `now`, so a run is
reproducible byte for byte. Every message carries the verdict the validator must reach on it
(`truth`), known by construction because an invalid message has exactly one defect. Where a
live message is both defective and out of hours, the defect is its truth: the validator checks
the fields (rules 5 to 11 of docs/validation.md) before the time (rules 12 to 15).
"""

from __future__ import annotations

import json
import math
import random
from bisect import bisect_right
from calendar import SATURDAY
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import accumulate
from typing import Any, TypeVar

from lmnh.events import RatingEvent, Reason, RequestEvent
from lmnh.museum import (
    CLOSES,
    KIOSK_REFERENCE,
    LONDON,
    OPENS,
    Reference,
    in_opening_hours,
    public_id_for_site,
)

Truth = RatingEvent | RequestEvent | Reason
T = TypeVar("T")

DEFAULT_INVALID_SHARE = 0.17
# The live feed's defects as shares of ALL messages, most common first; they sum to 0.17.
LIVE_FEED_DEFECTS: Mapping[Reason, float] = {
    Reason.INVALID_VAL: 0.055,
    Reason.INVALID_TYPE: 0.035,
    Reason.INVALID_SITE: 0.030,
    Reason.OUT_OF_HOURS: 0.017,
    Reason.MISSING_SITE: 0.010,
    Reason.MISSING_AT: 0.010,
    Reason.MISSING_VAL: 0.010,
    Reason.MISSING_TYPE: 0.003,
}
# The bad values the live feed has been seen to send.
BAD_VALS: tuple[object, ...] = (-3, -2, 5, 6, 7, 8, 9, "ERR", "INF", None)
BAD_TYPES: tuple[object, ...] = (-1, 2, 3, 4, "ERR", "INF", None)
BAD_SITES: tuple[str, ...] = (*(str(n) for n in range(6, 13)), "ERR", "INF", "None")
TYPE_WITHOUT_VAL_SHARE = 0.2  # of missing_val messages; the rest are ratings that lost `val`

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_QUARTER = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class ExhibitionProfile:
    """How much traffic one kiosk's exhibition draws and how its visitors tend to rate it."""

    site: str
    popularity: float  # relative share of visits
    rating_weights: Mapping[int, float]  # rating value -> relative frequency

    @property
    def public_id(self) -> str:
        return public_id_for_site(self.site)


EXHIBITIONS: tuple[ExhibitionProfile, ...] = (
    # Measureless to Man: the immersive cave, a crowd-pleaser.
    ExhibitionProfile("0", 1.3, {0: 4, 1: 6, 2: 15, 3: 35, 4: 40}),
    # Adaptation: insects down in the vault, fewer visitors, lukewarm.
    ExhibitionProfile("1", 0.6, {0: 10, 1: 18, 2: 32, 3: 26, 4: 14}),
    # The Crenshaw Collection: watercolours, the quietest room.
    ExhibitionProfile("2", 0.5, {0: 12, 1: 20, 2: 33, 3: 24, 4: 11}),
    # Cetacean Sensations: whales, popular and well liked.
    ExhibitionProfile("3", 1.2, {0: 5, 1: 8, 2: 20, 3: 35, 4: 32}),
    # Our Polluted World: hard-hitting, so divisive.
    ExhibitionProfile("4", 0.8, {0: 16, 1: 20, 2: 24, 3: 25, 4: 15}),
    # Thunder Lizards: dinosaurs, the busiest and best rated.
    ExhibitionProfile("5", 1.6, {0: 3, 1: 5, 2: 12, 3: 32, 4: 48}),
)


@dataclass(frozen=True, slots=True)
class TrafficMix:
    """The shape of a day's traffic and the share of each kind of message."""

    invalid_share: float = DEFAULT_INVALID_SHARE  # of all messages; defects scale with it
    request_share: float = 0.06  # of valid interactions
    emergency_share: float = 0.08  # of requests
    weekday_visits: int = 1500  # valid interactions on a full weekday
    weekend_factor: float = 1.6

    def __post_init__(self) -> None:
        for name in ("invalid_share", "request_share", "emergency_share"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be at least 0 and below 1")
        if self.weekday_visits < 0 or self.weekend_factor < 0:
            raise ValueError("weekday_visits and weekend_factor must not be negative")

    def defect_shares(self) -> dict[Reason, float]:
        """Each defect's share of all messages, the live feed's proportions scaled."""
        scale = self.invalid_share / DEFAULT_INVALID_SHARE
        return {reason: share * scale for reason, share in LIVE_FEED_DEFECTS.items()}


@dataclass(frozen=True, slots=True)
class SimulatedMessage:
    """One kiosk message as the feed carries it, with the verdict the validator must reach."""

    value: bytes
    truth: Truth


def busyness(hour: float) -> float:
    """Relative visits at a London hour of the day: quiet at opening, a lunchtime peak, then a
    tail to closing."""
    return 0.2 + math.exp(-(((hour - 13.0) / 2.6) ** 2))


class _Kiosks:
    """The random choices behind every message: which exhibition, which button, which defect."""

    def __init__(
        self,
        seed: int,
        mix: TrafficMix,
        reference: Reference,
        exhibitions: Sequence[ExhibitionProfile],
    ) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - simulated traffic, not security
        self._mix = mix
        self._reference = reference
        self._exhibitions = tuple(exhibitions)
        self._ratings = {
            profile.site: (
                tuple(profile.rating_weights),
                _cumulative(profile.rating_weights.values()),
            )
            for profile in exhibitions
        }
        self._open_on: dict[date, tuple[tuple[ExhibitionProfile, ...], list[float]]] = {}

    def random(self) -> float:
        return self._rng.random()

    def choose(self, items: Sequence[T], cum_weights: Sequence[float]) -> T:
        """`random.choices(items, cum_weights=...)[0]`, the same draw without its overhead."""
        point = self._rng.random() * cum_weights[-1]
        return items[bisect_right(cum_weights, point, 0, len(cum_weights) - 1)]

    def any_open(self, day: date) -> bool:
        return bool(self._open(day)[0])

    def _open(self, day: date) -> tuple[tuple[ExhibitionProfile, ...], list[float]]:
        """Exhibitions whose kiosks existed on `day`, so no message predates its exhibition."""
        if day not in self._open_on:
            starts = self._reference.exhibition_start
            profiles = tuple(
                p for p in self._exhibitions if p.public_id in starts and starts[p.public_id] <= day
            )
            self._open_on[day] = (profiles, _cumulative(p.popularity for p in profiles))
        return self._open_on[day]

    def message(self, defect: Reason | None, at: datetime) -> SimulatedMessage:
        """A visitor's button press at `at` (London time), spoiled by `defect` if one is given."""
        rng, mix = self._rng, self._mix
        exhibitions, popularity = self._open(at.date())
        if not exhibitions:
            raise ValueError(f"no exhibition was open on {at.date()}")
        profile = self.choose(exhibitions, popularity)
        request: int | None = None
        if rng.random() < mix.request_share:
            value, request = -1, int(rng.random() < mix.emergency_share)
        else:
            value = self.choose(*self._ratings[profile.site])
        fields: dict[str, object] = {"at": at.isoformat(), "site": profile.site, "val": value}
        if request is not None:
            fields["type"] = request
        if defect is not None:
            truth: Truth = defect
            self._spoil(fields, defect)
        elif not in_opening_hours(at):
            truth = Reason.OUT_OF_HOURS
        elif request is None:
            truth = RatingEvent(profile.public_id, value, at)
        else:
            truth = RequestEvent(profile.public_id, request, at)
        return SimulatedMessage(json.dumps(fields).encode(), truth)

    def _spoil(self, fields: dict[str, object], defect: Reason) -> None:
        """Give a valid message exactly one defect, the kind the live feed carries."""
        rng = self._rng
        if defect is Reason.MISSING_AT:
            del fields["at"]
        elif defect is Reason.MISSING_SITE:
            del fields["site"]
        elif defect is Reason.INVALID_SITE:
            fields["site"] = rng.choice(BAD_SITES)
        elif defect is Reason.INVALID_VAL:
            fields["val"] = rng.choice(BAD_VALS)
            fields.pop("type", None)
        elif defect is Reason.INVALID_TYPE:
            fields["val"] = -1
            fields["type"] = rng.choice(BAD_TYPES)
        elif defect is Reason.MISSING_TYPE:
            fields["val"] = -1
            fields.pop("type", None)
        elif defect is Reason.MISSING_VAL:
            del fields["val"]
            fields.pop("type", None)
            if rng.random() < TYPE_WITHOUT_VAL_SHARE:
                fields["type"] = rng.choice(sorted(self._reference.request_values))
        else:  # out_of_hours comes from the timestamp alone, never from a spoiled field
            raise ValueError(f"the simulator cannot spoil a message with {defect}")


class LiveFeed:
    """Messages stamped with the caller's `now`, as the kiosks send them."""

    def __init__(
        self,
        seed: int,
        mix: TrafficMix | None = None,
        reference: Reference = KIOSK_REFERENCE,
        exhibitions: Sequence[ExhibitionProfile] = EXHIBITIONS,
    ) -> None:
        mix = mix or TrafficMix()
        self._kiosks = _Kiosks(seed, mix, reference, exhibitions)
        shares = mix.defect_shares()
        self._defects: tuple[Reason | None, ...] = (None, *shares)
        self._cum_weights = _cumulative((1.0 - mix.invalid_share, *shares.values()))

    def message(self, now: datetime) -> SimulatedMessage:
        """The next message, sent at `now`. When the museum is closed every otherwise valid
        message is out of hours, as the pipeline will judge it; when it is open, an
        out-of-hours message is one delayed from last night."""
        at = _london(now)
        defect = self._kiosks.choose(self._defects, self._cum_weights)
        if defect is Reason.OUT_OF_HOURS:
            defect = None
            if in_opening_hours(at):
                at = self._last_night(at.date())
        return self._kiosks.message(defect, at)

    def _last_night(self, today: date) -> datetime:
        """A random instant of the closed hours that ended at this morning's opening."""
        closed = _micros(_local(today - timedelta(days=1), CLOSES)) + 1
        opens = _micros(_local(today, OPENS))
        return _instant(closed + int(self._kiosks.random() * (opens - closed)))


@dataclass(frozen=True, slots=True)
class _Stretch:
    """A piece of the window with even traffic: a quarter hour of opening time, or a closed
    night. Times are UTC microseconds, so DST days are neither stretched nor squeezed."""

    start: int
    end: int  # exclusive
    open: bool
    expected_visits: float  # valid interactions a realistic day has here (0 when closed)


def backfill(
    seed: int,
    start: datetime,
    end: datetime,
    now: datetime,
    count: int | None = None,
    mix: TrafficMix | None = None,
    reference: Reference = KIOSK_REFERENCE,
    exhibitions: Sequence[ExhibitionProfile] = EXHIBITIONS,
) -> Iterator[SimulatedMessage]:
    """`count` messages in time order over [start, end), following the daily shape, with the
    out-of-hours ones in the nights. The default count is realistic: about `weekday_visits`
    valid interactions per full weekday (more at weekends) plus the invalid share. Arguments
    are checked at once; messages are made lazily."""
    mix = mix or TrafficMix()
    start, end = _london(start), _london(end)
    if end > now:
        raise ValueError(f"the window ends at {end.isoformat()}, in the future")
    if start >= end:
        raise ValueError("the window must start before it ends")
    if count is not None and count < 0:
        raise ValueError("count must not be negative")
    kiosks = _Kiosks(seed, mix, reference, exhibitions)
    stretches = _stretches(start, end, mix, kiosks)
    weights = _stretch_weights(stretches, mix)
    if not weights or weights[-1][1] <= 0:
        raise ValueError("no exhibition was open during the window")
    if count is None:
        visits = sum(stretch.expected_visits for stretch in stretches)
        count = round(visits / (1.0 - mix.invalid_share))
    return _backfill_messages(kiosks, mix, weights, count)


def _backfill_messages(
    kiosks: _Kiosks, mix: TrafficMix, weights: list[tuple[_Stretch, float]], count: int
) -> Iterator[SimulatedMessage]:
    shares = mix.defect_shares()
    del shares[Reason.OUT_OF_HOURS]  # the nights make those
    defects: tuple[Reason | None, ...] = (None, *shares)
    defect_weights = _cumulative((1.0 - mix.invalid_share, *shares.values()))
    total = weights[-1][1]
    index = 0
    for uniform in _ascending_uniforms(kiosks, count):
        point = uniform * total
        while index < len(weights) - 1 and weights[index][1] <= point:
            index += 1
        stretch, below_next = weights[index]
        below = weights[index - 1][1] if index else 0.0
        fraction = (point - below) / (below_next - below)
        micros = stretch.start + int(fraction * (stretch.end - stretch.start))
        at = _instant(min(micros, stretch.end - 1))
        defect = kiosks.choose(defects, defect_weights) if stretch.open else None
        yield kiosks.message(defect, at)


def _stretch_weights(stretches: list[_Stretch], mix: TrafficMix) -> list[tuple[_Stretch, float]]:
    """Each stretch with its cumulative share of the messages: opening time gets the valid and
    daytime-invalid share by expected visits, the nights the out-of-hours share by length."""
    visits = sum(stretch.expected_visits for stretch in stretches)
    night = sum(stretch.end - stretch.start for stretch in stretches if not stretch.open)
    night_share = mix.defect_shares()[Reason.OUT_OF_HOURS] if visits else 1.0
    day_share = 1.0 - night_share if night else 1.0

    def share(stretch: _Stretch) -> float:
        if stretch.open:
            return day_share * stretch.expected_visits / visits if visits else 0.0
        return night_share * (stretch.end - stretch.start) / night

    kept = [(stretch, weight) for stretch in stretches if (weight := share(stretch)) > 0]
    running = _cumulative(weight for _, weight in kept)
    return [(stretch, total) for (stretch, _), total in zip(kept, running, strict=True)]


def _stretches(start: datetime, end: datetime, mix: TrafficMix, kiosks: _Kiosks) -> list[_Stretch]:
    """The window cut into even-traffic stretches, skipping days before any exhibition opened."""
    low, high = _micros(start), _micros(end)
    quarters = _opening_quarters()
    day_total = sum(busyness(hour) for hour in quarters)
    stretches: list[_Stretch] = []

    def add(begin: datetime, finish: datetime, is_open: bool, visits_when_whole: float) -> None:
        first, last = max(_micros(begin), low), min(_micros(finish), high)
        if first < last:
            visits = visits_when_whole * (last - first) / (_micros(finish) - _micros(begin))
            stretches.append(_Stretch(first, last, is_open, visits))

    day = start.date()
    while day <= end.date():
        if kiosks.any_open(day):
            factor = mix.weekend_factor if day.weekday() >= SATURDAY else 1.0
            opening = _local(day, OPENS)
            add(_local(day, time()), opening, False, 0.0)
            for number, hour in enumerate(quarters):
                begin = opening + number * _QUARTER
                # The last quarter ends a microsecond after 18:15:00, which is still open.
                last = number == len(quarters) - 1
                finish = begin + _QUARTER + (_MICROSECOND if last else timedelta())
                add(begin, finish, True, mix.weekday_visits * factor * busyness(hour) / day_total)
            closed = _local(day, CLOSES) + _MICROSECOND
            add(closed, _local(day + timedelta(days=1), time()), False, 0.0)
        day += timedelta(days=1)
    return stretches


def _opening_quarters() -> list[float]:
    """The mid-point hour of each quarter hour from opening to closing."""
    opens = OPENS.hour + OPENS.minute / 60
    closes = CLOSES.hour + CLOSES.minute / 60
    return [opens + (n + 0.5) / 4 for n in range(round((closes - opens) * 4))]


def _ascending_uniforms(kiosks: _Kiosks, count: int) -> Iterator[float]:
    """`count` sorted uniform draws in [0, 1), one at a time. The largest of k uniforms is
    U ** (1/k), so maxima peel off from the top: a backfill streams in time order with no
    list of all its timestamps."""
    top = 1.0
    for remaining in range(count, 0, -1):
        top *= (1.0 - kiosks.random()) ** (1.0 / remaining)
        yield 1.0 - top


class Tally:
    """Messages counted by their truth label. Fed from delivery reports, it says exactly what
    the broker acknowledged and what the pipeline will make of it."""

    __slots__ = ("_ratings", "_reference", "_rejected", "_requests")

    def __init__(self, reference: Reference = KIOSK_REFERENCE) -> None:
        self._reference = reference
        self._ratings: Counter[tuple[str, int]] = Counter()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._rejected: Counter[Reason] = Counter()

    def add(self, truth: Truth) -> None:
        if isinstance(truth, RatingEvent):
            self._ratings[truth.exhibition_public_id, truth.rating_value] += 1
        elif isinstance(truth, RequestEvent):
            self._requests[truth.exhibition_public_id, truth.request_value] += 1
        else:
            self._rejected[truth] += 1

    @property
    def valid(self) -> int:
        return self._ratings.total() + self._requests.total()

    @property
    def total(self) -> int:
        return self.valid + self._rejected.total()

    def summary(self) -> dict[str, object]:
        """Counts with every exhibition, button and generated reason present, zeros included."""
        exhibitions = sorted(self._reference.exhibition_start)

        def by_exhibition(counts: Counter[tuple[str, int]], values: frozenset[int]) -> object:
            return {e: {str(v): counts[e, v] for v in sorted(values)} for e in exhibitions}

        reasons = [*LIVE_FEED_DEFECTS, *(r for r in self._rejected if r not in LIVE_FEED_DEFECTS)]
        return {
            "valid": self.valid,
            "ratings": by_exhibition(self._ratings, self._reference.rating_values),
            "requests": by_exhibition(self._requests, self._reference.request_values),
            "rejected": {reason.value: self._rejected[reason] for reason in reasons},
        }


def report_counts(report: Mapping[str, Any]) -> dict[str, dict[Any, int]]:
    """A simulator report's counts, keyed for comparison with what a database holds:
    (public id, value) -> n for ratings and requests, reason code -> n; zeros left out."""

    def flat(by_exhibition: Mapping[str, Mapping[str, int]]) -> dict[Any, int]:
        return {
            (public_id, int(value)): n
            for public_id, values in by_exhibition.items()
            for value, n in values.items()
            if n
        }

    return {
        "ratings": flat(report["ratings"]),
        "requests": flat(report["requests"]),
        "rejected": {code: n for code, n in report["rejected"].items() if n},
    }


def _cumulative(weights: Iterable[float]) -> list[float]:
    return list(accumulate(weights))


def _london(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no UTC offset")
    return moment.astimezone(LONDON)


def _local(day: date, wall: time) -> datetime:
    return datetime.combine(day, wall, tzinfo=LONDON)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _instant(micros: int) -> datetime:
    return (_EPOCH + timedelta(microseconds=micros)).astimezone(LONDON)
