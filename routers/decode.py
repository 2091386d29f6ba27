"""Bulk decoding of newline-delimited JSON into an Arrow batch, bad lines into dead letters.

The fast path is one ``pyarrow.json.read_json`` call over the whole block. Only when Arrow rejects
the block does the slow path run: Arrow's error names the failing row, so the block is re-read in
contiguous pieces around each bad line (about two reads per bad line, never one per good line).

Every non-blank line ends in exactly one of the two outputs: ``good.num_rows + dead.num_rows ==
lines``. Blank (whitespace-only) lines are not events and are skipped.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from routers.contract import (
    SchemaContract,
    cast_rows,
    combined,
    concat_conformed,
    with_items,
)
from routers.records import max_depth
from routers.schema import TIME_TYPE, EventSchema

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "DecodeHints",
    "Decoded",
    "decode_arrow",
    "decode_ndjson",
    "new_contract",
    "normalize_time",
    "row_json",
]

#: Columns of a dead-letter batch. ``line`` is the 0-based index among the block's non-blank lines.
DEAD_LETTER_SCHEMA: Final[pa.Schema] = pa.schema(
    [("raw", pa.binary()), ("reason", pa.string()), ("line", pa.int64())]
)
# Arrow reads the block as one piece so that an error's row number is exact (1 GiB is a cap, not
# an allocation: Arrow sizes its buffers to the data).
_WHOLE_BLOCK: Final[int] = 1 << 30
_ROW = re.compile(r"in row (\d+)")
_TYPE_CHANGE = re.compile(r"Column\(([^)]*)\) changed from (\w+) to (\w+)")
#: Milliseconds per unit (a fraction for units below a millisecond). The order matters: an
#: epoch number in the i-th unit has a magnitude below the i-th of :data:`_AUTO_LIMITS`.
_MS_PER_UNIT: Final[dict[str, float]] = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
#: ``time_unit: auto``: an epoch number whose absolute value is below the i-th limit (and not
#: below the one before) is in the i-th unit of :data:`_MS_PER_UNIT`; from the last on, in ns.
_AUTO_LIMITS: Final[np.ndarray] = np.array([1e11, 1e14, 1e17])
#: Placeholder time of rows whose time is unusable (they are dead letters, dropped afterwards).
_NO_TIME: Final[int] = 0
_JSON_NUMBER: Final[str] = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_JSON_NUMBER_FULL: Final[str] = rf"^{_JSON_NUMBER}$"
_BOM: Final[bytes] = b"\xef\xbb\xbf"
_WHITESPACE_BYTES: Final[np.ndarray] = np.frombuffer(b" \t\r\n", dtype=np.uint8)
#: Piece sizes once a block needs recovery: a piece halves after a failure and doubles after a
#: clean read, so dense errors cost small re-reads and sparse ones few Arrow calls (~30 us each).
_RECOVERY_MIN_LINES: Final[int] = 32
#: Below this many lines, per-line Python work (slicing, joining) beats a pass over the block.
_FEW_LINES: Final[int] = 64
_RECOVERY_MAX_LINES: Final[int] = 4096
#: Deepest nesting an event may have (``{``/``[`` outside strings); deeper is ``too_deep``.
#: Telemetry nests a few levels; Arrow's reader crashes the process (stack overflow) near
#: 10,000 levels and Python's json raises near 1,000, so a hostile line never reaches them.
MAX_DEPTH: Final[int] = 64
# Bytes kept to count a line's openers: anything else is deleted (bytes.translate, C speed).
_OPENERS_AND_NEWLINES: Final[bytes] = bytes(b for b in range(256) if b not in b"[{\n")


@dataclass(frozen=True)
class Decoded:
    """Result of :func:`decode_ndjson`.

    Attributes:
        good: decoded events; role columns typed (strings, ``timestamp[ms, UTC]``), payload as is.
        dead: dead letters with :data:`DEAD_LETTER_SCHEMA`.
        good_lines: for each good row, its index among the block's non-blank lines (int64), so a
            source can map rows back to positions such as Kafka offsets.
        lines: number of non-blank lines in the block.
    """

    good: pa.RecordBatch
    dead: pa.RecordBatch
    good_lines: np.ndarray
    lines: int


class _Lines:
    """Byte ranges of the non-blank lines of a block, and each one's index in the whole block.

    Computed with numpy in one pass. A subset (:meth:`without`) blanks the other lines in a copy
    of the bytes: Arrow skips blank lines, so its row numbers still count this subset's lines.
    """

    def __init__(self, data: bytes, newlines: np.ndarray | None = None) -> None:
        """``newlines``: the positions of ``data``'s newline bytes, when known already."""
        self.data: bytes | bytearray = data
        arr = np.frombuffer(data, dtype=np.uint8)
        if newlines is None:
            newlines = np.flatnonzero(arr == ord("\n"))
        starts = np.concatenate(([0], newlines + 1))
        ends = np.concatenate((newlines, [len(arr)]))
        # Only a line that is empty or starts with whitespace can be blank; those are rare, so
        # they alone are checked one by one.
        first = arr[np.minimum(starts, max(len(arr) - 1, 0))] if len(arr) else starts
        maybe = np.flatnonzero((ends == starts) | np.isin(first, _WHITESPACE_BYTES))
        keep = np.ones(len(starts), dtype=bool)
        for i in maybe.tolist():
            keep[i] = bool(data[starts[i] : ends[i]].strip())
        self.starts = starts[keep]
        self.ends = ends[keep]
        self.index = np.arange(len(self.starts), dtype=np.int64)
        self.buffer = pa.py_buffer(data)
        self.owned = False  # True once the bytes are a private copy that may be changed in place

    def __len__(self) -> int:
        return len(self.starts)

    def span(self, first: int, stop: int) -> pa.Buffer:
        """Zero-copy bytes of lines ``first`` to ``stop - 1``."""
        begin = int(self.starts[first])
        return self.buffer.slice(begin, int(self.ends[stop - 1]) - begin)

    def shaped(self) -> bool:
        """Whether every line is ``{...}`` (a CRLF end allowed), vectorized: a block with a
        truncated or garbage line (the usual corruption) would fail a whole read."""
        if not len(self):
            return True
        arr = np.frombuffer(self.data, dtype=np.uint8)
        last = arr[self.ends - 1]
        crlf = last == ord("\r")
        if crlf.any():
            last = np.where(crlf, arr[np.maximum(self.ends - 2, self.starts)], last)
        return bool((arr[self.starts] == ord("{")).all() and (last == ord("}")).all())

    def misshapen(self) -> list[tuple[int, str]]:
        """Positions (in this set) of lines that cannot be a JSON object, with their reason.

        Vectorized: a line whose first byte is not ``{`` or last byte not ``}`` is a candidate
        (truncated or garbage lines, the usual corruption); only those few are looked at one by
        one, to confirm and tell ``invalid_json`` from ``not_an_object``.
        """
        if not len(self):
            return []
        arr = np.frombuffer(self.data, dtype=np.uint8)
        odd = (arr[self.starts] != ord("{")) | (arr[self.ends - 1] != ord("}"))
        found = []
        for i in np.flatnonzero(odd).tolist():
            text = self.data[self.starts[i] : self.ends[i]].strip()
            if text.startswith(b"{") and text.endswith(b"}"):
                continue  # only padded with whitespace; Arrow decides
            try:
                json.loads(text)
                found.append((i, "not_an_object"))
            except ValueError:
                found.append((i, "invalid_json"))
        return found

    def by_time_kind(self, time_column: str) -> list[_Lines]:
        """This set split into lines whose time is a JSON string and the others, if both exist.

        Arrow infers one type per column per read, so ISO strings and epoch numbers in one block
        are read as two groups. One vectorized substring match over a zero-copy view of the lines.
        """
        if not len(self):
            return [self]
        view = _line_view(self.buffer, np.append(self.starts, self.ends[-1]))
        # Lines are consecutive in the view; a blanked line between two only pads the earlier one.
        pattern = re.escape(json.dumps(time_column)) + r'\s*:\s*"'
        quoted = pc.match_substring_regex(view, pattern).to_numpy(zero_copy_only=False)
        if quoted.all() or not quoted.any():
            return [self]
        # The smaller group first: it may be compacted out of bytes the larger one then blanks.
        small, large = sorted([np.flatnonzero(quoted), np.flatnonzero(~quoted)], key=len)
        return [self.without(large), self.without(small, in_place=True)]

    def without(self, drop: np.ndarray | list[int], in_place: bool = False) -> _Lines:
        """This set less the lines at positions ``drop``: a few blanked out (Arrow skips blank
        lines), else the rest gathered into a new block.

        Args:
            drop: positions in this set.
            in_place: blank this set's own bytes (when they are a private copy) instead of a new
                copy; this set must not be used afterwards.
        """
        drop = np.asarray(drop, dtype=np.int64)
        keep = np.ones(len(self), dtype=bool)
        keep[drop] = False
        if len(drop) > _FEW_LINES or keep.sum() <= _FEW_LINES:
            return self._compact(np.flatnonzero(keep))
        data = self.data if in_place and self.owned else bytearray(self.data)
        arr = np.frombuffer(data, dtype=np.uint8)
        for i in drop.tolist():
            arr[self.starts[i] : self.ends[i]] = ord(" ")
        subset = object.__new__(_Lines)
        subset.data = data
        subset.buffer = pa.py_buffer(data)
        subset.starts, subset.ends = self.starts[keep], self.ends[keep]
        subset.index = self.index[keep]
        subset.owned = True
        return subset

    def _compact(self, keep: np.ndarray) -> _Lines:
        """Only the lines at positions ``keep``, gathered into a new block by one Arrow ``take``
        (blanking many lines instead cost a pass over every byte, and Arrow another over the
        blanks: a block with 1% ISO times decoded at half the speed)."""
        subset = object.__new__(_Lines)
        subset.index = self.index[keep]
        subset.owned = False
        if not len(keep):
            subset.data, subset.buffer = b"", pa.py_buffer(b"")
            subset.starts = subset.ends = np.empty(0, np.int64)
            return subset
        # Element i of the view is line i, its newline and any blank lines after it: the
        # gathered elements are the kept lines, each on a line of its own, in order.
        view = _line_view(self.buffer, np.append(self.starts, self.ends[-1]))
        gathered = pc.take(view, pa.array(keep))
        offsets = np.frombuffer(gathered.buffers()[1], dtype=np.int64)[: len(keep) + 1]
        first, last = int(offsets[0]), int(offsets[-1])
        subset.data = gathered.buffers()[2].slice(first, last - first).to_pybytes()
        subset.buffer = pa.py_buffer(subset.data)
        subset.starts = offsets[:-1] - first
        subset.ends = subset.starts + (self.ends - self.starts)[keep]
        return subset

    def raw(self, indices: np.ndarray) -> pa.Array:
        # Dead letters are the rare rows; slicing them one by one keeps their bytes exact.
        return pa.array(
            [self.data[self.starts[i] : self.ends[i]] for i in indices.tolist()], pa.binary()
        )


