# Thermocline: two commands on a fresh clone.
#   make run   - set up and run the main job on the embedded default (local Ray, synthetic events, local lake)
#   make test  - set up and run the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# Keep Ray on loopback and away from any stale cluster file (PLATFORM_NOTES).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

KAFKA_LIBS := .cache/kafka/libs
KAFKA_STAMP := $(KAFKA_LIBS)/.installed

.PHONY: setup setup-run setup-bench run test fuzz lint typecheck bench bench-router bench-kafka bench-checkpoint bench-files bench-cold bench-ingest bench-smoke kafka-jars mono clean

setup: $(STAMP) $(KAFKA_STAMP) mono

# The demo needs only the venv: no JDK or Maven (those are for the tests' Kafka broker).
setup-run: $(STAMP)

# Apache Kafka's jars from Maven Central, for the tests' real KRaft broker (needs java and mvn).
kafka-jars: $(KAFKA_STAMP)

$(KAFKA_STAMP): scripts/kafka/pom.xml
	mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(KAFKA_LIBS)
	touch $(KAFKA_STAMP)

# Debian's Mono, for the Unity client's test (tests/test_unity_client.py compiles clients/unity/
# with mcs and runs it): installed only when mcs is missing; the package lists are refreshed only
# when apt cannot install from the ones it has. ClientWebSocket and GZipStream come with these.
MONO_PACKAGES := mono-mcs mono-runtime libmono-system-net-http4.0-cil
mono:
	@command -v mcs >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(MONO_PACKAGES) \
	  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(MONO_PACKAGES); }; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The engines benchmarks/cold_job.py compares with (pyproject's `bench` group: PySpark, ~0.5 GB).
setup-bench: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

run: setup-run
	$(BIN)/thermocline run

test: setup lint typecheck
	$(BIN)/python -m pytest

# The pipeline fuzzed with arbitrary JSON values and garbage lines, 200 examples (~10 minutes:
# past pytest's 600 s per-test limit, hence its own); `make test` runs 6.
fuzz: setup
	FUZZ_EXAMPLES=200 $(BIN)/python -m pytest --timeout 3600 tests/test_real_telemetry.py -k any_json_values

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# Tiny runs of the longer benchmarks (each starts its own Ray; ~5 minutes in all here): they
# check the benchmarks still run and check their own results. `make test` leaves them out.
bench-smoke: setup
	$(BIN)/python -m pytest -m bench_smoke tests/test_benchmarks_smoke.py

bench-router: setup-run
	$(BIN)/python -m benchmarks.router_throughput

bench: setup-run
	$(BIN)/python -m benchmarks.end_to_end
	$(BIN)/python -m benchmarks.decode_telemetry

bench-kafka: setup
	$(BIN)/python -m benchmarks.kafka_ingest

bench-checkpoint: setup-run
	$(BIN)/python -m benchmarks.checkpoint

bench-files: setup-run  # ~12 minutes: a 10-minute paced run
	$(BIN)/python -m benchmarks.cold_files

# The ingestion service under load (thermocline serve + a real broker): ~3 minutes.
bench-ingest: setup
	$(BIN)/python -m benchmarks.ingest_http

# 20M events: ~4 minutes to generate the lake (kept in .cache/bench-cold, reused), then ~3 minutes.
bench-cold: setup-bench
	$(BIN)/python -m benchmarks.cold_job

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache lake
