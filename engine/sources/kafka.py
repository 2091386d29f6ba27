"""Kafka source (kafka-python): a consumer group member yielding one block per partition per poll.

Positions are Kafka offsets; a partition is named ``{topic}-{partition}``. Records are joined and
decoded together (one NDJSON block per partition per poll); key, partition, offset and timestamp
become per-line columns, and the timestamp is also each event's arrival time (``ARRIVAL_COLUMN``).
A record that cannot be one line of JSON (a raw newline inside a string, an empty value, a
tombstone) is given to the decoder as an invalid line, and the block's ``raw_lines`` keep its exact
bytes for the dead letter. Offsets are committed only by :meth:`KafkaSource.commit`, which the
pipeline calls after a checkpoint; never automatically.

The consumer runs in a child process of its own (the *reader*). kafka-python parses every record
in Python, so in the driver's process it would hold the GIL most of the time and starve the
decoding, routing and Ray calls beside it; in its own process it polls on its own core while the
driver works. The reader polls, builds blocks and queues them (at most ``prefetch`` blocks and
``prefetch_bytes`` of them: a counter shared with the driver, which takes blocks off it);
``blocks()`` hands them out on the driver's thread. The driver's calls (``commit``, ``stop``,
``close``) go to the reader as messages, which it serves between polls. The reader leaves the
group and exits if the driver dies.

Rebalances follow kafka-python's ``ConsumerRebalanceListener`` contract: both callbacks run inside
``poll()`` in the reader and block it until they are done. Each one queues a hand-off behind every
block polled before it and waits: the driver takes the blocks first, then runs the pipeline's hook
(``on_revoke``: drain and checkpoint; ``on_assign``: where each partition resumes) and replies;
the reader, still inside the callback, serves the hook's commit meanwhile and then applies the
reply (``seek``). So a revocation commits everything read from the revoked partitions before they
are given up.

kafka-python 2.x, not 3.0: 3.0 moves network IO to a thread of its own, refuses blocking calls in
listeners, and its consumer stalled in ``fetch_records`` in our two-member test (the same shape
as upstream issues #3106 and #3121).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError, KafkaTimeoutError, RebalanceInProgressError

from engine.sources.base import ARRIVAL_COLUMN, Source, SourceBlock
from engine.sources.spawn import child_signals, held_signals
from routers.records import join_records

__all__ = ["KafkaSource", "partition_name", "records_block"]

log = logging.getLogger(__name__)

#: Columns added to every decoded row from its Kafka record.
META_TYPES = {
    "kafka_key": pa.binary(),
    "kafka_partition": pa.int32(),
    "kafka_offset": pa.int64(),
    "kafka_timestamp": pa.timestamp("ms", "UTC"),
}

#: How often a waiting side looks at its other queue, or whether the other side is alive (s).
_CHECK_EVERY_S = 0.02
#: Longest wait for a commit or a committed-offset lookup (kafka-python's own default is forever).
_KAFKA_TIMEOUT_MS = 30_000
#: Default bound on bytes read ahead: a few blocks of 20,000 ~200-byte records (~4-5 MB each)
#: keep the driver busy, while big records cannot fill the memory of a small machine.
_PREFETCH_BYTES = 64 << 20


def partition_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


# -- messages between the driver and the reader --------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """What the reader needs to build its consumer (sent once, at start)."""

    bootstrap: str
    topics: tuple[str, ...]
    group: str
    start: str | int
    max_records: int
    poll_timeout_ms: int
    idle_timeout_s: float | None
    max_events: int | None
    config: dict[str, Any] = field(repr=False)  # may hold credentials: never in a repr


@dataclass(frozen=True)
class _Budget:
    """The byte bound on read-ahead, shared by the reader (adds) and the driver (subtracts)."""

    queued: Any  # a multiprocessing Value("q"): bytes of blocks queued and not yet taken
    limit: int

    def take(self, size: int) -> bool:
        """Count a block of ``size`` bytes as queued, unless that would pass the limit while
        other blocks are queued (alone, any block goes: the stream never stalls)."""
        with self.queued.get_lock():
            if self.queued.value and self.queued.value + size > self.limit:
                return False
            self.queued.value += size
            return True


def _queued_size(block: SourceBlock) -> int:
    """The bytes a queued block holds; the reader and the driver count a block alike."""
    arrays = {id(a): a for a in block.meta.values()}  # the arrival column is kafka_timestamp's
    return (
        len(block.data or b"")
        + sum(map(len, block.raw_lines.values()))
        + sum(a.nbytes for a in arrays.values())
    )


@dataclass(frozen=True)
class _Handoff:
    """Reader -> driver, in the block queue: run a rebalance hook and reply with its result."""

    id: int
    hook: str  # "revoke" (payload: partition names) or "assign" (payload: name -> default)
    payload: Any


@dataclass(frozen=True)
class _End:
    """Reader -> driver: nothing more will be read (stopped, idle, ``max_events``)."""


@dataclass(frozen=True)
class _Failed:
    """Reader -> driver: the reader failed; the driver raises ``error``."""

    error: BaseException


@dataclass(frozen=True)
class _Call:
    """Driver -> reader: ``commit`` (args: positions), ``reply`` (args: (value, error)),
    ``stop`` or ``close``."""

    id: int
    op: str
    args: Any = None


@dataclass(frozen=True)
class _Result:
    """Reader -> driver, on the result queue: how call ``id`` ended."""

    id: int
    error: BaseException | None


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling to the other process, else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


# -- the driver's side ---------------------------------------------------------------------------


class KafkaSource(Source):
    """Consume ``topics`` as a member of ``group``.

    Args:
        bootstrap: ``host:port[,host:port]``.
        topics: topics to subscribe to.
        group: consumer group id.
        start: where partitions without a committed offset start: ``earliest`` or ``latest``;
            ``committed`` means earliest when nothing is committed; an int is a timestamp (epoch
            ms) looked up with ``offsets_for_times``.
        max_records: records per poll (the most a block can hold).
        poll_timeout_ms: longest wait in one poll; also how often ``blocks()`` yields ``None``
            while no records arrive.
        idle_timeout_s: stop after this long without records while owning partitions (None: run
            until closed).
        max_events: stop after this many records (None: no limit).
        prefetch: blocks read ahead of the pipeline (at most ``prefetch * max_records`` records
            wait in the queue).
        prefetch_bytes: bytes of blocks (values, raw lines and metadata columns) read ahead of
            the pipeline: the reader waits before queueing a block that would pass it, unless
            nothing is queued (a block bigger than the bound alone still goes, so the stream
            never stalls). :attr:`queued_bytes` is the current amount.
        config: extra ``KafkaConsumer`` settings (e.g. security); never logged.

    Example:
        >>> KafkaSource("127.0.0.1:9092", ["events"], "g", start="earliest").name
        'kafka'
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group: str,
        start: str | int = "committed",
        max_records: int = 20_000,
        poll_timeout_ms: int = 200,
        idle_timeout_s: float | None = None,
        max_events: int | None = None,
        prefetch: int = 8,
        prefetch_bytes: int = _PREFETCH_BYTES,
        config: dict[str, Any] | None = None,
    ) -> None:
        if prefetch_bytes < 1:
            raise ValueError(f"prefetch_bytes: expected a positive number, got {prefetch_bytes}")
        self.settings = _Settings(
            bootstrap,
            tuple(topics),
            group,
            start,
            max_records,
            poll_timeout_ms,
            idle_timeout_s,
            max_events,
            dict(config or {}),
        )
        self.prefetch = prefetch
        self.prefetch_bytes = prefetch_bytes
        # spawn, not fork: the driver runs Ray's threads, which a forked child must not inherit.
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None  # the reader (a SpawnProcess) once started
        self._items: Any = None  # reader -> driver: blocks, hand-offs, the end
        self._iterated = False
        self._calls: Any = None  # driver -> reader: _Call
        self._results: Any = None  # reader -> driver: _Result
        self._queued: Any = None  # shared: bytes of blocks queued by the reader, not yet taken
        self._ids = itertools.count()

    @property
    def checkpointed(self) -> bool:
        return True

    @property
    def queued_bytes(self) -> int:
        """Bytes of blocks the reader has queued and ``blocks()`` has not taken yet (0 before
        the reader starts); at most ``prefetch_bytes`` unless one block alone is bigger."""
        return 0 if self._queued is None else int(self._queued.value)

    def start(self) -> None:
        """Start the reader: it connects and joins the group, then waits for ``blocks()`` to
        run the assignment hook before it reads anything."""
        if self._process is not None:
            return
        self._items = self._context.Queue(maxsize=self.prefetch)
        self._calls = self._context.Queue()
        self._results = self._context.Queue()
        self._queued = self._context.Value("q", 0)
        budget = _Budget(self._queued, self.prefetch_bytes)
        self._process = self._context.Process(
            target=_read,
            args=(self.settings, self._items, self._calls, self._results, budget, os.getpid()),
            name=f"thermocline-kafka-reader-{self.settings.group}",
            daemon=True,
        )
        with held_signals():  # the reader's start-up is not interrupted by our Ctrl-C
            self._process.start()
        # We only read these two queues: without our copy of their write ends, a reader that
        # dies (even halfway through a block) shows as end-of-file here instead of a hang.
        self._items._writer.close()
        self._results._writer.close()

    def blocks(self) -> Iterator[SourceBlock | None]:
        if self._iterated:
            raise RuntimeError("KafkaSource.blocks() runs once per source")
        self._iterated = True
        self.start()
        items = self._items
        stop_sent = False
        while True:
            if self.stopping and not stop_sent:  # stop() may run in a signal handler: sent here
                self._calls.put(_Call(next(self._ids), "stop"))
                stop_sent = True
            try:
                item = items.get(timeout=self.settings.poll_timeout_ms / 1000)
            except queue.Empty:
                self._check_reader()
                yield None  # quiet: let the pipeline run its timers
                continue
            except (EOFError, OSError):
                self._reader_gone()
            if isinstance(item, SourceBlock):
                with self._queued.get_lock():  # taken: the reader may queue more
                    self._queued.value -= _queued_size(item)
                yield item
            elif isinstance(item, _Handoff):
                self._run_hook(item)
            elif isinstance(item, _End):
                return
            else:
                raise item.error  # the reader failed

    def _run_hook(self, handoff: _Handoff) -> None:
        """Run a rebalance hook here, on the driver's thread, and reply to the waiting reader."""
        value: Any = None
        try:
            if handoff.hook == "revoke" and self.on_revoke is not None:
                self.on_revoke(handoff.payload)
            elif handoff.hook == "assign":
                hook = self.on_assign
                value = hook(dict(handoff.payload)) if hook is not None else handoff.payload
        except BaseException as exc:
            self._calls.put(_Call(handoff.id, "reply", (None, _portable(exc))))
            raise  # a failed hook fails the run, loudly
        self._calls.put(_Call(handoff.id, "reply", (value, None)))

    def _check_reader(self) -> None:
        if self._process is not None and not self._process.is_alive():
            self._reader_gone()

    def _reader_gone(self) -> NoReturn:
        process = self._process
        if process is not None:
            process.join(timeout=5)
        code = None if process is None else process.exitcode
        raise RuntimeError(f"the Kafka reader process exited unexpectedly (exit code {code})")

    def commit(self, positions: dict[str, int]) -> None:
        if not positions:
            return
        if self._process is None:
            raise RuntimeError("KafkaSource.commit() needs a started source: nothing was read")
        call = _Call(next(self._ids), "commit", dict(positions))
        self._calls.put(call)
        while True:
            try:
                result: _Result = self._results.get(timeout=_CHECK_EVERY_S * 10)
            except queue.Empty:
                self._check_reader()
                continue
            except (EOFError, OSError):
                self._reader_gone()
            if result.id == call.id:
                if result.error is not None:
                    raise result.error
                return

    def close(self) -> None:
        """Leave the group and disconnect (after the last commit)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.is_alive():
            self._calls.put(_Call(next(self._ids), "close"))
            process.join(timeout=30)
        if process.is_alive():  # a reader stuck in the network: it has nothing left to commit
            process.kill()
            process.join()


# -- the reader (a child process) ----------------------------------------------------------------


class _Closing(Exception):
    """The driver asked to close, or died: unwind and leave the group."""


def _read(
    settings: _Settings, items: Any, calls: Any, results: Any, budget: _Budget, driver_pid: int
) -> None:
    """The reader process's entry point."""
    # The driver decides when to stop (its own SIGINT/SIGTERM handler sends "stop").
    child_signals(terminate=False)
    # Never wait at exit for queued items nobody will read (the driver may be gone).
    items.cancel_join_thread()
    results.cancel_join_thread()
    _Reader(settings, items, calls, results, budget, driver_pid).run()