def _read(
    buffer: pa.Buffer,
    schema: EventSchema,
    quoted: _Quoted,
    typed: Mapping[str, pa.DataType] | None = None,
) -> pa.Table:
    """One Arrow read; the id and key roles may be JSON integers (quoted first, exactly).

    Args:
        quoted: role columns whose integer values are put in quotes before reading; a read
            that fails on another of them adds it (a stream's :class:`DecodeHints` keep the set,
            so later blocks quote at once instead of failing first).
        typed: payload columns read with this type instead of an inferred one.
    """
    pending = quoted.pending()
    data = _quote_numbers(buffer, pending) if pending else buffer
    while True:
        try:
            return _read_json(data, schema, typed)
        except pa.ArrowInvalid as exc:
            column = _numeric_column(str(exc), schema, quoted.contract)
            if column is None or column in quoted:
                raise
            quoted.add(column)
            change = _TYPE_CHANGE.search(str(exc))
            quoted.first.setdefault(column, change.group(2) if change else "string")
            data = _quote_numbers(buffer, quoted.pending())


def _read_json(
    buffer: pa.Buffer, schema: EventSchema, typed: Mapping[str, pa.DataType] | None = None
) -> pa.Table:
    table = _read_arrow_json(buffer, schema, typed)
    texts = _inferred_times(table.schema, schema, typed or {})
    if texts:
        table = _read_arrow_json(buffer, schema, {**(typed or {}), **texts})
    # Arrow 26's reader can build an invalid nested array from valid JSON (a list holding null
    # and then a string, found by fuzzing): such a read is not used.
    for i, (name, column) in enumerate(zip(table.column_names, table.columns, strict=True)):
        if pa.types.is_nested(column.type):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                repaired = _null_lists_rebuilt(column)
                if repaired is None:
                    raise _Misaligned(f"unreadable:{name}") from None
                table = table.set_column(i, name, repaired)
    return table


def _inferred_times(
    read: pa.Schema, schema: EventSchema, typed: Mapping[str, pa.DataType]
) -> dict[str, pa.DataType]:
    """Payload columns Arrow read as timestamps, each with its type holding strings instead.

    Arrow's JSON reader takes any column whose strings all look like ISO-8601 times for a
    zone-less ``timestamp[s]``: ``"2026-01-01"`` and ``"2026-01-01 00:00"`` would come back as
    another text, and the lake (Delta) refuses a zone-less or seconds timestamp. A payload string
    stays the text the client sent (as Spark's JSON reader does since 3.0: ``inferTimestamp``
    is off); declare a column ``timestamp`` or ``date`` to have it read as one. The time role
    has its own normalization.

    Example:
        >>> read = pa.schema([("at", pa.timestamp("s")), ("n", pa.int64())])
        >>> _inferred_times(read, EventSchema(), {})
        {'at': DataType(string)}
    """
    kept = {name for name, kind in schema.columns if kind in ("timestamp", "date")}
    texts = {}
    for column in read:
        if column.name == schema.time or column.name in kept or column.name in typed:
            continue
        text = _map_times(column.type, lambda _: pa.string())
        if text != column.type:
            texts[column.name] = text
    return texts


def _storable_times(column: pa.ChunkedArray) -> tuple[pa.Array, pa.Array | None] | None:
    """A columnar payload column's timestamps, at any depth, as the lake stores them:
    ``timestamp[us, UTC]`` (None when it holds no other timestamp).

    Delta Lake has one timestamp type, UTC microseconds (a zone-less one needs a table feature
    Thermocline's writer does not take on, seconds none at all). Arrow stores every timestamp
    as UTC, its zone being metadata, so a zone-less time is taken as UTC, as an ISO-8601 time
    without an offset is, and any zone names the same instant. Nanoseconds are cut to
    microseconds (toward zero: a time before 1970 moves up to 999 ns later); a time microseconds
    cannot hold (beyond about 292,000 years) makes its row a
    ``bad_value`` (the second item: per row, whether it did).

    Example:
        >>> c = pa.chunked_array([pa.array([1, 2**62], pa.timestamp("s"))])
        >>> times, wrong = _storable_times(c)
        >>> times.type, times[0].as_py().isoformat(), wrong.to_pylist()
        (TimestampType(timestamp[us, tz=UTC]), '1970-01-01T00:00:01+00:00', [False, True])
    """
    kind = column.type
    target = _map_times(kind, lambda t: pa.timestamp("us", "UTC"))
    if target == kind:
        return None
    array = combined(column)
    plain = _map_times(kind, lambda t: t)  # dictionaries of times as their values
    if plain != kind:
        decoded = _converted(array, plain)
        if decoded is None:
            return None  # left to _lake_type, which makes its rows bad_type
        array = combined(decoded)
    array = array.view(_map_times(plain, lambda t: pa.timestamp(t.unit, "UTC")))
    fine = _map_times(array.type, lambda t: pa.timestamp("us", "UTC") if t.unit == "ns" else t)
    if fine != array.type:
        array = pc.cast(array, fine, safe=False)  # below a microsecond: dropped, never overflows
    if fine == target:
        return array, None
    return cast_rows(array, target)


