"""``make bench-ingest`` still runs end to end (a tiny version: what it measures is its business,
not the tests'): every request answered 200, every producer round counted, a plot written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_benchmarks_smoke import run_benchmark


def test_ingest_http_smoke(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka_bootstrap)  # the session's broker, not a new one
    record = run_benchmark(
        "benchmarks.ingest_http", "--seconds", "1", "--concurrency", "1", "4",
        "--rates", "2000", "--producer-events", "2000", "--rounds", "1",
        "--framework-requests", "500", results=tmp_path,
    )  # fmt: skip
    assert [s["connections"] for s in record["sweep"]] == [1, 4]
    assert all(set(s["statuses"]) == {"200"} and s["requests"] > 0 for s in record["sweep"])
    assert record["paced"][0]["statuses"] == {"200": 20}
    assert record["producers"]["rounds"][0]["kafka-python"] > 0
    assert record["framework_us_per_request"]["starlette_us"] > 0
    assert (tmp_path / "ingest_http.png").stat().st_size > 0
