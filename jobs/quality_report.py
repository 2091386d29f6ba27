"""A data quality report of the lake's events, with thresholds a scheduler can alert on.

    python -m jobs.quality_report --lake lake                          # yesterday (UTC)
    python -m jobs.quality_report --lake lake --day 2026-11-20 --until 2026-11-26 \\
        --max-null-rate player_id=0 --max-null-rate amount=0.9 --max-late-share 0.2 \\
        --max-dead-share 0.01 --json-out report.json
    python -m jobs.quality_report --config examples/demo.yaml --address auto

What it reports, for the days ``--day`` to ``--until`` (``dt`` partitions: the events' own time):

- **per partition** (``dt``/``hour``) of the ``events`` table: rows, files, and the null rate of
  every column of the table's schema (as of the version read). A column that a file lacks (one
  the table gained after the file was written, e.g. by a later commit in the same hour) reads
  as null for that file's rows, as any Delta reader sees it, so those rows count as null; the
  JSON also gives them apart (``absent``). A null is a missing value: a float ``NaN`` is a
  value and does not count; a struct or list counts as null only when the whole value is null
  (a struct with null fields is not). Partition columns (``dt``, ``hour``) come from the Delta
  log, never null, and are not listed;
- **late-event share** per partition: events whose arrival (``arrival_time``) is more than
  ``--late-after`` (5m) after their event time (``event_time``), over the events that have both
  times (a row without an arrival time shows in that column's null rate instead; files at any
  timestamp unit, s, ms, µs or ns, naive ones read as UTC; a time column a file holds in a type
  that is no timestamp leaves its rows out of the share). The two column names are the
  pipeline's ``policy.schema.time`` and ``policy.schema.arrival`` with ``--config``;
- **schema changes** of the ``events`` table, from its Delta log: each version whose
  ``metaData`` action carries a schema other than the one before it, with the columns added,
  removed or retyped (name and Arrow type; a struct field as ``column.field``) and the commit's
  time. They are table-level, not per partition: the changes *committed* within the report's
  days (UTC), whatever the event times of the rows that came with them. A metaData commit that
  leaves the schema alone (table properties) is not a change;
- **dead letters by reason**, from the ``_dead_letter`` table. That table has neither a time
  partition nor a time column (a line that could not be read has no event time to trust, and
  the time its file was committed moves when a compaction rewrites it), so dead letters are
  reported for the whole table, not per day, and their share is taken against the whole
  ``events`` table's rows (from the log's ``numRecords``). Without ``cold.archive: all`` that
  table holds the cold events only, so the share reads high.

**Thresholds.** ``--max-null-rate COL=RATE`` (repeatable), ``--max-late-share`` and
``--max-dead-share`` are each checked per partition (dead letters: the table); a value above
its threshold is a *crossing*, listed with its partition, measure, value and threshold on
stderr, in the JSON and in the summary, and the exit code is 4.

**How it runs.** The files of one version of the ``events`` table (its add actions, paths
unescaped) are grouped by ``dt``/``hour`` from the log's partition values (so a partition is one
whether its folder is ``hour=3`` or ``hour=03``, and ``partition_by`` subfolders are in it), and
one Ray task per partition reads them a batch at a time (pyarrow: ``null_count`` per column,
``pc.subtract``/``pc.greater`` for lateness; no per-row Python). Dead letters are counted by
reason in Ray tasks of up to 64 files each, reading the ``reason`` column only. The driver reads
the Delta log for schema changes (little to read): the commit files of the days, chosen by the
listing's modification times and placed by their ``commitInfo`` time, and the schema before
them from the last Delta checkpoint and the few commits after it, so the cost follows the days'
commits, not the table's size.

Progress goes to stderr, one line per day, then the report as tables; ``--json-out PATH`` (a
file or an fsspec URL) gets the whole report as JSON; the last line on stdout is a one-line JSON
summary. Exit codes: 0 every threshold holds, 1 the JSON could not be written, 2 bad arguments
or a lake this job cannot read (named), 4 a threshold was crossed.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.cluster import connect, path_resource
from engine.delta import LakeTables, data_file_path
from engine.lake import DEAD_LETTER_DIR, EVENTS_DIR, Lake
from jobs.options import add_day_arguments, add_lake_arguments, config_from, days_from, lake_from
from routers import parse_duration_ms

__all__ = [
    "EXIT_CROSSED",
    "LakeReadError",
    "Thresholds",
    "crossings",
    "dead_letters",
    "main",
    "open_events",
    "partition_profiles",
    "schema_changes",
    "schema_diff",
]

#: Exit code when a threshold is crossed (apart from 1 and 2, which mean the job itself failed).
EXIT_CROSSED: Final[int] = 4
#: Rows per batch read in a partition task: bounds a task's memory whatever a file's size.
_BATCH_ROWS: Final[int] = 65_536
#: Dead-letter files per counting task: the files are small (one per flush), so one task per
#: file would be mostly Ray overhead.
_DEAD_FILES_PER_TASK: Final[int] = 64
#: How far a commit file's modification time may be from its ``commitInfo`` time (a slow PUT,
#: clocks of writer and store apart) and still be read as a candidate for the report's days.
_LOG_SLACK_MS: Final[int] = 15 * 60_000
_COMMIT: Final = re.compile(r"^(\d{20})\.json$")
#: A classic Delta checkpoint, in one part or several.
_CHECKPOINT: Final = re.compile(r"^(\d{20})\.checkpoint(\.\d{10}\.\d{10})?\.parquet$")
_DAY_MS: Final[int] = 86_400_000
#: Dead-letter reasons printed, most frequent first: ``processor_error:...`` reasons carry the
#: exception's message, so a table can hold thousands of them.
_REASONS_SHOWN: Final[int] = 20


class LakeReadError(ValueError):
    """A lake table this job cannot read as it expects (named in the message, with a fix)."""


@dataclass(frozen=True)
class Thresholds:
    """The limits checked; None: not checked.

    Attributes:
        null_rate: column -> highest null rate allowed in a partition.
        late_share: highest late-event share allowed in a partition.
        dead_share: highest share of dead letters among dead letters and events (the tables).
    """

    null_rate: Mapping[str, float] = field(default_factory=dict)
    late_share: float | None = None
    dead_share: float | None = None


# -- per partition: rows, nulls, lateness ------------------------------------------------------


def _micros(values: pa.Array) -> pa.Array | None:
    """``values`` as int64 microseconds since the epoch (a timestamp of any unit; naive read as
    UTC), or None when they are not timestamps.

    Example:
        >>> at = datetime(2026, 11, 20, 0, 5, tzinfo=timezone.utc)
        >>> units = ["s", "ms", "us", "ns"]
        >>> {_micros(pa.array([at], pa.timestamp(u, "UTC")))[0].as_py() for u in units}
        {1795133100000000}
        >>> _micros(pa.array([at.replace(tzinfo=None)], pa.timestamp("ms")))[0].as_py()
        1795133100000000
    """
    if not pa.types.is_timestamp(values.type):
        return None
    # Unsafe: ns to µs drops the nanoseconds, which lateness in minutes does not need.
    in_us = pc.cast(values, pa.timestamp("us", values.type.tz), safe=False)
    return pc.cast(in_us, pa.int64())


@ray.remote(num_cpus=1)
def _profile_partition(
    lake_uri: str,
    options: dict[str, Any],
    paths: list[str],
    columns: list[str],
    times: tuple[str, str],
    late_after_us: int,
) -> dict[str, Any]:
    """One partition's files: rows, nulls per column (``absent``: rows of files lacking it, in
    ``nulls`` too), late events among ``timed`` ones (both ``times``: event, arrival)."""
    import pyarrow.parquet as pq

    lake = Lake(lake_uri, options)
    nulls, absent = dict.fromkeys(columns, 0), dict.fromkeys(columns, 0)
    rows = late = timed = 0
    for path in paths:
        with lake.fs.open(path, "rb") as handle:
            found = pq.ParquetFile(handle)
            names = set(found.schema_arrow.names)
            present = [c for c in columns if c in names]
            count = found.metadata.num_rows
            rows += count
            for column in columns:
                if column not in names:
                    absent[column] += count
                    nulls[column] += count
            if not present or not count:
                continue
            for batch in found.iter_batches(batch_size=_BATCH_ROWS, columns=present):
                for column in present:
                    # The validity bitmap's count: top-level nulls, NaN not among them.
                    nulls[column] += batch.column(column).null_count
                if times[0] not in names or times[1] not in names:
                    continue
                event = _micros(batch.column(times[0]))
                arrival = _micros(batch.column(times[1]))
                if event is None or arrival is None:
                    continue
                delay = pc.subtract(arrival, event)  # null where either time is
                timed += pc.count(delay).as_py()
                late += pc.sum(pc.cast(pc.greater(delay, late_after_us), pa.int64())).as_py() or 0
    return {
        "rows": rows,
        "files": len(paths),
        "nulls": nulls,
        "absent": absent,
        "late": late,
        "timed": timed,
    }


def _open(tables: LakeTables, table: str) -> Any:
    """``table`` as delta-rs opens it (its file list loaded), or None when there is none."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(tables.uri(table), storage_options=tables.options or None)
    except TableNotFoundError:
        return None