def _map_times(kind: pa.DataType, to: Callable[[pa.TimestampType], pa.DataType]) -> pa.DataType:
    """``kind`` with every timestamp type inside it mapped by ``to`` (at any depth: structs,
    lists of any layout, maps; a dictionary of timestamps becomes its values' type)."""
    if pa.types.is_timestamp(kind):
        return to(kind)
    if pa.types.is_dictionary(kind):
        holds_times = _map_times(kind.value_type, lambda _: pa.null()) != kind.value_type
        return _map_times(kind.value_type, to) if holds_times else kind
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_map_times(f.type, to)) for f in kind])
    if pa.types.is_map(kind):
        key, item = kind.key_field, kind.item_field
        return pa.map_(
            key.with_type(_map_times(key.type, to)), item.with_type(_map_times(item.type, to))
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return with_items(kind, _map_times(kind.value_type, to))
    return kind


def _converted(
    column: pa.Array | pa.ChunkedArray, target: pa.DataType
) -> pa.Array | pa.ChunkedArray | None:
    """``column`` cast to ``target``; Arrow 26 cannot cast some nested dictionaries (of
    structs, of lists) to their values: those are rebuilt from Python values (slow, rare).
    None when neither works."""
    if column.type == target:
        return column
    try:
        return pc.cast(column, target)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:
        return pa.array(combined(column).to_pylist(), type=target)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None


def _lake_type(kind: pa.DataType) -> pa.DataType | None:
    """The type a columnar column takes so that the lake (Delta) can store it, at any depth;
    None when it holds a type Delta has no place for (a duration, an interval, a union, a
    decimal wider than 38 digits).

    Lossless conversions only: a half float as a float, a 256-bit decimal of at most 38 digits
    as a 128-bit one, a time of day as its ISO-8601 text (``"10:30:00.000000"``).

    Example:
        >>> _lake_type(pa.struct([("t", pa.time64("us")), ("h", pa.float16())]))
        StructType(struct<t: string, h: float>)
        >>> _lake_type(pa.list_(pa.duration("s"))) is None
        True
    """
    if isinstance(kind, pa.BaseExtensionType):  # JSON, bool8...: written as before
        return kind if _lake_type(kind.storage_type) == kind.storage_type else None
    if pa.types.is_float16(kind):
        return pa.float32()
    if pa.types.is_decimal(kind) and (kind.scale < 0 or pa.types.is_decimal256(kind)):
        # Delta: at most 38 digits, no negative scale (12300 as decimal(3, -2) has 5 digits).
        digits = kind.precision - min(kind.scale, 0)
        return pa.decimal128(digits, max(kind.scale, 0)) if digits <= 38 else None
    if pa.types.is_time(kind):
        return pa.string()
    if pa.types.is_dictionary(kind):  # stored as its values (Delta has no dictionary type)
        return _lake_type(kind.value_type)
    if pa.types.is_struct(kind):
        fields = [f.with_type(_lake_type(f.type)) for f in kind if _lake_type(f.type) is not None]
        return pa.struct(fields) if len(fields) == kind.num_fields else None
    if pa.types.is_map(kind):
        key, item = _lake_type(kind.key_type), _lake_type(kind.item_type)
        if key is None or item is None:
            return None
        return pa.map_(kind.key_field.with_type(key), kind.item_field.with_type(item))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        inner = _lake_type(kind.value_type)
        if inner is None:
            return None
        return with_items(kind, inner)
    plain = (
        pa.types.is_null(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal128(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_date(kind)
        or pa.types.is_timestamp(kind)
    )
    return kind if plain else None


def _null_lists_rebuilt(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """``column`` with its lists of nulls rebuilt, if that makes it valid (else None).

    Arrow 26 reads a list of two or more nulls (``[null, null]``: a list of type null) with
    fewer values than its offsets span. A null value holds no data, so such a list is rebuilt
    exactly from its offsets; any other invalid read stays refused.

    Example:
        >>> bad = pj.read_json(pa.BufferReader(b'{"a": {"b": [null, null]}}'))["a"]
        >>> _null_lists_rebuilt(bad).to_pylist()
        [{'b': [None, None]}]
    """
    try:
        repaired = pa.chunked_array([_rebuilt(chunk) for chunk in column.chunks], column.type)
        repaired.validate(full=True)
    except pa.ArrowInvalid:
        return None
    return repaired


def _rebuilt(array: pa.Array) -> pa.Array:
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = array.offsets
        if pa.types.is_null(kind.value_type):
            values: pa.Array = pa.nulls(offsets[-1].as_py())
        else:
            values = _rebuilt(array.values)
        build = pa.ListArray if pa.types.is_list(kind) else pa.LargeListArray
        return build.from_arrays(offsets, values, kind, mask=array.is_null())
    if pa.types.is_struct(kind) and kind.num_fields:
        children = [_rebuilt(array.field(i)) for i in range(kind.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(kind), mask=array.is_null())
    return array


def _read_arrow_json(
    buffer: pa.Buffer, schema: EventSchema, typed: Mapping[str, pa.DataType] | None = None
) -> pa.Table:
    explicit = [(name, pa.string()) for name in schema.string_roles] + list((typed or {}).items())
    return pj.read_json(
        pa.BufferReader(buffer),
        # One piece, on this thread. Arrow's reader in pieces (use_threads with a smaller
        # block_size, ~1.9x faster on 2 cores) is unsafe on telemetry: a field whose JSON kind
        # changes between two pieces crashes the process (array then number) or reads as nulls
        # with no error (object then number), and column order follows thread timing (found by
        # review, 2026-11-28; tests/test_real_world_decode.py keeps both inputs).
        read_options=pj.ReadOptions(use_threads=False, block_size=_WHOLE_BLOCK),
        parse_options=pj.ParseOptions(
            explicit_schema=pa.schema(explicit),
            unexpected_field_behavior="infer",
            newlines_in_values=False,
        ),
    )


class _Quoted(set[str]):
    """Columns whose integers are quoted before reading, and the contract that decides more."""

    def __init__(self, columns: set[str], contract: SchemaContract, integers: set[str]) -> None:
        super().__init__(columns)
        self.contract = contract
        #: Columns whose integers only are quoted (ids, and columns declared strings).
        self.integers = integers
        #: Columns already quoted in the block being read (once, up front).
        self.applied: set[str] = set()
        #: Kind (``number``/``string``) a column quoted in this block had in its first rows.
        self.first: dict[str, str] = {}

    def pending(self) -> _Quoted:
        """The columns still to quote in a piece of the block."""
        rest = _Quoted(set(self) - self.applied, self.contract, self.integers)
        rest.first = self.first
        return rest


def _numeric_column(message: str, schema: EventSchema, contract: SchemaContract) -> str | None:
    """The column an Arrow error says mixed strings and numbers, if its numbers may be quoted.

    The id and key roles when integers follow strings (integers are ids too). A top-level payload
    column either way, unless the stream declared it a number: read as strings, its values are
    then cast to the stream's type by the contract (``"12"`` to 12; ``"max"`` into a number
    column is a ``bad_type`` row), instead of the block being split at every change of kind.
    """
    change = _TYPE_CHANGE.search(message)
    if change is None:
        return None
    kinds = {change.group(2), change.group(3)}
    column = change.group(1).strip("/")
    if kinds != {"string", "number"} or "/" in column or column in (schema.time, schema.type):
        return None
    if column in (schema.id, schema.key):
        return column if change.group(3) == "number" else None
    return column


def _quote_numbers(buffer: pa.Buffer, columns: _Quoted) -> pa.Buffer:
    """``"col": 123`` becomes ``"col": "123"``, the digits exactly as sent (see
    :func:`_quote_numbers_lines`)."""
    return _quote_numbers_lines(buffer, columns)[0]


def _quote_numbers_lines(buffer: pa.Buffer, columns: _Quoted) -> tuple[pa.Buffer, np.ndarray]:
    """``"col": 123`` becomes ``"col": "123"``, the digits exactly as sent; also the positions
    of the result's newline bytes (its line offsets, which :class:`_Lines` then need not scan
    for again).

    One RE2 pass per kind over a zero-copy view of the block's lines (each with its newline):
    per-line matching is ~1.6x faster than over the block as one value. Lines stay lines, so
    Arrow's row numbers still match. Ids and columns declared strings: integers only (an id with
    a fraction or exponent stays a number, and the read rejects it as ``bad_type``). Other
    columns: any JSON number.
    """
    roles = sorted(c for c in columns if c in columns.integers)
    payload = sorted(c for c in columns if c not in columns.integers)
    arr = np.frombuffer(buffer, dtype=np.uint8)
    newlines = np.flatnonzero(arr == ord("\n"))
    offsets = np.concatenate(([0], newlines + 1))
    if offsets[-1] != len(arr):
        offsets = np.append(offsets, len(arr))
    lines = _line_view(buffer, offsets)
    for names, number in ((roles, r"-?[0-9]+"), (payload, _JSON_NUMBER)):
        if names:
            keys = "|".join(re.escape(json.dumps(c)) for c in names)
            lines = pc.replace_substring_regex(
                lines, rf"((?:{keys})\s*:\s*)({number})(\s*[,}}])", r'\1"\2"\3'
            )
    ends = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    # Line i ends with its newline for every i below the count of newlines (the last line may
    # have none): at the line's new end, less one.
    quoted_newlines = ends[1 : len(newlines) + 1] - ends[0] - 1
    return lines.buffers()[2].slice(int(ends[0]), int(ends[-1] - ends[0])), quoted_newlines


def _bad_reason(message: str, explicit: tuple[str, ...]) -> tuple[str, bool]:
    """Reason for a row Arrow rejected, and whether it is rather the start of a new type segment.

    A column read with an explicit type (the string roles) cannot change, so a row that breaks it
    is bad. Any other column's type is inferred from the rows before; when it changes, neither
    side is known to be wrong, so a new segment starts and the stream's contract decides.
    """
    change = _TYPE_CHANGE.search(message)
    if change is None:
        return "invalid_json", False
    column = change.group(1).strip("/").replace("/", ".")
    if column == "":
        return "not_an_object", False
    return f"bad_type:{column}", column not in explicit


_Read = tuple[list[tuple[np.ndarray, pa.Table]], list[tuple[int, str]]]


def _line_view(buffer: pa.Buffer, offsets: np.ndarray) -> pa.Array:
    """Zero-copy ``large_binary`` array over ``buffer``, element i from ``offsets[i]`` to
    ``offsets[i + 1]``, for Arrow's kernels to work line by line."""
    bounds = pa.py_buffer(np.asarray(offsets, dtype=np.int64))
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, bounds, buffer])


class _Misaligned(pa.ArrowInvalid):
    """Rows that cannot be trusted line by line: Arrow read another number of objects than
    lines (a line held two objects, or an object ran over into the next line: its reader does
    not respect line boundaries), or built an invalid array. Pieces shrink to single lines, and
    a single such line is a dead letter with :attr:`reason`."""

    def __init__(self, reason: str = "invalid_json") -> None:
        super().__init__(reason)
        self.reason = reason


def _read_exact(
    lines: _Lines, first: int, stop: int, schema: EventSchema, quoted: _Quoted
) -> pa.Table:
    """Lines ``first`` to ``stop - 1`` read as exactly one row each (else :class:`_Misaligned`)."""
    table = _read(lines.span(first, stop), schema, quoted)
    if table.num_rows != stop - first:
        raise _Misaligned
    return table


def _read_lines(lines: _Lines, schema: EventSchema, quoted: _Quoted, whole: bool = True) -> _Read:
    """Read a set of lines: whole if it parses, else misshapen lines out, by time kind, in pieces.

    Returns:
        Segments as (block line index of each row, table), and (block line index, reason) of
        the lines that are bad.
    """
    if whole and len(lines):
        try:
            table = _read(lines.buffer, schema, quoted)
            if table.num_rows == len(lines):
                return [(lines.index, table)], []
        except pa.ArrowInvalid:
            pass
    misshapen = lines.misshapen()
    bad = [(int(lines.index[i]), reason) for i, reason in misshapen]
    if misshapen:
        lines = lines.without([i for i, _ in misshapen])  # a private copy from here on
    segments: list[tuple[np.ndarray, pa.Table]] = []
    for group in lines.by_time_kind(schema.time):
        if not len(group):
            continue
        try:
            table = _read(group.buffer, schema, quoted)
            if table.num_rows == len(group):
                segments.append((group.index, table))
                continue
        except pa.ArrowInvalid:
            pass
        more_segments, more_bad = _read_in_pieces(group, schema, quoted)
        segments += more_segments
        bad += more_bad
    return segments, bad


def _read_in_pieces(lines: _Lines, schema: EventSchema, quoted: _Quoted) -> _Read:
    """Read contiguous pieces around the lines Arrow rejects.

    A bad line costs one extra read of the piece it was in; pieces shrink where errors are dense.
    A piece whose rows do not match its lines one to one shrinks down to single lines, and a
    single line that is not exactly one object is ``invalid_json``.
    """
    segments: list[tuple[np.ndarray, pa.Table]] = []
    bad: list[tuple[int, str]] = []
    pos, total, size = 0, len(lines), _RECOVERY_MAX_LINES // 4
    while pos < total:
        stop = min(total, pos + size)
        try:
            table = _read_exact(lines, pos, stop, schema, quoted)
            segments.append((lines.index[pos:stop], table))
            pos, size = stop, min(size * 2, _RECOVERY_MAX_LINES)
            continue
        except _Misaligned as exc:
            if stop - pos == 1:
                retyped = _read_retyped(lines, pos, schema, quoted, exc.reason)
                if retyped is None:
                    bad.append((int(lines.index[pos]), exc.reason))
                else:
                    segments.append((lines.index[pos:stop], retyped))
                pos += 1
            else:
                size = max((stop - pos) // 2, 1)
            continue
        except pa.ArrowInvalid as exc:
            size = max(size // 2, _RECOVERY_MIN_LINES)
            found = _ROW.search(str(exc))
            if found is None:  # an error Arrow does not place: give up on this line only
                row, reason, starts_segment = 0, "invalid_json", False
            else:
                row = int(found.group(1))
                reason, starts_segment = _bad_reason(str(exc), schema.string_roles)
        if pos + row >= stop:  # Arrow counted objects, not lines: place it by smaller reads
            size = max((stop - pos) // 2, 1)
            continue
        if row > 0:
            try:
                prefix = _read_exact(lines, pos, pos + row, schema, quoted)
            except pa.ArrowInvalid:  # _Misaligned included
                size = max(row // 2, 1)
                continue
            segments.append((lines.index[pos : pos + row], prefix))
        if starts_segment and row > 0:
            pos += row  # the failing row begins the next piece
        else:
            bad.append((int(lines.index[pos + row]), reason))
            pos += row + 1
    return segments, bad


def _read_retyped(
    lines: _Lines, line: int, schema: EventSchema, quoted: _Quoted, reason: str
) -> pa.Table | None:
    """A line Arrow read into an invalid array, read again with its nested columns typed.

    Arrow 26 infers a list that starts with nulls (``[null, 5]``, ``{"b": [null, "x"]}``) as a
    list of nulls, and builds an invalid array when a value follows. Given the types (what
    pyarrow infers from each object or array value as Python's ``json`` parsed it, integers
    beyond 64 bits as doubles as Arrow reads them; a value it cannot type is left to Arrow), it
    reads the lists right,
    in one more read of the line whatever the number of columns. A line that still does not
    read stays a dead letter. Only single lines that failed get here.
    """
    if not reason.startswith("unreadable:"):
        return None
    buffer = lines.span(line, line + 1)
    try:
        # An integer beyond 64 bits as a double, as Arrow's reader takes it.
        event = json.loads(buffer.to_pybytes(), parse_int=_int_or_double)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict):
        return None
    typed: dict[str, pa.DataType] = {}
    for column, value in event.items():
        if isinstance(value, list | dict) and column not in schema.string_roles:
            try:
                typed[column] = pa.array([value]).type
            except (pa.ArrowException, OverflowError, TypeError, ValueError, RecursionError):
                continue
    try:
        table = _read(buffer, schema, quoted, typed=typed)
    except pa.ArrowInvalid:  # _Misaligned included
        return None
    return table if table.num_rows == 1 else None


def _int_or_double(text: str) -> int | float:
    value = int(text)
    return value if -(2**63) <= value < 2**63 else float(value)


def _invalid_utf8(lines: _Lines) -> list[tuple[int, str]]:
    """Positions of lines that are not valid UTF-8 (Arrow's JSON reader would let them in).

    Only lines holding a byte >= 0x80 can be invalid; those alone are checked one by one.
    """
    arr = np.frombuffer(lines.data, dtype=np.uint8)
    high = np.flatnonzero(arr >= 0x80)
    candidates = np.unique(np.searchsorted(lines.starts, high, side="right") - 1)
    found = []
    for i in candidates.tolist():
        if i < 0 or high.size == 0:
            continue
        try:
            bytes(lines.data[lines.starts[i] : lines.ends[i]]).decode("utf-8")
        except UnicodeDecodeError:
            found.append((i, "invalid_utf8"))
    return found


def _too_deep(data: bytes) -> list[int]:
    """Physical line numbers (blank lines counted) of lines nested deeper than MAX_DEPTH.

    One C pass keeps only the ``{``, ``[`` and newline bytes; a line with fewer openers than
    the limit (every line of real telemetry) cannot be too deep. Only the others are scanned
    exactly, strings left out.
    """
    openers = np.frombuffer(data.translate(None, _OPENERS_AND_NEWLINES), dtype=np.uint8)
    newlines = np.flatnonzero(openers == ord("\n"))
    counts = np.diff(np.concatenate(([-1], newlines, [len(openers)]))) - 1
    candidates = np.flatnonzero(counts > MAX_DEPTH)
    if not len(candidates):
        return []
    arr = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(arr == ord("\n")) + 1))
    ends = np.concatenate((starts[1:] - 1, [len(arr)]))
    return [int(i) for i in candidates.tolist() if max_depth(data[starts[i] : ends[i]]) > MAX_DEPTH]


def _valid_utf8(data: bytes) -> bool:
    """Whether the whole block is valid UTF-8 (one vectorized Arrow check, no copy)."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(
            full=True
        )
    except pa.ArrowInvalid:
        return False
    return True


def _epoch_ms(values: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers (int64 or float64) in ``unit`` as int64 milliseconds, and which are usable.

    Integers stay integers (nanoseconds keep every digit); ``auto`` picks a unit per value by
    magnitude (see :class:`~routers.schema.EventSchema`).
    """
    magnitude = np.abs(values.astype(np.float64))
    usable = np.isfinite(magnitude)
    # Beyond int64 milliseconds in any unit: a time, but not a plausible one (bad_value later).
    huge = usable & (magnitude >= 9.2e18)
    units = list(_MS_PER_UNIT)
    if unit == "auto":  # the unit's position, per value (NaN sorts last: unusable anyway)
        codes = np.searchsorted(_AUTO_LIMITS, magnitude, side="right")
    else:
        codes = np.full(len(values), units.index(unit))
    out = np.zeros(len(values), dtype=np.int64)
    for code in np.unique(codes).tolist():
        per = _MS_PER_UNIT[units[code]]
        rows = (codes == code) & usable & ~huge
        if not rows.any():
            continue
        chosen = values[rows]
        if np.issubdtype(values.dtype, np.integer) and per < 1:
            out[rows] = np.floor_divide(chosen, round(1 / per))
        else:
            scaled = np.floor(chosen.astype(np.float64) * per)
            fits = np.abs(scaled) < 9.2e18
            huge[np.flatnonzero(rows)[~fits]] = True
            out[rows] = np.where(fits, scaled, 0).astype(np.int64)
    out[huge] = np.iinfo(np.int64).max
    return out, usable


def _normalize_time(
    column: pa.ChunkedArray | None, n: int, schema: EventSchema
) -> tuple[np.ndarray, np.ndarray]:
    """Event times as epoch milliseconds (int64), and which rows had a usable time (numpy
    arrays, possibly read-only views of Arrow's buffers).

    Unusable rows (no time, a value of another kind, a number too large) get a placeholder time
    and ``False``; the caller makes them dead letters.
    """
    millis = np.full(n, _NO_TIME, dtype=np.int64)
    usable = np.zeros(n, dtype=bool)
    kind = column.type if column is not None else pa.null()
    if column is None or not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    ):
        # Objects, lists, booleans: no time (and Arrow cannot always combine sliced structs).
        return millis, usable
    arr = combined(column)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        raw = np.where(valid, arr.to_numpy(zero_copy_only=False), 0)
        millis, usable = _epoch_ms(
            raw.astype(np.int64 if pa.types.is_integer(kind) else np.float64), schema.time_unit
        )
        usable &= valid
    elif pa.types.is_timestamp(kind):
        ms = pc.cast(pc.cast(arr, pa.timestamp("ms", kind.tz), safe=False), pa.int64())
        usable = ms.is_valid().to_numpy(zero_copy_only=False)
        millis = ms.fill_null(_NO_TIME).to_numpy(zero_copy_only=False)
    else:  # strings
        if pa.types.is_large_string(kind):  # pandas writes them: the kernels below take string
            arr = arr.cast(pa.string())
        numeric = pc.fill_null(
            pc.match_substring_regex(arr, r"^\s*-?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?\s*$"), False
        )
        if pc.any(numeric).as_py():  # epoch numbers that were sent as strings
            integral = pc.fill_null(pc.match_substring_regex(arr, r"^\s*-?[0-9]{1,18}\s*$"), False)
            as_int = _cast_or_null(
                pc.if_else(integral, pc.utf8_trim_whitespace(arr), None), pa.int64()
            )
            as_float = _cast_or_null(
                pc.if_else(numeric, pc.utf8_trim_whitespace(arr), None), pa.float64()
            )
            is_int = as_int.is_valid().to_numpy(zero_copy_only=False)
            ints, ok_i = _epoch_ms(
                as_int.fill_null(0).to_numpy(zero_copy_only=False), schema.time_unit
            )
            floats, ok_f = _epoch_ms(
                as_float.fill_null(0).to_numpy(zero_copy_only=False), schema.time_unit
            )
            ok_f &= as_float.is_valid().to_numpy(zero_copy_only=False)
            millis = np.where(is_int, ints, floats)
            usable = np.where(is_int, ok_i, ok_f)
        iso = pc.if_else(numeric, pa.scalar(None, arr.type), arr)
        # Times without a zone offset are taken as UTC (the common telemetry convention).
        zoned = pc.match_substring_regex(iso, r"(Z|z|[+-]\d\d(:?\d\d)?)$")
        with_zone = pc.if_else(zoned, iso, pc.binary_join_element_wise(iso, "Z", ""))
        # Parse at microseconds (clients send them), then truncate to milliseconds.
        parsed = _cast_or_null(with_zone, pa.timestamp("us", "UTC"))
        parsed_ms = pc.cast(pc.cast(parsed, TIME_TYPE, safe=False), pa.int64())
        got = parsed_ms.is_valid().to_numpy(zero_copy_only=False)
        millis = np.where(got, parsed_ms.fill_null(0).to_numpy(zero_copy_only=False), millis)
        usable = usable | got
    return millis, usable


def normalize_time(
    column: pa.Array | pa.ChunkedArray, schema: EventSchema
) -> tuple[pa.Array, np.ndarray]:
    """Times of any JSON kind (ISO strings, epoch numbers in ``schema.time_unit``) as
    ``timestamp[ms, UTC]``, and a mask of the rows that held a usable time.

    Example:
        >>> column = pa.array(["1764000000", "2026-01-01T00:00:00Z", "x"])
        >>> times, ok = normalize_time(column, EventSchema())
        >>> [str(t) for t in times.to_pylist()[:2]], ok.tolist()
        (['2025-11-24 16:00:00+00:00', '2026-01-01 00:00:00+00:00'], [True, True, False])
    """
    chunked = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    millis, usable = _normalize_time(chunked, len(column), schema)
    return pa.array(millis, pa.int64()).cast(TIME_TYPE), usable


def _cast_or_null(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast, turning values Arrow cannot parse into nulls (halving only around the bad ones)."""
    try:
        return pc.cast(arr, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) == 1:
            return pa.nulls(1, target)
        half = len(arr) // 2
        return pa.concat_arrays(
            [_cast_or_null(arr.slice(0, half), target), _cast_or_null(arr.slice(half), target)]
        )


def _check_roles(table: pa.Table, schema: EventSchema) -> tuple[pa.Table, pa.Array]:
    """Normalize the time role and return (table, reason per row: null when the row is good).

    Reasons, first that applies: ``missing_field:<role>`` (absent or null), ``bad_type:<time>``
    (a value that is no time), ``bad_value:<time>`` (outside ``schema.time_range``). Masks in
    numpy, one Arrow array at the end: this runs on every block, and most blocks are all good.
    """
    n = table.num_rows
    original = table.column(schema.time) if schema.time in table.column_names else None
    millis, usable = _normalize_time(original, n, schema)
    times = pa.array(millis, pa.int64()).cast(TIME_TYPE)
    if original is None:
        table = table.append_column(pa.field(schema.time, TIME_TYPE), times)
    else:
        table = table.set_column(
            table.column_names.index(schema.time), pa.field(schema.time, TIME_TYPE), times
        )
    reasons: list[str] = []
    code = np.zeros(n, dtype=np.int8)  # per row: 0 if good, else 1 + its reason's position

    def flag(rows: np.ndarray, reason: str) -> None:
        rows = rows & (code == 0)
        if rows.any():
            reasons.append(reason)
            code[rows] = len(reasons)

    for role in schema.required:
        if role == schema.time:
            column = original
        else:
            column = table.column(role) if role in table.column_names else None
        if column is None:  # columnar input without the column at all (NDJSON reads have it)
            present = np.zeros(n, dtype=bool)
        else:  # is_valid, not null_count: a dictionary or union column holds nulls beside it
            present = column.is_valid().to_numpy(zero_copy_only=False)
        flag(~present, f"missing_field:{role}")
        if role == schema.time:
            flag(present & ~usable, f"bad_type:{role}")
            low, high = schema.time_range
            flag(usable & ((millis < low) | (millis >= high)), f"bad_value:{role}")
    if not reasons:
        return table, pa.nulls(n, pa.string())
    text = np.array([None, *reasons], dtype=object)[code]
    return table, pa.array(text, pa.string())


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """The table as one record batch (see :func:`routers.contract.combined` for why not just
    ``combine_chunks``)."""
    if not table.num_rows:
        return _empty(table.schema)
    arrays = [combined(column) for column in table.columns]
    return pa.RecordBatch.from_arrays(arrays, schema=table.schema)


def _conform(
    table: pa.Table, schema: EventSchema, contract: SchemaContract
) -> tuple[pa.Table, pa.Array]:
    """Roles checked and normalized, payload conformed to the stream's contract; the reason
    each row is bad (null when good), a role's own problem first."""
    table, reason = _check_roles(table, schema)
    table, payload_reason = contract.conform(table)
    if payload_reason is not None:
        reason = pc.coalesce(reason, payload_reason)
    return table, reason


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)
    except pa.ArrowException:  # a type Arrow builds no empty array of so
        return pa.RecordBatch.from_pylist([], schema=schema)


@dataclass
class DecodeHints:
    """What earlier blocks of one stream showed, so the next block skips reads that would fail.

    Keep one per stream (a source partition) and pass it to every :func:`decode_ndjson` call.
    Results do not depend on the hints, only the work done to reach them, with one exception:
    a nested key named like a quoted column is quoted too (see docs/architecture.md).

    Attributes:
        dirty: the last block had bad lines: skip the whole-block read that would fail again.
        quoted: columns that arrived as numbers among strings (id and key integers, payload
            columns of mixed kind): their numbers are quoted before reading.
        mixed_times: the last block had ISO and epoch times: read it by kind straight away.
    """

    dirty: bool = False
    quoted: set[str] = field(default_factory=set)
    mixed_times: bool = False


def decode_ndjson(
    data: bytes,
    schema: EventSchema | None = None,
    hints: DecodeHints | None = None,
    contract: SchemaContract | None = None,
    raw_lines: Mapping[int, bytes] | None = None,
) -> Decoded:
    """Decode a block of newline-delimited JSON events.

    Args:
        data: one JSON object per line (``\\n``-separated; a trailing newline is optional).
        schema: the roles and declared columns (see :class:`~routers.schema.EventSchema`): id
            and key are JSON strings or integers (normalized to strings), type a string, time an
            ISO-8601 string or an epoch number.
        hints: per-stream hints (see :class:`DecodeHints`), updated by the call.
        contract: the stream's schema contract (see :mod:`routers.contract`), grown by the call;
            default: a new one for this block alone.
        raw_lines: exact bytes of lines the source reshaped (line index -> bytes); their dead
            letters carry these bytes.

    Returns:
        A :class:`Decoded` with the good events and the dead letters (raw line and a reason:
        ``invalid_json``, ``invalid_utf8``, ``too_deep`` (nested over :data:`MAX_DEPTH`),
        ``not_an_object``, ``missing_field:<col>``, ``bad_type:<col>``, ``bad_value:<col>``).

    Example:
        >>> good = b'{"event_id":"e1","player_id":7,"event_time":1764000000,"event_type":"login"}'
        >>> out = decode_ndjson(good + b"\\n{oops\\n")
        >>> out.good.num_rows, out.dead.column("reason").to_pylist()
        (1, ['invalid_json'])
        >>> out.good.column("player_id").to_pylist(), str(out.good.column("event_time")[0])
        (['7'], '2025-11-24 16:00:00+00:00')
        >>> out.dead.column("raw")[0].as_py()
        b'{oops'
    """
    schema = schema or EventSchema()
    hints = hints if hints is not None else DecodeHints()
    if contract is None:
        contract = new_contract(schema)
    lines: _Lines | None = None
    segments: list[tuple[np.ndarray, pa.Table]] = []
    bad: list[tuple[int, str]] = []
    fast: pa.Table | None = None
    # Integer-only quoting for the ids and for columns declared strings (ids too, mostly): one
    # pass for all of them.
    integer_kind = {schema.id, schema.key} | {n for n, kind in schema.columns if kind == "string"}
    quoted = _Quoted(hints.quoted, contract, integer_kind)
    valid_utf8 = _valid_utf8(data)
    deep = _too_deep(data)
    original = data
    if data.startswith(_BOM):  # a file saved with a byte order mark: not part of its first event
        data = b"   " + data[len(_BOM) :]  # read as padding (raw bytes stay the original's)
    newlines = None  # of ``data``, when quoting found them
    if quoted and valid_utf8:
        # Columns earlier blocks showed mixing numbers in: quoted once for every read below
        # (lines stay lines; dead letters still take their bytes from ``original``).
        done, newlines = _quote_numbers_lines(pa.py_buffer(data), quoted)
        data = done.to_pybytes()
        quoted.applied = set(quoted)
    # The whole block as it is was read (and failed), or would fail for a misshapen line: the
    # recovery below does not read it whole again (same bytes, same answer).
    whole_done = False
    if not hints.dirty and not hints.mixed_times and valid_utf8 and not deep:
        lines = _Lines(data, newlines)
        whole_done = True
        if lines.shaped():
            try:
                fast = _read(pa.py_buffer(data), schema, quoted)
            except pa.ArrowInvalid:
                fast = None
            # Row i is line i only if Arrow saw as many objects as there are lines (it does
            # not respect line boundaries: two objects on a line, one over two lines).
            if fast is not None and fast.num_rows != len(lines):
                fast = None
            if fast is not None:
                segments = [(np.arange(fast.num_rows, dtype=np.int64), fast)]
    if fast is None:
        lines = lines or _Lines(data, newlines)
        whole = not hints.dirty and not hints.mixed_times and not whole_done
        invalid = _invalid_utf8(lines) if not valid_utf8 else []
        if deep:  # physical line numbers to positions among the non-blank lines
            physical = (
                np.searchsorted(
                    np.concatenate(([0], np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1)),
                    lines.starts,
                    side="right",
                )
                - 1
            )
            at = {int(p): i for i, p in enumerate(physical.tolist())}
            seen = {i for i, _ in invalid}
            invalid += [(at[p], "too_deep") for p in deep if p in at and at[p] not in seen]
        bad += [(int(lines.index[i]), reason) for i, reason in invalid]
        subset = lines.without([i for i, _ in invalid]) if invalid else lines
        more_segments, more_bad = _read_lines(subset, schema, quoted, whole=whole)
        segments, bad = more_segments, bad + more_bad
    # A stream whose blocks keep having bad lines skips the whole-block read that would fail.
    hints.dirty = bool(bad)
    # Times as ISO strings and as epoch numbers in one block need a read per kind: the next
    # block of such a stream (a service's clients, mixed) skips the whole-block read that fails.
    hints.mixed_times = (
        len(
            {
                str(t.schema.field(schema.time).type)
                for _, t in segments
                if schema.time in t.column_names
            }
        )
        > 1
    )
    hints.quoted |= quoted

    # A column that came first as numbers, then mixed, is a number column for a stream that
    # did not know it yet (the first kind wins, as it would have across blocks).
    for column, kind in quoted.first.items():
        if (
            kind == "number"
            and column not in contract.schema.names
            and column not in quoted.integers
        ):
            values = [t[column] for _, t in segments if column in t.column_names]
            contract.seed(pa.schema([(column, _number_type(values))]))
    # Each segment: roles normalized, payload conformed to the stream's contract.
    tables: list[pa.Table] = []
    rows: list[np.ndarray] = []
    for index, table in segments:
        table, reason = _conform(table, schema, contract)
        is_bad = reason.is_valid().to_numpy(zero_copy_only=False)
        if is_bad.any():
            bad.extend(zip(index[is_bad].tolist(), reason.drop_null().to_pylist(), strict=True))
            table = table.filter(pa.array(~is_bad))
            index = index[~is_bad]
        tables.append(table)
        rows.append(index)
    table = concat_conformed(tables) if tables else contract.conform(pa.table({}))[0]
    good_lines = np.concatenate(rows) if rows else np.empty(0, np.int64)
    if len(good_lines) > 1 and (np.diff(good_lines) < 0).any():
        order = np.argsort(good_lines, kind="stable")  # groups read apart: back to line order
        table, good_lines = table.take(pa.array(order)), good_lines[order]
    good = _one_batch(table)

    dead = _empty(DEAD_LETTER_SCHEMA)
    if bad:
        bad.sort()
        lines = lines if lines is not None and original is data else _Lines(original)
        idx = np.fromiter((b[0] for b in bad), dtype=np.int64, count=len(bad))
        raw = lines.raw(idx)
        if raw_lines:
            raw = pa.array(
                [raw_lines.get(i, r) for i, r in zip(idx.tolist(), raw.to_pylist(), strict=True)],
                pa.binary(),
            )
        dead = pa.RecordBatch.from_arrays(
            [raw, pa.array([b[1] for b in bad], pa.string()), pa.array(idx)],
            schema=DEAD_LETTER_SCHEMA,
        )
    return Decoded(good=good, dead=dead, good_lines=good_lines, lines=good.num_rows + dead.num_rows)


def _number_type(columns: list[pa.ChunkedArray]) -> pa.DataType:
    """int64 when every number among these (quoted) strings is an integer, else double."""
    for column in columns:
        if not (pa.types.is_string(column.type) or pa.types.is_integer(column.type)):
            if pa.types.is_floating(column.type):
                return pa.float64()
            continue  # objects, lists, booleans: cast (or dead-lettered) by the contract
        text = column.cast(pa.string())
        number = pc.match_substring_regex(text, _JSON_NUMBER_FULL)
        integer = pc.match_substring_regex(text, r"^-?[0-9]+$")
        if pc.any(pc.and_(number, pc.invert(integer))).as_py():
            return pa.float64()
    return pa.int64()


def _role_types(schema: EventSchema) -> dict[str, pa.DataType]:
    """The roles' types, fixed by the decoder (first in every batch)."""
    return {
        schema.id: pa.string(),
        schema.key: pa.string(),
        schema.time: TIME_TYPE,
        schema.type: pa.string(),
    }


def new_contract(schema: EventSchema) -> SchemaContract:
    """A schema contract for one stream of events with these roles and declared columns.

    Example:
        >>> new_contract(EventSchema()).schema.names
        ['event_id', 'player_id', 'event_time', 'event_type']
    """
    return SchemaContract(schema.declared, fixed=_role_types(schema), reserved=[schema.arrival])


def decode_arrow(
    batch: pa.RecordBatch | pa.Table,
    schema: EventSchema | None = None,
    contract: SchemaContract | None = None,
) -> Decoded:
    """Check and normalize events that arrive columnar (Parquet files, Arrow IPC) as NDJSON is.

    The same rules as :func:`decode_ndjson`: roles present and typed (id and key integers become
    strings), times normalized and within range, payload conformed to the stream's contract;
    and, as Arrow does not check them, strings are UTF-8 (else ``invalid_utf8``). Two columns of
    one name make every row ``duplicate_field:<name>``. A bad row's ``raw`` is the row as one
    JSON object, every column kept (columnar input has no bytes of its own).

    Example:
        >>> t = pa.table({"event_id": [1, 2], "player_id": [7, None],
        ...               "event_time": [1764000000] * 2, "event_type": ["login"] * 2})
        >>> out = decode_arrow(t)
        >>> out.good.column("event_id").to_pylist(), out.dead.column("reason").to_pylist()
        (['1'], ['missing_field:player_id'])
    """
    schema = schema or EventSchema()
    contract = contract or new_contract(schema)
    original = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    n = original.num_rows
    twice = sorted(name for name, c in Counter(original.column_names).items() if c > 1)
    if twice:
        # Which of two same-named columns is the field cannot be told: every row is a dead
        # letter, both values kept in its raw JSON (Spark refuses such a file whole).
        index = np.arange(n, dtype=np.int64)
        dead = pa.RecordBatch.from_arrays(
            [_raw_json(original, index), pa.array([f"duplicate_field:{twice[0]}"] * n), index],
            schema=DEAD_LETTER_SCHEMA,
        )
        good = _one_batch(contract.conform(pa.table({}))[0])
        return Decoded(good=good, dead=dead, good_lines=index[:0], lines=n)
    table = plain = _plain_columns(original)
    # Arrow IPC and Parquet carry strings unchecked: a row with invalid UTF-8 anywhere is a
    # dead letter (as in NDJSON), and the checks below never see it.
    invalid = _invalid_rows(table)
    good_rows = np.ones(n, dtype=bool)
    good_rows[list(invalid)] = False
    kept = np.flatnonzero(good_rows)
    if invalid:
        table = table.take(pa.array(kept))
    m = table.num_rows
    reason: pa.Array = pa.nulls(m, pa.string())
    for role in schema.string_roles:
        if role not in table.column_names:
            continue
        column = combined(table.column(role))
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
            text = pc.cast(column, pa.string())
            wrong = pa.array(np.zeros(m, dtype=bool))
        else:  # floats, bools, structs: not an id (a float id would lose its digits)
            text = pa.nulls(m, pa.string())
            wrong = column.is_valid()
        reason = pc.if_else(pc.and_(reason.is_null(), wrong), f"bad_type:{role}", reason)
        table = table.set_column(table.column_names.index(role), role, text)
    declared = {name for name, _ in schema.columns}
    for i, name in enumerate(table.column_names):
        if name == schema.time or name in declared:
            continue  # the role has its own normalization; a declared type is cast to
        times = _storable_times(table.column(i))
        if times is not None:
            table = table.set_column(i, name, times[0])
            if times[1] is not None:
                wrong = times[1]
                reason = pc.if_else(pc.and_(reason.is_null(), wrong), f"bad_value:{name}", reason)
    unstorable = []
    for i, name in enumerate(table.column_names):
        if name in schema.required:
            continue  # the role checks judge them (a time of another type is bad_type there)
        kind = table.schema.field(i).type
        stored = _lake_type(kind)
        converted = None if stored is None else _converted(table.column(i), stored)
        if converted is None:  # a type the lake has no place for: its values cannot be kept
            held = combined(table.column(i)).is_valid()
            reason = pc.if_else(pc.and_(reason.is_null(), held), f"bad_type:{name}", reason)
            unstorable.append(name)
        elif stored != kind:
            table = table.set_column(i, name, converted)
    table = table.drop_columns(unstorable)
    table, checked = _conform(table, schema, contract)
    # A role's own problem (missing, bad) comes first, as in decode_ndjson.
    reason = combined(pc.coalesce(checked, reason))
    is_bad = reason.is_valid().to_numpy(zero_copy_only=False)
    bad = sorted(invalid.items())
    if is_bad.any():
        bad += zip(kept[is_bad].tolist(), reason.filter(pa.array(is_bad)).to_pylist(), strict=True)
        table = table.filter(pa.array(~is_bad))
    dead = _empty(DEAD_LETTER_SCHEMA)
    if bad:
        bad.sort()
        index = np.array([i for i, _ in bad], dtype=np.int64)
        dead = pa.RecordBatch.from_arrays(
            [_raw_json(plain, index), pa.array([r for _, r in bad]), index],
            schema=DEAD_LETTER_SCHEMA,
        )
    good = _one_batch(table)
    return Decoded(good=good, dead=dead, good_lines=kept[~is_bad], lines=n)


def _holds(kind: pa.DataType, test: Callable[[pa.DataType], bool]) -> bool:
    """Whether ``kind`` or any type nested in it (children, dictionary values, an extension's
    storage) passes ``test``."""
    if test(kind):
        return True
    if isinstance(kind, pa.ExtensionType):
        return _holds(kind.storage_type, test)
    if pa.types.is_dictionary(kind):
        return _holds(kind.value_type, test)
    return any(_holds(kind.field(i).type, test) for i in range(kind.num_fields))


def _is_view(kind: pa.DataType) -> bool:
    return (
        kind in (pa.string_view(), pa.binary_view())
        or pa.types.is_list_view(kind)
        or pa.types.is_large_list_view(kind)
        or pa.types.is_run_end_encoded(kind)
    )


def _has_view(kind: pa.DataType) -> bool:
    """Whether ``kind`` holds a view layout or run-end encoding anywhere (nested included)."""
    return _holds(kind, _is_view)


def _plain_array(values: pa.Array) -> pa.Array:
    """``values`` with view layouts (``string_view``, ``binary_view``, list views: what Polars
    and DuckDB hand out) and run-end encoding as the classic layouts, which every Arrow kernel
    takes; inside lists and structs too. Other layouts are returned as they are."""
    kind = values.type
    if not _has_view(kind):
        return values
    if kind == pa.string_view():
        return values.cast(pa.string())
    if kind == pa.binary_view():
        return values.cast(pa.binary())
    if pa.types.is_run_end_encoded(kind):
        return _plain_array(pc.run_end_decode(values))
    large = pa.types.is_large_list(kind) or pa.types.is_large_list_view(kind)
    if pa.types.is_list(kind) or large or pa.types.is_list_view(kind):
        # Arrow 26 casts a list view to a list with one offset too few (an invalid array): the
        # offsets are rebuilt from the lengths; a null list has none.
        lengths = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64 if large else np.int32)
        items = _plain_array(pc.list_flatten(values))
        cls = pa.LargeListArray if large else pa.ListArray
        return cls.from_arrays(pa.array(offsets), items, mask=values.is_null())
    if pa.types.is_struct(kind):
        children = [_plain_array(values.field(i)) for i in range(kind.num_fields)]
        fields = [kind.field(i).with_type(c.type) for i, c in enumerate(children)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=values.is_null())
    return values  # maps, fixed-size lists, unions holding views: kept (rare)


def _plain_columns(table: pa.Table) -> pa.Table:
    """Dictionary columns as their values, and view layouts as classic ones (see
    :func:`_plain_array`); a column Arrow cannot convert stays as it is."""
    typeless = _empty_categoricals(table.schema)
    for i, column in enumerate(table.columns):
        kind = column.type
        name = table.field(i).name
        if name in typeless and column.null_count == len(column):
            # pandas writes a categorical without categories as a double column: its type says
            # nothing, so the column is null and takes the type of the first values that come
            # (a later file's strings in it are not bad_type).
            table = table.set_column(i, name, pa.nulls(len(column)))
            continue
        try:
            if pa.types.is_dictionary(kind):
                # Parquet and Arrow IPC keep dictionary-encoded columns (pandas categoricals):
                # events carry the values (a null in the dictionary becomes a plain null), so
                # roles are checked on them and the lake's files unify whatever the dictionary.
                if all(len(chunk.dictionary) == 0 for chunk in column.chunks):  # as above
                    table = table.set_column(i, name, pa.nulls(len(column)))
                    continue
                if not column.num_chunks:
                    continue
                column = pa.chunked_array(
                    [_plain_array(c.dictionary).take(c.indices) for c in column.chunks]
                )
            if _has_view(column.type) and column.num_chunks:
                column = pa.chunked_array([_plain_array(chunk) for chunk in column.chunks])
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            continue  # values Arrow cannot convert (dictionaries of structs, lists): kept
        if column.type != kind:
            table = table.set_column(i, name, column)
    return table


def _empty_categoricals(schema: pa.Schema) -> set[str]:
    """Columns pandas wrote from a categorical with no categories (its schema metadata says)."""
    try:
        columns = json.loads((schema.metadata or {})[b"pandas"])["columns"]
        return {
            c["field_name"]
            for c in columns
            if c.get("pandas_type") == "categorical"
            and (c.get("metadata") or {}).get("num_categories") == 0
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        return set()  # no pandas metadata, or not the shape pandas writes


def _has_text(kind: pa.DataType) -> bool:
    """Whether values of ``kind`` hold strings anywhere (nested and extension types included)."""
    return _holds(
        kind,
        lambda k: pa.types.is_string(k) or pa.types.is_large_string(k) or k == pa.string_view(),
    )


def _invalid_rows(table: pa.Table) -> dict[int, str]:
    """Rows Arrow's full validation rejects in a text column, with their reason: ``invalid_utf8``
    (a string that is not UTF-8: what Arrow does not check when it reads), else
    ``invalid_value:<column>``. One validation per text column: valid data (the usual case)
    costs that pass alone; halving only around the bad rows."""
    found: dict[int, str] = {}

    def problem(values: pa.Array) -> str | None:
        try:
            values.validate(full=True)
            return None
        except pa.ArrowInvalid as exc:
            return str(exc)

    def find(values: pa.Array, offset: int, name: str) -> None:
        if pa.types.is_dictionary(values.type):  # each row's own value, not the whole dictionary
            # (a layout take does not know: rows are checked with the whole dictionary)
            with contextlib.suppress(pa.ArrowException):
                values = values.dictionary.take(values.indices)
        message = problem(values)
        if message is not None and pa.types.is_nested(values.type):
            # A slice of a nested array validates its children whole: its own rows, copied,
            # are what it holds.
            values = values.take(pa.array(np.arange(len(values))))
            message = problem(values)
        if message is None:
            return
        if len(values) == 1:
            found[offset] = "invalid_utf8" if "UTF8" in message else f"invalid_value:{name}"
            return
        half = len(values) // 2
        find(values.slice(0, half), offset, name)
        find(values.slice(half), offset + half, name)

    for name, column in zip(table.column_names, table.columns, strict=True):
        if _has_text(column.type):
            start = 0
            for chunk in column.chunks:
                find(chunk, start, name)
                start += len(chunk)
    return found


def _text_as_bytes(kind: pa.DataType) -> pa.DataType:
    """``kind`` with every string type as binary (values that are not UTF-8 become bytes)."""
    if pa.types.is_string(kind) or kind == pa.string_view():
        return pa.binary()
    if pa.types.is_large_string(kind):
        return pa.large_binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = kind.value_field.with_type(_text_as_bytes(kind.value_type))
        return pa.list_(item) if pa.types.is_list(kind) else pa.large_list(item)
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_text_as_bytes(f.type)) for f in kind])
    return kind


