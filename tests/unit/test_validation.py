"""The kiosk message validator: golden messages, one file per edge case, and properties.

Each file under tests/data/messages is a Kafka value byte for byte. expected.csv says what
`validate` makes of it at NOW against the kiosk reference: `valid`, or the reason code plus a
piece of text that the reason's sentence must contain (the offending value, or what is wrong).

Whatever the input, a rejection's reason must be storable (one line of valid UTF-8, no NUL,
bounded), and so must the COPY line that stores the message: a reason quoting a lone surrogate
once stopped the whole feed.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmnh.events import KafkaMessage, Outcome, RatingEvent, Reason, Rejection, RequestEvent
from lmnh.museum import KIOSK_REFERENCE, LONDON, Reference
from lmnh.store import copy_row
from lmnh.validation import named_exhibition, validate, validate_message

MESSAGES = Path(__file__).parent.parent / "data" / "messages"
INDEX = MESSAGES / "expected.csv"
NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)  # the future_* files are dated around it
EXAMPLE_RATING = {"at": "2025-03-11T12:29:17.958630+00:00", "site": "5", "val": 3}
EXAMPLE_REQUEST = {"at": "2024-10-21T09:22:29.261334+01:00", "site": "3", "val": -1, "type": 0}
PROPERTY = settings(database=None)  # pure tests: no example database written to disk
# The kiosk reference with database keys, as the pipeline loads it: copy_row needs the keys.
STORED = Reference(
    exhibition_start=KIOSK_REFERENCE.exhibition_start,
    rating_values=KIOSK_REFERENCE.rating_values,
    request_values=KIOSK_REFERENCE.request_values,
    exhibition_ids={f"EXH_0{n}": 10 + n for n in range(6)},
    rating_ids={value: 20 + value for value in KIOSK_REFERENCE.rating_values},
    request_ids={value: 30 + value for value in KIOSK_REFERENCE.request_values},
)
# A reason quotes one value of at most 40 characters, each escaped in at most 6 if it must be.
MAX_DETAIL = 400


@dataclass(frozen=True)
class Golden:
    file: str
    code: str  # a Reason value, or "valid"
    detail_mentions: str

    @property
    def raw(self) -> bytes:
        return (MESSAGES / self.file).read_bytes()


def _load_index() -> list[Golden]:
    with INDEX.open(newline="", encoding="utf-8") as index:
        return [
            Golden(row["file"], row["code"], row["detail_mentions"])
            for row in csv.DictReader(index)
        ]


def _params(goldens: list[Golden]) -> list[Any]:
    return [pytest.param(golden, id=golden.file) for golden in goldens]


def _code(outcome: Outcome) -> str:
    return outcome.code.value if isinstance(outcome, Rejection) else "valid"


def _utf8_or_none(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


GOLDEN = _load_index()
VALID = [golden for golden in GOLDEN if golden.code == "valid"]
# Outcomes that do not depend on the clock, so validate_message (which reads it) must agree.
CLOCK_FREE = [
    golden for golden in GOLDEN if not golden.file.startswith(("future_", "order_future"))
]
DECODABLE = [golden for golden in GOLDEN if _utf8_or_none(golden.raw) is not None]


# --- the golden files --------------------------------------------------------------------------


def test_index_and_directory_agree() -> None:
    on_disk = {
        path.name for path in MESSAGES.iterdir() if not path.name.startswith(".") and path != INDEX
    }
    listed = [golden.file for golden in GOLDEN]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert set(listed) == on_disk


def test_index_covers_every_reason_and_names_what_each_sentence_must_mention() -> None:
    # UNSTORABLE is the store's code, for what PostgreSQL refused: the validator never gives it.
    validator_codes = {reason.value for reason in Reason if reason is not Reason.UNSTORABLE}
    assert {golden.code for golden in GOLDEN} == validator_codes | {"valid"}
    assert [g.file for g in GOLDEN if g.code != "valid" and not g.detail_mentions] == []


@pytest.mark.parametrize("golden", _params(GOLDEN))
def test_golden_message(golden: Golden) -> None:
    outcome = validate(golden.raw, KIOSK_REFERENCE, NOW)
    assert _code(outcome) == golden.code, str(outcome)
    _assert_well_formed(outcome, golden.raw)
    if isinstance(outcome, Rejection):
        assert golden.detail_mentions in outcome.detail
        assert str(outcome) == f"{golden.code}: {outcome.detail}"


@pytest.mark.parametrize("golden", _params(VALID))
def test_valid_golden_message_becomes_an_event_with_its_fields(golden: Golden) -> None:
    fields = json.loads(golden.raw)
    _assert_obeys_the_kiosk_rules(fields)
    assert validate(golden.raw, KIOSK_REFERENCE, NOW) == _expected_event(fields)


@pytest.mark.parametrize("golden", _params(DECODABLE))
def test_text_and_bytes_give_the_same_outcome(golden: Golden) -> None:
    text = golden.raw.decode("utf-8")
    assert validate(text, KIOSK_REFERENCE, NOW) == validate(golden.raw, KIOSK_REFERENCE, NOW)


def test_fraction_digits_beyond_microseconds_are_truncated() -> None:
    message = json.dumps({**EXAMPLE_RATING, "at": "2025-03-11T12:29:17.958630999+00:00"})
    event = validate(message, KIOSK_REFERENCE, NOW)
    assert isinstance(event, RatingEvent)
    assert event.at == datetime(2025, 3, 11, 12, 29, 17, 958630, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "why"),
    [
        ("2016-12-31T23:59:60Z", "is a leap second"),  # a real one, refused all the same
        ("2016-12-31t23:59:60z", "is a leap second"),
        ("2026-01-15T10:00:60.5+00:00", "is a leap second"),
        ("2026-01-15 10:00:00+00:00", "is not an RFC 3339 date-time"),  # the NOTE's space
        ("2026-01-15T10:00:00", "is not an RFC 3339 date-time"),
        ("2026-01-15T10:00:00+00", "is not an RFC 3339 date-time"),
        ("2026-01-15T10:00:00-24:00", "is not an RFC 3339 date-time"),
        ("2026-01-15T10:00:00.Z", "is not an RFC 3339 date-time"),
        ("2026-01-15T10:00:00,5Z", "is not an RFC 3339 date-time"),
        ("2026-01-15T10:00:00ZZ", "is not an RFC 3339 date-time"),
        ("2026-01-15T10:00:00\u0000Z", "is not an RFC 3339 date-time"),
        ("2026-04-31T10:00:00z", "is not a real date-time (day is out of range for month)"),
        ("2026-00-15T10:00:00Z", "is not a real date-time (month must be in 1..12)"),
        ("0001-01-01T00:00:30z", "is too close to year 1 or year 9999"),
    ],
)
def test_what_the_at_rule_refuses_and_why(at: str, why: str) -> None:
    outcome = validate(json.dumps({**EXAMPLE_RATING, "at": at}), KIOSK_REFERENCE, NOW)
    assert isinstance(outcome, Rejection)
    assert outcome.code is Reason.INVALID_AT
    assert outcome.detail.startswith(f"at {json.dumps(at)} {why}")


# --- the kept interface: validate_message ------------------------------------------------------


@pytest.mark.parametrize("golden", _params(CLOCK_FREE))
def test_validate_message_reports_the_code_first(golden: Golden) -> None:
    expected = validate(golden.raw, KIOSK_REFERENCE, NOW)
    inputs: list[object] = [golden.raw, bytearray(golden.raw), memoryview(golden.raw)]
    if (text := _utf8_or_none(golden.raw)) is not None:
        inputs.append(text)
    for message in inputs:
        ok, reason = validate_message(message)
        if golden.code == "valid":
            assert (ok, reason) == (True, "")
        else:
            assert (ok, reason) == (False, str(expected))
            assert reason.startswith(f"{golden.code}: ")


_RELEASED = memoryview(json.dumps(EXAMPLE_RATING).encode())
_RELEASED.release()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        pytest.param(None, "empty", id="None"),
        pytest.param(b"", "empty", id="empty-bytes"),
        pytest.param("", "empty", id="empty-str"),
        pytest.param(bytearray(), "empty", id="empty-bytearray"),
        pytest.param(memoryview(b""), "empty", id="empty-memoryview"),
        pytest.param(42, "invalid_encoding", id="int"),
        pytest.param(3.5, "invalid_encoding", id="float"),
        pytest.param(True, "invalid_encoding", id="bool"),
        pytest.param(EXAMPLE_RATING, "invalid_encoding", id="dict"),
        pytest.param([json.dumps(EXAMPLE_RATING)], "invalid_encoding", id="list"),
        pytest.param(object(), "invalid_encoding", id="object"),
        pytest.param(_RELEASED, "invalid_encoding", id="released-memoryview"),
        pytest.param("\ufeff" + json.dumps(EXAMPLE_RATING), "invalid_encoding", id="str-with-bom"),
        pytest.param("\ud800", "invalid_json", id="lone-surrogate-str"),
        pytest.param(json.dumps(EXAMPLE_RATING).encode(), "valid", id="bytes"),
        pytest.param(json.dumps(EXAMPLE_RATING), "valid", id="str"),
        pytest.param(bytearray(json.dumps(EXAMPLE_RATING).encode()), "valid", id="bytearray"),
        pytest.param(memoryview(json.dumps(EXAMPLE_RATING).encode()), "valid", id="memoryview"),
    ],
)
def test_validate_message_never_raises(message: object, code: str) -> None:
    ok, reason = validate_message(message)
    if code == "valid":
        assert (ok, reason) == (True, "")
    else:
        assert ok is False
        assert reason.startswith(f"{code}: ")


# --- the reference is data ---------------------------------------------------------------------

WITH_EXH_06 = Reference(
    exhibition_start={**KIOSK_REFERENCE.exhibition_start, "EXH_06": date(2024, 6, 1)},
    rating_values=frozenset(range(6)),
    request_values=KIOSK_REFERENCE.request_values,
)
ONLY_EXH_10 = Reference(
    exhibition_start={"EXH_10": date(2020, 1, 1)},
    rating_values=frozenset({0, 1}),
    request_values=frozenset({0, 1, 2}),
)


@pytest.mark.parametrize(
    ("reference", "changes", "code"),
    [
        (KIOSK_REFERENCE, {"site": "6"}, "invalid_site"),
        (KIOSK_REFERENCE, {"val": 5}, "invalid_val"),
        (WITH_EXH_06, {"site": "6"}, "valid"),
        (WITH_EXH_06, {"val": 5}, "valid"),
        (WITH_EXH_06, {"site": "6", "val": 5}, "valid"),
        (WITH_EXH_06, {"site": "06"}, "invalid_site"),
        (WITH_EXH_06, {"val": 6}, "invalid_val"),
        (WITH_EXH_06, {"site": "6", "at": "2024-05-31T12:00:00+01:00"}, "before_exhibition_opened"),
        (WITH_EXH_06, {"site": "6", "at": "2024-06-01T08:45:00+01:00"}, "valid"),
        (ONLY_EXH_10, {"site": "10", "val": 1}, "valid"),
        (ONLY_EXH_10, {"site": "5", "val": 1}, "invalid_site"),
        (ONLY_EXH_10, {"site": "10", "val": 2}, "invalid_val"),
        (ONLY_EXH_10, {"site": "10", "val": -1, "type": 2}, "valid"),
        (ONLY_EXH_10, {"site": "10", "val": -1, "type": 3}, "invalid_type"),
    ],
)
def test_validation_follows_the_reference(
    reference: Reference, changes: dict[str, Any], code: str
) -> None:
    fields = {**EXAMPLE_RATING, **changes}
    outcome = validate(json.dumps(fields), reference, NOW)
    assert _code(outcome) == code, str(outcome)
    if code == "valid":
        assert outcome == _expected_event(fields)


# --- properties --------------------------------------------------------------------------------


def _assert_well_formed(outcome: object, raw: bytes | str) -> None:
    """An outcome, whose reason (if any) and COPY line can be stored as they are: one line of
    valid UTF-8 without NUL, exactly what psycopg2 must be able to send."""
    assert isinstance(outcome, RatingEvent | RequestEvent | Rejection)
    if isinstance(outcome, Rejection):
        detail = outcome.detail
        assert isinstance(outcome.code, Reason)
        assert outcome.code is not Reason.UNSTORABLE
        assert str(outcome).startswith(f"{outcome.code.value}: ")
        assert 0 < len(detail) <= MAX_DETAIL
        assert detail.splitlines() == [detail]
        assert "\x00" not in detail
        detail.encode("utf-8")
    # A text's Kafka value is its encoding; surrogatepass keeps its lone surrogates as bytes.
    value = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    message = KafkaMessage("lmnh", 3, 7, value, 1_772_452_800_000)
    table, line = copy_row(message, outcome, STORED, NOW.isoformat())
    assert table == {RatingEvent: 0, RequestEvent: 1, Rejection: 2}[type(outcome)]
    assert line.endswith("\t3\t7\n") and line.count("\n") == 1
    line.encode("utf-8")


# Every character, lone surrogates (category Cs) included, with the ones that break storing,
# lines or parsers drawn often: NUL, controls, NEL, line and paragraph separators, the byte
# order mark, non-characters, surrogates at the edges of their ranges.
EDGE_CHARS = st.sampled_from(
    [
        *["\x00", "\x01", "\t", "\n", "\r", "\x1f", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"],
        *["\ufeff", "\ufffe", "\uffff", "\ufdd0", "\ufdef", "\U0001fffe", "\U0010ffff"],
        *["\ud800", "\udbff", "\udc00", "\udfff", "\\", '"'],
    ]
)
SURROGATES = st.characters(categories=["Cs"])
ANY_CHAR = st.characters(exclude_categories=()) | SURROGATES | EDGE_CHARS
ANY_TEXT = st.text(ANY_CHAR, max_size=300)


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_give_a_storable_outcome(raw: bytes) -> None:
    _assert_well_formed(validate(raw, KIOSK_REFERENCE, NOW), raw)


@PROPERTY
@given(ANY_TEXT)
def test_any_text_even_with_lone_surrogates_gives_a_storable_outcome(text: str) -> None:
    _assert_well_formed(validate(text, KIOSK_REFERENCE, NOW), text)


@PROPERTY
@given(st.binary(max_size=40), ANY_TEXT, st.binary(max_size=40))
def test_any_text_inside_a_message_gives_a_storable_outcome(
    before: bytes, text: str, after: bytes
) -> None:
    """Text with surrogates (as CESU-8 bytes) or any other character, between arbitrary bytes
    and inside a message's string, where a reason would quote it."""
    encoded = text.encode("utf-8", "surrogatepass")
    for raw in (before + encoded + after, b'{"at": "x", "site": "' + encoded + b'", "val": 3}'):
        _assert_well_formed(validate(raw, KIOSK_REFERENCE, NOW), raw)


