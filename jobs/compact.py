"""Compact the lake's Delta tables: small files merged into files of a target size, then vacuum.

    python -m jobs.compact --lake lake                        # every table, on the embedded Ray
    python -m jobs.compact --lake s3://bucket/lake --table events --address auto

Per table:

1. take the table's compaction lease (:mod:`engine.lease`): only one compaction may run per
   table, since two compactions from one snapshot would both commit (delta-rs finds no conflict
   between them) and double the rows. A second compactor refuses at once (exit code 3, naming
   the holder) or, with ``--wait``, retries until the lease is free;
2. per lake partition (``dt``/``hour``) holding two or more files under ``--target-size``, one
   Ray task runs delta-rs's optimize there: the small files are bin-packed into files of the
   target, and one commit (``dataChange: false``) removes them and adds the new ones, so
   readers of any version see every row once. A pipeline keeps appending meanwhile: its commits
   only add files, and Delta's conflict check lets an append and a compaction both commit.
   Tasks stop being started when less than ``--lease-margin`` of the lease is left;
3. vacuum: files that no version references and that are older than ``--retention`` (the ones a
   compaction replaced, or a crashed writer's uncommitted files) are deleted;
4. release the lease.

Progress goes to stderr, one line per table; the last line on stdout is a one-line JSON summary.
Exit codes: 0 done, 2 bad arguments, 3 a table's lease was held by another compactor (the other
tables are still compacted).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.cluster import connect, path_resource
from engine.delta import (
    DEFAULT_RETENTION_HOURS,
    TABLE_PROPERTIES,
    LakeTables,
)
from engine.lease import Lease, LeaseHeld, Leases
from jobs.options import add_lake_arguments, config_from, lake_from
from routers import parse_duration_ms

__all__ = ["compact_table", "main"]

#: Exit code when a table's lease is held by another compactor.
EXIT_HELD: Final[int] = 3
_DEFAULT_TARGET: Final[int] = 32 << 20
#: Attempts at one partition's compaction while commits of other writers race it.
_ATTEMPTS: Final[int] = 5


@ray.remote(num_cpus=1)
def _compact_partition(
    uri: str,
    options: dict[str, str],
    filters: list[tuple[str, str, str]],
    target: int,
    deadline_ms: int,
) -> dict[str, Any]:
    """delta-rs's optimize over one lake partition (``filters``; empty: the whole table),
    unless it would start after ``deadline_ms`` (the lease less its margin: a task may wait in
    Ray's queue, e.g. for a cold node to boot)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError

    for attempt in range(_ATTEMPTS):
        if time.time() * 1000 > deadline_ms:
            return {"removed": 0, "added": 0, "late": True}
        table = DeltaTable(uri, storage_options=options or None)
        try:
            metrics: dict[str, Any] = table.optimize.compact(
                partition_filters=filters or None, target_size=target
            )
        except CommitFailedError:
            # Other writers kept committing first (delta-rs retries 15 times at once): a
            # failed optimize committed nothing (its files are vacuum's); start again from the
            # table's newest version after a pause.
            if attempt == _ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.5, 1.5) * 2**attempt)
            continue
        return {"removed": metrics["numFilesRemoved"], "added": metrics["numFilesAdded"]}
    raise AssertionError("unreachable")


def _shards(table: Any, target: int) -> list[list[tuple[str, str, str]]]:
    """The partition filters of every partition with two or more files under ``target``."""
    adds = pa.table(table.get_add_actions(flatten=True))
    columns = list(table.metadata().partition_columns)
    small = adds.filter(pc.less(adds["size_bytes"], target))
    if small.num_rows < 2:
        return []
    if not columns:
        return [[]]
    keys = [f"partition.{c}" for c in columns]
    counts = small.group_by(keys).aggregate([("size_bytes", "count")])
    shards = []
    for row in counts.filter(pc.greater_equal(counts["size_bytes_count"], 2)).to_pylist():
        shards.append(
            [
                (c, "=", "" if row[k] is None else str(row[k]))
                for c, k in zip(columns, keys, strict=True)
            ]
        )
    return shards


