"""Checkpoints per source partition, kept in the lake's state area.

A checkpoint of partition P says, per feed (engine.lake.FEEDS): every row of P up to ``paths`` is
applied to the hot state snapshot saved with it and in the warm outputs, and every row up to
``cold`` (at most ``paths``: the lake writer stages files when its buffers fill) is in the
lake's cold tables; nothing after either is. Layout::

    {lake}/_state/{pipeline}/{partition}/hot-{N:020d}-{writer}-{actor:03d}.parquet   snapshot rows
                                                 of P's keys held by one hot actor of one member
    {lake}/_state/{pipeline}/{partition}/epoch-{E}/CURRENT.json   {"position": paths, "feeds":
                                     {"cold": C, "paths": N}, "hot": ["<path>", ...],
                                     "schema": "<Arrow IPC, base64>"}
    {lake}/_state/{pipeline}/{partition}/epoch-{E}/PREPARED.json
    {lake}/_state/{pipeline}/{partition}/OWNER.json    {"epoch": E, ...}: a hint for tools

``E`` is the owner epoch the member committed to the lake's tables when it was assigned the
partition (engine.delta): each owner writes only its own epoch's folder, and the next owner
carries the records of the epoch the tables name forward into its own (:meth:`Checkpoints.
adopt`), so a member that lost the partition can never overwrite the records of the member that
took it over (the fence is the tables' atomic claim, not a check before a write here).

Both names are encoded injectively (:func:`engine.lake.encode_partition_value`): pipelines with
different names keep apart checkpoints in one lake, and topics ``a.b`` and ``a_b`` do not meet.

``schema`` is the stream's schema contract at the checkpoint (routers.contract): a resumed run
seeds its contract with it, so it types undeclared columns as the uninterrupted run did.

``PREPARED.json`` is step 3 of the commit protocol (engine.commit): the next
checkpoint's position, pieces, schema and staged lake files, written before any table commit, so
that recovery can finish a checkpoint a crash interrupted.

A file source's partition (one file, known by its path and version) read whole by a bounded run
is recorded in ``_state/{pipeline}/{partition}/READ.json`` once all its rows are in the lake;
a later run of the same pipeline skips it.

``CURRENT.json`` is written after the tables are committed (atomically), so a crash
mid-checkpoint leaves the previous one in force until recovery finishes the prepared one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.lake import COLD, FEEDS, PATHS, Lake, encode_partition_value
from routers import concat_conformed

__all__ = ["Checkpoint", "Checkpoints", "feeds_of"]

#: A partition's records carried from one owner to the next (:meth:`Checkpoints.adopt`).
_RECORDS = ("CURRENT.json", "PREPARED.json")


@dataclass(frozen=True)
class Checkpoint:
    """The last checkpoint of one source partition."""

    partition: str
    #: The hot and warm paths' position: the snapshot holds every row up to it.
    position: int
    hot: pa.Table
    #: The stream's schema contract when the checkpoint was taken (None in older checkpoints).
    schema: pa.Schema | None = None
    #: The lake writer's position (at most ``position``; -1: none of the partition's rows):
    #: its rows up to it are committed. None: the same as ``position``.
    cold: int | None = None

    @property
    def feeds(self) -> dict[str, int]:
        """Each feed's position (engine.lake.FEEDS)."""
        return {COLD: self.position if self.cold is None else self.cold, PATHS: self.position}


