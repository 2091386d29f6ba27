"""Blind appends to a Delta table's log at a cost that does not grow with the table.

delta-rs 1.6.6 loads a table's whole file list to open it and again to commit to it: an append
with app transactions costs 6 / 22 / 174 ms on an already open table of 1,000 / 10,000 /
100,000 files (measured here, post-commit hooks off; opening costs 4 / 17 / 113 ms more). A
streaming checkpoint appends to every table every few seconds, and the tables only grow, so the
checkpoint would slow down with the lake's age. An append needs far less than the file list: the
table's latest version, its app transactions, schema and protocol. :class:`DeltaLog` reads those
once (the last checkpoint's ``txn``, ``metaData`` and ``protocol`` columns only, plus the
commits after it), follows later commits one small file each, and appends a commit the way the
Delta protocol defines mutual exclusion: a put-if-absent of the next version's JSON file (delta-rs
writes its own commits the same way: a hard link locally, an ``If-None-Match: *`` PUT on S3).
Whoever loses the race reads the winner's commit and decides again (:class:`CommitConflict`).

Only appends of data files and app transactions go this way (Delta's ``WRITE``, mode
``Append``). Creating a table, changing its schema, compacting and vacuuming stay with delta-rs,
whose commits are read here like any other. Every ``delta.checkpointInterval`` versions (100 by
default) a Delta checkpoint is written through delta-rs on a background thread, so that readers
keep opening the table from a checkpoint instead of replaying a long log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import quote

import pyarrow as pa

from engine.lake import LakeUnavailableError, is_local, put_if_absent
from routers.errors import ThermoclineError

__all__ = [
    "CommitConflict",
    "DeltaLog",
    "Snapshot",
    "UnsupportedTableError",
    "add_action",
    "txn_action",
]

log = logging.getLogger(__name__)

#: Writer protocol versions whose appends need nothing beyond what is written here (version 2
#: adds column invariants, refused below when a schema has any).
_WRITER_VERSIONS: Final = (1, 2)
#: A snapshot older than this is read again from the last checkpoint instead of followed: the
#: log's old commits are deleted after a retention (30 days by default), and following a cached
#: version whose successors were deleted would append over a version readers already passed.
_REREAD_AFTER_S: Final[float] = 600.0
#: Characters delta-rs leaves unescaped in an ``add`` action's path (checked against its own
#: commits: it escapes ``%``, space, ``*``, ``#``, ``?``, brackets, braces and non-ASCII).
_PATH_SAFE: Final = "/=!$&'()+,;:@"


class CommitConflict(Exception):
    """Another writer committed the version we tried: follow the log and decide again."""


class UnsupportedTableError(ThermoclineError):
    """A table whose protocol asks more of a writer than blind appends provide."""


@dataclass(frozen=True)
class Snapshot:
    """What an append needs to know about a table at one version.

    Attributes:
        version: the table's latest version read.
        txns: app id -> version of every app transaction.
        schema_string: the table's schema, as the log holds it (Delta JSON).
        partition_columns: the table's partition columns.
        checkpoint_interval: versions between Delta checkpoints (``delta.checkpointInterval``).
        read_at: when the log was last read from its checkpoint (``time.monotonic()``).
    """

    version: int
    txns: Mapping[str, int]
    schema_string: str
    partition_columns: tuple[str, ...]
    checkpoint_interval: int = 100
    read_at: float = field(default_factory=time.monotonic, compare=False)

    @property
    def schema(self) -> pa.Schema:
        """The table's schema as Arrow (partition columns included)."""
        from deltalake.schema import Schema

        return pa.schema(Schema.from_json(self.schema_string).to_arrow())


def add_action(
    path: str,
    size: int,
    partition_values: Mapping[str, str | None],
    stats: Mapping[str, Any],
    modification_time_ms: int,
) -> dict[str, Any]:
    """A Delta ``add`` action for a data file at ``path`` (relative to the table, unescaped).

    Example:
        >>> add_action("dt=2026-11-27/hour=9/p 1.parquet", 10, {"dt": "2026-11-27", "hour": "9"},
        ...            {"numRecords": 2}, 0)["add"]["path"]
        'dt=2026-11-27/hour=9/p%201.parquet'
    """
    return {
        "add": {
            "path": quote(path, safe=_PATH_SAFE),  # Delta paths are URIs: escaped as delta-rs does
            "partitionValues": dict(partition_values),
            "size": size,
            "modificationTime": modification_time_ms,
            "dataChange": True,
            "stats": json.dumps(stats, separators=(",", ":")),
        }
    }