class _Listener(ConsumerRebalanceListener):
    """kafka-python calls these inside ``poll()``; each waits for the driver's hook."""

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader

    # kafka-python logs and swallows a listener's exception, then goes on reading from the
    # committed offsets: a failed restore would go unnoticed. So the error is kept, and raised
    # by the poll loop as soon as poll() returns.

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            self.reader.revoked(sorted(revoked))
        except BaseException as exc:
            self.reader.fatal = self.reader.fatal or exc

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            self.reader.assigned(sorted(assigned))
        except BaseException as exc:
            self.reader.fatal = self.reader.fatal or exc


class _Reader:
    """Owns the consumer; every call on it happens on this process's one thread."""

    def __init__(
        self,
        settings: _Settings,
        items: Any,
        calls: Any,
        results: Any,
        budget: _Budget,
        driver_pid: int,
    ) -> None:
        self.settings = settings
        self.items = items
        self.calls = calls
        self.results = results
        self.budget = budget
        self.driver_pid = driver_pid
        self.consumer: KafkaConsumer | None = None
        self.stopping = False
        self.closing = False
        self.replies: dict[int, tuple[Any, BaseException | None]] = {}
        self.handoffs = itertools.count()
        self.records_read = 0
        #: Last time records arrived or a hand-off ended (the idle timeout counts from it).
        self.active_at = time.monotonic()
        #: Between a revocation and the next assignment (not idle: the group is rebalancing).
        self.rebalancing = False
        #: Partitions the driver has taken on (assignment hook done) and not yet given up: the
        #: only ones commits may touch.
        self.owned: set[str] = set()
        #: An error raised inside a rebalance callback, raised again once poll() returns.
        self.fatal: BaseException | None = None

    def run(self) -> None:
        try:
            try:
                self.poll_loop()
                self.put(_End())
            except _Closing:
                raise
            except BaseException as exc:  # to the driver, which raises it
                self.put(_Failed(_portable(exc)))
            while True:  # serve the last checkpoint's commit until the driver closes us
                self.serve(wait=True)
        except _Closing:
            pass
        finally:
            if self.consumer is not None:
                self.consumer.close(autocommit=False)  # leave the group

    def poll_loop(self) -> None:
        s = self.settings
        self.consumer = consumer = _connect(s)
        consumer.subscribe(list(s.topics), listener=_Listener(self))
        self.active_at = time.monotonic()
        while True:
            self.serve()
            if self.stopping or (s.max_events is not None and self.records_read >= s.max_events):
                return
            polled = consumer.poll(timeout_ms=s.poll_timeout_ms, max_records=s.max_records)
            if self.fatal is not None:
                raise self.fatal
            if not polled:
                if not consumer.assignment() or self.rebalancing:  # idle only while we own some
                    self.active_at = time.monotonic()
                elif s.idle_timeout_s is not None and time.monotonic() - self.active_at > (
                    s.idle_timeout_s
                ):
                    log.info(
                        "no records for %.1f s while owning %d partitions (%d read): stopping",
                        s.idle_timeout_s, len(consumer.assignment()), self.records_read,
                    )  # fmt: skip
                    return
                continue
            for tp, records in polled.items():
                if records:
                    self.records_read += len(records)
                    self.put(records_block(tp, records))
            self.active_at = time.monotonic()  # after the puts: waiting on the driver is not idle

    def put(self, item: SourceBlock | _Handoff | _End | _Failed) -> None:
        """Queue ``item`` for the driver; while the queue is full, or a block would pass the
        byte bound, serve the driver's calls."""
        if isinstance(item, SourceBlock):
            size = _queued_size(item)
            while not self.budget.take(size):
                self.serve(wait=True)  # also the pause before looking again
        while True:
            self.serve()
            try:
                self.items.put(item, timeout=_CHECK_EVERY_S)
                return
            except queue.Full:
                continue

    def serve(self, wait: bool = False) -> None:
        """Handle the driver's queued calls; ``wait`` a moment for one if none is queued."""
        while True:
            if self.closing or os.getppid() != self.driver_pid:
                raise _Closing
            try:
                call: _Call = (
                    self.calls.get(timeout=_CHECK_EVERY_S) if wait else (self.calls.get_nowait())
                )
            except queue.Empty:
                return
            wait = False
            if call.op == "commit":
                try:
                    self.commit(call.args)
                except Exception as exc:
                    self.results.put(_Result(call.id, _portable(exc)))
                else:
                    self.results.put(_Result(call.id, None))
            elif call.op == "reply":
                self.replies[call.id] = call.args
            elif call.op == "stop":
                self.stopping = True
            elif call.op == "close":
                self.closing = True

    def handoff(self, hook: str, payload: Any) -> Any:
        """Have the driver run ``hook`` after the blocks queued so far; serve calls meanwhile.

        Returns the hook's reply, or None when closing (inside kafka-python's ``poll()``, which
        would swallow an exception: the loop's next ``serve()`` raises it instead).
        """
        handoff = _Handoff(next(self.handoffs), hook, payload)
        try:
            self.put(handoff)
            while handoff.id not in self.replies:
                self.serve(wait=True)
        except _Closing:
            self.closing = True
            return None
        value, error = self.replies.pop(handoff.id)
        self.active_at = time.monotonic()  # the wait for the driver is not idle time
        if error is not None:
            raise error  # logged by kafka-python; the driver fails the run and closes us
        return value

    def revoked(self, revoked: list[TopicPartition]) -> None:
        """The driver finishes (drains and checkpoints) what was read, and commits it."""
        self.rebalancing = True
        if revoked:
            names = [partition_name(tp.topic, tp.partition) for tp in revoked]
            self.handoff("revoke", names)
            self.owned.difference_update(names)

    def assigned(self, assigned: list[TopicPartition]) -> None:
        """The driver restores the partitions and says where each resumes; we seek there."""
        consumer = self.consumer
        assert consumer is not None
        self.rebalancing = False
        if not assigned:
            return
        resume = self.handoff("assign", _default_positions(consumer, assigned, self.settings))
        if resume is None:  # closing
            return
        for tp in assigned:
            consumer.seek(tp, resume.get(partition_name(tp.topic, tp.partition), 0))
        log.debug("assigned; resuming at %s", resume)
        self.owned.update(partition_name(tp.topic, tp.partition) for tp in assigned)
        self.active_at = time.monotonic()

    def commit(self, positions: dict[str, int]) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        # Not consumer.assignment(): during an assignment hook it already lists partitions the
        # driver has not restored yet, whose old positions would rewind another member's commit.
        owned = {
            name: tp
            for tp in consumer.assignment()
            if (name := partition_name(tp.topic, tp.partition)) in self.owned
        }
        offsets = {
            owned[name]: OffsetAndMetadata(last + 1, "", -1)
            for name, last in positions.items()
            if name in owned
        }
        if not offsets:
            return
        try:
            consumer.commit(offsets, timeout_ms=_KAFKA_TIMEOUT_MS)
        except (RebalanceInProgressError, CommitFailedError) as exc:
            # The group is rebalancing: the next poll() runs it, and the revocation commits
            # again. Nothing is lost meanwhile: recovery resumes from the checkpoint in the lake.
            log.warning("commit skipped during a rebalance (%s); the revocation commits", exc)
        except KafkaTimeoutError:
            # No coordinator for a while. Every checkpoint commits every done position, so the
            # next one (or the next run, resuming from the lake's checkpoint) makes up for it.
            log.warning("commit timed out after %d ms; the next checkpoint commits again",
                        _KAFKA_TIMEOUT_MS)  # fmt: skip


