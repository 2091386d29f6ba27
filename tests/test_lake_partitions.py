"""Partition values in the lake never share a folder, never leave the lake and read back exactly.

Real folders under ``tmp_path``; read back both with :meth:`Lake.read` and with DuckDB.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.delta import LakeTables
from engine.lake import (
    EVENTS_DIR,
    NULL_PARTITION,
    Lake,
    LakeUnavailableError,
    encode_partition_value,
    numbers_as_double,
)

T0 = datetime(2026, 3, 1, 22, 30, tzinfo=timezone.utc)
SEGMENT = re.compile(r"^(?:[A-Za-z0-9-]|%[0-9A-F]{2}){1,200}$")
LONG = "ü" * 150 + "/../" + "x" * 400
HOSTILE = [
    None,
    "",
    "\x00",
    "\x00\x00",
    NULL_PARTITION,
    "%00",
    "%2D",
    "-",
    "_",
    "../..",
    "..",
    ".",
    "/",
    "\\",
    "a/b\\c",
    ".hidden",
    "%2e%2e",
    "eu-1",
    "EU-1 ",
    "日本語 🚀",
    "x" * 200,
    "x" * 201,
    LONG,
    LONG + "!",  # same readable head as LONG: told apart by the hash
]


def duckdb_read(lake: Lake, directory: str) -> pa.Table:
    """Read a lake directory with DuckDB, every column as the files hold it.

    ``hive_partitioning=false``: DuckDB otherwise decodes ``col=value`` folders and lets them win
    over the file's own column (measured with DuckDB 2.0: ``region=%2D`` read as ``"-"`` where
    the file holds ``""``); so ``dt``/``hour`` are not columns here. ``union_by_name=true``:
    files written at different times may differ in columns, order and types. Hidden files are
    writes in progress. A local lake only: DuckDB reads object stores with its own settings.

    Example: ``duckdb_read(Lake("lake"), "events")``.
    """
    files = [
        f
        for f in lake.files(directory)
        if f.endswith(".parquet") and "/." not in f and "/_delta_log/" not in f
    ]
    return duckdb.sql(
        "select * from read_parquet($files, union_by_name=true, hive_partitioning=false)",
        params={"files": files},
    ).to_arrow_table()


def events(values: list[str | None], start: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + len(values)), pa.int64()),
            "event_time": pa.array(
                [T0 + timedelta(minutes=45 * (i % 3)) for i in range(len(values))],
                pa.timestamp("ms", "UTC"),
            ),
            "region": pa.array(values, pa.string()),
        }
    )


def write(lake: Lake, table: pa.Table, stem: str, partition_by: tuple[str, ...]) -> list[str]:
    """Stage and commit ``table`` to the ``events`` Delta table as the lake writer does
    (undeclared numbers as double; here, every number but the id); the data files' paths."""
    table = numbers_as_double(table, keep=["id"])
    files = lake.stage_partitioned(table, "event_time", stem, "p", partition_by=partition_by)
    LakeTables(lake, "test").commit(EVENTS_DIR, files, {}, (), ("dt", "hour"), fence=False)
    return [lake.path(f.table, f.path) for f in files]


def assert_inside(lake_dir: Path) -> list[Path]:
    """Every file written is inside the lake; the data files (not the Delta log)."""
    root = lake_dir.resolve()
    files = [p.resolve() for p in lake_dir.parent.rglob("*") if p.is_file()]
    assert files and all(root in f.parents for f in files)
    return [f for f in files if "_delta_log" not in f.parts]


# -- the encoding -----------------------------------------------------------------------------

values = st.lists(
    st.one_of(
        st.none(),
        st.text(),
        st.sampled_from(HOSTILE),
        # long values, many sharing a head: only the hash tells them apart
        st.builds(
            lambda s, n, tail: s * n + tail,
            st.text(min_size=1, max_size=4),
            st.integers(40, 300),
            st.text(max_size=3),
        ),
    ),
    max_size=40,
)


@given(values)
@settings(max_examples=400, deadline=None)
def test_encoding_is_injective_and_safe(values: list[str | None]) -> None:
    encoded = {v: encode_partition_value(v) for v in values}
    assert len(set(encoded.values())) == len(encoded)
    for value, segment in encoded.items():
        assert segment not in (".", "..")
        if value is None:
            assert segment == NULL_PARTITION
            continue
        assert SEGMENT.match(segment), segment
        if value and len(segment) < 200 and "%2D" not in segment:
            # A short value decodes back from its folder (for readers that look at folders).
            assert unquote(segment, errors="strict") == value


def test_encoding_of_hostile_and_non_string_values() -> None:
    encoded = [encode_partition_value(v) for v in HOSTILE]
    assert len(set(encoded)) == len(HOSTILE)
    assert encode_partition_value("") != encode_partition_value("\x00")
    assert encode_partition_value(NULL_PARTITION) != encode_partition_value(None)
    assert encode_partition_value("\ud800") != encode_partition_value("\ufffd")  # lone surrogate
    # Non-strings are encoded as their text (a column has one type, so 5 never meets "5").
    assert [encode_partition_value(v) for v in (5, -1.5, True)] == ["5", "-1%2E5", "True"]
    assert len({encode_partition_value(n) for n in range(-500, 500)}) == 1000


