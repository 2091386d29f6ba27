"""Cold file sizes in a long paced run: does the lake writer reach ``cold.target_file_size``?

One JSON record (also ``results/cold_files.json``). The demo pipeline (examples/demo.yaml,
synthetic game telemetry, default cold settings unless ``--target`` is given):

1. throughput: ``--calibration-events`` events as fast as it goes (after one warm-up run);
2. a run paced at half that rate (or ``--rate``) for ``--minutes`` (10 by default), the events
   arriving on the synthetic schedule with their late (5%) and stale (2%, hours old) shares;
3. the ``events`` Delta table's committed files (its log's add actions): count, mean, median
   and largest size, how many reach the target, and the share of rows in those. Rows hours late
   go to their own hour's folder, so each flush also stages small files for them (compaction,
   issue 11, merges those); the share of rows in target-size files says how much of the stream
   the trigger itself placed; ``folders_under_target`` counts the hour folders whose rows all
   together make less than one target-size file (no writer could fill one there), and the files
   in them;
4. ``jobs.compact`` over that table (its lease taken, as the job does): the same figures after,
   and how long it took.

    python -m benchmarks.cold_files                                   # make bench-files
    python -m benchmarks.cold_files --minutes 0.2 --calibration-events 100000 --target 1MiB
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pyarrow as pa
import ray

from benchmarks._common import RESULTS, emit
from engine.config import PipelineConfig, load_config
from engine.pipeline import Pipeline, init_local_ray

ROOT = Path(__file__).resolve().parents[1]
_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def size(text: str) -> int:
    """``"32MiB"`` -> bytes (or a plain number of bytes)."""
    for unit, factor in _UNITS.items():
        if text.endswith(unit):
            return int(float(text.removesuffix(unit)) * factor)
    return int(text)


def configured(lake: str, events: int, rate: float | None, target: int | None) -> PipelineConfig:
    base = load_config(ROOT / "examples" / "demo.yaml")
    cold = {"lake_uri": lake, **({"target_file_size": target} if target else {})}
    source = {"events": events, "rate": rate}
    return base.model_copy(
        update={
            "source": base.source.model_copy(update=source),
            "cold": base.cold.model_copy(update=cold),
            "progress_every_s": 0,
        }
    )


def run(config: PipelineConfig) -> dict[str, Any]:
    pipeline = Pipeline(config)
    try:
        return pipeline.run().to_json()
    finally:
        pipeline.close()


def files_of(lake: str, target: int) -> dict[str, Any]:
    """The committed files of the ``events`` table, from its Delta log."""
    from deltalake import DeltaTable

    adds = pa.table(DeltaTable(f"{lake}/events").get_add_actions(flatten=True))
    sizes = adds["size_bytes"].to_pylist()
    rows = adds["num_records"].to_pylist()
    big = [i for i, n in enumerate(sizes) if n >= target]
    folders = list(
        zip(adds["partition.dt"].to_pylist(), adds["partition.hour"].to_pylist(), strict=True)
    )
    per_folder: dict[tuple[str, int], int] = {}
    for folder, n in zip(folders, sizes, strict=True):
        per_folder[folder] = per_folder.get(folder, 0) + n
    small_folders = {f for f, total in per_folder.items() if total < target}
    return {
        "files": len(sizes),
        "mean_bytes": round(statistics.fmean(sizes)) if sizes else 0,
        "median_bytes": round(statistics.median(sizes)) if sizes else 0,
        "largest_bytes": max(sizes, default=0),
        "files_at_target": len(big),
        "mean_bytes_of_files_at_target": round(statistics.fmean([sizes[i] for i in big]))
        if big
        else 0,
        "rows": sum(rows),
        "share_of_rows_in_files_at_target": round(sum(rows[i] for i in big) / max(sum(rows), 1), 3),
        "hour_folders": len(per_folder),
        "folders_under_target": len(small_folders),
        "files_in_folders_under_target": sum(f in small_folders for f in folders),
    }


def compacted(lake: str, target: int) -> tuple[float, dict[str, int]]:
    """``jobs.compact`` over the ``events`` table: seconds, and what it merged."""
    from engine.delta import LakeTables
    from engine.lake import Lake
    from engine.lease import Leases
    from jobs.compact import compact_table

    tables = LakeTables(Lake(lake), "bench")
    leases = Leases(tables.lake)
    lease = leases.acquire("compact/events", ttl_s=3600, owner="benchmarks.cold_files")
    started = time.monotonic()
    try:
        done = compact_table(tables, "events", lease, target, parallel=2, margin_s=60)
    finally:
        leases.release(lease)
    return time.monotonic() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="paced run length")
    parser.add_argument("--calibration-events", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, help="events/s (default: half the throughput)")
    parser.add_argument("--target", type=size, help="cold.target_file_size (default: config's)")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    init_local_ray(args.num_cpus)
    lake = tempfile.mkdtemp(prefix="tc-bench-files-")
    try:
        rate = args.rate
        throughput = None
        if rate is None:
            run(configured(f"{lake}/warm-up", args.calibration_events // 4, None, args.target))
            throughput = run(
                configured(f"{lake}/throughput", args.calibration_events, None, args.target)
            )["events_per_s"]
            rate = throughput / 2
        events = int(rate * args.minutes * 60)
        config = configured(f"{lake}/paced", events, rate, args.target)
        started = time.monotonic()
        summary = run(config)
        elapsed = time.monotonic() - started
        target = config.cold.target_file_size
        record = {
            "cpus": args.num_cpus,
            "throughput_events_per_s": throughput,
            "paced_rate_events_per_s": round(rate),
            "minutes": round(elapsed / 60, 2),
            "events": summary["events_in"],
            "cold_events": summary["cold"],
            "achieved_events_per_s": summary["events_per_s"],
            "target_file_size": target,
            "flush_interval": config.cold.flush_interval,
            "cold_files": files_of(f"{lake}/paced", target),
            "checkpoint": summary["checkpoint"],
        }
        seconds, merged = compacted(f"{lake}/paced", target)
        record["compaction"] = {"seconds": round(seconds, 2), **merged}
        record["cold_files_after_compaction"] = files_of(f"{lake}/paced", target)
    finally:
        shutil.rmtree(lake, ignore_errors=True)
        ray.shutdown()
    emit("cold_files", record, args.results)


if __name__ == "__main__":
    main()