def _raw_json(table: pa.Table, index: np.ndarray) -> pa.Array:
    """Rows ``index`` of ``table``, each as one JSON object (the ``raw`` of a columnar dead
    letter), every column kept: same-named columns both, and values Python cannot hold (a time
    past year 9999, a zone it does not know, invalid UTF-8) as Arrow has them (see
    :func:`_py_values`)."""
    columns = [_py_values(column, index) for column in table.columns]
    if not columns:
        return pa.array([b"{}"] * len(index), pa.binary())
    names = table.column_names
    return pa.array(
        [row_json(zip(names, values, strict=True)) for values in zip(*columns, strict=True)],
        pa.binary(),
    )


def _py_values(column: pa.ChunkedArray, index: np.ndarray) -> list[object]:
    """The values at ``index`` as Python objects; one by one only where the column has a value
    Python cannot hold: then that value as bytes (invalid UTF-8), as its stored number (a time
    out of Python's range) or as Arrow prints it (anything else)."""
    try:
        return column.take(pa.array(index)).to_pylist()
    except Exception:  # any layout or value Python cannot hold: one by one below
        pass
    values: list[object] = []
    for i in index.tolist():
        one = column.slice(i, 1).combine_chunks()  # a slice needs no kernel, whatever the layout
        values.append(_py_value(one))
    return values


