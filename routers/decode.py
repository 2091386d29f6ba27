"""Bulk decoding of newline-delimited JSON into an Arrow batch, bad lines into dead letters.

The fast path is one ``pyarrow.json.read_json`` call over the whole block. Only when Arrow rejects
the block does the slow path run: Arrow's error names the failing row, so the block is re-read in
contiguous pieces around each bad line (about two reads per bad line, never one per good line).

Every non-blank line ends in exactly one of the two outputs: ``good.num_rows + dead.num_rows ==
lines``. Blank (whitespace-only) lines are not events and are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from routers.schema import TIME_TYPE, EventSchema

__all__ = ["DEAD_LETTER_SCHEMA", "DecodeHints", "Decoded", "decode_ndjson"]

#: Columns of a dead-letter batch. ``line`` is the 0-based index among the block's non-blank lines.
DEAD_LETTER_SCHEMA: Final[pa.Schema] = pa.schema(
    [("raw", pa.binary()), ("reason", pa.string()), ("line", pa.int64())]
)
# Arrow reads the block as one piece so that an error's row number is exact (1 GiB is a cap, not
# an allocation: Arrow sizes its buffers to the data).
_WHOLE_BLOCK: Final[int] = 1 << 30
_ROW = re.compile(r"in row (\d+)")
_TYPE_CHANGE = re.compile(r"Column\(([^)]*)\) changed from (\w+) to (\w+)")
_WHITESPACE_BYTES: Final[np.ndarray] = np.frombuffer(b" \t\r\n", dtype=np.uint8)
#: Piece sizes once a block needs recovery: a piece halves after a failure and doubles after a
#: clean read, so dense errors cost small re-reads and sparse ones few Arrow calls (~30 us each).
_RECOVERY_MIN_LINES: Final[int] = 32
#: Below this many lines, per-line Python work (slicing, joining) beats a pass over the block.
_FEW_LINES: Final[int] = 64
_RECOVERY_MAX_LINES: Final[int] = 4096


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

    def __init__(self, data: bytes) -> None:
        self.data: bytes | bytearray = data
        arr = np.frombuffer(data, dtype=np.uint8)
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
        offsets = np.append(self.starts, self.ends[-1]).astype(np.int64)
        view = pa.Array.from_buffers(
            pa.large_binary(), len(self), [None, pa.py_buffer(offsets), self.buffer]
        )
        # Lines are consecutive in the view; a blanked line between two only pads the earlier one.
        pattern = re.escape(json.dumps(time_column)) + r'\s*:\s*"'
        quoted = pc.match_substring_regex(view, pattern).to_numpy(zero_copy_only=False)
        if quoted.all() or not quoted.any():
            return [self]
        # The smaller group first: it may be compacted out of bytes the larger one then blanks.
        small, large = sorted([np.flatnonzero(quoted), np.flatnonzero(~quoted)], key=len)
        return [self.without(large), self.without(small, in_place=True)]

    def without(self, drop: np.ndarray | list[int], in_place: bool = False) -> _Lines:
        """This set less the lines at positions ``drop``, blanked out.

        Args:
            drop: positions in this set.
            in_place: blank this set's own bytes (when they are a private copy) instead of a new
                copy; this set must not be used afterwards.
        """
        drop = np.asarray(drop, dtype=np.int64)
        keep = np.ones(len(self), dtype=bool)
        keep[drop] = False
        if keep.sum() <= _FEW_LINES:
            return self._compact(np.flatnonzero(keep))
        data = self.data if in_place and self.owned else bytearray(self.data)
        arr = np.frombuffer(data, dtype=np.uint8)
        if len(drop) <= _FEW_LINES:
            for i in drop.tolist():
                arr[self.starts[i] : self.ends[i]] = ord(" ")
        else:  # many lines: mark every dropped byte at once
            delta = np.zeros(len(arr) + 1, dtype=np.int64)
            np.add.at(delta, self.starts[drop], 1)
            np.add.at(delta, self.ends[drop], -1)
            arr[np.cumsum(delta[:-1]) > 0] = ord(" ")
        subset = object.__new__(_Lines)
        subset.data = data
        subset.buffer = pa.py_buffer(data)
        subset.starts, subset.ends = self.starts[keep], self.ends[keep]
        subset.index = self.index[keep]
        subset.owned = True
        return subset

    def _compact(self, keep: np.ndarray) -> _Lines:
        """Only the lines at positions ``keep`` (few), joined into a new, small block."""
        pieces = [self.data[self.starts[i] : self.ends[i]] for i in keep.tolist()]
        subset = object.__new__(_Lines)
        subset.data = b"\n".join(pieces)
        subset.buffer = pa.py_buffer(subset.data)
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        subset.starts = np.cumsum(lengths + 1) - (lengths + 1)  # each line plus its newline
        subset.ends = subset.starts + lengths
        subset.index = self.index[keep]
        subset.owned = False
        return subset

    def raw(self, indices: np.ndarray) -> pa.Array:
        # Dead letters are the rare rows; slicing them one by one keeps their bytes exact.
        return pa.array(
            [self.data[self.starts[i] : self.ends[i]] for i in indices.tolist()], pa.binary()
        )


def _read(buffer: pa.Buffer, schema: EventSchema) -> pa.Table:
    return pj.read_json(
        pa.BufferReader(buffer),
        read_options=pj.ReadOptions(use_threads=True, block_size=_WHOLE_BLOCK),
        parse_options=pj.ParseOptions(
            explicit_schema=pa.schema([(name, pa.string()) for name in schema.string_roles]),
            unexpected_field_behavior="infer",
            newlines_in_values=False,
        ),
    )


def _bad_reason(message: str, explicit: tuple[str, ...]) -> tuple[str, bool]:
    """Reason for a row Arrow rejected, and whether it is rather the start of a new type segment.

    A column read with an explicit type (the string roles) cannot change, so a row that breaks it
    is bad. Any other
    column's type is inferred from the rows before; when it changes, neither side is known to be
    wrong, so a new segment starts and ``_unify`` decides.
    """
    change = _TYPE_CHANGE.search(message)
    if change is None:
        return "invalid_json", False
    column = change.group(1).strip("/").replace("/", ".")
    if column == "":
        return "not_an_object", False
    return f"bad_type:{column}", column not in explicit


_Read = tuple[list[tuple[np.ndarray, pa.Table]], list[tuple[int, str]]]


def _read_lines(lines: _Lines, schema: EventSchema, whole: bool = True) -> _Read:
    """Read a set of lines: whole if it parses, else misshapen lines out, by time kind, in pieces.

    Returns:
        Segments as (block line index of each row, table), and (block line index, reason) of
        the lines that are bad.
    """
    if whole:
        try:
            return [(lines.index, _read(lines.buffer, schema))], []
        except pa.ArrowInvalid:
            pass
    misshapen = lines.misshapen()
    bad = [(int(lines.index[i]), reason) for i, reason in misshapen]
    if misshapen:
        lines = lines.without([i for i, _ in misshapen])  # a private copy from here on
    segments: list[tuple[np.ndarray, pa.Table]] = []
    for group in lines.by_time_kind(schema.time):
        try:
            segments.append((group.index, _read(group.buffer, schema)))
        except pa.ArrowInvalid:
            more_segments, more_bad = _read_in_pieces(group, schema)
            segments += more_segments
            bad += more_bad
    return segments, bad


def _read_in_pieces(lines: _Lines, schema: EventSchema) -> _Read:
    """Read contiguous pieces around the lines Arrow rejects.

    A bad line costs one extra read of the piece it was in; pieces shrink where errors are dense.
    """
    segments: list[tuple[np.ndarray, pa.Table]] = []
    bad: list[tuple[int, str]] = []
    pos, total, size = 0, len(lines), _RECOVERY_MAX_LINES // 4
    while pos < total:
        stop = min(total, pos + size)
        try:
            segments.append((lines.index[pos:stop], _read(lines.span(pos, stop), schema)))
            pos, size = stop, min(size * 2, _RECOVERY_MAX_LINES)
            continue
        except pa.ArrowInvalid as exc:
            size = max(size // 2, _RECOVERY_MIN_LINES)
            found = _ROW.search(str(exc))
            if found is None:  # an error Arrow does not place: give up on this line only
                row, reason, starts_segment = 0, "invalid_json", False
            else:
                row = int(found.group(1))
                reason, starts_segment = _bad_reason(str(exc), schema.string_roles)
        if row > 0:
            # Everything before the failing row parsed together, so it parses alone too.
            prefix = _read(lines.span(pos, pos + row), schema)
            segments.append((lines.index[pos : pos + row], prefix))
        if starts_segment and row > 0:
            pos += row  # the failing row begins the next piece
        else:
            bad.append((int(lines.index[pos + row]), reason))
            pos += row + 1
    return segments, bad


def _normalize_time(column: pa.ChunkedArray | None, n: int) -> pa.Array:
    """Event times as ``timestamp[ms, UTC]``; unusable values become null (reported as bad_type)."""
    if column is None:
        return pa.nulls(n, TIME_TYPE)
    arr = column.combine_chunks()
    kind = arr.type
    if pa.types.is_null(kind):
        return pa.nulls(n, TIME_TYPE)
    if pa.types.is_integer(kind):
        return pc.cast(arr, pa.int64()).cast(TIME_TYPE)
    if pa.types.is_floating(kind):
        return pc.cast(pc.floor(arr), pa.int64(), safe=False).cast(TIME_TYPE)
    if pa.types.is_timestamp(kind):
        return pc.cast(arr, TIME_TYPE if kind.tz else pa.timestamp("ms"), safe=False).cast(
            TIME_TYPE
        )
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # Epoch milliseconds that arrived as numbers but were quoted to share the column.
        numeric = pc.match_substring_regex(arr, r"^-?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?$")
        has_numeric = pc.any(numeric).as_py()
        iso = pc.if_else(numeric, None, arr) if has_numeric else arr
        # Times without a zone offset are taken as UTC (the common telemetry convention).
        zoned = pc.match_substring_regex(iso, r"(Z|z|[+-]\d\d(:?\d\d)?)$")
        with_zone = pc.if_else(zoned, iso, pc.binary_join_element_wise(iso, "Z", ""))
        # Parse at microseconds (clients send them), then truncate to milliseconds.
        parsed = pc.cast(_cast_or_null(with_zone, pa.timestamp("us", "UTC")), TIME_TYPE, safe=False)
        if not has_numeric:
            return parsed
        millis = _cast_or_null(pc.if_else(numeric, arr, None), pa.float64())
        as_time = pc.cast(pc.cast(pc.floor(millis), pa.int64(), safe=False), TIME_TYPE)
        return pc.if_else(numeric, as_time, parsed)
    return pa.nulls(n, TIME_TYPE)


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
    """Normalize the time role and return (table, reason per row: null when the row is good)."""
    n = table.num_rows
    original = table.column(schema.time) if schema.time in table.column_names else None
    times = _normalize_time(original, n)
    if original is None:
        table = table.append_column(pa.field(schema.time, TIME_TYPE), times)
    else:
        table = table.set_column(
            table.column_names.index(schema.time), pa.field(schema.time, TIME_TYPE), times
        )
    reason = pa.nulls(n, pa.string())
    for role in schema.required:
        present = (
            original.is_valid()
            if role == schema.time and original is not None
            else times.is_valid()
            if role == schema.time
            else table.column(role).is_valid()
        )
        missing = pc.invert(present)
        reason = pc.if_else(pc.and_(reason.is_null(), missing), f"missing_field:{role}", reason)
        if role == schema.time:
            unusable = pc.and_(present, times.is_null())
            reason = pc.if_else(pc.and_(reason.is_null(), unusable), f"bad_type:{role}", reason)
    return table, reason


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


@dataclass
class DecodeHints:
    """What earlier blocks of one stream showed, so the next block skips reads that would fail.

    Keep one per stream (a source partition) and pass it to every :func:`decode_ndjson` call;
    results never depend on the hints, only the work done to reach them.

    Attributes:
        dirty: the last block had bad lines: skip the whole-block read that would fail again.
    """

    dirty: bool = False


def decode_ndjson(
    data: bytes, schema: EventSchema | None = None, hints: DecodeHints | None = None
) -> Decoded:
    """Decode a block of newline-delimited JSON events.

    Args:
        data: one JSON object per line (``\\n``-separated; a trailing newline is optional).
        schema: role columns; the id, key and type roles must be JSON strings, the time role an
            ISO-8601 string (zone offset optional, UTC assumed) or epoch milliseconds.
        hints: per-stream hints (see :class:`DecodeHints`), updated by the call.

    Returns:
        A :class:`Decoded` with the good events and the dead letters (raw line and a reason:
        ``invalid_json``, ``not_an_object``, ``missing_field:<col>``, ``bad_type:<col>``).

    Example:
        >>> good = b'{"event_id":"e1","player_id":"p1","event_time":0,"event_type":"login"}'
        >>> out = decode_ndjson(good + b"\\n{oops\\n")
        >>> out.good.num_rows, out.dead.column("reason").to_pylist()
        (1, ['invalid_json'])
        >>> out.dead.column("raw")[0].as_py()
        b'{oops'
    """
    schema = schema or EventSchema()
    hints = hints if hints is not None else DecodeHints()
    lines: _Lines | None = None
    segments: list[tuple[np.ndarray, pa.Table]] = []
    bad: list[tuple[int, str]] = []
    fast: pa.Table | None = None
    if not hints.dirty:
        try:
            fast = _read(pa.py_buffer(data), schema)
            segments = [(np.arange(fast.num_rows, dtype=np.int64), fast)]  # row i = line i
        except pa.ArrowInvalid:
            fast = None
    if fast is None:
        lines = _Lines(data)
        segments, bad = _read_lines(lines, schema, whole=not hints.dirty)
    # A stream whose blocks keep having bad lines skips the whole-block read that would fail.
    hints.dirty = bool(bad)

    tables = [table for _, table in segments]
    rows = [index for index, _ in segments]
    tables, rows = _unify(tables, rows, bad, schema)
    table = _concat(tables, schema)
    good_lines = np.concatenate(rows) if rows else np.empty(0, np.int64)
    if len(good_lines) > 1 and (np.diff(good_lines) < 0).any():
        order = np.argsort(good_lines, kind="stable")  # groups read apart: back to line order
        table, good_lines = table.take(pa.array(order)), good_lines[order]
    table, reason = _check_roles(table, schema)
    is_bad = reason.is_valid().to_numpy(zero_copy_only=False)
    if is_bad.any():
        bad.extend(zip(good_lines[is_bad].tolist(), reason.drop_null().to_pylist(), strict=True))
        table = table.filter(pc.invert(reason.is_valid()))
        good_lines = good_lines[~is_bad]
    good = table.combine_chunks().to_batches()[0] if table.num_rows else _empty(table.schema)

    dead = _empty(DEAD_LETTER_SCHEMA)
    if bad:
        bad.sort()
        lines = lines or _Lines(data)
        idx = np.fromiter((b[0] for b in bad), dtype=np.int64, count=len(bad))
        dead = pa.RecordBatch.from_arrays(
            [lines.raw(idx), pa.array([b[1] for b in bad], pa.string()), pa.array(idx)],
            schema=DEAD_LETTER_SCHEMA,
        )
    return Decoded(good=good, dead=dead, good_lines=good_lines, lines=good.num_rows + dead.num_rows)


def _unify(
    tables: list[pa.Table], rows: list[np.ndarray], bad: list[tuple[int, str]], schema: EventSchema
) -> tuple[list[pa.Table], list[np.ndarray]]:
    """Keep the segments whose payload types unify; the rows of the others become dead letters.

    Segments only exist on the slow path, and each infers its own payload types; a payload column
    that is a number in one segment and a string in another cannot share one column. The time
    role is left out here: :func:`_concat` reconciles it.
    """
    if len(tables) < 2:
        return tables, rows

    def payload(t: pa.Table) -> pa.Schema:
        return pa.schema([f for f in t.schema if f.name != schema.time])

    try:
        pa.unify_schemas([payload(t) for t in tables], promote_options="permissive")
        return tables, rows
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    kept, kept_rows = [tables[0]], [rows[0]]
    unified = payload(tables[0])
    for table, lines in zip(tables[1:], rows[1:], strict=True):
        try:
            unified = pa.unify_schemas([unified, payload(table)], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            reason = f"bad_type:{_conflicting_column(unified, payload(table))}"
            bad.extend((int(line), reason) for line in lines)
            continue
        kept.append(table)
        kept_rows.append(lines)
    return kept, kept_rows


def _conflicting_column(left: pa.Schema, right: pa.Schema) -> str:
    for f in right:
        if f.name in left.names:
            try:
                pa.unify_schemas(
                    [pa.schema([left.field(f.name)]), pa.schema([f])], promote_options="permissive"
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return f.name
    return "schema"


def _concat(tables: list[pa.Table], schema: EventSchema) -> pa.Table:
    """One table from the segments; a time column read as different types becomes strings."""
    if not tables:
        roles = [(name, pa.string()) for name in schema.string_roles]
        return pa.table({n: pa.array([], t) for n, t in [*roles, (schema.time, pa.null())]})
    kinds = {t.schema.field(schema.time).type for t in tables if schema.time in t.column_names}
    if len(kinds) > 1:
        tables = [_time_as_string(t, schema.time) for t in tables]
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def _time_as_string(table: pa.Table, column: str) -> pa.Table:
    if column not in table.column_names:
        return table
    values = table.column(column)
    try:
        text = pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Objects or lists: unusable as times; keep nulls as nulls (missing, not bad).
        text = pc.if_else(values.is_valid(), pa.scalar("<unusable>"), pa.scalar(None, pa.string()))
    return table.set_column(table.column_names.index(column), column, text)
