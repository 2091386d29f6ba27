"""Filtered reads of the lake equal filtering every row: readers skip files by the statistics in
the Delta log, so a wrong statistic loses rows without a word.

The log holds each file's row count only (engine.delta._stats). Min/max/null-count statistics
were tried and this test refused them: delta-rs 1.6.6's dataset turns a column a file has no
bounds for into the guarantee ``column >= null`` and skips the file for any filter on that
column; a column added to the table after a file was written, filtered with ``is_null``, then
returned none of that file's rows.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.delta import LakeTables
from engine.lake import COLD, EVENTS_DIR, Lake

T0 = 1_764_000_000_000_000  # microseconds
COLUMNS = ("event_id", "amount", "event_time", "account")
# Hostile values: long strings sharing a 32-character prefix, non-ASCII, NaN, infinities,
# -0.0, nulls, microsecond times a millisecond rounding would cross.
STRINGS = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.sampled_from(["p" * 32, "p" * 32 + "a", "p" * 32 + "z", "p" * 31 + "é", "\U0001f600", ""]),
)
FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.just(-0.0))
TIMES = st.one_of(st.none(), st.integers(T0 - 5_000, T0 + 5_000))
ROW = st.tuples(STRINGS, FLOATS, TIMES, st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)))
TYPES = (pa.string(), pa.float64(), pa.timestamp("us", "UTC"), pa.int64())
# Each file has event_id and some of the others: columns come and go as event types do.
FILE = st.tuples(st.lists(ROW, min_size=1, max_size=6), st.sets(st.sampled_from(COLUMNS[1:])))


def as_table(rows: list[tuple], columns: set[str]) -> pa.Table:
    values = list(zip(*rows, strict=True))
    return pa.table(
        {
            name: pa.array(list(values[i]), kind)
            for i, (name, kind) in enumerate(zip(COLUMNS, TYPES, strict=True))
            if name == "event_id" or name in columns
        }
    )


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=st.lists(FILE, min_size=1, max_size=4), probe=ROW)
def test_a_filtered_read_returns_every_matching_row(
    tmp_path_factory: pytest.TempPathFactory, files: list, probe: tuple
) -> None:
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    tables = LakeTables(lake, "pipe")
    for i, (rows, columns) in enumerate(files):  # one commit each: the table's schema grows
        staged = lake.stage_parquet(as_table(rows, columns), EVENTS_DIR, f"f{i}", "p")
        tables.commit(EVENTS_DIR, [staged], {"p": {COLD: i}}, (COLD,), ())
    dataset = DeltaTable(lake.path(EVENTS_DIR)).to_pyarrow_dataset()
    everything = dataset.to_table()
    assert everything.num_rows == sum(len(rows) for rows, _ in files)
    s, f, t, n = probe
    filters = [ds.field(c).is_null() for c in everything.column_names]
    filters += [ds.field(c).is_valid() for c in everything.column_names]
    if s is not None:
        filters += [ds.field("event_id") >= s, ds.field("event_id") <= s]
    if f is not None and not math.isnan(f) and "amount" in everything.column_names:
        filters += [ds.field("amount") >= f, ds.field("amount") < f]
    if t is not None and "event_time" in everything.column_names:
        at = pa.scalar(t, pa.timestamp("us", "UTC"))
        filters += [ds.field("event_time") >= at, ds.field("event_time") <= at]
    if n is not None and "account" in everything.column_names:
        filters += [ds.field("account") > n, ds.field("account") <= n]
    for expression in filters:
        want = everything.filter(expression)
        got = dataset.to_table(filter=expression)
        assert _rows(got) == _rows(want), str(expression)


def _rows(table: pa.Table) -> list[str]:
    def text(value: object) -> str:
        return "nan" if isinstance(value, float) and math.isnan(value) else repr(value)

    return sorted(repr(sorted((k, text(v)) for k, v in row.items())) for row in table.to_pylist())
