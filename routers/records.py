"""Events given one by one (Kafka records, the elements of a JSON array body) as one NDJSON block.

The decoder (:func:`routers.decode.decode_ndjson`) reads one event per line. Producers hand over
events in other framings: a Kafka record per event, or an HTTP body holding a JSON array. This
module turns those into a block with exactly one line per event, without changing what any
event says, and keeps the exact bytes of every event that cannot be one line (for its dead
letter).

Example:
    >>> records = split_json_array(b'[{"a": 1},\\n {"a": [2, 3]}, "text"]')
    >>> records
    [b'{"a": 1}', b'{"a": [2, 3]}', b'"text"']
    >>> join_records(records)
    (b'{"a": 1}\\n{"a": [2, 3]}\\n"text"', {})
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

__all__ = [
    "NotAJsonArray",
    "TooManyElements",
    "join_records",
    "max_depth",
    "split_json_array",
    "split_lines",
]

_SPACE: Final[np.ndarray] = np.frombuffer(b" \t\r\n", dtype=np.uint8)
_SPACE_BYTES: Final[bytes] = b" \t\r\n"
#: The line that stands for a record which cannot be one line of JSON: certainly invalid JSON,
#: never blank (a blank line is skipped, not a dead letter), and one byte.
_INVALID_LINE: Final[bytes] = b"\x00"
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
#: Bytes that shape an array (besides quotes), and the depth step of each.
_STRUCTURE: Final[np.ndarray] = np.zeros(256, dtype=bool)
_STRUCTURE[list(b"[]{},")] = True
_STEP: Final[np.ndarray] = np.zeros(256, dtype=np.int64)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_OPEN: Final[np.ndarray] = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE: Final[np.ndarray] = np.frombuffer(b"]}", dtype=np.uint8)


class NotAJsonArray(ValueError):
    """The body is not framed as one JSON array (its elements cannot be told apart)."""


class TooManyElements(ValueError):
    """The array has more elements than allowed (found before any is sliced out)."""


def split_json_array(body: bytes, max_elements: int | None = None) -> list[bytes]:
    """The exact bytes of each element of a JSON array (surrounding whitespace removed).

    Only the framing is checked here: brackets, braces and string quotes must balance. What an
    element holds is the decoder's business, so one broken element (invalid JSON, invalid
    UTF-8, a raw control character in a string) is one dead letter, not a lost body. The scan is
    vectorized (a few numpy passes over the bytes), never a Python loop over characters.

    Raises:
        NotAJsonArray: the body does not start with ``[`` and end with its matching ``]``, or a
            string is not terminated.
        TooManyElements: more than ``max_elements`` elements.

    Example:
        >>> split_json_array(b' [ ] ')
        []
        >>> split_json_array(b'[{"s": "a,]\\\\"}"}, 1,]')
        [b'{"s": "a,]\\\\"}"}', b'1', b'']
        >>> split_json_array(b'[{"a": 1}')
        Traceback (most recent call last):
        ...
        routers.records.NotAJsonArray: the array is not closed: a ']' or '}' is missing
    """
    # Only the structural bytes matter: the quotes, then brackets and commas outside strings.
    # Working on their positions (a few per event) rather than on every byte keeps this to one
    # pass over the body plus small arrays.
    stripped = body.lstrip(_SPACE_BYTES)
    if not stripped.startswith(b"["):
        raise NotAJsonArray("the body does not start with '['")
    first = len(body) - len(stripped)
    last = len(body.rstrip(_SPACE_BYTES)) - 1
    arr = np.frombuffer(body, dtype=np.uint8)
    delimiters = _delimiters(arr, escapes=b"\\" in body)
    if len(delimiters) % 2:
        raise NotAJsonArray("a string is not terminated")
    marks = np.flatnonzero(_STRUCTURE[arr])
    # Outside strings: an even number of delimiters before it.
    marks = marks[np.searchsorted(delimiters, marks) % 2 == 0]
    steps = _STEP[arr[marks]]
    depth = np.cumsum(steps, dtype=np.int64)
    inner = (marks >= first) & (marks < last)
    early = marks[inner & (depth < 1)]
    if len(early):  # the array ended before the last byte
        raise NotAJsonArray(f"text follows the array's closing ']' at byte {early[0]}")
    if not len(marks) or marks[-1] != last or depth[-1] != 0 or arr[last] != ord("]"):
        raise NotAJsonArray("the array is not closed: a ']' or '}' is missing")
    commas = marks[inner & (steps == 0) & (depth == 1)]
    if max_elements is not None and len(commas) + 1 > max_elements:
        raise TooManyElements(f"{len(commas) + 1} events, at most {max_elements}")
    bounds = [first + 1, *(commas + 1).tolist()]
    ends = [*commas.tolist(), last]
    elements = [
        body[start:end].strip(_SPACE_BYTES) for start, end in zip(bounds, ends, strict=True)
    ]
    if len(elements) == 1 and not elements[0]:
        return []  # "[]"
    return elements


def max_depth(text: bytes) -> int:
    """How deep a JSON text nests (``{``/``[`` outside strings), vectorized.

    Example:
        >>> max_depth(b'{"a": [1, {"b": "[[[["}]}'), max_depth(b'"x"')
        (3, 0)
    """
    arr = np.frombuffer(text, dtype=np.uint8)
    outside = _outside(arr, _delimiters(arr))
    steps = (np.isin(arr, _OPEN) & outside).astype(np.int32) - (
        np.isin(arr, _CLOSE) & outside
    ).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def _delimiters(arr: np.ndarray, escapes: bool = True) -> np.ndarray:
    """Positions of the quotes that open or close a string: those not escaped by an odd run of
    backslashes before them (``escapes=False``: the text has no backslash at all)."""
    quotes = np.flatnonzero(arr == _QUOTE)
    if not len(quotes) or not escapes:
        return quotes
    index = np.arange(len(arr))
    last_plain = np.maximum.accumulate(np.where(arr == _BACKSLASH, -1, index))
    before = quotes - 1
    run = np.where(before >= 0, before - last_plain[np.maximum(before, 0)], 0)
    return quotes[run % 2 == 0]


def _outside(arr: np.ndarray, delimiters: np.ndarray) -> np.ndarray:
    """Which bytes are outside strings (the quotes themselves count as inside; after an
    unterminated string, everything is inside)."""
    if not len(delimiters):
        return np.ones(len(arr), dtype=bool)
    toggles = np.zeros(len(arr), dtype=np.int8)
    toggles[delimiters] = 1
    outside = np.cumsum(toggles) % 2 == 0
    outside[delimiters] = False
    return outside


def split_lines(body: bytes) -> list[bytes]:
    """The non-blank lines of an NDJSON body, as the decoder counts them (``\\n``-separated).

    Example:
        >>> split_lines(b'{"a": 1}\\n\\n  \\n{"a": 2}\\r\\n')
        [b'{"a": 1}', b'{"a": 2}\\r']
    """
    return [line for line in body.split(b"\n") if line.strip(_SPACE_BYTES)]


def join_records(values: Sequence[bytes | None]) -> tuple[bytes, dict[int, bytes]]:
    """Values joined by newlines, exactly one line per record, and the records that had to be
    replaced by an invalid line (line index -> exact bytes; ``b""`` for a tombstone).

    Checked in bulk on the joined bytes: as many newlines as separators, and no line empty or
    starting with whitespace. Only when that fails are the records holding a newline, and the
    empty, blank and ``None`` ones, looked at one by one:

    - a JSON object spread over lines (newlines between tokens, which JSON reads as whitespace)
      is one event: its ``\\n``/``\\r`` become spaces, which changes nothing it says (its
      exact bytes go to ``raw_lines`` too, for its dead letter should it be one);
    - anything else (a raw newline inside a string, which JSON forbids; not JSON; not an
      object; empty, blank or ``None``: not an event) becomes an invalid line, so it is a
      dead letter, and its exact bytes go to ``raw_lines``.

    Pass ``raw_lines`` on to :func:`routers.decode.decode_ndjson`.

    Example:
        >>> data, raw_lines = join_records([b'{"a": 1}', b'{\\n "a": 2\\n}', b'"x\\ny"', None])
        >>> data
        b'{"a": 1}\\n{  "a": 2 }\\n\\x00\\n\\x00'
        >>> raw_lines
        {1: b'{\\n "a": 2\\n}', 2: b'"x\\ny"', 3: b''}
    """
    try:
        data = b"\n".join(values)  # type: ignore[arg-type]
    except TypeError:  # a None value (tombstone)
        pass
    else:
        arr = np.frombuffer(data, dtype=np.uint8)
        starts = np.concatenate(([0], np.flatnonzero(arr == ord("\n")) + 1))
        one_per_record = len(starts) == len(values) and len(arr) and (starts < len(arr)).all()
        if one_per_record and not np.isin(arr[starts], _SPACE).any():
            return data, {}
    lines: list[bytes] = []
    raw_lines: dict[int, bytes] = {}
    for i, value in enumerate(values):
        if value and b"\n" not in value and value.strip():
            lines.append(value)  # one line already (maybe padded: the decoder decides)
            continue
        line = _one_line(value) if value else None
        if line is None:
            lines.append(_INVALID_LINE)
            raw_lines[i] = value or b""
        else:
            lines.append(line)
            raw_lines[i] = value or b""  # exact, should it be dead
    return b"\n".join(lines), raw_lines


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _one_line(value: bytes) -> bytes | None:
    """``value`` as one line if it is one JSON object (newlines only between tokens), else None.

    As strict as the decoder: UTF-8 only (``json.loads`` on bytes would also take UTF-16/32),
    no NaN or Infinity; raw control characters in strings are rejected by ``json`` itself.
    """
    try:
        parsed = json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError; nested deep
        return None
    if not isinstance(parsed, dict):
        return None  # a dead letter either way; this way it keeps its exact bytes
    return value.replace(b"\n", b" ").replace(b"\r", b" ")