def _py_value(one: pa.Array) -> object:
    try:
        return one.to_pylist()[0]
    except Exception:  # see _py_values
        pass
    try:
        if _has_text(one.type):  # its strings as their bytes
            return one.cast(_text_as_bytes(one.type)).to_pylist()[0]
        if pa.types.is_temporal(one.type):  # its stored number, in the column's unit
            return one.view(pa.int64() if one.type.bit_width == 64 else pa.int32())[0].as_py()
    except Exception:  # see _py_values
        pass
    return one.to_string(indent=0, window=1, skip_new_lines=True)


#: How a row without bytes of its own is written (values JSON has no form for: their str).
_COMPACT: Final[dict[str, Any]] = {"default": str, "separators": (",", ":"), "ensure_ascii": False}


def row_json(row: Mapping[str, object] | Iterable[tuple[str, object]]) -> bytes:
    """A row as compact JSON: the ``raw`` of a dead letter that has no bytes of its own (columnar
    input, a row a processor raised on); values JSON has no form for become their ``str``.

    ``row`` may be (name, value) pairs: then a name that comes twice is written twice (columnar
    input can hold two columns of one name).

    Example:
        >>> row_json({"player_id": "p1", "level": 3})
        b'{"player_id":"p1","level":3}'
        >>> row_json([("id", 1), ("id", 2)])
        b'{"id":1,"id":2}'
    """
    if isinstance(row, Mapping):
        return json.dumps(row, **_COMPACT).encode()
    fields = (
        f"{json.dumps(name, **_COMPACT)}:{json.dumps(value, **_COMPACT)}" for name, value in row
    )
    return ("{" + ",".join(fields) + "}").encode()
