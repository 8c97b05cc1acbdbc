"""Typed events: what a kiosk message becomes once validated, and why one is rejected."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes for rejected messages; docs/validation.md lists an example of each."""

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
    # Valid or not, PostgreSQL refused to store it as such: kept raw with the server's error.
    UNSTORABLE = "unstorable"


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


# What PostgreSQL's text cannot hold (NUL; lone surrogates, which no UTF-8 encoder accepts) or
# what would break a one-line reason (line and paragraph separators, other control characters).
_UNSTORABLE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_BYTE_MAX = 0xFF  # the largest code a two-digit \xNN escape can hold


def storable_text(text: str) -> str:
    """`text` as one line of valid UTF-8 without NUL: every character that is not is written
    as its escape (`\\ud800`, `\\x00`, `\\n`), so that nothing derived from a message can stop
    its own storing."""
    return _UNSTORABLE_CHARS.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= _BYTE_MAX else f"\\u{code:04x}"