def open_events(tables: LakeTables) -> Any:
    """The lake's ``events`` table (delta-rs ``DeltaTable``).

    Raises:
        LakeReadError: there is none, or it is not partitioned by ``dt``/``hour``.
    """
    table = _open(tables, EVENTS_DIR)
    if table is None:
        raise LakeReadError(
            f"no events table in {tables.lake.uri} (no {EVENTS_DIR}/_delta_log there). Fix:"
            " check --lake (or --config's cold.lake_uri), or run a pipeline into it first"
        )
    keys = table.metadata().partition_columns
    if keys[:2] != ["dt", "hour"]:
        raise LakeReadError(
            f"{tables.uri(EVENTS_DIR)} is partitioned by {keys or 'nothing'}, not dt/hour: not a"
            " Thermocline events table. Fix: point --lake at the lake folder that holds events/"
        )
    return table


def partition_profiles(
    tables: LakeTables,
    first: str,
    last: str,
    times: tuple[str, str] = ("event_time", "arrival_time"),
    late_after_ms: int = 300_000,
    progress: Callable[[str, list[dict[str, Any]]], None] | None = None,
    events: Any = None,
) -> dict[str, Any]:
    """Profile the ``events`` partitions of days ``first`` to ``last`` (one Ray task per
    ``dt``/``hour``; Ray must be up).

    Args:
        times: the event time and arrival time columns.
        late_after_ms: an event is late when it arrived more than this after its event time.
        progress: called with a day and its partitions once they are all profiled.
        events: the table as :func:`open_events` gave it (default: opened here).

    Returns:
        ``version`` (of the table read), ``columns`` (name -> Arrow type, the table's schema less
        its partition columns), ``partitions`` (per ``dt``/``hour``, sorted: rows, files, nulls,
        absent, null_rate, late, timed, late_share) and ``total_rows`` (the whole table's, from
        the log; None when a file has no ``numRecords``).

    Raises:
        LakeReadError: no events table, or one not partitioned by ``dt``/``hour``.
    """
    table = open_events(tables) if events is None else events
    keys = table.metadata().partition_columns
    adds = pa.table(table.get_add_actions(flatten=True))
    schema = pa.schema(table.schema().to_arrow())
    columns = {f.name: str(f.type) for f in schema if f.name not in keys}
    records = adds["num_records"] if "num_records" in adds.column_names else None
    total = None if records is None or records.null_count else pc.sum(records).as_py() or 0
    if adds.num_rows:
        day = adds["partition.dt"]
        adds = adds.filter(pc.and_(pc.greater_equal(day, first), pc.less_equal(day, last)))
    shards: dict[tuple[str, int | None], list[str]] = defaultdict(list)
    for path, dt, hour in zip(
        adds["path"].to_pylist(),
        adds["partition.dt"].to_pylist() if adds.num_rows else [],
        adds["partition.hour"].to_pylist() if adds.num_rows else [],
        strict=True,
    ):  # one iteration per file, not per row
        shards[(dt, hour)].append(data_file_path(tables.lake, EVENTS_DIR, path))
    lake, on_cold = tables.lake, path_resource("cold")
    task = _profile_partition.options(resources=on_cold)
    running = {
        task.remote(
            lake.uri, lake.storage_options, paths, list(columns), times, late_after_ms * 1000
        ): key
        for key, paths in shards.items()
    }
    left = Counter(dt for dt, _ in shards)
    done: dict[str, list[dict[str, Any]]] = defaultdict(list)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        dt, hour = running.pop(ready[0])
        result = ray.get(ready[0])
        rows = result["rows"]
        result["null_rate"] = {c: n / rows if rows else None for c, n in result["nulls"].items()}
        result["late_share"] = result["late"] / result["timed"] if result["timed"] else None
        done[dt].append({"dt": dt, "hour": hour, **result})
        left[dt] -= 1
        if not left[dt] and progress is not None:
            progress(dt, done[dt])
    partitions = sorted(
        (p for day in done.values() for p in day),
        key=lambda p: (p["dt"], -1 if p["hour"] is None else p["hour"]),
    )
    return {
        "version": table.version(),
        "columns": columns,
        "partitions": partitions,
        "total_rows": total,
    }