KEYS = st.sampled_from(["at", "site", "val", "type", "AT", "Site", "extra"]) | st.text(
    ANY_CHAR, max_size=5
)
# Values from the live feed's error mix and the pitfalls of other implementations.
AWKWARD = (
    st.sampled_from([None, True, False, 0, 1, -1, 2, 5, 3.0, -1.0, 10**100, float("inf")])
    # "05", " 5", Arabic-Indic five, fullwidth five, superscript three: int() or isdigit() bait
    | st.sampled_from(["0", "3", "-1", "05", " 5", "\u0665", "\uff15", "\u00b3", "ERR", "INF"])
    | st.sampled_from(["None", "", "2025-03-11 12:29:17+00:00", "2025-03-11T12:29:17"])
    | st.sampled_from(["2025-07-15T07:50:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59"])
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(ANY_CHAR) | AWKWARD,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)


@PROPERTY
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=6))
def test_any_json_object_gives_a_consistent_outcome(fields: dict[str, Any]) -> None:
    # ASCII JSON: every lone surrogate, in a key or a value, becomes a \uXXXX escape. NaN and
    # Infinity come out as literals: invalid_json.
    text = json.dumps(fields)
    outcome = validate(text.encode(), KIOSK_REFERENCE, NOW)
    _assert_well_formed(outcome, text)
    assert validate(text, KIOSK_REFERENCE, NOW) == outcome
    # The same document with its characters as they are: text holding lone surrogates.
    raw_text = json.dumps(fields, ensure_ascii=False)
    assert validate(raw_text, KIOSK_REFERENCE, NOW) == outcome
    if not isinstance(outcome, Rejection):
        _assert_obeys_the_kiosk_rules(fields)
        assert outcome == _expected_event(fields)


