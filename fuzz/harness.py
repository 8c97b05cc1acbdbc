"""What must hold for any Kafka value whatsoever, from its bytes to the COPY line that stores it.

One function, `check`, shared by the fuzzer, the replay of its findings and the tests, so
that all of them judge an input alike. It does not import atheris: replaying needs no fuzzer.
Rule numbers are those of docs/validation.md and lmnh/validation.py (1 to 15, in the order the
validator checks them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lmnh.events import KafkaMessage, Outcome, RatingEvent, Reason, Rejection, RequestEvent
from lmnh.museum import KIOSK_REFERENCE, LONDON, Reference, in_opening_hours
from lmnh.store import copy_row
from lmnh.validation import validate

# The golden files (tests/data/messages) are judged at this instant; so is every fuzz input.
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
RECEIVED = NOW.isoformat()
TIMESTAMP_MS = int(NOW.timestamp() * 1000)
# The kiosk vocabularies with database keys, as the pipeline loads them (copy_row needs keys).
REFERENCE = Reference(
    exhibition_start=KIOSK_REFERENCE.exhibition_start,
    rating_values=KIOSK_REFERENCE.rating_values,
    request_values=KIOSK_REFERENCE.request_values,
    exhibition_ids={
        public_id: key
        for key, public_id in enumerate(sorted(KIOSK_REFERENCE.exhibition_start), start=1)
    },
    rating_ids={value: value + 1 for value in KIOSK_REFERENCE.rating_values},
    request_ids={value: value + 1 for value in KIOSK_REFERENCE.request_values},
)
# A reason quotes one value of at most 40 characters (an escaped one takes up to 6) or 200 of a
# parser's error: 400 is a generous bound.
MAX_DETAIL = 400
# Rules 13 to 15 (opening hours, at most 5 s in the future, not before the exhibition opened),
# restated here rather than imported from the validator; the museum's clock and hours are
# facts, shared by all.
_SKEW = timedelta(seconds=5)
_TABLE = {RatingEvent: 0, RequestEvent: 1, Rejection: 2}
_COLUMNS = (6, 6, 9)  # per table, as in lmnh.store.COPY_STATEMENTS
# PostgreSQL's timestamptz input refuses a UTC offset of 16 hours or more ("time zone
# displacement out of range"), though RFC 3339 allows up to 23:59.
_POSTGRES_OFFSETS = timedelta(hours=16)


class InvariantError(Exception):
    """An input broke an invariant: a finding. An exception of any other type is one too.

    `what` names the invariant and, for a rejection, its code: what tells findings apart.
    """

    def __init__(self, what: str, subject: object) -> None:
        super().__init__(f"{what}: {subject!r}")
        code = subject.code.value if isinstance(subject, Rejection) else None
        self.what = what if code is None else f"{what} ({code})"


def check(data: bytes) -> Outcome:
    """Validate `data` as bytes and as text, build its COPY line, and raise unless all is well.

    The text is decoded with `surrogateescape`, so every invalid byte becomes a lone surrogate:
    that is how text with surrogates (which `validate` also accepts) reaches the validator.
    """
    outcome = validate(data, REFERENCE, NOW)
    check_outcome(outcome, "bytes")
    check_copy_line(data, outcome)
    text = data.decode("utf-8", "surrogateescape")
    from_text = validate(text, REFERENCE, NOW)
    check_outcome(from_text, "text")
    if from_text != outcome and _is_utf8(text):  # only invalid bytes decode to surrogates
        raise InvariantError("bytes and the same text disagree", (outcome, from_text))
    return outcome


def check_outcome(outcome: object, given: str = "bytes") -> None:
    """A rejection's reason is storable as it is; an event's fields are in range (rule 9 for a
    rating's value, rule 11 for a request's, then `_check_when_and_where`). `given` (bytes or
    text) says which form of the value was validated, to tell findings apart."""
    if isinstance(outcome, Rejection):
        check_detail(outcome, given)
    elif isinstance(outcome, RatingEvent):
        _require(type(outcome.rating_value) is int, "rating value is not an int", outcome)
        _require(outcome.rating_value in REFERENCE.rating_values, "unknown rating", outcome)
        _check_when_and_where(outcome)
    elif isinstance(outcome, RequestEvent):
        _require(type(outcome.request_value) is int, "request value is not an int", outcome)
        _require(outcome.request_value in REFERENCE.request_values, "unknown request", outcome)
        _check_when_and_where(outcome)
    else:
        raise InvariantError("not an outcome", outcome)


def check_detail(rejection: Rejection, given: str = "bytes") -> None:
    """One line of valid UTF-8 without NUL, of bounded length, under a validator's code."""
    detail = rejection.detail
    _require(isinstance(rejection.code, Reason), "code is not a Reason", rejection)
    _require(rejection.code is not Reason.UNSTORABLE, "the store's code", rejection)
    _require(0 < len(detail) <= MAX_DETAIL, f"{given}: detail empty or too long", rejection)
    _require(detail.splitlines() == [detail], f"{given}: detail not one line", rejection)
    _require("\x00" not in detail, f"{given}: detail holds NUL", rejection)
    _require(_is_utf8(detail), f"{given}: detail not valid UTF-8", rejection)


def check_copy_line(data: bytes, outcome: Outcome) -> None:
    """The line `copy_row` writes is one COPY row of the right table, which psycopg2 can send
    and PostgreSQL read."""
    message = KafkaMessage("lmnh", 0, 0, data, TIMESTAMP_MS)
    table, line = copy_row(message, outcome, REFERENCE, RECEIVED)
    _require(table == _TABLE[type(outcome)], f"table {table}", outcome)
    _require(line.endswith("\n") and line.count("\n") == 1, "not one COPY line", line)
    _require(line.count("\t") == _COLUMNS[table] - 1, "wrong number of columns", line)
    _require("\x00" not in line, "COPY line holds NUL", line)
    _require(_is_utf8(line), "COPY line is not valid UTF-8", line)
    columns = line.split("\t")
    if isinstance(outcome, Rejection):
        _require(columns[0] == "\\\\x" + data.hex(), "raw bytes not stored losslessly", line)
        _require(columns[1] == outcome.code.value, "wrong reason code stored", line)
        named = columns[5] == "\\N" or columns[5] in REFERENCE.exhibition_start
        _require(named, "named_exhibition is not a known exhibition's public id", line)
    else:
        offset = datetime.fromisoformat(columns[2]).utcoffset()
        stored = offset is not None and abs(offset) < _POSTGRES_OFFSETS
        _require(stored, "event_at has an offset PostgreSQL refuses", line)


def _check_when_and_where(event: RatingEvent | RequestEvent) -> None:
    """Rule 8 (a known exhibition), rule 12 (an instant with its offset), then rules 13 to 15."""
    opened = REFERENCE.exhibition_start.get(event.exhibition_public_id)
    if opened is None:
        raise InvariantError("unknown exhibition", event)
    _require(event.at.utcoffset() is not None, "naive timestamp", event)
    _require(in_opening_hours(event.at), "out of hours", event)
    _require(event.at <= NOW + _SKEW, "in the future", event)
    _require(event.at.astimezone(LONDON).date() >= opened, "before its exhibition", event)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require(holds: bool, what: str, subject: object) -> None:
    if not holds:
        raise InvariantError(what, subject)
