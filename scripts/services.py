"""Real services on 127.0.0.1 for tests and benchmarks: a KRaft Kafka broker and an S3 server.

Each is started as a child process on a free loopback port, waited on until it answers, and
stopped by its process id (never by name). From the command line::

    python -m scripts.services kafka   # prints KAFKA_BOOTSTRAP=127.0.0.1:PORT and PID; ^C stops
    python -m scripts.services s3        # prints S3_ENDPOINT_URL=http://127.0.0.1:PORT and PID
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KAFKA_LIBS = ROOT / ".cache" / "kafka" / "libs"

__all__ = ["Service", "free_port", "start_kafka", "start_s3"]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Service:
    """A started child process and where it answers."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    #: The command line and port, for :meth:`restart`.
    argv: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 20) -> None:
        """Stop the process (:meth:`halt`) and remove its working folder."""
        self.halt(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def halt(self, timeout: float = 20) -> None:
        """SIGTERM by pid, then SIGKILL if it has not exited within ``timeout`` seconds; its
        data stays, for :meth:`restart` (an outage, as tests of recovery need)."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(10)

    def restart(self, timeout: float = 60) -> None:
        """Start the halted process again, same command, port and data; wait until it answers."""
        if self.process.poll() is None:
            raise RuntimeError(f"{self.name} is still running (pid {self.pid})")
        self.process = subprocess.Popen(
            self.argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _wait_for_port(self.port, self.process, self.log, timeout)
        if self.name == "kafka":
            _wait_for_broker(self.address, timeout)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}; log:\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(
        f"127.0.0.1:{port} did not answer in {timeout}s; log:\n{log.read_text()[-3000:]}"
    )


def start_kafka(timeout: float = 60) -> Service:
    """Format and start a single-node KRaft broker (broker + controller) on 127.0.0.1.

    Needs the jars of ``scripts/kafka/pom.xml`` in ``.cache/kafka/libs`` (``make kafka-jars``).
    """
    if not KAFKA_LIBS.is_dir() or not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        raise FileNotFoundError(f"no Kafka jars in {KAFKA_LIBS}; run 'make kafka-jars'")
    workdir = Path(tempfile.mkdtemp(prefix="tc-kafka-"))
    port, controller = free_port(), free_port()
    config = workdir / "server.properties"
    config.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={workdir / 'data'}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                # Tests start groups often: no 3 s wait for more members before a first assignment.
                "group.initial.rebalance.delay.ms=0",
                "num.partitions=1",
                # Test data may carry old timestamps (replays, late events): none is deleted by
                # age while a session runs (the retention check runs every 5 minutes).
                "log.retention.ms=-1",
                "auto.create.topics.enable=false",
                "",
            ]
        )
    )
    java = [
        "java",
        "-Xms256m",
        "-Xmx768m",
        "-Djava.net.preferIPv4Stack=true",
        "-cp",
        f"{KAFKA_LIBS}/*",
    ]
    subprocess.run(
        [*java, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    log = workdir / "kafka.log"
    argv = [*java, "kafka.Kafka", str(config)]
    process = subprocess.Popen(
        argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    service = Service("kafka", f"127.0.0.1:{port}", process, workdir, log, argv=argv, port=port)
    try:
        _wait_for_port(port, process, log, timeout)
        _wait_for_broker(service.address, timeout)
    except BaseException:
        service.stop()
        raise
    return service


def _cluster_id() -> str:
    """16 random bytes, base64url without padding, as ``kafka-storage random-uuid`` prints.

    Like Kafka's ``Uuid.randomUuid``, never one starting with '-': the CLI would read it as an
    option.
    """
    import base64

    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _wait_for_broker(bootstrap: str, timeout: float) -> None:
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            admin.list_topics()
            admin.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_s3(timeout: float = 30) -> Service:
    """Start moto's S3-compatible server on 127.0.0.1 (dummy credentials in ``env``)."""
    workdir = Path(tempfile.mkdtemp(prefix="tc-s3-"))
    port = free_port()
    log = workdir / "moto.log"
    server = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    service = Service("s3", address, process, workdir, log, env=_dummy_aws_env())
    try:
        _wait_for_port(port, process, log, timeout)
        urllib.request.urlopen(address, timeout=5).close()
    except BaseException:
        service.stop()
        raise
    return service


def _dummy_aws_env() -> dict[str, str]:
    # moto accepts any credentials; region must come from the environment (PLATFORM_NOTES).
    return {
        "AWS_ACCESS_KEY_ID": "thermocline-test",
        "AWS_SECRET_ACCESS_KEY": "thermocline-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind not in ("kafka", "s3"):
        sys.exit("usage: python -m scripts.services kafka|s3")
    service = start_kafka() if kind == "kafka" else start_s3()
    variable = "KAFKA_BOOTSTRAP" if kind == "kafka" else "S3_ENDPOINT_URL"
    print(f"{variable}={service.address} PID={service.pid}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()


if __name__ == "__main__":
    main()