def _connect(s: _Settings) -> KafkaConsumer:
    """A consumer that has not subscribed yet."""
    return KafkaConsumer(
        bootstrap_servers=s.bootstrap,
        group_id=s.group,
        enable_auto_commit=False,  # commits follow checkpoints only
        auto_offset_reset="latest" if s.start == "latest" else "earliest",
        max_poll_records=s.max_records,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        **s.config,
    )


def _default_positions(
    consumer: KafkaConsumer, assigned: list[TopicPartition], s: _Settings
) -> dict[str, int]:
    """Next offset to read per partition by the source's own rules (commit, else start)."""
    first = consumer.beginning_offsets(assigned)
    end = consumer.end_offsets(assigned)
    at_time = (
        consumer.offsets_for_times({tp: s.start for tp in assigned})
        if isinstance(s.start, int)
        else {}
    )
    positions = {}
    for tp in assigned:
        committed = (
            None
            if s.start in ("earliest", "latest")
            else consumer.committed(tp, timeout_ms=_KAFKA_TIMEOUT_MS)
        )
        if committed is not None:
            position = committed
        elif s.start == "latest":
            position = end[tp]
        elif isinstance(s.start, int):
            found = at_time.get(tp)
            position = found.offset if found is not None else end[tp]
        else:
            position = first[tp]
        positions[partition_name(tp.topic, tp.partition)] = position
    return positions


