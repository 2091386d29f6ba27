"""One schema per stream: declared columns cast, the others inferred and widened, never mixed.

Clients drift: a field is missing from some event types, arrives as ``5`` in one block and ``4.99``
in the next, as ``"max"`` in a third. Arrow infers a type per read, so two blocks of one stream
can disagree, and any concatenation of them would fail. A :class:`SchemaContract` is kept per
stream (one per pipeline, across all source partitions) and every decoded segment is conformed
to it before it leaves the decoder:

- a **declared** column (``schema.columns`` in the policy) is cast to its declared type;
- an **undeclared** column takes the type it was first inferred with, and *widens* when a later
  segment needs it: null to anything, int64 to double, a struct gains the fields it lacked;
- a later value of another kind is cast to the column's type when Arrow can (``"12"`` to 12 for
  an int64 column, 5 to ``"5"`` for a string column); a value that cannot be cast makes its row,
  and only that row, a dead letter ``bad_type:<column>``. So the first inferred kind wins: declare
  a column's type to choose it instead of the first event that happens to carry it;
- an **undeclared** integer beyond ±2^53 (at any depth: a field of an object, an item of a list)
  makes its row a dead letter ``bad_type:<column>``: such a column may widen to double at any
  later segment (and the lake stores undeclared numbers as double), where that integer has no
  exact value. JSON itself promises no more: JavaScript reads such a number rounded, and so does
  Arrow's JSON reader where one block mixes integers and fractions in a column (it reads them
  all as doubles, before any contract sees them). Declare the column ``int64`` (or ``string``)
  to keep 64-bit ids exact;
- a column the segment lacks is added as nulls; column order is the contract's, never the
  segment's;
- a field whose name equals another's but for case (``Level`` beside ``level``; ``A`` beside
  ``a`` inside an object; compared by Unicode lowercase, Delta Lake's rule) makes the rows that
  hold a value there dead letters ``duplicate_field:<path>`` (``tier.A``, ``tags[].C``), and the
  field stays out of the schema: JSON keys are case-sensitive, Delta's column names are not, at
  any depth, so the lake could store neither. The name the stream met first keeps the place (a
  role, a declared column, the source's ``reserved`` arrival column come first).

The contract only grows (columns are added, types widen), so every batch it produced casts safely
to its latest schema: :func:`concat_conformed` does that before concatenating.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "SchemaContract",
    "cast_rows",
    "combined",
    "concat_conformed",
    "parse_type",
    "with_items",
]

#: Type names a policy may declare, and the Arrow type each means.
TYPE_NAMES: Final[dict[str, pa.DataType]] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "double": pa.float64(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("ms", "UTC"),
    "date": pa.date32(),
}
_INTEGER = r"^\s*[+-]?\d+\s*$"
_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


def parse_type(name: str) -> pa.DataType:
    """The Arrow type for a declared type name.

    Raises:
        ValueError: an unknown name, with the known ones.

    Example:
        >>> parse_type("double")
        DataType(double)
    """
    try:
        return TYPE_NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"expected one of {', '.join(TYPE_NAMES)}, got {name!r}") from None


class SchemaContract:
    """The schema of one stream, grown as segments arrive (see the module docstring).

    Not thread-safe: one per stream, used by the thread that decodes it.

    Args:
        declared: column name to its declared type (payload columns; roles are typed by the
            decoder itself).
        fixed: columns whose type is fixed upstream (the roles): kept first, never widened.
        reserved: columns added beside the contract's later (the source's arrival time): an
            event's field of the same name but for case is a ``duplicate_field``.

    Example:
        >>> contract = SchemaContract({"amount": pa.float64()})
        >>> a, bad = contract.conform(pa.table({"amount": [5, 7], "level": ["1", "2"]}))
        >>> a.schema.types, bad
        ([DataType(double), DataType(string)], None)
        >>> b, bad = contract.conform(pa.table({"level": [3, 4], "tier": ["vip", None]}))
        >>> b.column_names, b["level"].to_pylist(), b["amount"].null_count
        (['amount', 'level', 'tier'], ['3', '4'], 2)
        >>> c, bad = contract.conform(pa.table({"amount": ["4.99", "free"]}))
        >>> c["amount"].to_pylist(), bad.to_pylist()
        ([4.99, None], [None, 'bad_type:amount'])
    """

    def __init__(
        self,
        declared: Mapping[str, pa.DataType] | None = None,
        fixed: Mapping[str, pa.DataType] | None = None,
        reserved: Iterable[str] = (),
    ) -> None:
        self.declared = dict(declared or {})
        self.fixed = dict(fixed or {})
        self._types: dict[str, pa.DataType] = {**self.fixed, **self.declared}
        #: Every name the stream holds, by its lowercase (see :meth:`_owner`).
        self._lower: dict[str, str] = {}
        for name in [*self._types, *reserved]:
            self._owner(name)
        #: How many times a column's type widened (a changed schema downstream).
        self.changes = 0

    @property
    def schema(self) -> pa.Schema:
        """The stream's schema so far."""
        return pa.schema(list(self._types.items()))

    def seed(self, schema: pa.Schema) -> None:
        """Start from a schema saved earlier (a checkpoint), so a resumed run types alike.

        A name equal to one the stream holds but for case is left out, at any depth (a schema
        saved before such names were refused may hold both).
        """
        for f in schema:
            if f.name in self.fixed or f.name in self.declared or self._owner(f.name) != f.name:
                continue
            kind = _type_without_twins(f.type)
            self._types[f.name] = self._widen(self._types.get(f.name), kind) or kind

    def reserve(self, names: Iterable[str]) -> None:
        """Columns added beside the contract's from now on (a source's own, such as
        ``kafka_offset``): a field named like one of them but for case is a
        ``duplicate_field`` from now on."""
        for name in names:
            self._owner(name)

    def _owner(self, name: str) -> str:
        """The name the stream holds for ``name`` ignoring case (``name`` itself when new)."""
        return self._lower.setdefault(name.lower(), name)

    def conform(self, table: pa.Table) -> tuple[pa.Table, pa.Array | None]:
        """``table`` with the contract's schema, and per row the reason it is bad (or None).

        Returns:
            (table, reasons): reasons is None when every row conforms, else a string array
            with ``bad_type:<column>`` on the rows whose value could not take the column's type
            (their value is null in the returned table) and ``duplicate_field:<path>`` on the
            rows holding a field named like another but for case (that field is not in the
            returned table); drop them.
        """
        n = table.num_rows
        reasons: pa.Array | None = None
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}

        def flag(reason: str, bad: pa.Array) -> None:
            nonlocal reasons
            marked = pc.if_else(bad, pa.scalar(reason), pa.scalar(None, pa.string()))
            reasons = marked if reasons is None else pc.coalesce(reasons, marked)

        def exact(name: str, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
            """An undeclared column without integers beyond 2^53 (their rows flagged)."""
            if name in self.fixed or name in self.declared or not _wide_ints(column.type):
                return column
            array = combined(column)
            inexact = _inexact_rows(array)
            if inexact is None:
                return column
            flag(f"bad_type:{name}", inexact)
            return pc.if_else(inexact, pa.scalar(None, column.type), array)

        for name, column in zip(table.column_names, table.columns, strict=True):
            if name in columns:
                continue  # a duplicate name: Arrow never produces one from JSON objects
            if self._owner(name) != name:
                held = combined(column).is_valid()
                if pc.any(held).as_py():
                    flag(f"duplicate_field:{name}", held)
                continue
            current = self._types.get(name)
            if current != column.type and pa.types.is_nested(column.type):
                clashes: list[tuple[str, pa.Array]] = []
                array = combined(column)
                kind = _without_clashes(array, current, name, clashes)
                for path, held in clashes:
                    flag(f"duplicate_field:{path}", held)
                if kind != array.type:  # by name: the fields left out are dropped
                    column = _cast_column(array, kind)
            column = exact(name, column)
            if current is None:
                self._types[name] = column.type
                columns[name] = column
                continue
            if column.type == current:
                columns[name] = column
                continue
            if name not in self.fixed and name not in self.declared:
                wider = self._widen(current, column.type)
                if wider is not None:
                    if wider != current:
                        self._types[name] = wider
                        self.changes += 1
                    columns[name] = _cast_column(column, wider)
                    continue
            values, bad = cast_rows(column, self._types[name])
            if bad is not None:
                flag(f"bad_type:{name}", bad)
            columns[name] = exact(name, values)  # e.g. quoted digits cast to an int64 column
        arrays = [
            columns[name] if name in columns else pa.nulls(n, kind)
            for name, kind in self._types.items()
        ]
        # Columns that widened after this segment's first column was placed: cast them now.
        arrays = [
            _cast_column(a, kind) for a, kind in zip(arrays, self._types.values(), strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema), reasons

    @staticmethod
    def _widen(current: pa.DataType | None, new: pa.DataType) -> pa.DataType | None:
        """The type both fit in without loss, if widening allows it (else None)."""
        if current is None or pa.types.is_null(current):
            return new
        if pa.types.is_null(new):
            return current
        numeric = {pa.int64(), pa.float64()}
        if current in numeric and new in numeric:
            return pa.float64()
        if pa.types.is_struct(current) and pa.types.is_struct(new):
            try:
                unified = pa.unify_schemas(
                    [pa.schema([("v", current)]), pa.schema([("v", new)])],
                    promote_options="permissive",
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                return None
            kind = unified.field("v").type
            # Only when every child widened by these same rules (no string meets number).
            return kind if _children_widen(current, kind) and _children_widen(new, kind) else None
        if pa.types.is_list(current) and pa.types.is_list(new):
            inner = SchemaContract._widen(current.value_type, new.value_type)
            return pa.list_(inner) if inner is not None else None
        return None


#: The largest integer a double holds exactly, with every integer below it.
_EXACT_IN_DOUBLE: Final[int] = 2**53


def _wide_ints(kind: pa.DataType) -> bool:
    """Whether ``kind`` holds integers wider than a double's 53 bits, at any depth."""
    if pa.types.is_integer(kind):
        return bool(kind.bit_width > 53)
    if pa.types.is_struct(kind):
        return any(_wide_ints(f.type) for f in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _wide_ints(kind.value_type)
    return False


def _inexact_rows(array: pa.Array) -> pa.Array | None:
    """Per row, whether it holds an integer beyond ±2^53 at any depth (None: no row does).

    Example:
        >>> _inexact_rows(pa.array([1, 2**53 + 1, None])).to_pylist()
        [False, True, False]
        >>> _inexact_rows(pa.array([{"a": [1]}, {"a": [2, -(2**60)]}])).to_pylist()
        [False, True]
        >>> _inexact_rows(pa.array([1.5])) is None
        True
    """
    kind = array.type
    if pa.types.is_integer(kind):
        if kind.bit_width < 54 or not len(array):
            return None
        # One pass, no allocation: the decode path pays this for every integer column.
        low, high = pc.min_max(array).values()
        if (
            low.as_py() is None
            or -_EXACT_IN_DOUBLE <= low.as_py() <= high.as_py() <= _EXACT_IN_DOUBLE
        ):
            return None
        big = pc.or_(
            pc.greater(array, pa.scalar(_EXACT_IN_DOUBLE, kind)),
            pc.less(array, pa.scalar(-_EXACT_IN_DOUBLE, kind)),
        )
        return pc.fill_null(big, False)
    found: pa.Array | None = None
    if pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            child = _inexact_rows(array.field(i))
            if child is not None:
                found = child if found is None else pc.or_(found, child)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        values, parents = _items(array)
        inner = _inexact_rows(values)
        if inner is not None:
            rows = pc.unique(pc.filter(parents, inner))
            found = pc.is_in(pa.array(np.arange(len(array))), value_set=rows)
    if found is None or not pc.any(found).as_py():
        return None
    return pc.and_(found, array.is_valid())


def _without_clashes(
    array: pa.Array, known: pa.DataType | None, path: str, found: list[tuple[str, pa.Array]]
) -> pa.DataType:
    """``array``'s type without the struct fields named like an earlier one, or alike but for
    case.

    At every depth, the fields ``known`` (the stream's type so far) has come first, then the
    array's own in order. For each field left out, ``found`` gets its path and, per row of
    ``array``, whether the row holds a value there.

    Example:
        >>> found = []
        >>> a = pa.array([{"a": 1}, {"A": 2}, {"b": [{"c": 1, "C": None}]}])
        >>> _without_clashes(a, None, "x", found)
        StructType(struct<a: int64, b: list<item: struct<c: int64>>>)
        >>> [(path, rows.to_pylist()) for path, rows in found]
        [('x.A', [False, True, False])]
    """
    kind = array.type
    if pa.types.is_struct(kind):
        old = known if known is not None and pa.types.is_struct(known) else pa.struct([])
        taken: dict[str, str] = {}
        for f in old:
            taken.setdefault(f.name.lower(), f.name)
        fields, kept = [], set()
        inner: list[tuple[str, pa.Array]] = []
        for i, f in enumerate(kind):
            child = array.field(i)
            where = f"{path}.{f.name}"
            if taken.setdefault(f.name.lower(), f.name) != f.name or f.name in kept:
                inner.append((where, child.is_valid()))
                continue
            kept.add(f.name)
            index = old.get_field_index(f.name)
            sub = old.field(index).type if index >= 0 else None
            fields.append(f.with_type(_without_clashes(child, sub, where, inner)))
        valid = array.is_valid()
        for where, rows in inner:
            held = pc.and_(rows, valid)
            if pc.any(held).as_py():
                found.append((where, held))
        return pa.struct(fields)
    if _list_like(kind):
        old_items = None
        if known is not None and _list_like(known):
            old_items = _item_type(known)
        values, parents = _items(array)
        items: list[tuple[str, pa.Array]] = []
        inner_type = _without_clashes(values, old_items, f"{path}[]", items)
        if inner_type == _item_type(kind):
            return kind
        rows = pa.array(np.arange(len(array)))
        for where, held in items:
            hit = pc.unique(pc.filter(parents, held))
            found.append((where, pc.and_(pc.is_in(rows, value_set=hit), array.is_valid())))
        if pa.types.is_map(kind):
            return pa.map_(inner_type.field(0), inner_type.field(1))
        return with_items(kind, inner_type)
    return kind


def with_items(kind: pa.DataType, items: pa.DataType) -> pa.DataType:
    """A list type (plain, large or fixed-size) like ``kind``, holding ``items`` instead.

    Example:
        >>> with_items(pa.list_(pa.int64(), 2), pa.string())
        FixedSizeListType(fixed_size_list<item: string>[2])
    """
    field = kind.value_field.with_type(items)
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(field, kind.list_size)
    return pa.list_(field) if pa.types.is_list(kind) else pa.large_list(field)


def _list_like(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_map(kind)
    )


def _item_type(kind: pa.DataType) -> pa.DataType:
    """A list-like type's items (a map's: its entries, ``struct<key, value>``)."""
    if pa.types.is_map(kind):
        return pa.struct([kind.key_field, kind.item_field])
    return kind.value_type


def _items(array: pa.Array) -> tuple[pa.Array, pa.Array]:
    """A list-like array's items over its rows' range (those under a null slot included), and
    per item the row it belongs to: ``flatten`` skips the items under a null slot,
    ``list_parent_indices`` counts them, so the two do not line up when a null slot spans some.

    Example:
        >>> null_first = pa.array([True, False])
        >>> a = pa.ListArray.from_arrays([0, 2, 3], pa.array([1, 2, 3]), mask=null_first)
        >>> [x.to_pylist() for x in _items(a)]
        [[1, 2, 3], [0, 0, 1]]
    """
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        values = array.values.slice(array.offset * size, len(array) * size)
        return values, pa.array(np.repeat(np.arange(len(array)), size))
    offsets = array.offsets.to_numpy()
    first, last = int(offsets[0]), int(offsets[-1])
    if pa.types.is_map(array.type):
        values = pa.StructArray.from_arrays(
            [array.keys.slice(first, last - first), array.items.slice(first, last - first)],
            fields=[array.type.key_field, array.type.item_field],
        )
    else:
        values = array.values.slice(first, last - first)
    # From the offsets (pc.list_parent_indices aborts the process on a map array in Arrow 26).
    return values, pa.array(np.repeat(np.arange(len(array)), np.diff(offsets)))


def _type_without_twins(kind: pa.DataType) -> pa.DataType:
    """``kind`` keeping, at every depth, the first of the struct fields named alike but for
    case."""
    if pa.types.is_struct(kind):
        taken: set[str] = set()
        fields = []
        for f in kind:
            if f.name.lower() not in taken:
                taken.add(f.name.lower())
                fields.append(f.with_type(_type_without_twins(f.type)))
        return pa.struct(fields)
    if pa.types.is_map(kind):
        item = kind.item_field.with_type(_type_without_twins(kind.item_type))
        return pa.map_(kind.key_field, item, kind.keys_sorted)
    if _list_like(kind):
        return with_items(kind, _type_without_twins(kind.value_type))
    return kind


def _children_widen(old: pa.DataType, new: pa.DataType) -> bool:
    for f in old:
        target = new.field(f.name).type
        if f.type != target and SchemaContract._widen(f.type, target) != target:
            return False
    return True


def cast_rows(
    column: pa.Array | pa.ChunkedArray, target: pa.DataType
) -> tuple[pa.Array, pa.Array | None]:
    """Cast ``column`` to ``target``; values that cannot be cast become null and are flagged.

    Returns:
        (cast values, a boolean array true where a non-null value failed, or None when none did).

    Example:
        >>> values, bad = cast_rows(pa.array(["1", "x", None]), pa.int64())
        >>> values.to_pylist(), bad.to_pylist()
        ([1, None, None], [False, True, False])
    """
    array = combined(column)
    numeric = pa.types.is_integer(target) or pa.types.is_floating(target)
    if pa.types.is_boolean(array.type) != pa.types.is_boolean(target) and (
        numeric or pa.types.is_boolean(target)
    ):
        # true is no number and 1 no boolean (Arrow would cast them): every value is bad.
        return pa.nulls(len(array), target), array.is_valid()
    if pa.types.is_nested(target):
        mixed = _changed_by_cast(array, target)
        if mixed is not None and pc.any(mixed).as_py():
            # Arrow casts true to 1 and 0 to false inside lists and structs, and drops the fields
            # the target lacks: rows that hold such values are bad (nothing changed or lost).
            kept = pc.if_else(mixed, pa.scalar(None, array.type), array)
            values, bad = cast_rows(kept, target)
            return values, mixed if bad is None else pc.or_(mixed, bad)
    text = pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
    if text and pa.types.is_timestamp(target) and target.tz:
        values = _text_to_time(array, target)
        bad = pc.and_(array.is_valid(), values.is_null())
        return values, bad if pc.any(bad).as_py() else None
    coarser = (
        pa.types.is_timestamp(array.type)
        and pa.types.is_timestamp(target)
        and _UNIT_DIGITS[array.type.unit] > _UNIT_DIGITS[target.unit]
    )
    if coarser:
        try:  # the digits beyond the target's unit are cut (such a cast never overflows)
            return pc.cast(array, target, safe=False), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    text_to_number = pa.types.is_string(array.type) and numeric
    if not text_to_number:  # Arrow's cast would take "NaN" and "inf" for numbers: not JSON's
        try:
            return pc.cast(array, target), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    # Strings into numbers, the common drift: one vectorized check keeps the rest to one cast.
    if text_to_number:
        pattern = _INTEGER if pa.types.is_integer(target) else _NUMBER
        plausible = pc.fill_null(pc.match_substring_regex(array, pattern), False)
        candidates = pc.if_else(plausible, array, pa.scalar(None, array.type))
        values = _cast_or_null(pc.utf8_trim_whitespace(candidates), target)
    else:
        values = _cast_or_null(array, target)
    bad = pc.and_(array.is_valid(), values.is_null())
    return values, bad if pc.any(bad).as_py() else None


#: Fraction digits of each timestamp unit.
_UNIT_DIGITS: Final[dict[str, int]] = {"s": 0, "ms": 3, "us": 6, "ns": 9}
#: An ISO-8601 date and time with a zone offset (``Z``, ``+02:00``, ``+0200``, ``+02``), and
#: one with or without.
_ZONED: Final[str] = (
    r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)\s*$"
)
_ISO: Final[str] = (
    r"^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?)?\s*$"
)


def _text_to_time(array: pa.Array, target: pa.TimestampType) -> pa.Array:
    """ISO-8601 texts as ``target`` (a zoned timestamp): with an offset, or without one (taken
    as UTC, the time role's rule); fraction digits beyond the unit cut (the earlier instant, as
    the digits count forward: before 1970 too, where a columnar time cast to a coarser unit
    moves toward zero instead); null where a text is no time.

    Regex passes sort the texts with an offset from those without and from those that are no
    time, so each kind takes one cast (not one per value, which failing casts would cost).

    Example:
        >>> t = pa.array(["2026-01-01T10:00:00.1234567Z", "2026-01-01 10:00", "x", None])
        >>> [v and v.isoformat() for v in _text_to_time(t, pa.timestamp("ms", "UTC")).to_pylist()]
        ['2026-01-01T10:00:00.123000+00:00', '2026-01-01T10:00:00+00:00', None, None]
    """
    text = array.cast(pa.string()) if not pa.types.is_string(array.type) else array
    digits = _UNIT_DIGITS[target.unit]
    fraction = rf"(\.\d{{{digits}}})\d+" if digits else r"\.\d+"
    text = pc.replace_substring_regex(text, fraction, r"\1" if digits else "")
    iso = pc.fill_null(pc.match_substring_regex(text, _ISO), False)  # no cast tries the rest
    zoned = pc.and_(iso, pc.fill_null(pc.match_substring_regex(text, _ZONED), False))
    none = pa.scalar(None, pa.string())
    with_offset = _cast_or_null(pc.if_else(zoned, text, none), target)
    bare_text = pc.if_else(pc.and_(iso, pc.invert(zoned)), text, none)
    bare = _cast_or_null(bare_text, pa.timestamp(target.unit))
    return pc.coalesce(with_offset, bare.view(target))


def _changed_by_cast(array: pa.Array, target: pa.DataType) -> pa.Array | None:
    """Per row of ``array``, whether Arrow's cast to ``target`` would change or drop a value it
    holds, at any depth: a boolean where ``target`` has a number or the reverse, or a struct
    field ``target`` lacks (None: no row can be).

    Example:
        >>> a = pa.array([{"z": [True]}, {"z": []}, {"y": 1}, None])
        >>> _changed_by_cast(a, pa.struct([("z", pa.list_(pa.int64()))])).to_pylist()
        [True, False, True, False]
    """
    kind = array.type
    number = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    wanted = pa.types.is_integer(target) or pa.types.is_floating(target)
    if (pa.types.is_boolean(kind) and wanted) or (number and pa.types.is_boolean(target)):
        return pc.fill_null(array.is_valid(), False)
    found: pa.Array | None = None
    if pa.types.is_struct(kind) and pa.types.is_struct(target):
        for i, f in enumerate(kind):
            index = target.get_field_index(f.name)
            if index >= 0:
                child = _changed_by_cast(array.field(i), target.field(index).type)
            else:  # dropped by the cast
                child = pc.fill_null(array.field(i).is_valid(), False)
            if child is not None:
                found = child if found is None else pc.or_(found, child)
    elif _list_like(kind) and _list_like(target) and not pa.types.is_map(kind):
        values, parents = _items(array)
        inner = _changed_by_cast(values, target.value_type)
        if inner is not None:
            rows = pc.unique(pc.filter(parents, inner))
            found = pc.is_in(pa.array(np.arange(len(array))), value_set=rows)
    if found is None:
        return None
    return pc.and_(found, array.is_valid())


def combined(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array from a column's chunks.

    Arrow 26 has failed to combine chunks of deeply nested JSON values that a fuzz test sent
    (``ArrowIndexError: array slice would exceed array length``); those are rebuilt from their
    values instead (slow, and only for such columns).
    """
    if not isinstance(column, pa.ChunkedArray):
        return column
    try:
        return column.combine_chunks()
    except (pa.ArrowIndexError, pa.ArrowInvalid):
        return pa.array(column.to_pylist(), type=column.type)


def _cast_or_null(array: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast, turning values Arrow refuses into nulls (halving only around the bad ones)."""
    try:
        return pc.cast(array, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        if len(array) <= 1:
            return pa.nulls(len(array), target)
    parts = np.array_split(np.arange(len(array)), min(len(array), 8))
    return pa.concat_arrays(
        [_cast_or_null(array.slice(int(p[0]), len(p)), target) for p in parts if len(p)]
    )


def concat_conformed(tables: Iterable[pa.Table | pa.RecordBatch]) -> pa.Table:
    """One table from batches of one contract taken at different times (schemas only grew).

    Each is cast to the unified (latest) schema, columns in one order, missing ones as nulls.

    Example:
        >>> a = pa.table({"id": ["1"], "amount": [5]})
        >>> b = pa.table({"id": ["2"], "amount": [4.99], "tier": ["vip"]})
        >>> concat_conformed([a, b]).to_pylist()
        [{'id': '1', 'amount': 5.0, 'tier': None}, {'id': '2', 'amount': 4.99, 'tier': 'vip'}]
    """
    parts = [t if isinstance(t, pa.Table) else pa.Table.from_batches([t]) for t in tables]
    if not parts:
        return pa.table({})
    if all(p.schema == parts[0].schema for p in parts):
        return pa.concat_tables(parts)
    unified = pa.unify_schemas([p.schema for p in parts], promote_options="permissive")
    return pa.concat_tables([_to_schema(p, unified) for p in parts])


def _to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    n = table.num_rows
    arrays = [
        _cast_column(table[f.name], f.type) if f.name in table.column_names else pa.nulls(n, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _cast_column(
    column: pa.Array | pa.ChunkedArray, target: pa.DataType
) -> pa.Array | pa.ChunkedArray:
    """``column`` cast to ``target`` (a wider type of the same contract, or fewer fields).

    Arrow 26 builds an invalid array casting a slice of some nested structs (an empty slice of a
    struct holding a struct with a null-typed field; a struct holding a list of nulls: both
    found by fuzz tests); such a column is rebuilt from its values instead (slow, and only for
    such columns).
    """
    if column.type == target:
        return column
    out = column.cast(target)
    if pa.types.is_nested(target):
        try:
            out.validate(full=True)
        except pa.ArrowInvalid:
            rebuilt = pa.array(column.to_pylist(), type=target)
            chunked = isinstance(out, pa.ChunkedArray)
            out = pa.chunked_array([rebuilt], target) if chunked else rebuilt
    return out
