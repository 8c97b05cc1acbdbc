"""Kiosk message bytes -> a typed event or a rejection with a reason. Pure: no I/O, no logging,
no clock reads (the caller passes `now`), and it never raises, whatever it is given.

The rules are those of the kiosk feed, numbered 1 to 15 in the order they are checked (the
first that fails is the reason given); docs/validation.md lists them with that numbering, and
the choices the feed leaves open, which are made here.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from lmnh.events import Outcome, RatingEvent, Reason, Rejection, RequestEvent, storable_text
from lmnh.museum import CLOSES, KIOSK_REFERENCE, LONDON, OPENS, Reference

CLOCK_SKEW = timedelta(seconds=5)
REQUEST_MARKER = -1  # `val` of a request button press; its kind is in `type`

# RFC 3339 section 5.6's `date-time` (its NOTE allows "t" and "z"; a fraction has 1 or more
# digits), checked before parsing because `datetime.fromisoformat` accepts far more. Ranges
# that need no calendar are checked here; the day against its month by `datetime`. [0-9]
# rather than \d, which would match other scripts' digits.
_RFC3339 = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:SECOND"
    r"(?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_AT_SHAPE = re.compile(_RFC3339.replace("SECOND", "[0-5][0-9]"))
# RFC 3339 allows second 60 on the day of a leap second; it is refused, but by name.
_LEAP_SECOND = re.compile(_RFC3339.replace("SECOND", "60"))
_AT_EXAMPLE = "2025-03-11T12:29:17.958630+00:00"
_UTF8_BOM = b"\xef\xbb\xbf"
_SHOWN_CHARS = 40  # of a value quoted in a reason
_MESSAGE_CHARS = 200  # of any other text from outside (a parser's error, a type's name)


def validate_message(message: object) -> tuple[bool, str]:
    """The original design's interface: `(True, "")` or `(False, "code: sentence")`.

    Judges against the kiosk feed's reference data and the current time.
    """
    outcome = validate(message, KIOSK_REFERENCE, datetime.now(UTC))
    if isinstance(outcome, Rejection):
        return False, str(outcome)
    return True, ""


def validate(raw: object, reference: Reference, now: datetime) -> Outcome:
    """Turn one Kafka value (bytes or str) into a rating, a request or a rejection."""
    canonical = _CANONICAL.fullmatch(raw) if type(raw) is bytes else None
    parsed = _canonical_object(canonical) if canonical else _parse_json(raw)  # rules 1 to 3
    if isinstance(parsed, Rejection):
        return parsed
    # Rule 4: an object.
    if not isinstance(parsed, dict):
        return Rejection(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {_json_kind(parsed)}")

    # Rules 5 to 7: `at`, `site` and `val` are present, checked in that order.
    for key, reason in (
        ("at", Reason.MISSING_AT),
        ("site", Reason.MISSING_SITE),
        ("val", Reason.MISSING_VAL),
    ):
        if key not in parsed:
            return Rejection(reason, f"the message has no {key!r} key")

    # Rule 8: `site` is exactly the string of a known exhibition.
    site = parsed["site"]
    public_id = reference.sites.get(site) if type(site) is str else None
    if public_id is None:
        return Rejection(Reason.INVALID_SITE, f"site {_show(site)} is not a known exhibition")

    # Rule 9: `val` is the integer -1 (a request) or a known rating value.
    val = parsed["val"]
    # type() rather than isinstance(): a JSON `true` is a bool, and bool is an int subclass.
    if type(val) is not int or (val != REQUEST_MARKER and val not in reference.rating_values):
        return Rejection(
            Reason.INVALID_VAL,
            f"val {_show(val)} is not {REQUEST_MARKER} (a request) or a rating value "
            f"{_show_values(reference.rating_values)}",
        )

    # Rules 10 and 11: a request has a `type`, and it is a known request value; a rating's
    # `type` is absent or null (rule 11 too).
    kind = parsed.get("type")
    if val == REQUEST_MARKER:
        if "type" not in parsed:
            return Rejection(Reason.MISSING_TYPE, "a request (val -1) has no 'type' key")
        if type(kind) is not int or kind not in reference.request_values:
            return Rejection(
                Reason.INVALID_TYPE,
                f"type {_show(kind)} is not a request type "
                f"{_show_values(reference.request_values)}",
            )
        return _judge_time(parsed["at"], reference, now, public_id, kind, RequestEvent)
    if kind is not None:
        return Rejection(
            Reason.INVALID_TYPE, f"a rating (val {val}) cannot carry type {_show(kind)}"
        )

    return _judge_time(parsed["at"], reference, now, public_id, val, RatingEvent)


def _judge_time(
    raw_at: Any,
    reference: Reference,
    now: datetime,
    public_id: str,
    value: int,
    event: type[RatingEvent] | type[RequestEvent],
) -> Outcome:
    """Rules 12 to 15: the timestamp itself, opening hours, the future, the exhibition's start."""
    parsed = _parse_at(raw_at)  # rule 12
    if isinstance(parsed, str):
        return Rejection(Reason.INVALID_AT, f"at {_show(raw_at)} {parsed}")
    at, local = parsed
    if not OPENS <= local.time() <= CLOSES:  # rule 13, on the London wall clock
        return Rejection(
            Reason.OUT_OF_HOURS,
            f"at {_show(raw_at)} is {local.time().isoformat()} in London, outside"
            f" opening hours {OPENS:%H:%M:%S}-{CLOSES:%H:%M:%S}",
        )
    if at > now + CLOCK_SKEW:  # rule 14
        return Rejection(Reason.FUTURE_AT, f"at {_show(raw_at)} is in the future")
    opened: date = reference.exhibition_start[public_id]
    if local.date() < opened:  # rule 15, by the London date
        return Rejection(
            Reason.BEFORE_EXHIBITION_OPENED,
            f"at {_show(raw_at)} is before {public_id} opened on {opened.isoformat()}",
        )

    return event(public_id, value, at)