def txn_action(app_id: str, version: int, now_ms: int) -> dict[str, Any]:
    """A Delta ``txn`` action: ``app_id``'s last version included (e.g. a source offset).

    Example:
        >>> txn_action("pipe.t-0", 41, 0)
        {'txn': {'appId': 'pipe.t-0', 'version': 41, 'lastUpdated': 0}}
    """
    return {"txn": {"appId": app_id, "version": version, "lastUpdated": now_ms}}


class DeltaLog:
    """One table's ``_delta_log``: read what appends need, append, checkpoint now and then.

    Args:
        fs: the lake's fsspec filesystem (local or S3: the two with an atomic put-if-absent).
        root: the table's folder on ``fs``.
        uri: the table's URI for delta-rs (checkpoints).
        storage_options: delta-rs storage options for ``uri``.

    Example:
        >>> import tempfile, fsspec
        >>> from engine.delta_log import DeltaLog
        >>> DeltaLog(fsspec.filesystem("file"), tempfile.mkdtemp(), "unused", {}).read() is None
        True
    """

    def __init__(self, fs: Any, root: str, uri: str, storage_options: Mapping[str, str]) -> None:
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.local = is_local(fs)
        if not self.local and not {"s3", "s3a"} & set(protocols):
            raise UnsupportedTableError(
                f"lake on {protocols[0]}://: Thermocline commits to Delta tables in a local"
                " folder or on S3 (the stores with an atomic put-if-absent). Fix: point"
                " cold.lake_uri at one of them."
            )
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri
        self.storage_options = dict(storage_options)
        self._checkpointing = threading.Lock()

    def _path(self, name: str) -> str:
        return f"{self.root}/_delta_log/{name}"

    def read(self) -> Snapshot | None:
        """The table's latest snapshot, from its last checkpoint on (None: no table here)."""
        try:
            pointer = json.loads(self.fs.cat_file(self._path("_last_checkpoint")))
        except FileNotFoundError:
            pointer = None
        if pointer is None:
            snapshot = Snapshot(-1, {}, "", ())
        else:
            snapshot = self._from_checkpoint(int(pointer["version"]), pointer.get("parts"))
        snapshot = self._follow(snapshot)
        return None if snapshot.version < 0 else snapshot

    def refresh(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` with the commits made since (one small read each, one miss at the end)."""
        if time.monotonic() - snapshot.read_at > _REREAD_AFTER_S:
            found = self.read()
            if found is None:
                raise LakeUnavailableError(f"lake table {self.uri}: its Delta log is gone")
            return found
        return self._follow(snapshot)

    def append(self, snapshot: Snapshot, actions: list[dict[str, Any]]) -> Snapshot:
        """Commit ``actions`` as version ``snapshot.version + 1``.

        Returns:
            The snapshot after the commit.

        Raises:
            CommitConflict: that version exists (another writer was first): :meth:`refresh`,
                check again, retry.
            UnsupportedTableError: the table's protocol needs more than blind appends.
        """
        _check_writable(snapshot)
        version = snapshot.version + 1
        info = {
            "commitInfo": {
                "timestamp": int(time.time() * 1000),
                "operation": "WRITE",
                "operationParameters": {"mode": "Append"},
                "isBlindAppend": True,
                "engineInfo": "thermocline",
            }
        }
        body = "\n".join(json.dumps(a, separators=(",", ":")) for a in [info, *actions]) + "\n"
        if not self._put_if_absent(_commit_name(version), body.encode()):
            raise CommitConflict(f"version {version} of {self.uri} was committed by another writer")
        txns = dict(snapshot.txns)
        txns.update((a["txn"]["appId"], int(a["txn"]["version"])) for a in actions if "txn" in a)
        after = replace(snapshot, version=version, txns=txns)
        if version % max(1, snapshot.checkpoint_interval) == 0:
            self._checkpoint_soon(version)
        return after

    def _put_if_absent(self, name: str, data: bytes) -> bool:
        return put_if_absent(self.fs, self._path(name), data)

    def _follow(self, snapshot: Snapshot) -> Snapshot:
        version, txns = snapshot.version, dict(snapshot.txns)
        schema, columns, interval = (
            snapshot.schema_string,
            snapshot.partition_columns,
            snapshot.checkpoint_interval,
        )
        while True:
            try:
                data = self.fs.cat_file(self._path(_commit_name(version + 1)))
            except FileNotFoundError:
                break
            version += 1
            for line in data.splitlines():
                if not line.strip():
                    continue
                action = json.loads(line)
                if "txn" in action:
                    txns[action["txn"]["appId"]] = int(action["txn"]["version"])
                elif "metaData" in action:
                    schema, columns, interval = _metadata(action["metaData"])
                elif "protocol" in action:
                    _check_protocol(action["protocol"], self.uri)
        return Snapshot(version, txns, schema, columns, interval, snapshot.read_at)

    def _from_checkpoint(self, version: int, parts: int | None) -> Snapshot:
        import pyarrow.parquet as pq

        names = [f"{version:020d}.checkpoint.parquet"]
        if parts:  # a multi-part checkpoint
            names = [
                f"{version:020d}.checkpoint.{i:010d}.{parts:010d}.parquet"
                for i in range(1, parts + 1)
            ]
        txns: dict[str, int] = {}
        schema, columns, interval = "", tuple[str, ...](), 100
        for name in names:
            with self.fs.open(self._path(name), "rb") as handle:
                # Three columns of the checkpoint: its add actions (one row per file) are skipped.
                # A part without any action of a kind may lack its column.
                parquet = pq.ParquetFile(handle)
                wanted = [
                    c for c in ("txn", "metaData", "protocol") if c in parquet.schema_arrow.names
                ]
                found = parquet.read(columns=wanted)
            for txn in _present(found, "txn"):
                txns[txn["appId"]] = int(txn["version"])
            for meta in _present(found, "metaData"):
                meta["configuration"] = dict(meta.get("configuration") or [])
                schema, columns, interval = _metadata(meta)
            for protocol in _present(found, "protocol"):
                _check_protocol(protocol, self.uri)
        return Snapshot(version, txns, schema, columns, interval)

    def _checkpoint_soon(self, version: int) -> None:
        """Write a Delta checkpoint at ``version`` through delta-rs, off the commit's path (one at
        a time: a skipped one is made up for by the next interval's)."""
        if not self._checkpointing.acquire(blocking=False):
            return

        def write() -> None:
            try:
                from deltalake import DeltaTable

                table = DeltaTable(
                    self.uri, version=version, storage_options=self.storage_options or None
                )
                table.create_checkpoint()
            except Exception as error:  # readers replay a longer log meanwhile: not fatal
                log.warning(
                    "lake table %s: checkpoint at version %d failed: %s", self.uri, version, error
                )
            finally:
                self._checkpointing.release()

        # Not a daemon: interpreter exit waits for it (delta-rs aborts the process when a thread is
        # stopped inside it).
        threading.Thread(target=write, name="thermocline-delta-checkpoint").start()


def _present(table: pa.Table, column: str) -> list[dict[str, Any]]:
    """The non-null rows of a checkpoint's ``column`` (none when the column is absent)."""
    if column not in table.column_names:
        return []
    return table.column(column).drop_null().to_pylist()


def _commit_name(version: int) -> str:
    return f"{version:020d}.json"


def _metadata(meta: Mapping[str, Any]) -> tuple[str, tuple[str, ...], int]:
    configuration = dict(meta.get("configuration") or {})
    interval = int(configuration.get("delta.checkpointInterval") or 100)
    return str(meta["schemaString"]), tuple(meta.get("partitionColumns") or ()), interval


def _check_protocol(protocol: Mapping[str, Any], uri: str) -> None:
    writer = int(protocol.get("minWriterVersion") or 1)
    if writer not in _WRITER_VERSIONS:
        features = protocol.get("writerFeatures") or []
        raise UnsupportedTableError(
            f"lake table {uri}: its protocol needs writer version {writer}"
            f"{' (features ' + ', '.join(features) + ')' if features else ''}; Thermocline appends"
            " to tables of writer version 1 or 2. Fix: write this pipeline to a new table (another"
            " lake URI or pipeline name), or have the tool that upgraded it write there."
        )


def _check_writable(snapshot: Snapshot) -> None:
    if "delta.invariants" in snapshot.schema_string:
        raise UnsupportedTableError(
            "a lake table has column invariants (delta.invariants), which appends here do not"
            " check. Fix: remove them, or write this pipeline to a new table."
        )
