"""Hot path: keyed stateful Ray actors, each owning a contiguous range of key groups."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine import preflight
from engine.base import Handoff
from engine.config import HotConfig
from engine.keys import actor_of_groups, key_groups
from engine.lake import Lake
from engine.latency import LatencyHistogram
from engine.processors import hot_processor, qualified
from engine.quarantine import isolate
from engine.wire import pack, unpack
from routers import EventSchema, concat_conformed, parse_duration_ms

__all__ = ["HotActor", "HotPath", "HotResult"]

#: Hot calls between two TTL checks: a check compacts the state, a pass over every key.
_EXPIRE_EVERY = 64


@dataclass(frozen=True)
class HotResult:
    """What one hot call reports back: rows applied, each row's latency from when it was due to
    its state update, output rows, and the rows the processor raised on (dead letters, see
    :mod:`engine.quarantine`)."""

    rows: int
    latency: LatencyHistogram
    output: pa.RecordBatch | None
    dead: pa.Table | None = None


class _HotActor:
    """Holds one processor instance and the state of its key groups' keys.

    Calls run one at a time in submission order (a Ray actor's default), so a key's rows are
    applied in the order the driver sent them.
    """

    def __init__(
        self,
        processor: str,
        schema: EventSchema,
        options: dict[str, Any],
        state_ttl_ms: int | None = None,
    ) -> None:
        import engine.processors  # noqa: F401 - registers the built-in processors in this worker

        self.schema = schema
        self.processor = hot_processor(processor)(schema, **options)
        self.state_ttl_ms = state_ttl_ms
        self._newest_ms: int | None = None  # newest event time seen (for the TTL)
        self._calls = 0
        #: Source partition each key's rows came from, so state is saved per source partition.
        self.partition_of: dict[str, str] = {}

    def process(
        self, batch: pa.RecordBatch | pa.Buffer, due_ms: float | pa.Array, partition: str = ""
    ) -> HotResult:
        """Apply ``batch`` to the state of its keys.

        Args:
            batch: the rows, or the rows packed by :func:`engine.wire.pack`.
            due_ms: when the rows were due (ms since the epoch): one time for all, or one per row.
            partition: the source partition the rows came from.
        """
        batch = unpack(batch)
        outputs, dead = isolate(self.processor.process, batch, "hot")
        parts = [o for o in outputs if o is not None and o.num_rows]
        output = concat_conformed(parts).combine_chunks().to_batches()[0] if parts else None
        # One partition per call: a dict update over the call's distinct keys (C-level loop).
        self.partition_of.update(
            dict.fromkeys(pc.unique(batch.column(self.schema.key)).to_pylist(), partition)
        )
        if self.state_ttl_ms is not None:
            self._expire(batch)
        bad = 0 if dead is None else dead.num_rows
        latency = LatencyHistogram()
        now_ms = time.time() * 1000
        if isinstance(due_ms, pa.Array):
            latency.record(now_ms - due_ms.to_numpy(zero_copy_only=False))
        else:
            latency.record(now_ms - due_ms, weight=batch.num_rows)
        return HotResult(batch.num_rows - bad, latency, output, dead)

    def _expire(self, batch: pa.RecordBatch) -> None:
        """Per-key TTL in event time; checked every :data:`_EXPIRE_EVERY` calls (a compaction
        of the state costs a pass over every key)."""
        assert self.state_ttl_ms is not None
        newest = pc.max(batch.column(self.schema.time)).cast(pa.int64()).as_py()
        if newest is not None:
            self._newest_ms = max(newest, self._newest_ms or newest)
        self._calls += 1
        if self._newest_ms is None or self._calls % _EXPIRE_EVERY:
            return
        try:
            self.processor.expire(self._newest_ms - self.state_ttl_ms)
        except NotImplementedError:
            self.state_ttl_ms = None  # the processor keeps every key; said in its docs

    def snapshot(self) -> pa.Table:
        """The processor's snapshot with each key's source partition (``__partition``)."""
        rows = self.processor.snapshot()
        keys = rows.column(self.schema.key).to_pylist()
        owners = [self.partition_of.get(k, "") for k in keys]
        return rows.append_column("__partition", pa.array(owners, pa.string()))

    def save(
        self, lake_uri: str, storage_options: dict[str, Any], paths: dict[str, str]
    ) -> dict[str, tuple[int, int]]:
        """Write this actor's snapshot rows of each source partition in ``paths`` to its path in
        the lake, straight from the actor (the driver only gets the counts); returns, per
        partition, (rows, bytes) written. A partition without rows here writes nothing."""
        rows = self.snapshot()
        if rows.num_rows == 0:
            return {}
        lake = Lake(lake_uri, storage_options)
        owners = rows.column("__partition")
        written: dict[str, tuple[int, int]] = {}
        for partition, path in paths.items():
            part = rows.filter(pc.equal(owners, partition))
            if part.num_rows:
                lake.write_parquet(part, path)
                written[partition] = (part.num_rows, part.nbytes)
        return written

    def restore(self, rows: pa.Table) -> int:
        """Add the snapshot rows of keys this actor owns; returns how many."""
        partitions = rows.column("__partition").to_pylist()
        keys = rows.column(self.schema.key).to_pylist()
        self.partition_of.update(zip(keys, partitions, strict=True))
        self.processor.restore(rows.drop_columns(["__partition"]))
        return rows.num_rows

    def state(self) -> pa.Table:
        return self.processor.state()

    def release(self, partitions: list[str]) -> int:
        """Drop the state of keys whose rows came from ``partitions`` (revoked); returns how many
        keys. A processor without ``release`` keeps them (memory only, never wrong answers:
        the new owner restores from the checkpoint)."""
        gone = set(partitions)
        keys = [k for k, p in self.partition_of.items() if p in gone]
        if not keys:
            return 0
        try:
            self.processor.release(pa.array(keys, pa.string()))
        except NotImplementedError:
            return 0
        for key in keys:
            del self.partition_of[key]
        return len(keys)

    def ready(self) -> bool:
        return True


HotActor = ray.remote(_HotActor)


class HotPath:
    """Driver side of the hot path: routes each batch's rows to the owners of their key groups.

    Each call carries all of one block's rows for one actor (never one event). At most
    ``max_in_flight`` calls per actor are outstanding; :meth:`submit` waits beyond that. A block
    is done on this path when every call carrying its rows has returned.
    """

    def __init__(self, config: HotConfig, schema: EventSchema) -> None:
        # Fail fast, in the driver, on an unknown name; workers import the class by its path.
        processor = qualified(hot_processor(config.processor))
        self.config = config
        self.schema = schema
        self.owner = actor_of_groups(config.key_groups, config.actors)
        options: dict[str, Any] = {"num_cpus": config.num_cpus}
        if config.resources:
            options["resources"] = dict(config.resources)
        # Ray's actor handles are typed loosely; Any keeps mypy honest about what it cannot see.
        self.actors: list[Any] = [
            HotActor.options(**options).remote(
                processor,
                schema,
                dict(config.options),
                None if config.state_ttl is None else parse_duration_ms(config.state_ttl),
            )
            for _ in range(config.actors)
        ]
        #: Per actor: each call in flight -> (block seq, source partition).
        self.inflight: list[dict[ray.ObjectRef, tuple[int, str]]] = [{} for _ in self.actors]
        self._calls_left: dict[int, int] = {}
        #: Due-to-state latency of every row, in fixed memory.
        self.latency = LatencyHistogram()
        #: Output rows of the processor (e.g. alerts) not yet taken by the pipeline.
        #: (source partition, rows): committed with that partition's position.
        self.outputs: list[tuple[str, pa.RecordBatch]] = []
        #: Rows the processor raised on (dead letters), with their source partition, not yet
        #: taken by the pipeline.
        self.dead: list[tuple[str, pa.Table]] = []
        self.dead_rows = 0
        self.rows_done = 0

    def wait_ready(self) -> None:
        """Block until every actor has started (its process is up and the processor built)."""
        ray.get([a.ready.remote() for a in self.actors], timeout=preflight.PLACEMENT_TIMEOUT_S)

    @property
    def calls_in_flight(self) -> int:
        return sum(len(calls) for calls in self.inflight)

    def submit(self, batch: pa.RecordBatch, handoff: Handoff) -> list[int]:
        """Send the hot rows of a block to their actors (``handoff.due_ms``: when they were
        due, for their latency).

        Returns:
            Blocks that became done on this path meanwhile (the block itself when it has no
            rows).
        """
        seq, due_ms, partition = handoff.seq, handoff.due_ms, handoff.partition
        if batch.num_rows == 0:
            return [seq]
        actor_ids = self.owner[key_groups(batch.column(self.schema.key), self.config.key_groups)]
        order = np.argsort(actor_ids, kind="stable")  # one take groups rows by actor, order kept
        take = pa.array(order)
        grouped = batch.take(take)
        due = due_ms.take(take) if isinstance(due_ms, pa.Array) else due_ms
        bounds = np.searchsorted(actor_ids[order], np.arange(len(self.actors) + 1))
        spans = [
            (a, int(lo), int(hi))
            for a, (lo, hi) in enumerate(itertools.pairwise(bounds))
            if hi > lo
        ]
        self._calls_left[seq] = len(spans)
        done: list[int] = []
        for actor, lo, hi in spans:
            while len(self.inflight[actor]) >= self.config.max_in_flight:
                done += self._wait(list(self.inflight[actor]), num_returns=1)
            ref = self.actors[actor].process.remote(
                pack(grouped.slice(lo, hi - lo)),
                due.slice(lo, hi - lo) if isinstance(due, pa.Array) else due,
                partition,
            )
            self.inflight[actor][ref] = (seq, partition)
        return done

    def drain(self) -> list[int]:
        """Wait for every call in flight; the blocks done."""
        return self.poll(timeout=None)

    def poll(self, timeout: float | None = 0) -> list[int]:
        """Blocks done on this path, waiting up to ``timeout`` s (None: until all calls return)."""
        refs = [ref for calls in self.inflight for ref in calls]
        if not refs:
            return []
        return self._wait(refs, num_returns=len(refs), timeout=timeout)

    def _wait(
        self, refs: list[ray.ObjectRef], num_returns: int, timeout: float | None = None
    ) -> list[int]:
        ready, _ = ray.wait(refs, num_returns=num_returns, timeout=timeout)
        done = []
        for ref, result in zip(ready, ray.get(ready), strict=True):
            seq, partition = next(calls.pop(ref) for calls in self.inflight if ref in calls)
            self.latency.merge(result.latency)
            self.rows_done += result.rows
            if result.output is not None and result.output.num_rows:
                self.outputs.append((partition, result.output))
            if result.dead is not None and result.dead.num_rows:
                self.dead.append((partition, result.dead))
                self.dead_rows += result.dead.num_rows
            self._calls_left[seq] -= 1
            if self._calls_left[seq] == 0:
                del self._calls_left[seq]
                done.append(seq)
        return done

    def snapshot(self) -> pa.Table:
        """Snapshot rows of every key from all actors; call with no call in flight."""
        # An actor without keys may give null-typed columns: joined as one contract.
        return concat_conformed(ray.get([actor.snapshot.remote() for actor in self.actors]))

    def save(
        self,
        lake_uri: str,
        storage_options: dict[str, Any],
        path_of: Callable[[str, int], str],
        partitions: list[str],
    ) -> tuple[dict[str, list[str]], int, int]:
        """Have every actor write its snapshot rows of ``partitions`` to the lake, in parallel
        (``path_of(partition, actor index)``); call with no call in flight.

        Returns:
            The pieces written per partition, and the rows and bytes written in all.
        """
        calls = [
            actor.save.remote(lake_uri, storage_options, {p: path_of(p, i) for p in partitions})
            for i, actor in enumerate(self.actors)
        ]
        pieces: dict[str, list[str]] = {p: [] for p in partitions}
        rows = size = 0
        for i, written in enumerate(ray.get(calls)):
            for partition, (count, nbytes) in written.items():
                pieces[partition].append(path_of(partition, i))
                rows += count
                size += nbytes
        return pieces, rows, size

    def restore(self, rows: pa.Table) -> None:
        """Send snapshot rows to the actors that own their keys' key groups."""
        if rows.num_rows == 0:
            return
        owners = self.owner[key_groups(rows.column(self.schema.key), self.config.key_groups)]
        ray.get(
            [
                actor.restore.remote(rows.filter(pa.array(owners == i)))
                for i, actor in enumerate(self.actors)
                if (owners == i).any()
            ]
        )

    def release(self, partitions: list[str]) -> int:
        """Drop, in every actor, the state of keys of revoked ``partitions``; returns the count."""
        return sum(ray.get([actor.release.remote(partitions) for actor in self.actors]))

    def state(self) -> pa.Table:
        """The state of every key, from all actors (one row per key)."""
        return concat_conformed(ray.get([actor.state.remote() for actor in self.actors]))

    def latency_percentiles(self) -> dict[str, float | None]:
        """p50/p99 (ms) of every row's latency, from when it was due to its state update."""
        p50, p99 = self.latency.percentile(50), self.latency.percentile(99)
        return {
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
        }