def named_exhibition(raw: object, reference: Reference) -> str | None:
    """The public id of the known exhibition whose site a message names, when it is a JSON
    object with a known `site`, whatever else is wrong with it; None otherwise. Never raises:
    it traces a rejected message back to the kiosk that sent it."""
    canonical = _CANONICAL.fullmatch(raw) if type(raw) is bytes else None
    parsed = _canonical_object(canonical) if canonical else _parse_json(raw)
    site = parsed.get("site") if isinstance(parsed, dict) else None
    return reference.sites.get(site) if isinstance(site, str) else None


def _parse_json(raw: object) -> Any:
    """Rules 1 to 3: a value that is not empty, strict UTF-8 (no BOM), one JSON document; or
    the rejection that says which of them failed."""
    if raw is None:
        return Rejection(Reason.EMPTY, "the message has no value")
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            data = bytes(raw)
        except ValueError:  # a released memoryview
            return Rejection(Reason.INVALID_ENCODING, "the message's buffer has been released")
        if not data:
            return Rejection(Reason.EMPTY, "the message is empty")
        if data.startswith(_UTF8_BOM):
            return Rejection(Reason.INVALID_ENCODING, "the message starts with a byte order mark")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            return Rejection(
                Reason.INVALID_ENCODING,
                f"byte 0x{data[error.start]:02x} at position {error.start} is not UTF-8",
            )
    elif isinstance(raw, str):
        text = raw
        if not text:
            return Rejection(Reason.EMPTY, "the message is empty")
        if text.startswith("\ufeff"):
            return Rejection(Reason.INVALID_ENCODING, "the message starts with a byte order mark")
    else:
        return Rejection(
            Reason.INVALID_ENCODING, f"expected bytes or text, got {_storable(type(raw).__name__)}"
        )
    try:
        return _DECODER.decode(text)
    except RecursionError:
        return Rejection(Reason.INVALID_JSON, "the JSON is nested too deeply")
    except ValueError as error:  # JSONDecodeError, and ints longer than Python will convert
        return Rejection(Reason.INVALID_JSON, _storable(_first_line(str(error))))


# The kiosks' own layout, byte for byte (json.dumps' separators, keys in this order, no
# escapes): such a message is read without the JSON parser, which is most of the cost of
# validating it. Each group admits only text that JSON reads as itself (a string without
# quotes or backslashes; an integer without leading zeros), so the object is the one the
# parser would return; anything else, however close, takes the parser's path.
_CANONICAL = re.compile(
    rb'\{"at": "([0-9A-Za-z:.+\-]{1,64})", "site": "([0-9]{1,6})",'
    rb' "val": (-?(?:0|[1-9][0-9]{0,8}))(?:, "type": (-?(?:0|[1-9][0-9]{0,8})|null))?\}'
)


def _canonical_object(match: re.Match[bytes]) -> dict[str, Any]:
    at, site, val, kind = match.groups()
    parsed: dict[str, Any] = {
        "at": at.decode("ascii"),
        "site": site.decode("ascii"),
        "val": int(val),
    }
    if kind is not None:
        parsed["type"] = None if kind == b"null" else int(kind)
    return parsed


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice makes a message ambiguous; `json` would silently keep the last."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_show(key)}")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads() with keyword arguments builds a new decoder on every call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant
)


def _parse_at(value: Any) -> tuple[datetime, datetime] | str:
    """Rule 12: the instant an RFC 3339 date-time names, as written and on the museum's clock;
    or, as the end of a reason's sentence, why `value` names none that can be stored."""
    if type(value) is not str or _AT_SHAPE.fullmatch(value) is None:
        if type(value) is str and _LEAP_SECOND.fullmatch(value):
            return "is a leap second (second 60), which Python's datetime cannot represent"
        return f"is not an RFC 3339 date-time like {_AT_EXAMPLE}"
    try:
        # Given the shape, fromisoformat reads it as RFC 3339 means (either separator, fraction
        # truncated to microseconds, -00:00 as UTC), but for a lower-case Z.
        at = datetime.fromisoformat(value)
    except ValueError as error:  # 2025-02-30, month 13, year 0; or a "z"
        if value[-1] == "z":  # checked only here, off the common path
            return _parse_at(value[:-1] + "Z")
        return f"is not a real date-time ({_storable(str(error))})"
    try:
        return at, at.astimezone(LONDON)
    except OverflowError:  # 0001-01-01T00:00:30Z is still in year 0 on London's clock
        return "is too close to year 1 or year 9999 to be read on London's clock"


def _show(value: Any) -> str:
    """The offending value as JSON, short enough for a log line, and storable: a lone surrogate
    (which a JSON escape like \\ud800 yields), NUL or line separator in it is escaped."""
    if type(value) is str and len(value) > _SHOWN_CHARS:
        value = value[:_SHOWN_CHARS]  # still cut below; spares encoding a megabyte to show 40
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        shown = type(value).__name__
    if len(shown) > _SHOWN_CHARS:
        shown = shown[: _SHOWN_CHARS - 3] + "..."
    return storable_text(shown)


def _storable(text: str) -> str:
    """Text from outside the validator (a parser's error, a type's name), storable like
    `_show`'s and as short whatever it escapes (the first cut only spares escaping a lot)."""
    return storable_text(text[:_MESSAGE_CHARS])[:_MESSAGE_CHARS]


def _show_values(values: frozenset[int]) -> str:
    return "(" + ", ".join(str(v) for v in sorted(values)) + ")"


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _first_line(message: str) -> str:
    return message.splitlines()[0] if message else "not valid JSON"