@st.composite
def _messages_with_lone_surrogates(draw: st.DrawFn) -> tuple[str, str, set[str]]:
    """JSON text of a valid message in which the values of some fields carry a lone surrogate
    as a \\uXXXX escape, maybe with an extra key carrying one too, maybe given twice; plus
    the reason code the validator must give and the surrogates used."""
    fields: dict[str, Any] = dict(draw(st.sampled_from([EXAMPLE_RATING, EXAMPLE_REQUEST])))
    spoilt = draw(st.sets(st.sampled_from(sorted(fields)), min_size=1))
    used: set[str] = set()
    pairs: list[tuple[str, Any]] = []
    for key, value in fields.items():
        if key in spoilt:
            surrogate = draw(SURROGATES)
            used.add(surrogate)
            text = str(value)
            cut = draw(st.integers(0, len(text)))
            pairs.append((key, text[:cut] + surrogate + text[cut:]))
        else:
            pairs.append((key, value))
    extra = draw(st.integers(0, 2))  # an extra key with a surrogate: absent, once, twice
    if extra:
        surrogate = draw(SURROGATES)
        used.add(surrogate)
        pairs += [(draw(st.text(ANY_CHAR, max_size=3)) + surrogate, 1)] * extra
    pairs = draw(st.permutations(pairs))
    text = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
    # The rules run in docs/validation.md's order: duplicates (rule 3), then site (8), val (9),
    # type (11), at (12).
    first = next(key for key in ("site", "val", "type", "at") if key in spoilt)
    code = "invalid_json" if extra == 2 else f"invalid_{first}"
    return text, code, used


