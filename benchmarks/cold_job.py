"""The cold job against other engines: filter + mean per player over one day of a generated lake.

One JSON record (also ``results/cold_job.json``) and a PNG bar chart beside it. The seed's
daily-features core (the events with ``quality_score > 0.8``, mean ``engagement_score`` per
player) over the same Parquet files (one day of the lake's ``events`` table, from its Delta log's
add actions), on each engine, in one run:

==========================  =================================================================
``ours``                    the plan of jobs.daily_features: one Ray task per partition folder
                            (dt/hour) reads its files (``Lake.fs``, pyarrow) and aggregates per
                            player with pyarrow (sum and count), its partial split by the job's
                            own player hash into ``--shards`` buckets; one combine task per
                            bucket; the driver concatenates
``ours_duckdb_files``       the same plan, each task's partial by DuckDB reading its files itself
                            (``read_parquet``: local paths only, DuckDB's S3 support is an
                            extension downloaded at run time, not available here)
``ours_duckdb_arrow``       the same plan, the files read as ``ours`` does, the partial by DuckDB
                            over that Arrow table (works on any filesystem the lake does)
``ray_data_groupby``        Ray Data's built-in ``read_parquet(files).select_columns(...)
                            .filter(expr=...).groupby("player_id").mean(...)`` (Ray 2.60: the
                            hash shuffle, ``SHUFFLE_V2``, by default; its default 200 partitions)
``ray_data_groupby_tuned``  the same with ``num_partitions`` 4 per CPU (what Spark is given)
``ray_data_map_batches``    Ray Data reading the same way, a pyarrow partial per block
                            (``map_batches``), combined in the driver
``duckdb``                  DuckDB in one process (``read_parquet([...])``, its default threads)
``pyspark``                 PySpark in local mode (``local[N]``, ``--num-cpus``; 4 shuffle
                            partitions per CPU, AQE on), from PyPI (``make bench-cold`` installs
                            the ``bench`` group); needs Java 17+; loopback only, no UI server
==========================  =================================================================

As information, ``day_features``: jobs.daily_features's whole day (10 columns read, 20 features,
z-scores, two Delta commits) on the same files.

**Equal work**: every engine reads the same file list (listed once from the Delta log, not
timed), applies the same filter and returns the same result to this process as an Arrow table:
one row per player with the mean (null when none of the player's kept events has a score). The
results are cross-checked against DuckDB's: the same players, the same means within 1e-9 (all
of them), and the job's own ``engagement_mean`` too. **Timing**: Ray is started once, before
everything, and its start-up is not timed (nor the Spark session's: both are reported); each
engine runs once untimed (warm: see ``warm`` in the record) and then ``--repeat`` timed runs (the
best is kept). Everything comes from the same run on the same files, in the page cache after
generation (the generated lake is a few hundred MB). The machine's load average before and after
is recorded: on a shared machine, compare figures of one run only.

**Targets** (each ``holds``: true, false, or null when not measured; never left out): ours at
least 3x faster than Ray Data's built-in groupby (the faster of its two runs), faster than
PySpark local (warm), within 5x of DuckDB in one process.

**The lake** is written by the project's own pipeline (examples/demo.yaml's policy, all three
paths, ``cold.archive: all``: every event is archived) from its synthetic source: ``--events``
events (no malformed ones, none stale, so all of them land in the day) in ``--hours`` runs of
``--events / --hours`` events, one per hour of one day (``--day``) as ``--hours`` hourly runs of
a stream would write them, each at its own seed. The synthetic schedule gives 50K events per
second of game time, so each run lands in its own ``dt/hour`` folder. A lake at ``--lake`` with
the same parameters (its ``bench_cold_lake.json``) is reused, and the output says so.

    python -m benchmarks.cold_job                                     # make bench-cold: 20M
    python -m benchmarks.cold_job --events 200000 --hours 2 --players 5000 --no-spark
    python -m benchmarks.cold_job --engines ours,ours_duckdb_files --repeat 3   # some only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from benchmarks._common import RESULTS, emit
from engine.config import load_config
from engine.delta import LakeTables, data_file_path
from engine.lake import EVENTS_DIR, Lake
from engine.pipeline import Pipeline, init_local_ray, source_from_config
from jobs.daily_features import FEATURES_TABLE, _bucket, day_features

ROOT = Path(__file__).resolve().parents[1]
#: The columns the core reads.
CORE = ["player_id", "quality_score", "engagement_score"]
#: A partial: per player, the sum and the count of the kept events' scores.
PARTIAL = ["player_id", "s_sum", "n_sum"]
#: How the generated lake is recognized on a re-run (bump when generation changes).
LAKE_FORMAT = 1
PARAMS_FILE = "bench_cold_lake.json"
#: Results of different engines agree when every mean is this close.
TOLERANCE = 1e-9
#: What "warm" means for each engine: the untimed run before the timed one(s).
WARM = {
    "ours": "one untimed run of the same plan: Ray workers started, pyarrow imported in them",
    "ours_duckdb_files": "one untimed run: Ray workers started, DuckDB imported in them",
    "ours_duckdb_arrow": "one untimed run: Ray workers started, DuckDB imported in them",
    "ray_data_groupby": "one untimed run of the same dataset pipeline (workers started); Ray"
    " Data plans and launches its list, read, map and reduce tasks anew in each run",
    "ray_data_groupby_tuned": "as ray_data_groupby",
    "ray_data_map_batches": "one untimed run of the same dataset pipeline",
    "duckdb": "one untimed run of the same query in the same connection",
    "pyspark": "session started (not timed), then one untimed run of the same query (JVM"
    " classes loaded and JIT-compiled)",
    "day_features": "one untimed run of the same day (its Delta tables then exist)",
}


# -- the lake ----------------------------------------------------------------------------------


def lake_params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "format": LAKE_FORMAT,
        "events": args.events,
        "hours": args.hours,
        "players": args.players,
        "seed": args.seed,
        "day": args.day,
    }


def ensure_lake(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The lake at ``root`` with these parameters: reused when its parameter file matches,
    else (re)generated. What was done: ``reused``, and the generation's seconds and rate."""
    marker = root / PARAMS_FILE
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        done = json.loads(marker.read_text())
        return {"reused": True, **{k: v for k, v in done.items() if k != "params"}}
    if root.exists() and any(root.iterdir()):
        if not marker.exists():
            raise SystemExit(
                f"cold_job: {root} is not empty and holds no {PARAMS_FILE}: not a lake this"
                " benchmark made, so it is left alone. Give another --lake."
            )
        say(f"{root} was generated with other parameters: regenerating")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    events_in = generate(str(root), params)
    seconds = time.monotonic() - started
    done = {
        "generation_s": round(seconds, 1),
        "generation_events_per_s": round(events_in / seconds),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    marker.write_text(json.dumps({"params": params, **done}, indent=2) + "\n")
    return {"reused": False, **done}


def generate(lake: str, params: dict[str, Any]) -> int:
    """``params["events"]`` events through the demo pipeline into ``lake``, one run per hour."""
    base = load_config(ROOT / "examples" / "demo.yaml")
    day = datetime.fromisoformat(params["day"]).replace(tzinfo=timezone.utc)
    hours, total = params["hours"], params["events"]
    events_in = 0
    for k in range(hours):
        count = total // hours + (1 if k < total % hours else 0)
        source = {
            "events": count,
            "players": params["players"],
            "seed": params["seed"] + k,
            "block_rows": 50_000,
            "stale_share": 0.0,  # stale events would land in earlier days
            "malformed_share": 0.0,  # every generated event in the lake
        }
        config = base.model_copy(
            update={
                "name": f"bench-cold-{k:02d}",  # its own positions in the lake
                "source": base.source.model_copy(update=source),
                "cold": base.cold.model_copy(update={"lake_uri": lake, "archive": "all"}),
                "progress_every_s": 0,
            }
        )
        # At half past the hour: late events (up to 10 minutes) stay in the same folder.
        start = day + timedelta(hours=k * 24 // hours, minutes=30)
        source_of_run = source_from_config(config, int(start.timestamp() * 1000))
        pipeline = Pipeline(config, source=source_of_run)
        try:
            summary = pipeline.run()
        finally:
            pipeline.close()
        events_in += summary.events_in
        say(f"generated hour {k + 1}/{hours}: {summary.events_in:,} events")
    return events_in


def day_files(lake: Lake, day: str) -> tuple[dict[str, list[str]], int]:
    """The day's data files of the events table, by partition folder, and their rows."""
    from deltalake import DeltaTable

    adds = pa.table(DeltaTable(lake.path(EVENTS_DIR)).get_add_actions(flatten=True))
    adds = adds.filter(pc.equal(adds["partition.dt"], day))
    folders: dict[str, list[str]] = defaultdict(list)
    for path in adds["path"].to_pylist():
        found = data_file_path(lake, EVENTS_DIR, path)
        folders[os.path.dirname(found)].append(found)
    return dict(folders), pc.sum(adds["num_records"]).as_py() or 0


# -- our plan: a task per partition folder, a combine task per bucket --------------------------


def _read_core(lake_uri: str, files: list[str]) -> pa.Table:
    """The core's columns of ``files``, read as jobs.daily_features reads (``Lake.fs``)."""
    lake = Lake(lake_uri)
    parts = []
    for uri in files:
        with lake.fs.open(uri, "rb") as handle:
            parts.append(pq.ParquetFile(handle).read(columns=CORE))
    return pa.concat_tables(parts)


def _pyarrow_partial(rows: pa.Table, quality_min: float) -> pa.Table:
    """Per player of ``rows`` kept: the sum and the count of the scores."""
    kept = rows.filter(pc.greater(rows["quality_score"], quality_min))  # null: dropped
    score = kept["engagement_score"]
    per_row = pa.table(
        {
            "player_id": kept["player_id"],
            "s": score,
            "n": pc.cast(pc.is_valid(score), pa.int64()),
        }
    )
    return per_row.group_by("player_id").aggregate([("s", "sum"), ("n", "sum")]).select(PARTIAL)


def _duckdb_partial(query_from: str, params: list[Any], quality_min: float, **tables: Any) -> Any:
    import duckdb

    con = duckdb.connect(config={"threads": 1})  # a task holds one CPU
    for name, table in tables.items():
        con.register(name, table)
    sql = (
        f"SELECT player_id, sum(engagement_score) AS s_sum, count(engagement_score) AS n_sum"
        f" FROM {query_from} WHERE quality_score > {quality_min!r} GROUP BY player_id"
    )
    try:
        return con.sql(sql, params=params or None).to_arrow_table()
    finally:
        con.close()


def _split(partial: pa.Table, shards: int) -> list[pa.Table]:
    buckets = _bucket(partial["player_id"], shards)  # the job's own, process-independent hash
    return [partial.filter(pa.array(buckets == b)) for b in range(shards)]


@ray.remote(num_cpus=1)
def _partition_task(
    how: str, lake_uri: str, files: list[str], quality_min: float, shards: int
) -> list[pa.Table]:
    if how == "pyarrow":
        partial = _pyarrow_partial(_read_core(lake_uri, files), quality_min)
    elif how == "duckdb_files":
        partial = _duckdb_partial("read_parquet(?)", [files], quality_min)
    else:
        rows = _read_core(lake_uri, files)
        partial = _duckdb_partial("rows", [], quality_min, rows=rows)
    return _split(partial.select(PARTIAL), shards)


@ray.remote(num_cpus=1)
def _combine_task(*parts: pa.Table) -> pa.Table:
    return _means(pa.concat_tables(parts))


def _means(partials: pa.Table) -> pa.Table:
    """Partials (``player_id``, ``s_sum``, ``n_sum``) combined into each player's mean."""
    total = partials.group_by("player_id").aggregate([("s_sum", "sum"), ("n_sum", "sum")])
    count = total["n_sum_sum"]
    mean = pc.divide(
        total["s_sum_sum"], pc.if_else(pc.greater(count, 0), pc.cast(count, pa.float64()), None)
    )
    return pa.table({"player_id": total["player_id"], "engagement_mean": mean})


def sharded(
    how: str, lake_uri: str, folders: dict[str, list[str]], quality_min: float, shards: int
) -> pa.Table:
    """The plan of jobs.daily_features on the core, each partition's partial by ``how``."""
    task = _partition_task.options(num_returns=shards)
    refs: list[Any] = [
        task.remote(how, lake_uri, files, quality_min, shards) for files in folders.values()
    ]
    partials = [[r] for r in refs] if shards == 1 else refs  # one reference, not a list
    combined = [_combine_task.remote(*(p[b] for p in partials)) for b in range(shards)]
    return pa.concat_tables(ray.get(combined))


# -- the other engines -------------------------------------------------------------------------


def ray_data_groupby(
    files: list[str], quality_min: float, partitions: int | None = None
) -> pa.Table:
    """Ray Data's own plan; ``partitions`` None: its default (``default_hash_shuffle_parallelism``,
    200), which on 2 cores is 200 tiny reduce blocks."""
    from ray.data.expressions import col

    dataset = (
        ray.data.read_parquet(files)
        .select_columns(CORE)
        .filter(expr=col("quality_score") > quality_min)
        .groupby("player_id", num_partitions=partitions)
        .mean("engagement_score")
    )
    table = pa.concat_tables(ray.get(dataset.to_arrow_refs()))
    return table.rename_columns({"mean(engagement_score)": "engagement_mean"})


def _block_partial(block: pa.Table) -> pa.Table:
    return _pyarrow_partial(block, float("-inf"))  # Ray Data's filter came first


def ray_data_map_batches(files: list[str], quality_min: float) -> pa.Table:
    from ray.data.expressions import col

    dataset = (
        ray.data.read_parquet(files)
        .select_columns(CORE)
        .filter(expr=col("quality_score") > quality_min)
        .map_batches(_block_partial, batch_format="pyarrow", batch_size=None)
    )
    return _means(pa.concat_tables(ray.get(dataset.to_arrow_refs())))


def duckdb_query(con: Any, files: list[str], quality_min: float) -> pa.Table:
    sql = (
        "SELECT player_id, avg(engagement_score) AS engagement_mean FROM read_parquet(?)"
        f" WHERE quality_score > {quality_min!r} GROUP BY player_id"
    )
    return con.sql(sql, params=[files]).to_arrow_table()


def spark_session(cpus: int, memory: str) -> Any:
    """A local Spark session on loopback only (no UI server)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{cpus}]")
        .appName("thermocline-bench-cold")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", memory)
        # AQE (on by default) coalesces the 200 default shuffle partitions; a few per core is
        # what a local job is given anyway and skips planning 200 tiny tasks.
        .config("spark.sql.shuffle.partitions", str(4 * cpus))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_query(spark: Any, files: list[str], quality_min: float) -> pa.Table:
    from pyspark.sql import functions as F

    frame = (
        spark.read.parquet(*files)
        .where(F.col("quality_score") > quality_min)
        .groupBy("player_id")
        .agg(F.avg("engagement_score").alias("engagement_mean"))
    )
    return frame.toArrow()


# -- measuring, checking -----------------------------------------------------------------------


T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int, warm: bool = True) -> tuple[float, T]:
    """One untimed (warm) run, then the best of ``repeat`` timed runs, and the last result."""
    if warm:
        fn()
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    assert result is not None
    return best, result


def agreement(reference: pa.Table, other: pa.Table) -> dict[str, Any]:
    """Whether ``other`` holds the same players and means as ``reference``."""
    a = reference.sort_by("player_id")
    b = other.select(["player_id", "engagement_mean"]).sort_by("player_id")
    same_players = a.num_rows == b.num_rows and a["player_id"].equals(b["player_id"])
    check: dict[str, Any] = {"players": b.num_rows, "same_players": same_players}
    if same_players:
        x = a["engagement_mean"].to_numpy(zero_copy_only=False).astype(float)
        y = b["engagement_mean"].to_numpy(zero_copy_only=False).astype(float)
        same_nulls = bool((np.isnan(x) == np.isnan(y)).all())
        both = ~np.isnan(x) & ~np.isnan(y)
        diff = float(np.abs(x[both] - y[both]).max()) if both.any() else 0.0
        check.update(same_nulls=same_nulls, max_abs_diff=diff)
        check["agree"] = same_nulls and diff <= TOLERANCE
    else:
        check["agree"] = False
    return check


def java_version() -> str | None:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stderr.strip().splitlines()
    return lines[0] if lines else None


def spark_missing() -> str | None:
    """Why PySpark cannot run here, or None."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (make bench-cold installs the bench group)"
    if java_version() is None:
        return "no java on PATH (Spark 4 needs Java 17+)"
    return None


def target(name: str, ratio: float | None, need: str, holds: bool | None) -> dict[str, Any]:
    return {
        "target": name,
        "ratio": None if ratio is None else round(ratio, 2),
        "needed": need,
        "holds": holds,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000_000, help="events in the lake")
    parser.add_argument("--hours", type=int, default=24, help="hour folders (pipeline runs)")
    parser.add_argument("--players", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--day", default="2026-11-20", help="the day the events land in")
    parser.add_argument(
        "--lake", type=Path, default=ROOT / ".cache" / "bench-cold" / "lake",
        help="where the generated lake is kept (reused when its parameters match)",
    )  # fmt: skip
    parser.add_argument("--quality-min", type=float, default=0.8)
    parser.add_argument("--shards", type=int, default=4, help="our combine tasks (the job's)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per engine (best)")
    parser.add_argument("--spark-memory", default="2g", help="spark.driver.memory")
    parser.add_argument("--no-spark", action="store_true", help="leave the PySpark leg out")
    parser.add_argument(
        "--engines", help="comma-separated: only these (and ours, duckdb: always run)"
    )
    parser.add_argument(
        "--no-warm", action="store_true", help="no untimed run first (smoke runs: not a result)"
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where JSON/PNG go")
    args = parser.parse_args(argv)
    if not 1 <= args.hours <= 24 or args.events < args.hours or args.shards < 1:
        parser.error("--hours must be 1..24, --events at least --hours, --shards at least 1")
    wanted = set(args.engines.split(",")) if args.engines else None
    if unknown := (wanted or set()) - set(WARM):
        parser.error(f"--engines: unknown {sorted(unknown)}; known: {', '.join(WARM)}")

    started = time.perf_counter()
    init_local_ray(args.num_cpus)
    ray_start_s = time.perf_counter() - started
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False

    root = args.lake.resolve()
    lake_done = ensure_lake(root, lake_params(args))
    say(
        f"lake {root}: "
        + ("reused (same parameters), generated in" if lake_done["reused"] else "generated in")
        + f" {lake_done['generation_s']} s ({lake_done['generation_events_per_s']:,} events/s)"
    )
    lake = Lake(str(root))
    folders, rows = day_files(lake, args.day)
    files = [f for group in folders.values() for f in group]
    q = args.quality_min
    load_before = os.getloadavg()  # the lake ready, before the first measurement
    #: The 1-minute load average as each engine starts (this run's own work included).
    loads: dict[str, float] = {}

    import duckdb

    con = duckdb.connect()
    rows_kept = con.sql(
        f"SELECT count(*) FROM read_parquet(?) WHERE quality_score > {q!r}", params=[files]
    ).fetchall()[0][0]

    engines: dict[str, Callable[[], pa.Table]] = {
        "ours": lambda: sharded("pyarrow", lake.uri, folders, q, args.shards),
        "ours_duckdb_files": lambda: sharded("duckdb_files", lake.uri, folders, q, args.shards),
        "ours_duckdb_arrow": lambda: sharded("duckdb_arrow", lake.uri, folders, q, args.shards),
        "ray_data_groupby": lambda: ray_data_groupby(files, q),
        "ray_data_groupby_tuned": lambda: ray_data_groupby(files, q, 4 * args.num_cpus),
        "ray_data_map_batches": lambda: ray_data_map_batches(files, q),
        "duckdb": lambda: duckdb_query(con, files, q),
    }
    always = {"ours", "duckdb"}  # ours, and the reference of the cross-check
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    results: dict[str, pa.Table] = {}
    for name, fn in engines.items():
        if wanted is not None and name not in wanted | always:
            skipped[name] = "--engines"
            continue
        loads[name] = os.getloadavg()[0]
        seconds[name], results[name] = timed(fn, args.repeat, not args.no_warm)
        say(f"{name}: {seconds[name]:.3f} s")

    spark_start_s = None
    if args.no_spark:
        skipped["pyspark"] = "--no-spark"
    elif wanted is not None and "pyspark" not in wanted:
        skipped["pyspark"] = "--engines"
    elif why := spark_missing():
        skipped["pyspark"] = why
    if "pyspark" not in skipped:
        loads["pyspark"] = os.getloadavg()[0]
        started = time.perf_counter()
        spark = spark_session(args.num_cpus, args.spark_memory)
        spark_start_s = time.perf_counter() - started
        try:
            seconds["pyspark"], results["pyspark"] = timed(
                lambda: spark_query(spark, files, q), args.repeat, not args.no_warm
            )
        finally:
            spark.stop()
        say(f"pyspark: {seconds['pyspark']:.3f} s")

    full: dict[str, Any] = {}
    if wanted is None or "day_features" in wanted:
        tables = LakeTables(lake, "bench_cold")
        loads["day_features"] = os.getloadavg()[0]
        seconds["day_features"], full = timed(
            lambda: day_features(tables, args.day, q, args.shards), args.repeat, not args.no_warm
        )
        say(f"day_features (full job, information): {seconds['day_features']:.3f} s")
        from deltalake import DeltaTable

        results["day_features"] = DeltaTable(lake.path(FEATURES_TABLE)).to_pyarrow_table(
            columns=["player_id", "engagement_mean"], filters=[("dt", "=", args.day)]
        )
    else:
        skipped["day_features"] = "--engines"
    load_after = os.getloadavg()
    ray.shutdown()

    reference = results["duckdb"]
    checks = {name: agreement(reference, table) for name, table in results.items()}
    ours = seconds["ours"]

    def faster(name: str) -> float | None:
        return seconds[name] / ours if name in seconds else None

    # Against the faster of Ray Data's two groupby runs (its default partitions, and tuned).
    ray_runs: list[str] = [
        n for n in ("ray_data_groupby", "ray_data_groupby_tuned") if n in seconds
    ]
    ray_best = min(ray_runs, key=seconds.__getitem__) if ray_runs else None
    ray_ratio = faster(ray_best) if ray_best else None
    spark_ratio = faster("pyspark")
    targets = [
        target(
            "ours at least 3x faster than Ray Data's built-in groupby", ray_ratio,
            f">= 3 ({ray_best or 'ray_data_groupby'}_s / ours_s, the faster of Ray Data's"
            " default and tuned groupby)", None if ray_ratio is None else ray_ratio >= 3,
        ),
        target(
            "ours faster than PySpark local (warm)", spark_ratio,
            "> 1 (pyspark_s / ours_s)", None if spark_ratio is None else spark_ratio > 1,
        ),
        target(
            "ours within 5x of DuckDB (one process)", ours / seconds["duckdb"],
            "<= 5 (ours_s / duckdb_s)", ours / seconds["duckdb"] <= 5,
        ),
    ]  # fmt: skip
    core = [n for n in seconds if n != "day_features"]
    record = {
        "events": args.events,
        "rows": rows,
        "rows_kept": rows_kept,
        "players": reference.num_rows,
        "files": len(files),
        "partition_folders": len(folders),
        "quality_min": q,
        "shards": args.shards,
        "repeat": args.repeat,
        "lake": {"path": str(root), **lake_params(args), **lake_done},
        "seconds": {n: round(s, 3) for n, s in seconds.items()},
        "fastest_core": min(core, key=seconds.__getitem__),
        "fastest_sharded_plan": min(
            (n for n in core if n.startswith("ours")), key=seconds.__getitem__
        ),
        "rows_per_s": {n: round(rows / s) for n, s in seconds.items()},
        # engine's seconds / ours: above 1, ours is that many times faster.
        "ours_speedup": {n: round(s / ours, 2) for n, s in seconds.items() if n != "ours"},
        "targets": targets,
        # False when one is missed, None when none is missed but one was not measured.
        "targets_hold": False
        if any(t["holds"] is False for t in targets)
        else None
        if any(t["holds"] is None for t in targets)
        else True,
        "results_agree": all(c["agree"] for c in checks.values()),
        "cross_check": {"reference": "duckdb", "tolerance": TOLERANCE, **checks},
        "day_features": full,
        "skipped": skipped,
        "warm": {n: WARM[n] for n in seconds} if not args.no_warm else "no (--no-warm)",
        "not_timed": {
            "ray_start_s": round(ray_start_s, 2),
            "spark_session_start_s": None if spark_start_s is None else round(spark_start_s, 2),
            "file_listing": "once, from the Delta log's add actions, shared by every engine",
        },
        "ray_data": {
            "shuffle": str(context.shuffle_strategy),
            "groupby_partitions": context.default_hash_shuffle_parallelism,
            "groupby_tuned_partitions": 4 * args.num_cpus,
        },
        "spark": {
            "master": f"local[{args.num_cpus}]",
            "driver_memory": args.spark_memory,
            "shuffle_partitions": 4 * args.num_cpus,
        },
        "machine": {
            "cores": os.cpu_count(),
            "ray_cpus": args.num_cpus,
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in load_after],
            "load_1m_at_each_start": {n: round(x, 2) for n, x in loads.items()},
            "memory_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1
            ),
            "platform": platform.platform(),
        },
        "versions": versions(),
    }
    emit("cold_job", record, args.results)
    if not args.no_plot:
        plot(record, args.results)
    summary(record)
    if not record["results_agree"]:
        raise SystemExit("cold_job: the engines' results disagree (see cross_check)")


def versions() -> dict[str, str | None]:
    import duckdb

    found: dict[str, str | None] = {"ray": ray.__version__, "duckdb": duckdb.__version__}
    try:
        import pyspark

        found["pyspark"] = pyspark.__version__
    except ImportError:
        found["pyspark"] = None
    found["java"] = java_version()
    return found


def say(text: str) -> None:
    """A progress line (stderr: stdout's last line is the JSON record)."""
    print(f"cold_job: {text}", file=sys.stderr, flush=True)


def summary(record: dict[str, Any]) -> None:
    """The human summary, on stderr after the JSON record."""
    lines = [
        f"\ncold_job: {record['rows']:,} events ({record['rows_kept']:,} kept,"
        f" {record['players']:,} players, {record['files']} files in"
        f" {record['partition_folders']} folders); load {record['machine']['load_avg_before']}"
    ]
    for name, s in sorted(record["seconds"].items(), key=lambda x: x[1]):
        ratio = record["ours_speedup"].get(name)
        ratio = (
            ""
            if ratio is None
            else f"  ours {ratio:.2f}x faster"
            if ratio >= 1
            else f"  ours {1 / ratio:.2f}x slower"
        )
        load = record["machine"]["load_1m_at_each_start"].get(name)
        lines.append(f"  {name:22s} {s:8.3f} s  (load {load}){ratio}")
    for t in record["targets"]:
        verdict = {True: "HOLDS", False: "MISSED", None: "not measured"}[t["holds"]]
        lines.append(f"  target: {t['target']}: {t['ratio'] or '-'} ({t['needed']}): {verdict}")
    lines.append(
        f"  results agree: {record['results_agree']}; skipped: {record['skipped'] or 'none'}"
    )
    print("\n".join(lines), file=sys.stderr)


def plot(record: dict[str, Any], results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(record["seconds"].items(), key=lambda x: x[1])
    names = [n for n, _ in items]
    values = [s for _, s in items]
    colors = [
        "tab:orange" if n == "ours" else "tab:gray" if n == "day_features" else "tab:blue"
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(names) + 2.2))
    ax.barh(names, values, color=colors)
    ax.set_xscale("log")
    ax.invert_yaxis()
    for i, (name, value) in enumerate(items):
        times = "" if name == "ours" else f"  ({record['ours_speedup'][name]:.2f}x ours' time)"
        ax.text(value, i, f" {value:.2f} s{times}", va="center", fontsize=8)
    warm = "warm" if isinstance(record["warm"], dict) else "not warmed"
    ax.set_xlabel(f"seconds (log scale), {warm}, best of {record['repeat']}")
    ax.set_xlim(right=max(values) * 12)
    ax.set_title(
        f"Filter + mean per player: {record['rows']:,} events, {record['players']:,} players,"
        f" {record['machine']['cores']} cores (load {record['machine']['load_avg_before'][0]})"
        "\nday_features: the whole daily job, for information",
        fontsize=9,
    )
    verdicts = {True: "holds", False: "MISSED", None: "not measured"}
    notes = [
        f"{t['target']}: {t['ratio'] or '-'}, {verdicts[t['holds']]}" for t in record["targets"]
    ]
    fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.03 * len(notes), 1, 1))
    fig.savefig(results / "cold_job.png", dpi=100)


if __name__ == "__main__":
    main()
