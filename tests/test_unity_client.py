"""The Unity client's core (clients/unity/ThermoclineClient.cs) on Mono against the real service.

The core and its console harness (clients/unity/Harness.cs) are compiled with mcs as C# 7.0; the
test drives the harness over its standard input and reads what it prints, as a game would see
it: events it tracked, each request's outcome, the push stream's state and pushed frames. The
service runs on a Kafka broker of this module's own, which the test halts for an outage and
restarts (the session's broker is shared with other tests).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from scripts.services import Service, start_kafka
from tests.serve_helpers import (
    KEY,
    ROOT,
    create_topics,
    read_topics,
    running_service,
    serve_config,
    topic_names,
)

CLIENT = ROOT / "clients" / "unity"
#: Where examples/demo.yaml routes each event type the harness tracks.
ROUTE = {"purchase": "hot", "level_up": "warm", "session_end": "warm", "social": "cold"}
#: The text field every harness event carries: its JSON escapes must survive the trip.
NOTE = 'quote " backslash \\ newline \n done'


@pytest.fixture(scope="module")
def harness_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The core and the harness compiled by mcs (C# 7.0, warnings as errors)."""
    if not (shutil.which("mcs") and shutil.which("mono")):
        # `make test` installs Mono (its `mono` target); a bare pytest run tries the same.
        make = subprocess.run(
            ["make", "-C", str(ROOT), "mono"], capture_output=True, text=True, timeout=600
        )
        if make.returncode or not (shutil.which("mcs") and shutil.which("mono")):
            pytest.skip(f"mcs/mono missing and `make mono` could not install them:\n{make.stderr}")
    out = tmp_path_factory.mktemp("unity") / "harness.exe"
    compiled = subprocess.run(
        ["mcs", "-langversion:7", "-warnaserror+", "-r:System.Net.Http.dll", f"-out:{out}",
         str(CLIENT / "ThermoclineClient.cs"), str(CLIENT / "Harness.cs")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return out


@pytest.fixture(scope="module")
def broker() -> Iterator[Service]:
    """A broker of this module's own: the test halts it."""
    service = start_kafka()
    yield service
    service.stop()


class Harness:
    """The harness on Mono: commands in, printed lines collected (and kept in ``log``)."""

    def __init__(self, exe: Path, url: str, player: str, log: Path) -> None:
        self.log = log
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            ["mono", "--debug", str(exe), url, KEY, player], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.log.open("w") as copy:
            for line in self.process.stdout:
                copy.write(line)
                copy.flush()
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def send(self, command: str) -> int:
        """Send ``command``; returns the index of the first line printed after it."""
        with self._changed:
            mark = len(self.lines)
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return mark

    def wait_for(self, pattern: str, after: int = 0, timeout: float = 60) -> re.Match[str]:
        """The first line from index ``after`` on matching ``pattern``, waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    match = regex.search(line)
                    if match:
                        return match
                after = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-40:])
                    raise AssertionError(
                        f"the harness printed no /{pattern}/ in {timeout} s"
                        f" (exit {self.process.poll()}); its last lines:\n{tail}"
                    )
                self._changed.wait(min(left, 1.0))

    def stats(self) -> dict[str, int]:
        line = self.wait_for(r"^STATS (.*)", self.send("stats")).group(1)
        return {k: int(v) for k, v in (pair.split("=") for pair in line.split())}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def _tracked(lines: list[str], label: str) -> dict[str, str]:
    """event_id -> event_type of the harness's ``label`` lines."""
    return {
        event_id: event_type
        for line in lines
        if line.startswith(label + " ")
        for event_id, event_type in (item.split(":") for item in line.split()[1:])
    }


def test_a_game_client_keeps_its_events_through_an_outage_and_receives_pushed_updates(
    harness_exe: Path, broker: Service, tmp_path: Path
) -> None:
    topics = topic_names()
    create_topics(broker.address, topics.values())
    config = serve_config(
        tmp_path, broker.address, topics, delivery_timeout="3s", breaker_cooldown="1s"
    )
    player = f"p-{uuid.uuid4().hex[:8]}"
    with running_service(config, tmp_path) as service:
        harness = Harness(harness_exe, service.url, player, tmp_path / "harness.log")
        try:
            harness.wait_for(r"^STREAM connected", timeout=60)

            # Normal play: events go out in batches of up to 100 and are acknowledged; a
            # pre-serialized event is sent as it is, a string that is not one is refused.
            mark = harness.send("track 250")
            harness.send("raw")
            harness.wait_for(r"^LOG Error event not tracked: not one JSON object", mark)
            harness.send("flush")
            harness.wait_for(r"^FLUSHED true pending=0", mark)

            # A pushed update for the player reaches the game.
            marker = uuid.uuid4().hex
            producer = Producer({"bootstrap.servers": broker.address})
            alert = {"player_id": player, "alert": "purchases", "marker": marker}
            producer.produce(topics["push"], json.dumps(alert).encode(), player.encode())
            assert producer.flush(30) == 0
            pushed = harness.wait_for(rf"^PUSH (.*{marker}.*)$", mark, timeout=30).group(1)
            assert json.loads(pushed) == alert

            # A batch the service can never accept (400): dropped, with a log line.
            mark = harness.send("bad 3")
            harness.wait_for(r"^FLUSHED", mark)
            dropped = harness.wait_for(r"^BATCH status=400 events=(\d+) outcome=Dropped", mark)
            assert dropped.group(1) == "3"
            harness.wait_for(
                r"^LOG Error POST /v1/events: HTTP 400 \(bad_body: .*dropped 3 events", mark
            )

            # An outage: Kafka halted while the game keeps tracking; the service answers 503.
            before = harness.stats()
            assert before["pending"] == 0
            broker.halt()
            outage_start = harness.send("track 120")
            harness.wait_for(r"^BATCH status=503 .*outcome=Kept", outage_start, timeout=45)
            harness.send("track 30")
            during = harness.stats()
            assert during["pending"] == 150, during  # every refused event kept
            assert during["delivered"] == before["delivered"]
            assert during["dropped"] == before["dropped"]

            broker.restart()
            mark = harness.send("stats")
            harness.wait_for(r"^BATCH status=200 .*pending=0 ", mark, timeout=60)
            stopped = harness.wait_for(r"^STOPPED (.*)", harness.send("quit")).group(1)
            assert harness.process.wait(30) == 0
        finally:
            harness.stop()
    lines = list(harness.lines)

    final = dict(pair.split("=") for pair in stopped.split())
    tracked = _tracked(lines, "TRACKED")
    bad = _tracked(lines, "TRACKED-BAD")
    outage = _tracked(lines[outage_start:], "TRACKED")
    assert len(tracked) == 401 and len(bad) == 3 and len(outage) == 150
    del final["failed_attempts"]
    assert final == {"empty": "true", "pending": "0", "delivered": "401", "dropped": "3"}

    # Every request refused with a Retry-After was retried no sooner.
    sends = [float(m[1]) for m in (re.match(r"^SEND at=([\d.]+)", x) for x in lines) if m]
    batches = [re.match(r"^BATCH status=(\d+) .*retry_after=([\d.]+) retry_in=([\d.]+)", x)
               for x in lines if x.startswith("BATCH ")]  # fmt: skip
    refused = [
        (i, float(b[2]), float(b[3])) for i, b in enumerate(batches) if b and b[1] in ("429", "503")
    ]
    assert refused, "no 503 seen"
    for i, retry_after, retry_in in refused:
        assert retry_after >= 1 and retry_in >= retry_after, batches[i]
        if i + 1 < len(sends):
            assert sends[i + 1] - sends[i] >= retry_in - 0.002, (sends[i], sends[i + 1], retry_in)

    # On Kafka: every tracked event on its temperature's topic, keyed by the player, as sent;
    # nothing of the refused batch; more than once only across the outage's retries.
    records = read_topics(broker.address, [topics[t] for t in ("hot", "warm", "cold", "dead")])
    assert records[topics["dead"]] == []
    copies: Counter[str] = Counter()
    landed: dict[str, str] = {}
    for temperature in ("hot", "warm", "cold"):
        for record in records[topics[temperature]]:
            event = json.loads(record.value)
            assert record.key == player.encode()
            assert event["player_id"] == player and event["note"] == NOTE
            copies[event["event_id"]] += 1
            landed[event["event_id"]] = temperature
    assert landed == {event_id: ROUTE[kind] for event_id, kind in tracked.items()}
    duplicated = {event_id for event_id, n in copies.items() if n > 1}
    assert duplicated <= set(outage), sorted(duplicated - set(outage))
