"""Shared fixtures: one local Ray for the test session, on 127.0.0.1, with its own temp dir."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Before Ray is imported anywhere: bind to loopback (PLATFORM_NOTES).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Data 2.60's read_parquet reads footers on a pool of 32 actors per read, each a new worker
# process: on this 2-CPU Ray a read of 300 small files took 27 s with 32, 5 s with 2 (same rows).
# Tests still read with its default (v2) reader, only with a smaller pool (read in the driver).
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs shared by every test that needs one.

    Its own short temp dir (Unix socket paths are limited to ~107 bytes) keeps it away from a
    stale cluster file of a crashed run; ``address="local"`` never joins another cluster.
    """
    import ray

    from engine.pipeline import Pipeline
    from engine.priority import WORKER_NICENESS

    temp = tempfile.mkdtemp(prefix="tc-ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        # Workers import tests.* (e.g. a slow processor named 'tests.slow:SlowKpis').
        runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
        # As the embedded local Ray runs them (engine.cluster.init_local_ray).
        _system_config={"worker_niceness": WORKER_NICENESS},
    )
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    # A pipeline a test (or a job it calls, e.g. jobs.replay) drops without close() is freed by
    # the cycle collector only (its coordinator's callbacks refer back to it): until then its
    # actors hold 0.75 of the 2 CPUs, and the next pipeline's actors wait for a collection
    # that comes when it comes (~20 s after two runs). Collect before each pipeline starts.
    original_init = Pipeline.__init__

    def init_after_collecting(self: Pipeline, *args: Any, **kwargs: Any) -> None:
        gc.collect()
        original_init(self, *args, **kwargs)

    Pipeline.__init__ = init_after_collecting  # type: ignore[method-assign]
    yield
    Pipeline.__init__ = original_init  # type: ignore[method-assign]
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka broker: ``KAFKA_BOOTSTRAP`` if set, else a KRaft broker for the session."""
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    from scripts.services import start_kafka

    broker = start_kafka()
    yield broker.address
    broker.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server: ``S3_ENDPOINT_URL`` if set, else moto's server for the session.

    With moto, dummy credentials and the region go into the environment (as users configure
    s3fs through the standard AWS variables), so Ray workers see them too.
    """
    existing = os.environ.get("S3_ENDPOINT_URL")
    if existing:
        yield existing
        return
    from scripts.services import start_s3

    server = start_s3()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server.address
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh 6-partition topic per test."""
    import uuid

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"events-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=6, replication_factor=1)])
    yield name
    admin.delete_topics([name])
    admin.close()


@pytest.fixture
def s3_lake(s3_endpoint: str) -> Iterator[tuple[str, dict]]:
    """A fresh bucket; yields (lake URI, fsspec storage options)."""
    import uuid

    import s3fs

    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    # Credentials in the options too: Ray workers started before this fixture do not see the
    # variables it set (config or the standard AWS variables both work; tests use both).
    options = {
        "key": os.environ.get("AWS_ACCESS_KEY_ID", "thermocline-test"),
        "secret": os.environ.get("AWS_SECRET_ACCESS_KEY", "thermocline-test"),
        "client_kwargs": {"endpoint_url": s3_endpoint},
    }
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(bucket)
    yield f"s3://{bucket}/lake", options
    fs.rm(bucket, recursive=True)


@pytest.fixture
def cli_runs(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start ``thermocline run`` processes; whatever a test leaves running is killed after it."""
    runs: list[CliRun] = []

    from tests.kafka_helpers import CliRun

    def start(config: Path, name: str, env: dict[str, str] | None = None) -> CliRun:
        runs.append(CliRun(config, tmp_path / f"{name}.log", env))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()
        # Shown by pytest for a failed test only: what each run warned about (fencing,
        # rebalances, recovery), for a failure seen in CI and nowhere else.
        lines = run.log.read_text(errors="replace").splitlines() if run.log.exists() else []
        notable = [line for line in lines if not line.startswith("[")]  # not progress lines
        print(f"--- {run.log.name}: {len(lines)} lines, the last notable ones:")
        print("\n".join(line[:300] for line in notable[-25:]))


@pytest.fixture
def cli_config(
    kafka_bootstrap: str, topic: str, s3_lake: tuple[str, dict], s3_endpoint: str, tmp_path: Path
) -> Callable[..., tuple[Path, str]]:
    """``make(**source)``: a ``thermocline run`` config reading this test's topic into its S3
    lake, in a new consumer group; returns the config's path and the group."""

    from tests.kafka_helpers import write_config

    def make(**source: Any) -> tuple[Path, str]:
        group = f"g-{uuid.uuid4().hex[:8]}"
        config = write_config(
            tmp_path, bootstrap=kafka_bootstrap, topics=[topic], group=group,
            lake=s3_lake[0], endpoint=s3_endpoint, **source,
        )  # fmt: skip
        return config, group

    return make
