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

__all__ = ["DEAD_LETTER_SCHEMA", "Decoded", "decode_ndjson"]

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
    """Byte ranges of the non-blank lines of a block (computed with numpy, once, on demand)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
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
        self.buffer = pa.py_buffer(data)

    def __len__(self) -> int:
        return len(self.starts)

    def span(self, first: int, stop: int) -> pa.Buffer:
        """Zero-copy bytes of lines ``first`` to ``stop - 1``."""
        begin = int(self.starts[first])
        return self.buffer.slice(begin, int(self.ends[stop - 1]) - begin)

    def raw(self, indices: np.ndarray) -> pa.Array:
        # Dead letters are the rare rows; slicing them one by one keeps their bytes exact.
        return pa.array(
            [self.data[self.starts[i] : self.ends[i]] for i in indices.tolist()], pa.binary()
        )


def _read(buffer: pa.Buffer, schema: EventSchema, quoted_time: bool = False) -> pa.Table:
    roles = list(schema.string_roles) + ([schema.time] if quoted_time else [])
    return pj.read_json(
        pa.BufferReader(buffer),
        read_options=pj.ReadOptions(use_threads=True, block_size=_WHOLE_BLOCK),
        parse_options=pj.ParseOptions(
            explicit_schema=pa.schema([(name, pa.string()) for name in roles]),
            unexpected_field_behavior="infer",
            newlines_in_values=False,
        ),
    )


def _quote_times(data: bytes, schema: EventSchema) -> bytes:
    """Rewrite ``"time": 123`` as ``"time": "123"`` so mixed ISO/epoch times share one column.

    One regex pass over the whole block (RE2, linear). Inside a JSON string a quote is escaped,
    so only real ``"time":`` members match (a nested member of the same name is quoted too).
    """
    name = re.escape(json.dumps(schema.time))
    rewritten = pc.replace_substring_regex(
        pa.array([data], pa.large_binary()),
        pattern=name + r"(\s*):(\s*)(-?[0-9][0-9.eE+-]*)",
        replacement=name.replace("\\", "") + r'\1:\2"\3"',
    )
    return bytes(rewritten[0].as_buffer())


def _is_time_switch(message: str, schema: EventSchema) -> bool:
    change = _TYPE_CHANGE.search(message)
    return change is not None and change.group(1).strip("/") == schema.time


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


def _read_with_recovery(
    lines: _Lines, schema: EventSchema, quoted_time: bool
) -> tuple[list[tuple[int, pa.Table]], list[tuple[int, str]]]:
    """Read the block in contiguous pieces around the lines Arrow rejects.

    A bad line costs one extra read of the piece it was in; pieces shrink where errors are dense.
    """
    segments: list[tuple[int, pa.Table]] = []
    bad: list[tuple[int, str]] = []
    explicit = (*schema.string_roles, *((schema.time,) if quoted_time else ()))
    pos, total, size = 0, len(lines), _RECOVERY_MAX_LINES // 4
    while pos < total:
        stop = min(total, pos + size)
        try:
            segments.append((pos, _read(lines.span(pos, stop), schema, quoted_time)))
            pos, size = stop, min(size * 2, _RECOVERY_MAX_LINES)
            continue
        except pa.ArrowInvalid as exc:
            size = max(size // 2, _RECOVERY_MIN_LINES)
            found = _ROW.search(str(exc))
            if found is None:  # an error Arrow does not place: give up on this line only
                row, reason, starts_segment = 0, "invalid_json", False
            else:
                row = int(found.group(1))
                reason, starts_segment = _bad_reason(str(exc), explicit)
        if row > 0:
            # Everything before the failing row parsed together, so it parses alone too.
            segments.append((pos, _read(lines.span(pos, pos + row), schema, quoted_time)))
        if starts_segment and row > 0:
            pos += row  # the failing row begins the next piece
        else:
            bad.append((pos + row, reason))
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


def _check_segment(table: pa.Table, schema: EventSchema) -> tuple[pa.Table, pa.Array]:
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


def decode_ndjson(data: bytes, schema: EventSchema | None = None) -> Decoded:
    """Decode a block of newline-delimited JSON events.

    Args:
        data: one JSON object per line (``\\n``-separated; a trailing newline is optional).
        schema: role columns; the id, key and type roles must be JSON strings, the time role an
            ISO-8601 string (zone offset optional, UTC assumed) or epoch milliseconds.

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
    original = data
    lines: _Lines | None = None
    quoted_time = False
    bad: list[tuple[int, str]] = []
    try:
        segments = [(0, _read(pa.py_buffer(data), schema))]
    except pa.ArrowInvalid as first_error:
        if _is_time_switch(str(first_error), schema):
            # ISO strings and epoch numbers in one block: read every time as a string.
            data, quoted_time = _quote_times(data, schema), True
        try:
            segments = [(0, _read(pa.py_buffer(data), schema, quoted_time))]
        except pa.ArrowInvalid:
            lines = _Lines(data)
            segments, bad = _read_with_recovery(lines, schema, quoted_time)

    tables: list[pa.Table] = []
    good_lines: list[np.ndarray] = []
    for first, table in segments:
        table, reason = _check_segment(table, schema)
        rows = np.arange(first, first + table.num_rows, dtype=np.int64)
        is_bad = reason.is_valid().to_numpy(zero_copy_only=False)
        if is_bad.any():
            bad.extend(zip(rows[is_bad].tolist(), reason.drop_null().to_pylist(), strict=True))
            table = table.filter(pc.invert(reason.is_valid()))
            rows = rows[~is_bad]
        tables.append(table)
        good_lines.append(rows)

    tables, good_lines = _unify(tables, good_lines, bad)
    good = _concat(tables, schema)
    dead = _empty(DEAD_LETTER_SCHEMA)
    if bad:
        bad.sort()
        if lines is None or quoted_time:
            lines = _Lines(original)  # the raw bytes as they came, not the rewritten ones
        idx = np.fromiter((b[0] for b in bad), dtype=np.int64, count=len(bad))
        dead = pa.RecordBatch.from_arrays(
            [lines.raw(idx), pa.array([b[1] for b in bad], pa.string()), pa.array(idx)],
            schema=DEAD_LETTER_SCHEMA,
        )
    return Decoded(
        good=good,
        dead=dead,
        good_lines=np.concatenate(good_lines) if good_lines else np.empty(0, np.int64),
        lines=good.num_rows + dead.num_rows,
    )


def _unify(
    tables: list[pa.Table], rows: list[np.ndarray], bad: list[tuple[int, str]]
) -> tuple[list[pa.Table], list[np.ndarray]]:
    """Keep the segments whose payload types unify; the rows of the others become dead letters.

    Segments only exist on the slow path, and each infers its own payload types; a payload column
    that is a number in one segment and a string in another cannot share one column.
    """
    if len(tables) < 2:
        return tables, rows
    try:
        pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
        return tables, rows
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    kept, kept_rows = [tables[0]], [rows[0]]
    unified = tables[0].schema
    for table, lines in zip(tables[1:], rows[1:], strict=True):
        try:
            unified = pa.unify_schemas([unified, table.schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            reason = f"bad_type:{_conflicting_column(unified, table.schema)}"
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


def _concat(tables: list[pa.Table], schema: EventSchema) -> pa.RecordBatch:
    if not tables:
        roles = [(name, pa.string()) for name in schema.string_roles]
        return _empty(pa.schema([*roles, (schema.time, TIME_TYPE)]))
    table = (
        tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    )
    if table.num_rows == 0:
        return _empty(table.schema)
    return table.combine_chunks().to_batches()[0]
