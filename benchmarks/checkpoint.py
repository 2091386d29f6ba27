"""Checkpoint cost against hot state size and against lake size.

One JSON record (also ``results/checkpoint.json``) and a PNG. Each point is a real pipeline run on
a local Ray over synthetic events, through a checkpointed in-memory source (the Kafka path's
checkpoint protocol without a broker: drain, alerts, each hot actor writing its own snapshot
pieces, prepare records, one Delta commit per table written to, the pointers), checkpointing
every ``--interval``:

1. state size: ``--keys`` players (three events each, at least ``--events`` in all; ~95% of
   them get one), on an empty lake; the longest checkpoint (its drain included) and the longest
   snapshot step (actors writing their pieces, then the pointers), and the largest snapshot's
   keys and bytes, and the longest commit step;
2. lake size: 10K players into a lake whose ``events`` Delta table already holds
   ``--lake-files`` committed files of another pipeline (committed 1,000 per Delta commit),
   every event cold, so each checkpoint commits new files to that table. Nothing is listed,
   and a commit reads only the commits since its last one (engine.delta_log; delta-rs 1.6 itself
   would load the table's whole file list per commit, delta-rs#4114): the commit step should
   not grow with the table. Beside it, what a member does when assigned a partition
   (``Committer.claim`` and ``Committer.recover``: an epoch committed to each table, read from
   the last Delta checkpoint's ``txn`` column on, the pointer, the prepare record).

    python -m benchmarks.checkpoint                                   # make bench-checkpoint
    python -m benchmarks.checkpoint --keys 2000 --lake-files 10,100 --events 20000 --no-plot
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from deltalake import DeltaTable

from benchmarks._common import RESULTS, emit
from engine.checkpoint import Checkpoints
from engine.commit import Committer, TableSpec
from engine.config import PipelineConfig
from engine.delta import LakeTables
from engine.lake import COLD, DEAD_LETTER_DIR, EVENTS_DIR, Lake, StagedFile, file_stem
from engine.pipeline import Pipeline, init_local_ray
from engine.sources import MemorySource, SourceBlock, SyntheticSource

#: Every event hot (the state grows by one key per player).
ALL_HOT: dict[str, Any] = {"default": "hot", "rules": []}
#: Every event cold: each checkpoint commits new files to the large ``events`` table.
ALL_COLD: dict[str, Any] = {"default": "cold", "rules": []}


class _Checkpointed(MemorySource):
    """Blocks from memory, checkpointed as a Kafka source is (commit: nothing to tell)."""

    def __init__(self, blocks: list[SourceBlock], pause_s: float) -> None:
        super().__init__(blocks, name="bench")
        self.pause_s = pause_s

    @property
    def checkpointed(self) -> bool:
        return True

    def blocks(self) -> Iterator[SourceBlock | None]:
        yield from super().blocks()
        # Quiet moments after the last block, so interval checkpoints of the whole state run.
        deadline = time.monotonic() + self.pause_s
        while time.monotonic() < deadline and not self.stopping:
            time.sleep(0.05)
            yield None


def run(
    lake: str,
    keys: int,
    events: int,
    interval: str,
    pause_s: float,
    policy: dict[str, Any],
    name: str = "bench",
) -> dict[str, Any]:
    blocks = SyntheticSource(
        events=max(events, 3 * keys), players=keys, block_rows=50_000, seed=9, malformed_share=0
    ).blocks()
    config = PipelineConfig.from_dict(
        {
            "name": name,
            "policy": policy,
            "hot": {"actors": 2, "key_groups": 64},
            # Cold files staged as often as checkpoints come: each commits some to `events`.
            "cold": {"lake_uri": lake, "flush_interval": interval},
            "checkpoint_interval": interval,
            "progress_every_s": 0,
        }
    )
    source = _Checkpointed([b for b in blocks if b is not None], pause_s)
    pipeline = Pipeline(config, source=source)
    try:
        summary = pipeline.run()
    finally:
        pipeline.close()
    return {"checkpoints": summary.checkpoints, **summary.checkpoint}


def fill_lake(lake: str, files: int) -> float:
    """``files`` one-row files of another pipeline's partition, committed to ``events``."""
    started = time.perf_counter()
    row = pa.table({"event_id": ["x"]})
    store = Lake(lake)
    tables = LakeTables(store, "other")
    staged = []
    for i in range(files):
        folder = Path(lake) / "events" / f"dt=2026-11-{1 + i % 28:02d}" / f"hour={i % 24:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{file_stem('other', 'p', i, i)}.parquet"
        pq.write_table(row, folder / name)
        relative = f"{folder.relative_to(Path(lake) / 'events')}/{name}"
        values = {"dt": f"2026-11-{1 + i % 28:02d}", "hour": str(i % 24)}
        staged.append(StagedFile(EVENTS_DIR, relative, 400, 1, values, "p", row.schema))
        if len(staged) == 1_000 or i == files - 1:
            tables.commit(EVENTS_DIR, staged, {"p": {COLD: i}}, (COLD,), ("dt", "hour"), False)
            staged = []
    # A lake this size has a Delta checkpoint (one per 100 versions, written in the background
    # as it grows): made here, so that every size is measured from one.
    DeltaTable(store.path(EVENTS_DIR)).create_checkpoint()
    return time.perf_counter() - started


