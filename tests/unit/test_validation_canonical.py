"""The kiosks' own layout is read without the JSON parser (lmnh.validation._CANONICAL). That
shortcut must never change an outcome: whatever bytes it accepts, it must give the very object
the parser gives, with the same types in the same order."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmnh.validation import _CANONICAL, _canonical_object, _parse_json

# Near misses of each field: leading zeros, signs, floats, exponents, booleans, quotes,
# escapes, other scripts' digits, surrogates and NUL (as UTF-8 or raw bytes).
NUMBERS = st.one_of(
    st.from_regex(rb"\A-?[0-9]{1,12}\Z"),
    st.sampled_from(
        [b"null", b"true", b"false", b"1.0", b"1e3", b"-", b"00", b"-0", b"+1", b"0x1"]
    ),
    st.text().map(lambda text: text.encode("utf-8", "surrogatepass")),
)
TEXTS = st.one_of(
    st.text().map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
    st.from_regex(rb"\A[0-9A-Za-z:.+\-\"\\]{0,70}\Z"),
    st.just(b"2025-03-11T12:29:17.958630+00:00"),
)


def typed(value: Any) -> Any:
    """A parsed value with its types spelled out: 1 and True, 1 and 1.0 differ."""
    if isinstance(value, dict):
        return [(key, typed(item)) for key, item in value.items()]
    return (type(value).__name__, value)


@st.composite
def kiosk_like(draw: st.DrawFn) -> bytes:
    at, site = draw(TEXTS), draw(st.one_of(st.from_regex(rb"\A[0-9]{0,8}\Z"), TEXTS))
    message = b'{"at": "' + at + b'", "site": "' + site + b'", "val": ' + draw(NUMBERS)
    if draw(st.booleans()):
        message += b', "type": ' + draw(NUMBERS)
    return message + b"}"


@settings(max_examples=3000)
@given(st.one_of(kiosk_like(), st.binary()))
@example(b'{"at": "2025-03-11T12:29:17.958630+00:00", "site": "5", "val": 3}')
@example(b'{"at": "2024-10-21T09:22:29.261334+01:00", "site": "3", "val": -1, "type": 0}')
@example(b'{"at": "x", "site": "007", "val": -0, "type": null}')
def test_the_shortcut_gives_what_the_parser_gives(raw: bytes) -> None:
    match = _CANONICAL.fullmatch(raw)
    if match is not None:
        assert typed(_canonical_object(match)) == typed(_parse_json(raw))


def test_the_shortcut_takes_the_kiosks_messages_and_leaves_the_rest() -> None:
    rating = {"at": "2025-03-11T12:29:17.958630+00:00", "site": "5", "val": 3}
    request = {"at": "2024-10-21T09:22:29.261334+01:00", "site": "3", "val": -1, "type": 0}
    for message in (rating, request):
        assert _CANONICAL.fullmatch(json.dumps(message).encode())
    for near_miss in (
        b'{"at": "2025-03-11T12:29:17Z", "site": "5", "val": 03}',  # not JSON
        b'{"at": "2025-03-11T12:29:17Z", "site": "5", "val": 3, "val": 4}',  # duplicate key
        b'{"at": "2025-03-11T12:29:17Z", "site": "5", "val": true}',  # a boolean
        b'{"at": "2025-03-11T12:29:17Z", "site": "\\u0035", "val": 3}',  # an escape
        b'{"site": "5", "at": "2025-03-11T12:29:17Z", "val": 3}',  # another order
        b'{"at": "2025-03-11T12:29:17Z", "site": "5", "val": 3} ',  # trailing space
    ):
        assert _CANONICAL.fullmatch(near_miss) is None, near_miss