@PROPERTY
@given(_messages_with_lone_surrogates())
def test_lone_surrogate_escapes_in_any_field_or_key_give_storable_reasons(
    case: tuple[str, str, set[str]],
) -> None:
    text, code, used = case
    assert text.isascii()
    outcome = validate(text.encode(), KIOSK_REFERENCE, NOW)
    _assert_well_formed(outcome, text)
    assert _code(outcome) == code, str(outcome)
    assert isinstance(outcome, Rejection)
    # The reason still names the value: each surrogate written as its escape.
    assert any(f"\\u{ord(surrogate):04x}" in outcome.detail for surrogate in used)


@st.composite
def _mutated_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with some of its keys dropped, replaced, or added."""
    fields: dict[str, Any] = dict(draw(st.sampled_from([EXAMPLE_RATING, EXAMPLE_REQUEST])))
    for key in draw(st.lists(KEYS, max_size=4)):
        if draw(st.booleans()):
            fields.pop(key, None)
        else:
            fields[key] = draw(AWKWARD | JSON_VALUES)
    return fields


@PROPERTY
@given(_mutated_messages())
def test_mutated_messages_give_a_consistent_outcome(fields: dict[str, Any]) -> None:
    raw = json.dumps(fields).encode()
    outcome = validate(raw, KIOSK_REFERENCE, NOW)
    _assert_well_formed(outcome, raw)
    if not isinstance(outcome, Rejection):
        _assert_obeys_the_kiosk_rules(fields)
        assert outcome == _expected_event(fields)


@st.composite
def _valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message as the kiosks send it, dated in opening hours after its exhibition opened,
    with London's offset, or in UTC (`+00:00` or `Z`)."""
    site = draw(st.sampled_from("012345"))
    opened = KIOSK_REFERENCE.exhibition_start[f"EXH_0{site}"]
    day = draw(st.dates(min_value=opened, max_value=NOW.date() - timedelta(days=1)))
    clock = draw(st.times(min_value=time(8, 45), max_value=time(18, 15)))
    at = datetime.combine(day, clock, tzinfo=LONDON)
    in_utc = at.astimezone(UTC).isoformat()
    written = draw(st.sampled_from([at.isoformat(), in_utc, in_utc.replace("+00:00", "Z")]))
    fields: dict[str, Any] = {"at": written, "site": site}
    if draw(st.booleans()):
        fields.update(val=-1, type=draw(st.sampled_from([0, 1])))
    else:
        fields["val"] = draw(st.integers(min_value=0, max_value=4))
        if draw(st.booleans()):
            fields["type"] = None
    return fields


