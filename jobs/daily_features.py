"""Daily player features from the lake's events: the batch view of the lambda architecture.

    python -m jobs.daily_features --lake lake                         # yesterday (UTC)
    python -m jobs.daily_features --lake lake --day 2026-11-20 --until 2026-11-26
    python -m jobs.daily_features --config examples/demo.yaml --address auto

For each day (a ``dt`` partition of the events table, the events' own time), the events with
``quality_score`` above ``--quality-min`` (0.8; an event without one is left out) become one row
per player in the Delta table ``features/daily`` (partitioned by ``dt``):

========================  ===================================================================
``events``                events kept
``engagement_mean``       mean ``engagement_score`` (null and NaN scores skipped)
``engagement_n``          the scores that mean is over
``events_<type>``         events per type, for session_start, session_end, level_up, purchase,
                          refund, match_end and social (other types count in ``events`` only)
``spend``                 sum of ``amount`` over purchases, in the events' own currencies
``sessions``              distinct ``session_id`` of session_start and session_end events
``session_length_mean``,  mean and max ``session_length_s`` of session_end events
``session_length_max``
``max_level``             highest ``level`` of level_up events
``levels_per_hour``       level_up events per hour of session length (null without sessions)
``partners``              distinct ``partner_id`` of social events
``invites``, ``chats``    social events whose ``action`` is invite, chat
========================  ===================================================================

Every numeric feature ``f`` also comes normalized, as ``f_z`` (z-score over the day's players:
``(f - mean) / std``; 0 when every player has the same value; null stays null). The statistics
used (count, mean, std, min, max per feature) go to the Delta table ``features/daily_stats``,
one row per day and feature, so that a model can normalize today's live features the same way.

**How it runs** (sharded by lake partition, no shuffle service): one Ray task per partition
folder of the day (``dt``/``hour``) reads its Parquet files and aggregates them per player with
pyarrow, then splits its partial rows by a hash of ``player_id`` into ``--shards`` buckets; one
Ray task per bucket combines the partials of every partition (sums, maxima, distinct sessions and
partners); the driver normalizes and writes. The files are those of one table version, read
once; the day's rows then replace the day's partition in one commit (delta-rs's overwrite with a
predicate), so readers see the old day or the new one, never a mix, and a re-run for a day
(a scheduler's catch-up) replaces it instead of adding to it. The statistics are written first:
a crash between the two commits leaves the old features with new statistics, until the re-run.
This plan is kept: of the distributed ones it measured fastest (benchmarks/cold_job.py, 20M events,
24 folders, 2 cores, filter + mean core): 1.13 s; Ray Data's groupby 8.9-10.9 s (every kept row
through its shuffle; ~6 s even on 40K events), DuckDB making each partial 1.36-1.59 s (its own
reader has no S3 here), PySpark local 3.7 s; DuckDB in one process 0.65 s.

The lake holds the cold path's events only, unless the pipeline archives every event
(``cold.archive: all``): set it for features over all of a player's events.

Progress goes to stderr, one line per day; the last line on stdout is a one-line JSON summary.
Exit codes: 0 done, 2 bad arguments or an events table this job cannot read (named).
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.cluster import connect, path_resource
from engine.delta import TABLE_PROPERTIES, LakeTables, data_file_path
from engine.lake import EVENTS_DIR, Lake
from engine.processors.base import coerce
from engine.processors.day_features import EVENT_TYPES
from engine.serving import BATCH_FEATURES_TABLE, BATCH_STATS_TABLE
from jobs.options import add_day_arguments, add_lake_arguments, config_from, days_from, lake_from

__all__ = ["EVENT_TYPES", "FEATURES_TABLE", "STATS_TABLE", "day_features", "main"]

FEATURES_TABLE: Final[str] = BATCH_FEATURES_TABLE  # what the serving view reads
STATS_TABLE: Final[str] = BATCH_STATS_TABLE
#: The columns read, and the type each is cast to (a column the table lacks reads as null).
_INPUT: Final[dict[str, pa.DataType]] = {
    "player_id": pa.string(),
    "event_type": pa.string(),
    "quality_score": pa.float64(),
    "engagement_score": pa.float64(),
    "amount": pa.float64(),
    "level": pa.float64(),
    "session_id": pa.string(),
    "session_length_s": pa.float64(),
    "partner_id": pa.string(),
    "action": pa.string(),
}
#: Partial aggregates per player: (column, how partials combine).
_PARTIALS: Final[tuple[tuple[str, str], ...]] = (
    ("events", "sum"),
    ("engagement_sum", "sum"),
    ("engagement_n", "sum"),
    *((f"events_{t}", "sum") for t in EVENT_TYPES),
    ("spend", "sum"),
    ("length_sum", "sum"),
    ("length_n", "sum"),
    ("session_length_max", "max"),
    ("max_level", "max"),
    ("invites", "sum"),
    ("chats", "sum"),
)


class EventsTableError(ValueError):
    """The events table holds a column this job reads in a type it cannot use."""


def _read(lake_uri: str, options: dict[str, Any], uris: list[str]) -> tuple[pa.Table, int]:
    """The ``_INPUT`` columns of the files at ``uris``, cast (a column a file lacks: null), and
    how many values were left out as unreadable (text that is no number, where one is read)."""
    import pyarrow.parquet as pq

    lake = Lake(lake_uri, options)
    tables, unreadable = [], 0
    for uri in uris:
        with lake.fs.open(uri, "rb") as handle:
            found = pq.ParquetFile(handle)
            names = [n for n in _INPUT if n in found.schema_arrow.names]
            part = found.read(columns=names)
        columns = {}
        for name, kind in _INPUT.items():
            if name not in names:
                columns[name] = pa.nulls(part.num_rows, kind)
                continue
            values = part[name]
            if pa.types.is_nested(values.type):
                raise EventsTableError(
                    f"events column {name} is {values.type} in {uri}, and this job reads it as"
                    f" {kind}. Fix: declare it in the pipeline's policy.schema.columns"
                    f" ({name}: {kind}) so the lake holds one type."
                )
            # As the hot path's processors read them (day_features: the speed view merged
            # with this): text numbers parsed (" 12 " too), booleans, NaN, infinities and
            # text that is no number left out, and counted.
            read = coerce(values, kind)
            unreadable += pc.sum(pc.and_(values.is_valid(), read.is_null())).as_py() or 0
            columns[name] = read
        tables.append(pa.table(columns))
    empty = pa.schema(list(_INPUT.items())).empty_table()
    return pa.concat_tables([empty, *tables]), unreadable


def _bucket(player: pa.ChunkedArray | pa.Array, shards: int) -> np.ndarray:
    """Each row's bucket: a hash of its player id that every task computes alike (pandas's
    ``hash_array``: SipHash with a fixed key, not Python's per-process ``hash``)."""
    import pandas as pd

    values = np.asarray(pc.fill_null(player, "").to_numpy(zero_copy_only=False), dtype=object)
    # categorize=False: the same hashes without first factorizing the ids (engine/keys.py does
    # the same); a partial's ids are distinct, so factorizing them only costs. Measured on
    # benchmarks/cold_job.py's lake (20M events, 24 partitions, 2 cores, 5 paired rounds):
    # 42 -> 9 ms per partial of 77K players; partition tasks and combines of the filter + mean
    # core 1.42 -> 1.02 s, of this job's features 3.76 -> 3.12 s.
    hashes = pd.util.hash_array(values, categorize=False)
    return (hashes % np.uint64(shards)).astype(np.int64)