# -- schema changes from the Delta log ---------------------------------------------------------


def _fields(schema: pa.Schema | pa.StructType, prefix: str = "") -> dict[str, pa.Field]:
    return {f"{prefix}{f.name}": f for f in schema}


def schema_diff(old: pa.Schema | None, new: pa.Schema) -> dict[str, list[dict[str, str]]]:
    """The columns ``new`` adds to ``old``, removes from it, or gives another type, each list
    by column name. A struct field is ``column.field``, one inside a list of structs
    ``column[].field``; a struct that gains fields is not itself retyped.

    Example:
        >>> old = pa.schema([("id", pa.string()), ("meta", pa.struct([("a", pa.int64())]))])
        >>> new = pa.schema([("id", pa.string()), ("amount", pa.float64()),
        ...                  ("meta", pa.struct([("a", pa.int64()), ("b", pa.string())]))])
        >>> schema_diff(old, new)["added"]
        [{'column': 'amount', 'type': 'double'}, {'column': 'meta.b', 'type': 'string'}]
        >>> schema_diff(new, old)["removed"]
        [{'column': 'amount', 'type': 'double'}, {'column': 'meta.b', 'type': 'string'}]
    """
    diff: dict[str, list[dict[str, str]]] = {"added": [], "removed": [], "changed": []}

    def walk(before: dict[str, pa.Field], after: dict[str, pa.Field]) -> None:
        for name, now in after.items():
            was = before.get(name)
            if was is None:
                diff["added"].append({"column": name, "type": str(now.type)})
            elif pa.types.is_struct(was.type) and pa.types.is_struct(now.type):
                walk(_fields(was.type, f"{name}."), _fields(now.type, f"{name}."))
            elif (
                pa.types.is_list(was.type)
                and pa.types.is_list(now.type)
                and pa.types.is_struct(was.type.value_type)
                and pa.types.is_struct(now.type.value_type)
            ):
                walk(
                    _fields(was.type.value_type, f"{name}[]."),
                    _fields(now.type.value_type, f"{name}[]."),
                )
            elif was.type != now.type:
                diff["changed"].append({"column": name, "from": str(was.type), "to": str(now.type)})
        for name, was in before.items():
            if name not in after:
                diff["removed"].append({"column": name, "type": str(was.type)})

    walk(_fields(old) if old is not None else {}, _fields(new))
    return {kind: sorted(found, key=lambda c: c["column"]) for kind, found in diff.items()}