class Checkpoints:
    """Save and load checkpoints of one pipeline's source partitions in ``lake``."""

    def __init__(self, lake: Lake, pipeline: str) -> None:
        self.lake = lake
        self.pipeline = pipeline
        #: In snapshot piece names: two members never write the same file, even at one position.
        self.writer = uuid.uuid4().hex[:8]
        #: Our owner epoch per adopted partition (:meth:`adopt`).
        self.epochs: dict[str, int] = {}

    def _folder(self, partition: str) -> str:
        names = (encode_partition_value(self.pipeline), encode_partition_value(partition))
        return "_state/{}/{}".format(*names)

    def snapshot_path(self, partition: str, position: int, part: int = 0) -> str:
        """Where piece ``part`` (one per hot actor) of a partition's snapshot at ``position``
        goes; each actor writes its own (engine.hot), in parallel, not through the driver."""
        return f"{self._folder(partition)}/hot-{position:020d}-{self.writer}-{part:03d}.parquet"

    def write_snapshot(self, partition: str, position: int, rows: pa.Table) -> str:
        """Write one snapshot piece from here (tests, tools); returns its path."""
        path = self.snapshot_path(partition, position)
        self.lake.write_parquet(rows, path)
        return path

    def _records(self, partition: str, epoch: int | None = None) -> str:
        """Where ``partition``'s pointer and prepare record go: its owner epoch's folder (ours
        unless ``epoch`` is given), or the partition's folder for a writer that has not adopted
        it (tools, tests, bounded runs, checkpoints written before epochs)."""
        epoch = self.epochs.get(partition) if epoch is None else epoch
        folder = self._folder(partition)
        return folder if epoch is None else f"{folder}/epoch-{epoch}"

    def adopt(self, partition: str, epoch: int, previous: Sequence[int] = ()) -> None:
        """Own ``partition`` under ``epoch`` (on assignment, after the tables' claim): from now on
        its pointer and prepare record are written to ``epoch-{epoch}/``, where no other member
        writes, so a member that lost the partition (it stalled past the group's timeouts) can
        still write its own records but never overwrite the new owner's.

        The previous owner's records are carried forward into ours first: those of the first of
        ``previous`` (the owner epochs the tables held before our claim: atomic there, unlike
        any file here) that has any, else the partition's folder (checkpoints written before
        epochs). What that member writes after this is never read.
        """
        self.epochs[partition] = epoch
        sources = [self._records(partition, e) for e in previous] + [self._folder(partition)]
        for source in sources:
            found = {name: self.lake.read_text(f"{source}/{name}") for name in _RECORDS}
            if any(text is not None for text in found.values()):
                for name, text in found.items():
                    if text is not None:
                        self.lake.write_text(text, f"{self._records(partition)}/{name}")
                break
        # For people and tools (which epoch folder is current); recovery never reads it.
        text = json.dumps({"epoch": epoch, "writer": self.writer, "at": _now()})
        self.lake.write_text(text, f"{self._folder(partition)}/OWNER.json")

    def save(
        self,
        positions: Mapping[str, int | Mapping[str, int]],
        snapshots: Mapping[str, list[str]],
        schema: pa.Schema | None = None,
    ) -> None:
        """Point each partition at its position (one, or one per feed: engine.lake.FEEDS) and
        its snapshot pieces (already written; a partition without keys has none), then remove
        the pieces of the checkpoint before.

        The pointer is the commit: it is one small file per partition, whatever the state's size,
        in our epoch's folder (:meth:`adopt`). The caller leaves out partitions the tables fenced
        off (engine.delta).
        """
        encoded = _encode(schema)
        for partition, position in positions.items():
            pieces = sorted(snapshots.get(partition, []))
            self.point(partition, _as_feeds(position), pieces, encoded)

    def point(
        self, partition: str, feeds: Mapping[str, int], pieces: list[str], schema: str | None
    ) -> None:
        """Write the partition's pointer (``schema``: encoded, as in the pointer), then remove
        the pieces of the checkpoint before."""
        previous = self._pointer(partition)
        record = {"position": feeds[PATHS], "feeds": dict(feeds), "hot": sorted(pieces)}
        self.lake.write_text(
            json.dumps({**record, "schema": schema}), f"{self._records(partition)}/CURRENT.json"
        )
        for old in _pieces(previous) if previous else []:
            if old not in pieces:
                with contextlib.suppress(FileNotFoundError):
                    self.lake.fs.rm(self.lake.path(old))

    def prepare(
        self,
        partition: str,
        feeds: Mapping[str, int],
        pieces: list[str],
        schema: pa.Schema | None,
        files: list[dict[str, Any]],
    ) -> None:
        """Record a checkpoint about to be committed (step 3 of engine.commit)."""
        feeds = _as_feeds(feeds)
        record = {
            "position": feeds[PATHS],
            "feeds": feeds,
            "hot": sorted(pieces),
            "schema": _encode(schema),
            "files": files,
        }
        self.lake.write_text(json.dumps(record), f"{self._records(partition)}/PREPARED.json")

    def prepared(self, partition: str) -> dict[str, Any] | None:
        """The partition's last prepare record, or None."""
        text = self.lake.read_text(f"{self._records(partition)}/PREPARED.json")
        return json.loads(text) if text else None

    def feeds(self, partition: str) -> dict[str, int] | None:
        """The positions per feed the partition's pointer says, or None."""
        pointer = self._pointer(partition)
        return None if pointer is None else feeds_of(pointer)

    def _pointer(self, partition: str) -> dict | None:
        text = self.lake.read_text(f"{self._records(partition)}/CURRENT.json")
        return json.loads(text) if text else None

    def load(self, partition: str, newer_than: int | None = None) -> Checkpoint | None:
        """The partition's last checkpoint, or None (also when it is not past ``newer_than``:
        then only the pointer is read, not the snapshot)."""
        pointer = self._pointer(partition)
        if pointer is None or (newer_than is not None and pointer["position"] <= newer_than):
            return None
        tables = []
        for piece in _pieces(pointer):
            with self.lake.fs.open(self.lake.path(piece), "rb") as handle:
                tables.append(pq.read_table(handle))
        hot = concat_conformed(tables) if tables else pa.table({})
        encoded = pointer.get("schema")
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded))) if encoded else None
        feeds = feeds_of(pointer)
        return Checkpoint(partition, feeds[PATHS], hot, schema, feeds[COLD])

    def current_hot(self, attempts: int = 5) -> tuple[pa.Table, dict[str, int]]:
        """What every partition's current checkpoint holds of the hot state (its snapshot
        pieces, concatenated), and each partition's position: a reader's view, from any
        process (the serving view), while the pipeline goes on checkpointing.

        A partition's pointer is found through its ``OWNER.json`` (the epoch folder), else in
        its folder (bounded runs, checkpoints before epochs). A piece removed under us (a newer
        checkpoint replaced it after we read the pointer) makes us read the pointer again.
        """
        base = self.lake.path(f"_state/{encode_partition_value(self.pipeline)}")
        self.lake.fs.invalidate_cache(base)  # s3fs keeps listings: partitions come later
        try:
            folders = sorted(self.lake.fs.ls(base, detail=False))
        except FileNotFoundError:
            return pa.table({}), {}
        tables: list[pa.Table] = []
        positions: dict[str, int] = {}
        for folder in folders:
            name = folder.rstrip("/").rsplit("/", 1)[-1]
            relative = f"_state/{encode_partition_value(self.pipeline)}/{name}"
            for attempt in range(attempts):
                owner = self.lake.read_text(f"{relative}/OWNER.json")
                records = (
                    relative if owner is None else f"{relative}/epoch-{json.loads(owner)['epoch']}"
                )
                text = self.lake.read_text(f"{records}/CURRENT.json")
                if text is None:
                    break
                pointer = json.loads(text)
                try:
                    pieces = []
                    for piece in _pieces(pointer):
                        with self.lake.fs.open(self.lake.path(piece), "rb") as handle:
                            pieces.append(pq.read_table(handle))
                except FileNotFoundError:
                    if attempt == attempts - 1:
                        raise
                    continue  # a newer checkpoint replaced the pieces: follow its pointer
                tables += pieces
                positions[name] = int(pointer["position"])
                break
        return (concat_conformed(tables) if tables else pa.table({})), positions

    def mark_read(self, partition: str, position: int) -> None:
        """Record that a bounded partition (a file) was read whole, through ``position``, and
        is in the lake: ``_state/{pipeline}/{partition}/READ.json``."""
        text = json.dumps({"position": position, "at": _now()})
        self.lake.write_text(text, f"{self._folder(partition)}/READ.json")

    def read_whole(self, partition: str) -> str | None:
        """When an earlier run read ``partition`` whole (see :meth:`mark_read`), else None."""
        text = self.lake.read_text(f"{self._folder(partition)}/READ.json")
        return json.loads(text)["at"] if text else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def feeds_of(record: Mapping[str, Any]) -> dict[str, int]:
    """A pointer's or prepare record's position per feed (older ones have one position)."""
    found = record.get("feeds")
    if found:
        return {k: int(v) for k, v in found.items()}
    return dict.fromkeys(FEEDS, int(record["position"]))


def _as_feeds(position: int | Mapping[str, int]) -> dict[str, int]:
    """One position for every feed, or the feeds given (every one of them).

    Raises:
        ValueError: a feed is missing (a pointer must say where each one resumes).
    """
    if isinstance(position, int):
        return dict.fromkeys(FEEDS, position)
    missing = [feed for feed in FEEDS if feed not in position]
    if missing:
        raise ValueError(f"checkpoint positions need every feed, {missing} missing: {position}")
    return dict(position)


def _encode(schema: pa.Schema | None) -> str | None:
    return base64.b64encode(schema.serialize().to_pybytes()).decode() if schema else None


def _pieces(pointer: dict) -> list[str]:
    """A pointer's snapshot pieces (one path in checkpoints written before pieces existed)."""
    hot = pointer.get("hot")
    return [hot] if isinstance(hot, str) else list(hot or [])