def _split(table: pa.Table, shards: int) -> list[pa.Table]:
    buckets = _bucket(table["player_id"], shards)
    return [table.filter(pa.array(buckets == b)) for b in range(shards)]


@ray.remote(num_cpus=1)
def _aggregate_partition(
    lake_uri: str, options: dict[str, Any], uris: list[str], quality_min: float, shards: int
) -> list[Any]:
    """One partition folder's partials (``_partials``), and last its counts: rows read, rows
    kept, values unreadable."""
    rows, unreadable = _read(lake_uri, options, uris)
    buckets, kept = _partials(rows, quality_min, shards)
    return [*buckets, (rows.num_rows, kept, unreadable)]


def _partials(rows: pa.Table, quality_min: float, shards: int) -> tuple[list[Any], int]:
    """``rows``' partials, split into ``shards`` buckets by player: per bucket, (per-player sums
    and maxima, distinct (player, session), distinct (player, partner)); and the rows kept."""
    kept = rows.filter(pc.fill_null(pc.greater(rows["quality_score"], quality_min), False))
    kind = kept["event_type"]
    engagement = kept["engagement_score"]
    engagement = pc.if_else(pc.is_finite(engagement), engagement, None)  # NaN as missing
    is_type = {t: pc.fill_null(pc.equal(kind, t), False) for t in EVENT_TYPES}
    social = is_type["social"]

    def when(mask: Any, values: Any) -> Any:
        return pc.if_else(mask, values, None)

    def count(mask: Any) -> Any:
        return pc.cast(mask, pa.int64())

    def social_action(action: str) -> Any:
        return count(pc.and_(social, pc.fill_null(pc.equal(kept["action"], action), False)))

    length = when(is_type["session_end"], kept["session_length_s"])
    per_row = pa.table(
        {
            "player_id": kept["player_id"],
            "events": pa.repeat(1, kept.num_rows).cast(pa.int64()),
            "engagement_sum": engagement,
            "engagement_n": count(pc.is_valid(engagement)),
            **{f"events_{t}": count(m) for t, m in is_type.items()},
            "spend": when(is_type["purchase"], kept["amount"]),
            "length_sum": length,
            "length_n": count(pc.is_valid(length)),
            "session_length_max": length,
            "max_level": when(is_type["level_up"], kept["level"]),
            "invites": social_action("invite"),
            "chats": social_action("chat"),
        }
    )
    partial = _grouped(per_row)
    session_rows = pc.or_(is_type["session_start"], is_type["session_end"])
    sessions = _distinct(kept.filter(session_rows), "session_id")
    partners = _distinct(kept.filter(social), "partner_id")
    split = zip(
        _split(partial, shards), _split(sessions, shards), _split(partners, shards), strict=True
    )
    return list(split), kept.num_rows