def _mtime_ms(entry: Mapping[str, Any]) -> int | None:
    """A listing entry's modification time (local: ``mtime``; S3: ``LastModified``)."""
    value = entry.get("mtime", entry.get("LastModified", entry.get("last_modified")))
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, (int, float)):
        return int(value * 1000)
    return None


def _checkpoint_schema(lake: Lake, paths: list[str]) -> pa.Schema | None:
    """The schema in a Delta checkpoint (its parts at ``paths``; the ``metaData`` column only)."""
    import pyarrow.parquet as pq
    from deltalake.schema import Schema

    for path in paths:
        with lake.fs.open(path, "rb") as handle:
            found = pq.ParquetFile(handle)
            if "metaData" not in found.schema_arrow.names:
                continue  # a part may hold no action of a kind
            metas = found.read(columns=["metaData"])["metaData"].drop_null().to_pylist()
        for meta in metas:
            return pa.schema(Schema.from_json(meta["schemaString"]).to_arrow())
    return None


def schema_changes(
    tables: LakeTables, table: str, start_ms: int, end_ms: int
) -> list[dict[str, Any]]:
    """The schema changes of ``table`` committed in ``[start_ms, end_ms)``, oldest first: per
    version, its commit time (``timestamp``, ms; ``committed``, ISO), columns ``added``,
    ``removed`` and ``changed`` (:func:`schema_diff`; a ``metaData`` action that changes no
    column, e.g. table properties, is none).

    Read from the log alone, at a cost that does not grow with the table: the commit files
    whose listed modification time is within ``_LOG_SLACK_MS`` of the range (a listing without
    times: all) are candidates. The schema before them is the last Delta checkpoint's before the
    first candidate (its ``metaData`` column), followed through the commits from there (at most
    ``delta.checkpointInterval``, 100 by default); the commits are read at once (concurrent GETs
    on S3) and placed by their ``commitInfo`` time. Without such a checkpoint and commit 0, the
    first change lists every column as added and says so (``note``).
    """
    from deltalake.schema import Schema

    lake = tables.lake
    folder = lake.path(table, "_delta_log")
    lake.fs.invalidate_cache(folder)  # s3fs keeps listings: a process may report twice
    try:
        entries = lake.fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    commits: dict[int, int | None] = {}
    checkpoints: dict[int, list[str]] = defaultdict(list)
    for entry in entries:
        name = posixpath.basename(entry["name"])
        if match := _COMMIT.match(name):
            commits[int(match.group(1))] = _mtime_ms(entry)
        elif match := _CHECKPOINT.match(name):
            checkpoints[int(match.group(1))].append(entry["name"])
    wanted = [
        v
        for v, mtime in commits.items()
        if mtime is None or start_ms - _LOG_SLACK_MS <= mtime < end_ms + _LOG_SLACK_MS
    ]
    if not wanted:
        return []
    before = [c for c in checkpoints if c < min(wanted)]
    previous: pa.Schema | None = None
    if before:
        base = max(before)
        previous = _checkpoint_schema(lake, sorted(checkpoints[base]))
    else:
        base = -1
        previous = pa.schema([]) if 0 in commits else None  # commit 0 creates the table
    known = previous is not None
    # Every version from there to the last candidate: a metaData commit among them that the
    # listing dated outside would otherwise have its change credited to a later one.
    versions = [v for v in range(base + 1, max(wanted) + 1) if v in commits]
    paths = [f"{folder}/{v:020d}.json" for v in versions]
    bodies = lake.fs.cat(paths)
    changes = []
    for version, path in zip(versions, paths, strict=True):
        stamp, schema_string = commits[version], None
        for line in bodies[path].splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if "commitInfo" in action and action["commitInfo"].get("timestamp") is not None:
                stamp = int(action["commitInfo"]["timestamp"])
            elif "metaData" in action:
                schema_string = action["metaData"]["schemaString"]
        if schema_string is None:
            continue
        schema = pa.schema(Schema.from_json(schema_string).to_arrow())
        diff = schema_diff(previous, schema)
        previous = schema
        if not any(diff.values()):
            continue  # metaData without a schema change (table properties, column order)
        if stamp is not None and not start_ms <= stamp < end_ms:
            continue
        change: dict[str, Any] = {
            "version": version,
            "timestamp": stamp,
            "committed": None
            if stamp is None
            else datetime.fromtimestamp(stamp / 1000, timezone.utc).isoformat("T", "milliseconds"),
            **diff,
        }
        if not known:
            change["note"] = "the schema before it is no longer in the log: every column listed"
            known = True
        changes.append(change)
    return changes


