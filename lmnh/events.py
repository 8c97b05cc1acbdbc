"""Typed events: what a kiosk message becomes once validated, and why one is rejected."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes for rejected messages; the README lists an example of each."""

    EMPTY = "empty"
    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_AT = "missing_at"
    MISSING_SITE = "missing_site"
    MISSING_VAL = "missing_val"
    INVALID_SITE = "invalid_site"
    INVALID_VAL = "invalid_val"
    MISSING_TYPE = "missing_type"
    INVALID_TYPE = "invalid_type"
    INVALID_AT = "invalid_at"
    OUT_OF_HOURS = "out_of_hours"
    FUTURE_AT = "future_at"
    BEFORE_EXHIBITION_OPENED = "before_exhibition_opened"


@dataclass(frozen=True, slots=True)
class RatingEvent:
    """A visitor pressed a rating button (0 Terrible .. 4 Amazing)."""

    exhibition_public_id: str
    rating_value: int
    at: datetime


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """A visitor pressed the assistance (0) or emergency (1) button."""

    exhibition_public_id: str
    request_value: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message is invalid: a stable code plus a sentence naming the offending value."""

    code: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.detail}"


Event = RatingEvent | RequestEvent
Outcome = RatingEvent | RequestEvent | Rejection


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """A consumed record as the core sees it: its coordinates, its value as it arrived, and
    the broker's timestamp in milliseconds (None when the broker gave none)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int | None