def _grouped(per_row: pa.Table) -> pa.Table:
    """Per player: each partial column summed or maximized (``_PARTIALS``)."""
    grouped = per_row.group_by("player_id").aggregate([(c, how) for c, how in _PARTIALS])
    return grouped.rename_columns(["player_id", *(c for c, _ in _PARTIALS)])  # aggregates first


def _distinct(rows: pa.Table, column: str) -> pa.Table:
    """The distinct (player, ``column``) pairs where ``column`` is set."""
    pairs = rows.select(["player_id", column]).filter(pc.is_valid(rows[column]))
    return pairs.group_by(["player_id", column]).aggregate([])


@ray.remote(num_cpus=1)
def _combine(*parts: tuple[pa.Table, pa.Table, pa.Table]) -> pa.Table:
    """One bucket's players: the partials of every partition combined into features."""
    return _features(parts)


def _features(parts: Sequence[tuple[pa.Table, pa.Table, pa.Table]]) -> pa.Table:
    """The features of the players in ``parts`` (partials of one bucket, from any partitions)."""
    partial = _grouped(pa.concat_tables([p[0] for p in parts]))
    counts = []
    for index, (column, name) in enumerate(
        (("session_id", "sessions"), ("partner_id", "partners"))
    ):
        pairs = pa.concat_tables([p[index + 1] for p in parts])
        distinct = _distinct(pairs, column).group_by("player_id").aggregate([(column, "count")])
        counts.append(distinct.rename_columns(["player_id", name]))
    for extra in counts:
        partial = partial.join(extra, "player_id", join_type="left outer")
    sessions = pc.fill_null(partial["sessions"], 0)
    partners = pc.fill_null(partial["partners"], 0)
    length_n, length_sum = partial["length_n"], partial["length_sum"]
    hours = pc.divide(length_sum, 3600.0)
    features = {
        "player_id": partial["player_id"],
        "events": partial["events"],
        "engagement_mean": pc.divide(
            partial["engagement_sum"], _null_if_zero(partial["engagement_n"])
        ),
        "engagement_n": partial["engagement_n"],
        **{f"events_{t}": partial[f"events_{t}"] for t in EVENT_TYPES},
        "spend": pc.fill_null(partial["spend"], 0.0),
        "sessions": sessions,
        "session_length_mean": pc.divide(length_sum, _null_if_zero(length_n)),
        "session_length_max": partial["session_length_max"],
        "max_level": partial["max_level"],
        "levels_per_hour": pc.divide(
            pc.cast(partial["events_level_up"], pa.float64()),
            pc.if_else(pc.greater(hours, 0), hours, None),
        ),
        "partners": partners,
        "invites": partial["invites"],
        "chats": partial["chats"],
    }
    return pa.table(features)