# -- round trips through real folders ---------------------------------------------------------


def test_hostile_values_round_trip_exactly(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    table = events(HOSTILE * 2)
    paths = write(lake, table, "src-0-0-47", ("region",))

    files = assert_inside(tmp_path / "lake")
    # One file per (hour, value) and none overwritten: as many files as were written.
    assert len(files) == len(paths) == len(set(paths))
    assert all(len(p.name.encode()) <= 255 for f in files for p in (f, *f.parents))

    back = lake.read(EVENTS_DIR).sort_by("id")
    assert back["id"].to_pylist() == table["id"].to_pylist()
    assert back["region"].to_pylist() == table["region"].to_pylist()
    # Delta stores timestamps in µs: the same instants.
    assert back["event_time"].to_pylist() == table["event_time"].to_pylist()
    hours = [(T0 + timedelta(minutes=45 * (i % 3))) for i in range(table.num_rows)]
    assert back["dt"].to_pylist() == [f"{h:%Y-%m-%d}" for h in hours]
    assert back["hour"].to_pylist() == [h.hour for h in hours]

    by_duckdb = duckdb_read(lake, EVENTS_DIR).sort_by("id")
    assert by_duckdb["id"].to_pylist() == table["id"].to_pylist()
    assert by_duckdb["region"].to_pylist() == table["region"].to_pylist()


@given(st.lists(st.none() | st.text(max_size=300), min_size=1, max_size=25))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_values_round_trip(values: list[str | None]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        lake = Lake(folder)
        table = events(values)
        write(lake, table, "s-0-0-1", ("region",))
        back = lake.read(EVENTS_DIR).sort_by("id")
        assert back["region"].to_pylist() == values
        assert duckdb_read(lake, EVENTS_DIR).sort_by("id")["region"].to_pylist() == values


def test_schemas_drifting_across_files_read_as_one_table(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    old = events(["eu", "", None]).append_column("score", pa.array([1, 2, 2**53], pa.int64()))
    new = events(["eu", "us", ""], start=3)
    new = new.append_column("score", pa.array([0.5, None, 3.25], pa.float64()))
    new = new.append_column("device", pa.array(["ios", "web", None]))
    new = new.select(["device", "score", "region", "event_time", "id"])  # another order
    write(lake, old, "s-0-0-2", ("region",))
    write(lake, new, "s-0-3-5", ("region",))

    expected = {
        "id": [0, 1, 2, 3, 4, 5],
        "region": ["eu", "", None, "eu", "us", ""],
        "score": [1.0, 2.0, float(2**53), 0.5, None, 3.25],
        "device": [None, None, None, "ios", "web", None],
    }
    back = lake.read(EVENTS_DIR).sort_by("id")
    assert back.schema.field("score").type == pa.float64()
    assert back.select(list(expected)).to_pydict() == expected
    assert duckdb_read(lake, EVENTS_DIR).sort_by("id").select(list(expected)).to_pydict() == (
        expected
    )


def test_reads_of_folders_without_partitions(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    assert lake.read("nothing").num_rows == 0
    lake.write_parquet(pa.table({"a": [1]}), "warm/kpis/a.parquet")
    lake.write_parquet(pa.table({"b": ["x"], "a": [2]}), "warm/kpis/b.parquet")
    back = lake.read("warm/kpis").sort_by("a")
    assert back.to_pydict() == {"a": [1, 2], "b": [None, "x"]}  # no dt/hour columns invented


def test_partition_column_names_are_checked(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    for name in ("dt", "_region", "a/b", ".x"):
        with pytest.raises(ValueError, match="partition_by"):
            write(lake, events(["eu"]), "s", (name,))


# -- storage failures -------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_permission_problem_raises_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "lake"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        started = time.monotonic()
        with pytest.raises(PermissionError):
            Lake(str(folder)).write_text("x", "a.txt")
        assert time.monotonic() - started < 0.2  # not retried (the first retry waits 0.2 s)
    finally:
        folder.chmod(0o700)


def test_storage_failure_is_retried_then_named(tmp_path: Path) -> None:
    # A real OSError that is not a missing path or a permission: a name over 255 bytes.
    lake = Lake(str(tmp_path / "lake"))
    started = time.monotonic()
    with pytest.raises(LakeUnavailableError) as caught:
        lake.write_text("x", "n" * 300)
    assert time.monotonic() - started >= 0.2 + 0.4 + 0.8 + 1.6  # waited between 5 attempts
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "lake") in message and "n" * 300 in message
    assert "File name too long" in message and caught.value.retriable
    assert isinstance(caught.value.__cause__, OSError)
    assert not list((tmp_path / "lake").rglob("*.tmp"))


def test_an_object_partition_value_never_stops_the_writer(tmp_path: Path) -> None:
    # A client's first event sent "region" as an object: the stream typed the column a struct.
    lake = Lake(str(tmp_path / "lake"))
    table = events(["eu", "us"]).drop_columns(["region"])
    table = table.append_column(
        "region", pa.array([{"x": 1}, None], pa.struct([("x", pa.int64())]))
    )
    paths = write(lake, table, "s-0-0-1", ("region",))
    assert len(paths) == 2
    back = lake.read("events").sort_by("id")
    assert back["region"].to_pylist() == [{"x": 1}, None]
