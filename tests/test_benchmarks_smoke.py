"""Tiny runs of the benchmarks: they start, check their own results, and print one JSON record.

The longer ones (a Ray of their own, Kafka, a lake of their own: 30-90 s each here) are marked
``bench_smoke``: ``make bench-smoke`` runs them, ``make test`` does not (its 20-minute budget).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(module: str, *args: str, results: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--results", str(results)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads((results / f"{record['benchmark']}.json").read_text()) == record
    return record


def test_router_throughput_smoke(tmp_path: Path) -> None:
    record = run_benchmark(
        "benchmarks.router_throughput",
        "--rows",
        "20000",
        "--decode-rows",
        "2000",
        "--repeat",
        "1",
        "--generator-events",
        "40000",
        "--rounds",
        "2",
        results=tmp_path,
    )
    assert record["rows"] == 20_000 and record["rules"] == 6
    assert len(record["generator_rounds"]) == 2
    assert record["generator_events_per_s"] > 0 and record["generator_over_calibration"] > 0
    for key in ("classify", "split", "bare_expressions", "bare_split", "decode"):
        assert record[f"{key}_events_per_s"] > 0
    assert abs(sum(record["rule_share"].values()) - 1) < 1e-3
    assert (tmp_path / "router_throughput.png").stat().st_size > 0


@pytest.mark.bench_smoke
def test_end_to_end_smoke(tmp_path: Path) -> None:
    record = run_benchmark(
        "benchmarks.end_to_end", "--events", "20000", "--latency-events", "10000",
        "--naive-events", "200", "--rounds", "1", "--no-plot", results=tmp_path,
    )  # fmt: skip
    assert record["events"] == 20_000
    assert sum(record["split"].values()) == 20_000
    assert (
        record["events_per_s"] > 0
        and record["hot_naive_events_per_s"] > 0
        and record["events_per_s_over_calibration"] > 0
    )
    assert record["hot_latency_ms"]["p99_ms"] >= record["hot_latency_ms"]["p50_ms"] > 0


@pytest.mark.bench_smoke
def test_kafka_ingest_smoke(tmp_path: Path, kafka_bootstrap: str, monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka_bootstrap)  # the session's broker, not a new one
    record = run_benchmark(
        "benchmarks.kafka_ingest", "--events", "3000", "--rounds", "1", results=tmp_path
    )
    assert record["events"] == 3_000
    assert sum(record["split"].values()) == 3_000
    assert record["bare_consumer_events_per_s"] > 0 and record["pipeline_events_per_s"] > 0
    assert (tmp_path / "kafka_ingest.png").stat().st_size > 0


def test_decode_telemetry_smoke(tmp_path: Path) -> None:
    record = run_benchmark(
        "benchmarks.decode_telemetry", "--events", "20000", "--rounds", "1", results=tmp_path
    )
    rates = record["rates_events_per_s"]
    assert set(rates) == {"uniform", "heterogeneous", "drift_0.2", "calibration"}
    assert all(rate > 0 for rate in rates.values())


@pytest.mark.bench_smoke
def test_checkpoint_smoke(tmp_path: Path) -> None:
    record = run_benchmark(
        "benchmarks.checkpoint", "--keys", "500", "--lake-files", "5,50", "--events", "5000",
        "--pause", "1.5", "--no-plot", results=tmp_path,
    )  # fmt: skip
    (state,) = record["by_state_keys"]
    assert state["keys"] == 500 and state["checkpoints"] >= 2
    assert 0 < state["snapshot_rows"] <= 500 and state["snapshot_max_ms"] > 0
    assert [p["lake_files"] for p in record["by_lake_files"]] == [5, 50]
    assert all(p["recovery_ms"] >= 0 for p in record["by_lake_files"])


@pytest.mark.bench_smoke
def test_cold_files_smoke(tmp_path: Path) -> None:
    record = run_benchmark(
        "benchmarks.cold_files", "--minutes", "0.1", "--rate", "20000", "--target", "200KiB",
        results=tmp_path,
    )  # fmt: skip
    files = record["cold_files"]
    assert record["target_file_size"] == 200 << 10 and record["events"] == 120_000
    assert files["rows"] == record["cold_events"] > 0  # every cold row in a committed file
    assert files["files_at_target"] >= 1 and files["largest_bytes"] >= 200 << 10
    assert 0 < files["share_of_rows_in_files_at_target"] <= 1
    after = record["cold_files_after_compaction"]
    assert after["rows"] == files["rows"]  # compaction keeps every row, once
    assert (
        after["files"]
        == files["files"] - record["compaction"]["removed"] + record["compaction"]["added"]
    )
    assert after["files"] < files["files"] and files["folders_under_target"] >= 1


@pytest.mark.bench_smoke
def test_cold_job_smoke(tmp_path: Path) -> None:
    lake = ["--events", "40000", "--hours", "2", "--players", "2000", "--lake", str(tmp_path / "l")]
    # Not warmed, and Ray Data's groupby once (its default partitions): it costs ~8 s even on
    # tiny data. Without the PySpark leg: a Spark session's start and first job alone take
    # 12-16 s here (PLATFORM_NOTES), and pyspark is in the `bench` group, which `make test` does
    # not install; `make bench-cold` runs it.
    # The engines the targets name (and the full job); the other variants only in bench-cold.
    engines = "ray_data_groupby,day_features"
    record = run_benchmark(
        "benchmarks.cold_job", *lake, "--engines", engines, "--no-spark", "--no-warm",
        results=tmp_path,
    )  # fmt: skip
    assert record["rows"] == 40_000 and record["partition_folders"] == 2
    assert not record["lake"]["reused"] and record["lake"]["generation_s"] > 0
    assert 0 < record["rows_kept"] < 40_000 and record["players"] > 0
    assert set(record["seconds"]) == {*engines.split(","), "ours", "duckdb"}
    checks = {k: v for k, v in record["cross_check"].items() if isinstance(v, dict)}
    assert set(checks) == set(record["seconds"])
    assert record["results_agree"] and all(c["agree"] for c in checks.values())  # same means
    assert all(c["players"] == record["players"] for c in checks.values())
    assert record["skipped"] == {
        "ours_duckdb_files": "--engines", "ours_duckdb_arrow": "--engines",
        "ray_data_groupby_tuned": "--engines", "ray_data_map_batches": "--engines",
        "pyspark": "--no-spark",
    }  # fmt: skip
    assert [t["holds"] is None for t in record["targets"]] == [False, True, False]
    assert record["day_features"]["rows_read"] == 40_000
    assert (tmp_path / "cold_job.png").stat().st_size > 0
    # A second run with the same parameters reuses the lake (ours and DuckDB only).
    again = run_benchmark(
        "benchmarks.cold_job", *lake, "--engines", "ours", "--no-spark", "--no-warm", "--no-plot",
        results=tmp_path,
    )  # fmt: skip
    assert again["lake"]["reused"] and again["rows"] == 40_000
    assert set(again["seconds"]) == {"ours", "duckdb"} and again["results_agree"]