def recovery_s(lake: str) -> tuple[float, float]:
    """A member's start-up (the committer reads each table's log from its last checkpoint)
    and what it does in the rebalance callback when assigned a partition: claim it (an epoch
    committed to each table) and recover it (pointer, prepare record)."""
    spec = TableSpec(("dt", "hour"), (COLD,))
    started = time.perf_counter()
    committer = Committer(Checkpoints(Lake(lake), "bench"), {EVENTS_DIR: spec})
    opened = time.perf_counter()
    committer.known.add(DEAD_LETTER_DIR)
    committer.claim(["0"])
    committer.recover("0")
    return opened - started, time.perf_counter() - opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="10000,1000000", help="hot state sizes, comma-separated")
    parser.add_argument("--lake-files", default="1000,10000,100000", help="lake sizes")
    parser.add_argument("--events", type=int, default=200_000, help="events per run, at least")
    parser.add_argument("--interval", default="1s", help="checkpoint_interval")
    parser.add_argument("--pause", type=float, default=2.5, help="quiet seconds after the data")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where JSON/PNG go")
    args = parser.parse_args()
    keys = [int(k) for k in args.keys.split(",")]
    sizes = [int(n) for n in args.lake_files.split(",")]

    timing = (args.events, args.interval, args.pause)
    init_local_ray()
    by_keys, by_files = [], []
    for count in keys:
        lake = tempfile.mkdtemp(prefix="tc-bench-ckpt-")
        try:
            by_keys.append({"keys": count, **run(lake, count, *timing, ALL_HOT)})
        finally:
            shutil.rmtree(lake, ignore_errors=True)
    for files in sizes:
        lake = tempfile.mkdtemp(prefix="tc-bench-ckpt-")
        try:
            fill_s = fill_lake(lake, files)
            # A first run gives the table the stream's columns (a delta-rs schema merge, which
            # loads the file list: once per new column, not per checkpoint); measured: the next.
            run(lake, 10_000, *timing, ALL_COLD, name="warm-up")
            point = run(lake, 10_000, *timing, ALL_COLD)
            open_s, recovery = recovery_s(lake)
            by_files.append(
                {
                    "lake_files": files,
                    **point,
                    "open_ms": round(open_s * 1000, 1),
                    "recovery_ms": round(recovery * 1000, 1),
                    "fill_s": round(fill_s, 1),
                }
            )
        finally:
            shutil.rmtree(lake, ignore_errors=True)
    ray.shutdown()
    record = {
        "interval": args.interval,
        "by_state_keys": by_keys,
        "by_lake_files": by_files,
        # Flat: the commit step and the recovery at the largest lake against the smallest's.
        "commit_ratio_largest_vs_smallest_lake": round(
            by_files[-1]["commit_max_ms"] / max(by_files[0]["commit_max_ms"], 1e-9), 2
        )
        if by_files
        else None,
        "recovery_ratio_largest_vs_smallest_lake": round(
            by_files[-1]["recovery_ms"] / max(by_files[0]["recovery_ms"], 1e-9), 2
        )
        if by_files
        else None,
    }
    emit("checkpoint", record, args.results)
    if not args.no_plot:
        plot(by_keys, by_files, args.results)


def plot(by_keys: list[dict], by_files: list[dict], results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot([p["keys"] for p in by_keys], [p["max_ms"] for p in by_keys], "o-", label="longest")
    left.plot(
        [p["keys"] for p in by_keys], [p["snapshot_max_ms"] for p in by_keys], "s--",
        label="snapshot step",
    )  # fmt: skip
    left.set_xscale("log")
    left.set_xlabel("hot state keys")
    left.set_ylabel("checkpoint ms")
    left.legend(fontsize=8)
    files = [p["lake_files"] for p in by_files]
    right.plot(files, [p["commit_max_ms"] for p in by_files], "o-", label="commit step")
    right.plot(files, [p["recovery_ms"] for p in by_files], "s--", label="claim + recover")
    right.plot(files, [p["open_ms"] for p in by_files], "^:", label="start-up (log read)")
    right.set_xscale("log")
    right.set_xlabel("committed lake files")
    right.set_ylabel("ms")
    right.legend(fontsize=8)
    fig.suptitle("Checkpoint cost")
    fig.tight_layout()
    fig.savefig(results / "checkpoint.png", dpi=100)


if __name__ == "__main__":
    main()