# -- dead letters ------------------------------------------------------------------------------


@ray.remote(num_cpus=1)
def _count_reasons(lake_uri: str, options: dict[str, Any], paths: list[str]) -> dict[str, int]:
    """Dead letters per reason in the files at ``paths`` (their ``reason`` column only)."""
    import pyarrow.parquet as pq

    lake = Lake(lake_uri, options)
    counts: Counter[str] = Counter()
    for path in paths:
        with lake.fs.open(path, "rb") as handle:
            found = pq.ParquetFile(handle)
            if "reason" not in found.schema_arrow.names:
                counts["(no reason column)"] += found.metadata.num_rows
                continue
            reasons = found.read(columns=["reason"])["reason"]
        grouped = pa.table({"reason": pc.fill_null(reasons, "(null)")}).group_by("reason")
        for row in grouped.aggregate([("reason", "count")]).to_pylist():
            counts[row["reason"]] += row["reason_count"]
    return dict(counts)


def dead_letters(tables: LakeTables) -> dict[str, Any]:
    """The ``_dead_letter`` table's rows by reason, most frequent first (``exists``: False when
    the lake has no such table: no line was ever refused). Ray must be up."""
    found = _open(tables, DEAD_LETTER_DIR)
    if found is None:
        return {"scope": "table", "exists": False, "rows": 0, "by_reason": {}}
    adds = pa.table(found.get_add_actions(flatten=True))
    lake = tables.lake
    paths = [data_file_path(lake, DEAD_LETTER_DIR, p) for p in adds["path"].to_pylist()]
    task = _count_reasons.options(resources=path_resource("cold"))
    refs = [
        task.remote(lake.uri, lake.storage_options, paths[i : i + _DEAD_FILES_PER_TASK])
        for i in range(0, len(paths), _DEAD_FILES_PER_TASK)
    ]
    counts: Counter[str] = Counter()
    for part in ray.get(refs):
        counts.update(part)
    by_reason = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return {"scope": "table", "exists": True, "rows": sum(counts.values()), "by_reason": by_reason}