def compact_table(
    tables: LakeTables,
    name: str,
    lease: Lease,
    target: int,
    parallel: int,
    margin_s: float,
) -> dict[str, int]:
    """Compact one table under ``lease``: one Ray task per partition with small files, at
    most ``parallel`` at once; returns files removed and added and partitions done."""
    from deltalake import DeltaTable

    uri, options = tables.uri(name), tables.options
    table = DeltaTable(uri, storage_options=options or None)
    configuration = table.metadata().configuration
    if any(configuration.get(k) != v for k, v in TABLE_PROPERTIES.items()):
        # A table from before TABLE_PROPERTIES: optimize would add column bounds to the log.
        table.alter.set_table_properties(TABLE_PROPERTIES)
    pending = _shards(table, target)
    on_cold_nodes = path_resource("cold")  # cluster.yaml's cold_workers, when there are some
    deadline_ms = lease.expires_ms - int(margin_s * 1000)
    running: list[ray.ObjectRef] = []
    done = {"partitions": 0, "removed": 0, "added": 0, "left": 0}
    try:
        while pending or running:
            while pending and len(running) < parallel and lease.remaining() > margin_s:
                task = _compact_partition.options(resources=on_cold_nodes)
                running.append(task.remote(uri, options, pending.pop(), target, deadline_ms))
            if not running:
                break
            ready, running = ray.wait(running, num_returns=1)
            result = ray.get(ready[0])
            if result.get("late"):
                done["left"] += 1
                continue
            done["partitions"] += 1
            done["removed"] += result["removed"]
            done["added"] += result["added"]
    finally:
        for ref in running:  # a task failed: none may run on once the lease is given up
            ray.cancel(ref, force=True)
    done["left"] += len(pending)  # the lease ran short: the next run does the rest
    return done


def main(argv: Sequence[str] | None = None) -> int:
    """Compact the tables ``argv`` names (see the module docs); the process's exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.compact", description=__doc__.split("\n")[0]
    )
    add_lake_arguments(parser)
    parser.add_argument("--table", action="append", help="a table to compact (default: all)")
    parser.add_argument("--target-size", type=int, default=_DEFAULT_TARGET, help="bytes per file")
    parser.add_argument(
        "--retention", default=f"{DEFAULT_RETENTION_HOURS}h", help="vacuum files older (>= 1h)"
    )
    parser.add_argument("--wait", default="0s", help="how long to wait for a held lease")
    parser.add_argument("--lease-ttl", default="1h", help="how long the lease lasts")
    parser.add_argument("--lease-margin", default="5m", help="no task starts with less left")
    parser.add_argument("--parallel", type=int, default=2, help="partitions compacted at once")
    args = parser.parse_args(argv)
    try:
        retention_h = parse_duration_ms(args.retention) / 3_600_000
        wait_s, ttl_s, margin_s = (
            parse_duration_ms(v) / 1000 for v in (args.wait, args.lease_ttl, args.lease_margin)
        )
    except ValueError as error:
        parser.error(str(error))
    config = config_from(parser, args)
    if retention_h < 1:
        parser.error("--retention: use 1h or more; a shorter one deletes files a running"
                     " pipeline is about to commit")  # fmt: skip
    if margin_s >= ttl_s or args.parallel < 1 or args.target_size < 1:
        parser.error("--lease-margin must be under --lease-ttl; --parallel and --target-size >= 1")
    started = time.monotonic()
    lake = lake_from(config, args)
    tables = LakeTables(lake, "compact")
    names = args.table or tables.tables()
    where = connect(args.address)
    print(f"compact: {len(names)} tables in {lake.uri} (Ray: {where})", file=sys.stderr)
    leases = Leases(lake)
    summary: dict[str, Any] = {"job": "compact", "lake": lake.uri, "tables": {}, "held": []}
    for name in names:
        lease = _acquire(leases, name, ttl_s, wait_s)
        if lease is None:
            summary["held"].append(name)
            continue
        try:
            done = compact_table(tables, name, lease, args.target_size, args.parallel, margin_s)
            # Vacuum only within the lease: it deletes what compactions replaced.
            enough = lease.remaining() > margin_s
            done["vacuumed"] = len(tables.vacuum(name, int(retention_h))) if enough else 0
        finally:
            leases.release(lease)
        summary["tables"][name] = done
        print(
            f"compact: {name}: {done['removed']:,} files merged into {done['added']:,} in"
            f" {done['partitions']:,} partitions; {done['vacuumed']:,} old files vacuumed",
            file=sys.stderr,
        )
    summary["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(summary))
    return EXIT_HELD if summary["held"] else 0


def _acquire(leases: Leases, table: str, ttl_s: float, wait_s: float) -> Lease | None:
    """The table's compaction lease, waiting up to ``wait_s`` (None: still held)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return leases.acquire(f"compact/{table}", ttl_s, owner="jobs.compact")
        except LeaseHeld as held:
            if time.monotonic() >= deadline:
                print(f"compact: {table}: skipped: {held}", file=sys.stderr)
                return None
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


if __name__ == "__main__":
    sys.exit(main())