@PROPERTY
@given(_valid_messages())
def test_valid_message_fields_round_trip(fields: dict[str, Any]) -> None:
    event = validate(json.dumps(fields).encode(), KIOSK_REFERENCE, NOW)
    assert event == _expected_event(fields)
    assert not isinstance(event, Rejection)
    assert event.at.utcoffset() == _instant(fields["at"]).utcoffset()


@st.composite
def _rfc3339_messages(draw: st.DrawFn) -> tuple[dict[str, Any], datetime]:
    """A valid rating whose `at` is written in any form RFC 3339 section 5.6 allows ("T" or
    "t", "Z" or "z" or -00:00 or any offset within a day, a fraction of any length), and the
    instant it names."""
    site = draw(st.sampled_from("012345"))
    opened = KIOSK_REFERENCE.exhibition_start[f"EXH_0{site}"]
    day = draw(st.dates(min_value=opened, max_value=NOW.date() - timedelta(days=1)))
    clock = draw(st.times(min_value=time(8, 45), max_value=time(18, 15)))
    instant = datetime.combine(day, clock, tzinfo=LONDON)
    offset = timedelta(minutes=draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1)))
    written = instant.astimezone(timezone(offset))
    micro = f"{written.microsecond:06d}"
    fraction = draw(
        st.sampled_from(
            [
                "." + micro,
                "." + (micro.rstrip("0") or "0"),  # as few digits as it takes
                "." + micro + draw(st.text("0123456789", min_size=1, max_size=30)),  # truncated
            ]
            + ([""] if written.microsecond == 0 else [])
        )
    )
    if offset:
        hours, minutes = divmod(abs(offset) // timedelta(minutes=1), 60)
        zone = f"{'-' if offset < timedelta(0) else '+'}{hours:02d}:{minutes:02d}"
    else:
        zone = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00"]))
    at = f"{written:%Y-%m-%d}{draw(st.sampled_from('Tt'))}{written:%H:%M:%S}{fraction}{zone}"
    return {"at": at, "site": site, "val": draw(st.integers(0, 4))}, instant


@PROPERTY
@given(_rfc3339_messages())
def test_every_rfc3339_form_names_its_instant(case: tuple[dict[str, Any], datetime]) -> None:
    fields, instant = case
    event = validate(json.dumps(fields).encode(), KIOSK_REFERENCE, NOW)
    assert event == _expected_event(fields)
    assert isinstance(event, RatingEvent)
    assert event.at == instant
    assert event.at.utcoffset() == _instant(fields["at"]).utcoffset()


@PROPERTY
@given(_valid_messages(), st.data())
def test_a_digit_of_another_script_anywhere_in_at_is_refused(
    fields: dict[str, Any], data: st.DataObject
) -> None:
    at = fields["at"]
    where = data.draw(st.sampled_from([i for i, char in enumerate(at) if char in "0123456789"]))
    digit = data.draw(st.characters(categories=["Nd"]).filter(lambda char: not char.isascii()))
    spoilt = {**fields, "at": at[:where] + digit + at[where + 1 :]}
    outcome = validate(json.dumps(spoilt).encode(), KIOSK_REFERENCE, NOW)
    assert _code(outcome) == "invalid_at", str(outcome)


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))",
    re.ASCII,
)