# -- thresholds --------------------------------------------------------------------------------


def crossings(report: Mapping[str, Any], limits: Thresholds) -> list[dict[str, Any]]:
    """Every threshold ``report`` crosses (a value above its limit): partition (``dt=…/hour=…``
    or a table), measure, value, threshold.

    Example:
        >>> part = {"dt": "2026-11-20", "hour": 3, "null_rate": {"amount": 0.75}, "late_share": 0.1}
        >>> crossings({"partitions": [part], "dead_letters": {}}, Thresholds({"amount": 0.5}))
        [{'partition': 'dt=2026-11-20/hour=3', 'measure': 'null_rate:amount', 'value': 0.75, \
'threshold': 0.5}]
    """
    found = []
    for part in report["partitions"]:
        where = f"dt={part['dt']}/hour={part['hour']}"
        for column, limit in limits.null_rate.items():
            value = part["null_rate"].get(column)
            if value is not None and value > limit:
                found.append(_crossing(where, f"null_rate:{column}", value, limit))
        share = part["late_share"]
        if limits.late_share is not None and share is not None and share > limits.late_share:
            found.append(_crossing(where, "late_share", share, limits.late_share))
    share = report["dead_letters"].get("share")
    if limits.dead_share is not None and share is not None and share > limits.dead_share:
        found.append(_crossing(DEAD_LETTER_DIR, "dead_share", share, limits.dead_share))
    return found


def _crossing(where: str, measure: str, value: float, limit: float) -> dict[str, Any]:
    return {"partition": where, "measure": measure, "value": value, "threshold": limit}


# -- output ------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _aligned(headers: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> list[str]:
    """``rows`` as text lines under ``headers``: the first ``left`` columns left-aligned, the
    others (numbers) right-aligned."""
    body = [list(r) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in body)]