def records_block(tp: TopicPartition, records: list[Any]) -> SourceBlock:
    """One partition's records as one NDJSON block plus their metadata columns."""
    # kafka-python hands out one object per record; one pass gathers what the bulk decode needs.
    values, offsets, stamps, keys = zip(
        *[(r.value, r.offset, r.timestamp, r.key) for r in records], strict=True
    )
    data, raw_lines = join_records(values)
    stamps_ms = np.array(stamps, dtype=np.int64)
    timestamps = pa.array(stamps_ms).cast(META_TYPES["kafka_timestamp"])
    meta = {
        "kafka_key": pa.array(keys, pa.binary()),
        "kafka_partition": pa.array(np.full(len(records), tp.partition, dtype=np.int32)),
        "kafka_offset": pa.array(np.array(offsets, dtype=np.int64)),
        "kafka_timestamp": timestamps,
        # The record's time (the producer's, or the broker's with LogAppendTime) is its arrival.
        ARRIVAL_COLUMN: timestamps,
    }
    # -1: a record without a timestamp (old message format): due when read.
    due_ms = pa.array(stamps_ms.astype(np.float64), mask=stamps_ms < 0)
    return SourceBlock(
        partition=partition_name(tp.topic, tp.partition),
        first_offset=int(offsets[0]),
        last_offset=int(offsets[-1]),
        data=data,
        meta=meta,
        raw_lines=raw_lines,
        due_ms=due_ms,
    )