def _null_if_zero(counts: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.if_else(pc.greater(counts, 0), pc.cast(counts, pa.float64()), None)


def _normalized(features: pa.Table, day: str) -> tuple[pa.Table, pa.Table]:
    """The features with a z-scored ``<f>_z`` per numeric feature, and the statistics used."""
    stats = []
    columns: dict[str, Any] = {
        "dt": pa.repeat(day, features.num_rows),
        **{n: features[n] for n in features.column_names},
    }
    for name in features.column_names[1:]:
        values = pc.cast(features[name], pa.float64())
        count = pc.count(values).as_py()
        mean = pc.mean(values).as_py()
        std = pc.stddev(values).as_py()  # population (ddof 0)
        low, high = pc.min(values).as_py(), pc.max(values).as_py()
        stats.append(
            {
                "dt": day,
                "feature": name,
                "count": count,
                "mean": mean,
                "std": std,
                "min": low,
                "max": high,
            }
        )
        if mean is None:
            columns[f"{name}_z"] = pa.nulls(features.num_rows, pa.float64())
        elif not std:
            columns[f"{name}_z"] = pc.if_else(pc.is_valid(values), 0.0, None)
        else:
            columns[f"{name}_z"] = pc.divide(pc.subtract(values, mean), std)
    stats_schema = pa.schema(
        [("dt", pa.string()), ("feature", pa.string()), ("count", pa.int64())]
        + [(n, pa.float64()) for n in ("mean", "std", "min", "max")]
    )
    return pa.table(columns), pa.Table.from_pylist(stats, stats_schema)


def day_features(
    tables: LakeTables,
    day: str,
    quality_min: float = 0.8,
    shards: int = 4,
) -> dict[str, Any]:
    """Compute ``day``'s features from the lake's events and replace the day's partition of
    ``features/daily`` (and of ``features/daily_stats``). Ray must be up.

    Returns:
        What was done: rows read and kept, players, partition folders read, the version read.
    """
    from deltalake import DeltaTable

    source = DeltaTable(tables.uri(EVENTS_DIR), storage_options=tables.options or None)
    names = source.schema().to_arrow().names
    missing = [c for c in ("player_id", "event_type") if c not in names]
    if missing:  # else every event would fall into one player without an id
        raise EventsTableError(
            f"the events table has no {' or '.join(missing)}: this job groups by player_id and"
            " counts by event_type (the demo's schema roles); events keyed otherwise are not"
            " supported yet"
        )
    adds = pa.table(source.get_add_actions(flatten=True))
    folders: dict[str, list[str]] = defaultdict(list)
    if adds.num_rows:
        of_day = adds.filter(pc.equal(adds["partition.dt"], day))["path"].to_pylist()
        for path in of_day:  # one iteration per file, not per row
            found = data_file_path(tables.lake, EVENTS_DIR, path)
            folders[posixpath.dirname(found)].append(found)
    lake = tables.lake
    on_cold = path_resource("cold")
    aggregate = _aggregate_partition.options(num_returns=shards + 1, resources=on_cold)
    partials: list[list[ray.ObjectRef[Any]]] = [
        aggregate.remote(lake.uri, lake.storage_options, files, quality_min, shards)  # type: ignore[misc]
        for files in folders.values()
    ]  # num_returns: one reference per bucket, and the counts last
    combined = (
        [
            _combine.options(resources=on_cold).remote(*(p[b] for p in partials))
            for b in range(shards)
        ]
        if partials
        else []
    )
    empty, _ = _partials(pa.schema(list(_INPUT.items())).empty_table(), quality_min, 1)
    features = pa.concat_tables([_features(empty), *ray.get(combined)])  # typed when no day
    counts = [ray.get(p[-1]) for p in partials]
    read, kept, unreadable = (sum(c[i] for c in counts) for i in range(3))
    features = features.sort_by("player_id")
    output, stats = _normalized(features, day)
    _replace(tables, STATS_TABLE, stats, day)
    _replace(tables, FEATURES_TABLE, output, day)
    return {
        "day": day,
        "events_version": source.version(),
        "folders": len(folders),
        "rows_read": read,
        "rows_kept": kept,
        "values_unreadable": unreadable,
        "players": features.num_rows,
    }


def _replace(tables: LakeTables, name: str, rows: pa.Table, day: str) -> None:
    """``rows`` become the ``day`` partition of table ``name``: one commit removes the day's
    files and adds the new ones (created with the table on its first day)."""
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError

    for attempt in range(5):
        try:
            write_deltalake(
                tables.uri(name),
                rows,
                mode="overwrite",
                predicate=f"dt = '{day}'",
                partition_by=["dt"],
                configuration=TABLE_PROPERTIES,
                storage_options=tables.options or None,
            )
            return
        except CommitFailedError:
            if attempt == 4:
                raise
            time.sleep(0.2 * 2**attempt)  # another writer replaced a day meanwhile


def main(argv: Sequence[str] | None = None) -> int:
    """Compute the days ``argv`` names (see the module docs); the process's exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.daily_features", description=__doc__.split("\n")[0]
    )
    add_lake_arguments(parser)
    add_day_arguments(parser)
    parser.add_argument("--quality-min", type=float, default=0.8, help="keep events above it")
    parser.add_argument("--shards", type=int, default=4, help="tasks combining the partials")
    args = parser.parse_args(argv)
    config = config_from(parser, args)
    first, last = days_from(parser, args)
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    started = time.monotonic()
    lake = lake_from(config, args)
    tables = LakeTables(lake, "daily_features")
    if EVENTS_DIR not in tables.tables():
        parser.error(f"no events table in {lake.uri} (run a pipeline into it first)")
    where = connect(args.address)
    print(f"daily_features: {lake.uri} (Ray: {where})", file=sys.stderr)
    summary: dict[str, Any] = {"job": "daily_features", "lake": lake.uri, "days": []}
    day = first
    while day <= last:
        try:
            done = day_features(tables, day.isoformat(), args.quality_min, args.shards)
        except EventsTableError as error:
            print(f"daily_features: {error}", file=sys.stderr)
            return 2
        summary["days"].append(done)
        print(
            f"daily_features: {day}: {done['players']:,} players from {done['rows_kept']:,}"
            f" of {done['rows_read']:,} events ({done['folders']} partitions)",
            file=sys.stderr,
        )
        day += timedelta(1)
    summary["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