def _tables(report: Mapping[str, Any], limits: Thresholds) -> list[str]:
    """The report as aligned text tables (partitions, columns, schema changes, dead letters,
    crossings)."""
    out: list[str] = []
    parts = report["partitions"]
    days = report["days"]
    out.append(f"events {days[0]}..{days[1]} (version {report['events_version']}):")
    if not parts:
        out.append("  no events in these days")
    else:
        watched = list(limits.null_rate)
        crossed = {c["partition"] for c in report["crossings"]}
        headers = ["dt", "hour", "rows", "files", "late", "late share"]
        headers += [f"null {c}" for c in watched] + ["crossed"]
        rows = [
            [
                p["dt"],
                str(p["hour"]),
                f"{p['rows']:,}",
                f"{p['files']:,}",
                f"{p['late']:,}",
                _percent(p["late_share"]),
                *(_percent(p["null_rate"].get(c)) for c in watched),
                "yes" if f"dt={p['dt']}/hour={p['hour']}" in crossed else "",
            ]
            for p in parts
        ]
        out += _aligned(headers, rows)
        out.append("")
        out.append("null rate per column over these days (min and max: of a partition):")
        rows = []
        for name, kind in report["columns"].items():
            info = report["column_totals"][name]
            rates = [r for p in parts if (r := p["null_rate"][name]) is not None]
            rows.append(
                [
                    name,
                    kind,
                    f"{info['nulls']:,}",
                    _percent(info["null_rate"]),
                    _percent(min(rates, default=None)),
                    _percent(max(rates, default=None)),
                ]
            )
        out += _aligned(["column", "type", "nulls", "null rate", "min", "max"], rows, left=2)
    out.append("")
    changes = report["schema_changes"]
    out.append(f"schema changes of events committed in these days: {len(changes) or 'none'}")
    for change in changes:
        what = [f"+{c['column']} {c['type']}" for c in change["added"]]
        what += [f"-{c['column']} {c['type']}" for c in change["removed"]]
        what += [f"~{c['column']} {c['from']} -> {c['to']}" for c in change["changed"]]
        line = f"  version {change['version']} at {change['committed']}:"
        for i, item in enumerate(what):  # wrapped between columns, never inside one
            if len(line) + len(item) > 98:
                out.append(line)
                line = "   "
            line += f" {item}{',' if i < len(what) - 1 else ''}"
        out.append(line)
    out.append("")
    dead = report["dead_letters"]
    share = _percent(dead.get("share"))
    out.append(
        f"dead letters (the whole {DEAD_LETTER_DIR} table: it has no time column):"
        f" {dead['rows']:,}, {share} of dead letters and events"
    )
    if dead["by_reason"]:
        reasons = list(dead["by_reason"].items())
        rows = [[r, f"{n:,}", _percent(n / dead["rows"])] for r, n in reasons[:_REASONS_SHOWN]]
        out += ["  " + line for line in _aligned(["reason", "rows", "share"], rows)]
        if len(reasons) > _REASONS_SHOWN:
            out.append(f"  ... {len(reasons) - _REASONS_SHOWN:,} more reasons (all in --json-out)")
    out.append("")
    if report["crossings"]:
        out.append(f"THRESHOLDS CROSSED: {len(report['crossings'])}")
        for c in report["crossings"]:
            out.append(
                f"  {c['partition']}: {c['measure']} {c['value']:.4g} > {c['threshold']:.4g}"
            )
    else:
        out.append("thresholds: all hold")
    return out


def _write_json(path: str, report: Mapping[str, Any], lake: Lake) -> None:
    """``report`` as JSON at ``path`` (a file or an fsspec URL; the lake's storage options when
    it is on the lake's store)."""
    import fsspec

    scheme = path.split("://", 1)[0] if "://" in path else "file"
    lake_scheme = lake.uri.split("://", 1)[0] if "://" in lake.uri else "file"
    options = lake.storage_options if scheme == lake_scheme else {}
    fs, target = fsspec.core.url_to_fs(path, **options)
    parent = posixpath.dirname(target)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(target, (json.dumps(report, indent=2) + "\n").encode())


# -- command line ------------------------------------------------------------------------------


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, e.g. 0.2, got {text!r}")
    return value