def _instant(at: str) -> datetime:
    """What an accepted `at` must name, read field by field as RFC 3339 defines them (not with
    fromisoformat, which the validator uses): a fraction truncated to microseconds."""
    match = _RFC3339.fullmatch(at)
    assert match, at
    year, month, day, hour, minute, second = (int(field) for field in match.groups()[:6])
    fraction, sign, offset_hours, offset_minutes = match.groups()[6:]
    microsecond = int(((fraction or "") + "000000")[:6])
    offset = timedelta()
    if sign:
        offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
    zone = timezone(-offset if sign == "-" else offset)
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone)


def _expected_event(fields: dict[str, Any]) -> RatingEvent | RequestEvent:
    """The event a valid message must become, computed without the validator's helpers."""
    public_id = f"EXH_{int(fields['site']):02d}"
    at = _instant(fields["at"])
    if fields["val"] == -1:
        return RequestEvent(public_id, fields["type"], at)
    return RatingEvent(public_id, fields["val"], at)


def _assert_obeys_the_kiosk_rules(fields: dict[str, Any]) -> None:
    """The feed's rules restated plainly, to check what the validator accepts (`==` alone
    would let `true` pass for 1 and `3.0` for 3)."""
    assert fields["site"] in {"0", "1", "2", "3", "4", "5"}
    assert type(fields["val"]) is int
    assert -1 <= fields["val"] <= 4
    if fields["val"] == -1:
        assert type(fields["type"]) is int
        assert fields["type"] in {0, 1}
    else:
        assert fields.get("type") is None
    at = _instant(fields["at"])
    assert at.tzinfo is not None
    london = at.astimezone(LONDON)
    assert time(8, 45) <= london.time() <= time(18, 15)
    assert at <= NOW + timedelta(seconds=5)
    assert london.date() >= KIOSK_REFERENCE.exhibition_start[f"EXH_0{fields['site']}"]


@PROPERTY
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=6), st.binary(max_size=40))
def test_a_message_names_an_exhibition_only_by_a_known_sites_exact_text(
    fields: dict[str, Any], noise: bytes
) -> None:
    """What a rejected message is traced back to: the known site its object names, exactly as
    the validator reads `site`, or nothing; never an exception, whatever the bytes."""
    text = json.dumps(fields)
    site = fields.get("site")
    expected = KIOSK_REFERENCE.sites.get(site) if isinstance(site, str) else None
    assert named_exhibition(text.encode(), KIOSK_REFERENCE) == expected
    assert named_exhibition(text, KIOSK_REFERENCE) == expected
    assert named_exhibition(noise + text.encode(), KIOSK_REFERENCE) in (None, expected)
    assert named_exhibition(None, KIOSK_REFERENCE) is None