def _null_limit(text: str) -> tuple[str, float]:
    column, sep, rate = text.rpartition("=")
    try:
        if not sep or not column:
            raise argparse.ArgumentTypeError("")
        return column, _share(rate)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected COLUMN=RATE with RATE from 0 to 1, e.g. amount=0.5, got {text!r}"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Report on the days ``argv`` names (see the module docs); the process's exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.quality_report", description=__doc__.split("\n")[0]
    )
    add_lake_arguments(parser, "a pipeline YAML: its lake, storage options and time columns")
    add_day_arguments(parser)
    parser.add_argument("--late-after", default="5m", help="an event arriving later is late")
    parser.add_argument(
        "--max-null-rate",
        type=_null_limit,
        action="append",
        default=[],
        metavar="COL=RATE",
        help="highest null rate of a column in a partition (repeatable)",
    )
    parser.add_argument("--max-late-share", type=_share, help="highest late share of a partition")
    parser.add_argument(
        "--max-dead-share", type=_share, help="highest share of dead letters (whole tables)"
    )
    parser.add_argument("--json-out", metavar="PATH", help="write the whole report there as JSON")
    args = parser.parse_args(argv)
    try:
        late_after_ms = parse_duration_ms(args.late_after)
    except ValueError as error:
        parser.error(f"--late-after: {error}")
    config = config_from(parser, args)
    first, last = days_from(parser, args)
    limits = Thresholds(dict(args.max_null_rate), args.max_late_share, args.max_dead_share)
    schema = config.policy.schema if config else None
    times = (schema.time, schema.arrival) if schema else ("event_time", "arrival_time")
    started = time.monotonic()
    lake = lake_from(config, args)
    tables = LakeTables(lake, "quality_report")
    try:
        events = open_events(tables)  # before Ray starts: a wrong lake is named at once
    except LakeReadError as error:
        parser.error(str(error))
    _check_columns(parser, events, limits, times, args.config)
    where = connect(args.address)
    print(f"quality_report: {lake.uri}, {first}..{last} (Ray: {where})", file=sys.stderr)

    def progress(day: str, parts: list[dict[str, Any]]) -> None:
        rows = sum(p["rows"] for p in parts)
        late, timed = sum(p["late"] for p in parts), sum(p["timed"] for p in parts)
        print(
            f"quality_report: {day}: {rows:,} events in {len(parts)} partitions,"
            f" {_percent(late / timed if timed else None)} late",
            file=sys.stderr,
        )

    found = partition_profiles(
        tables, first.isoformat(), last.isoformat(), times, late_after_ms, progress, events
    )
    start_ms = int(datetime.combine(first, datetime.min.time(), timezone.utc).timestamp() * 1000)
    end_ms = int(datetime.combine(last, datetime.min.time(), timezone.utc).timestamp() * 1000)
    changes = schema_changes(tables, EVENTS_DIR, start_ms, end_ms + _DAY_MS)
    dead = dead_letters(tables)
    total = found["total_rows"]
    dead["events_rows"] = total
    dead["share"] = (
        dead["rows"] / (dead["rows"] + total)
        if total is not None and dead["rows"] + total
        else None
    )
    parts = found["partitions"]
    rows = sum(p["rows"] for p in parts)
    late, timed = sum(p["late"] for p in parts), sum(p["timed"] for p in parts)
    column_totals = {}
    for name in found["columns"]:
        nulls = sum(p["nulls"][name] for p in parts)
        column_totals[name] = {"nulls": nulls, "null_rate": nulls / rows if rows else None}
    report: dict[str, Any] = {
        "job": "quality_report",
        "lake": lake.uri,
        "days": [first.isoformat(), last.isoformat()],
        "events_version": found["version"],
        "time_columns": {"event": times[0], "arrival": times[1]},
        "late_after_ms": late_after_ms,
        "thresholds": {
            "null_rate": dict(limits.null_rate),
            "late_share": limits.late_share,
            "dead_share": limits.dead_share,
        },
        "rows": rows,
        "late": late,
        "timed": timed,
        "late_share": late / timed if timed else None,
        "columns": found["columns"],
        "column_totals": column_totals,
        "partitions": parts,
        "schema_changes": changes,
        "dead_letters": dead,
    }
    report["crossings"] = crossings(report, limits)
    report["seconds"] = round(time.monotonic() - started, 3)
    for line in _tables(report, limits):
        print(line, file=sys.stderr)
    if args.json_out:
        try:
            _write_json(args.json_out, report, lake)
        except OSError as error:
            print(
                f"quality_report: writing --json-out {args.json_out} failed: {error}. Fix: give a"
                " path in a writable folder (the report above is complete)",
                file=sys.stderr,
            )
            return 1
    summary = {
        "job": "quality_report",
        "lake": lake.uri,
        "days": report["days"],
        "events_version": report["events_version"],
        "partitions": len(parts),
        "rows": rows,
        "late_share": report["late_share"],
        "schema_changes": [c["version"] for c in changes],
        "dead_letters": dead["rows"],
        "crossings": report["crossings"],
        "json_out": args.json_out,
        "seconds": report["seconds"],
    }
    print(json.dumps(summary))
    return EXIT_CROSSED if report["crossings"] else 0


def _check_columns(
    parser: argparse.ArgumentParser,
    events: Any,
    limits: Thresholds,
    times: tuple[str, str],
    config: str | None,
) -> None:
    """Refuse thresholds on columns the events table does not have (before Ray starts)."""
    keys = events.metadata().partition_columns
    names = [n for n in pa.schema(events.schema().to_arrow()).names if n not in keys]
    unknown = sorted(set(limits.null_rate) - set(names))
    if unknown:
        parser.error(
            f"--max-null-rate: no column {', '.join(unknown)} in the events table."
            f" Fix: use one of {', '.join(names)}"
        )
    missing = [t for t in times if t not in names]
    if limits.late_share is not None and missing:
        where = "policy.schema.time/arrival in " + config if config else "a pipeline --config"
        parser.error(
            f"--max-late-share: the events table has no {' or '.join(missing)} column, so"
            f" lateness cannot be measured. Fix: name the table's time columns with {where}"
        )


if __name__ == "__main__":
    sys.exit(main())
