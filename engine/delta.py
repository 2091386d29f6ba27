"""The lake's tables as Delta Lake tables (delta-rs): staged files, fenced idempotent commits.

Writers (the lake writer actor, warm tasks, hot actors) write Parquet data files into a table's
folder as their buffers fill: single PUTs, under names no one else uses
(:meth:`engine.lake.Lake.stage_parquet`), invisible to every Delta reader until committed. The
driver commits them: per table, one Delta transaction holding every file staged since the last
one, with each source partition's position as a Delta *app transaction* (Spark's
``txnAppId``/``txnVersion``):

- app id ``{scope}`` (:func:`engine.lake.scope`: the pipeline's name and the partition, encoded
  injectively), version = the last source offset whose rows the table holds, as the lake
  writer staged them (feed ``cold``: cold events, dead letters of decoding);
- app id ``{scope}.paths``, the same for rows the hot and warm paths made (feed ``paths``: warm
  outputs, alerts, dead letters of processors), whose position runs ahead of the lake writer's;
- app id ``{scope}.owner``, version = the committing member's *epoch*, drawn at random when it
  was assigned the partition (:meth:`LakeTables.claim`).

**Fencing.** A member commits a partition only if the table's owner epoch for it is still its own
(a compare before the commit, as delta-rs does not refuse a foreign or lower version by itself).
A new owner claims a partition by committing its epoch to every existing table; the stalled
former owner's next commit then either reads the new epoch and leaves the partition out, or
raced the claim from an older snapshot and is refused by Delta's conflict detection (two commits
carrying one app id: the second fails), after which it reloads and finds the new epoch.

**Recovery** reads positions from the Delta log (:meth:`LakeTables.version`): its cost does not
grow with the number of files, and nothing is listed or deleted. Files staged but never
committed stay invisible; ``thermocline vacuum`` removes them after a retention window.

**Schema.** A table's schema grows with its files: a column or struct field a file adds is added
to the table (delta-rs ``schema_mode="merge"``, its own commit) before the files are committed.
Delta cannot widen ``long`` to ``double`` (the protocol forbids it, delta-rs refuses), so the lake
stores a payload number the policy did not declare as ``double`` from the start
(:func:`engine.lake.lake_ready`); declare ``int64`` in ``schema.columns`` to keep one exact.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Final

import pyarrow as pa

from engine.delta_log import CommitConflict, DeltaLog, Snapshot, add_action, txn_action
from engine.lake import COLD, FEEDS, PATHS, Lake, LakeUnavailableError, StagedFile, scope
from routers.errors import ThermoclineError

__all__ = [
    "COLD",
    "DEFAULT_RETENTION_HOURS",
    "TABLE_PROPERTIES",
    "data_file_path",
    "FEEDS",
    "PATHS",
    "LakeSchemaError",
    "LakeTables",
    "StagedFile",
    "app_id",
    "delta_storage_options",
    "new_epoch",
    "owner_app",
]

#: Files neither committed nor referenced are removed by ``vacuum`` once this old: 7 days, Delta's
#: own default, far longer than a checkpoint takes to commit what it staged (a shorter window
#: could delete a file a running pipeline is about to commit, or that a crashed one's prepare
#: record names).
DEFAULT_RETENTION_HOURS: Final[int] = 168
#: Commit attempts while other writers' commits race ours (each attempt follows the log to the
#: winner's commit): any commit between our read and our write takes our version, not only one
#: for the same partition, so members sharing a table lose a race now and then.
_COMMIT_ATTEMPTS: Final[int] = 16
#: Properties of every lake table: no column statistics in the log (``numRecords`` only), for
#: delta-rs's own writes (a compaction) as for ours (see ``_stats``).
TABLE_PROPERTIES: Final[dict[str, str]] = {"delta.dataSkippingNumIndexedCols": "0"}


class LakeSchemaError(ThermoclineError):
    """A table's column would change type (Delta allows columns to be added, not retyped)."""


def _as_delta(schema: pa.Schema) -> pa.Schema:
    """``schema`` as Delta stores it (timestamps in µs, ``large_string`` as ``string``...)."""
    from deltalake.schema import Schema

    return pa.schema(Schema.from_arrow(schema).to_arrow())


def _as_delta_type(found: pa.Field) -> pa.DataType:
    return _as_delta(pa.schema([found])).field(0).type


def _changed(name: str, old: pa.DataType, new: pa.DataType) -> tuple[str, str, str] | None:
    """(column path, old type, new type) of the first change other than added struct fields."""
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        for child in old:
            index = new.get_field_index(child.name)
            found = _changed(f"{name}.{child.name}", child.type, new.field(index).type)
            if found:
                return found
        return None
    if (pa.types.is_list(old) and pa.types.is_list(new)) or (
        pa.types.is_large_list(old) and pa.types.is_large_list(new)
    ):
        return _changed(f"{name}[]", old.value_type, new.value_type)
    return None if old == new else (name, str(old), str(new))


def new_epoch() -> int:
    """A member's epoch for one assignment of partitions: random, positive, fits a Delta long."""
    return secrets.randbits(62) + 1


def app_id(pipeline: str, partition: str, feed: str = COLD) -> str:
    """The app id whose version is ``feed``'s position of ``partition`` in a table.

    Example:
        >>> app_id("kpis", "game.events-0"), app_id("kpis", "game.events-0", PATHS)
        ('kpis.game%2Eevents-0', 'kpis.game%2Eevents-0.paths')
    """
    return scope(pipeline, partition) if feed == COLD else f"{scope(pipeline, partition)}.{feed}"


def owner_app(pipeline: str, partition: str) -> str:
    """The app id whose version is the epoch of the member that owns ``partition``."""
    return f"{scope(pipeline, partition)}.owner"


def delta_storage_options(uri: str, storage_options: Mapping[str, Any]) -> dict[str, str]:
    """delta-rs (object_store) options for a lake configured with fsspec options.

    s3fs's ``key``/``secret``/``token``/``client_kwargs.endpoint_url``/``client_kwargs.
    region_name`` become ``AWS_*`` options; without them delta-rs reads the same ``AWS_*``
    environment variables boto and s3fs do. A plain-HTTP endpoint (a local S3 server) needs
    ``AWS_ALLOW_HTTP``.

    Example:
        >>> opts = delta_storage_options(
        ...     "s3://lake", {"key": "k", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
        ... )
        >>> sorted(opts.items())  # doctest: +NORMALIZE_WHITESPACE
        [('AWS_ACCESS_KEY_ID', 'k'), ('AWS_ALLOW_HTTP', 'true'),
         ('AWS_ENDPOINT_URL', 'http://127.0.0.1:9')]
        >>> delta_storage_options("/tmp/lake", {})
        {}
    """
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    out: dict[str, str] = {}
    names = {
        "key": "AWS_ACCESS_KEY_ID",
        "secret": "AWS_SECRET_ACCESS_KEY",
        "token": "AWS_SESSION_TOKEN",
    }
    for option, name in names.items():
        if storage_options.get(option):
            out[name] = str(storage_options[option])
    client = dict(storage_options.get("client_kwargs") or {})
    endpoint = storage_options.get("endpoint_url") or client.get("endpoint_url")
    if endpoint:
        out["AWS_ENDPOINT_URL"] = str(endpoint)
        if str(endpoint).startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    if client.get("region_name"):
        out["AWS_REGION"] = str(client["region_name"])
    return out


class LakeTables:
    """Commit staged files to the lake's Delta tables for one pipeline; read its positions.

    Args:
        lake: the lake (its URI and storage options).
        pipeline: the pipeline's name; it scopes the app ids.
    """

    def __init__(self, lake: Lake, pipeline: str) -> None:
        self.lake = lake
        self.pipeline = pipeline
        self.options = delta_storage_options(lake.uri, lake.storage_options)
        #: Our epoch per source partition (set by :meth:`claim`).
        self.epochs: dict[str, int] = {}
        self._logs: dict[str, DeltaLog] = {}
        #: Each table's snapshot as of our last read or commit, followed forward before use.
        self._snapshots: dict[str, Snapshot] = {}

    def uri(self, table: str) -> str:
        return f"{self.lake.uri}/{table}"

    def _open(self, table: str) -> Any:
        """The table, or None when it does not exist yet."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri(table), storage_options=self.options or None)
        except TableNotFoundError:
            return None
        except OSError as error:
            raise LakeUnavailableError(
                f"lake {self.lake.uri}: opening table {table}: {error}. Operator action: check"
                " that the storage is reachable."
            ) from error

    def _log(self, table: str) -> DeltaLog:
        if table not in self._logs:
            self._logs[table] = DeltaLog(
                self.lake.fs, self.lake.path(table), self.uri(table), self.options
            )
        return self._logs[table]

    def _snapshot(self, table: str) -> Snapshot | None:
        """``table``'s latest snapshot (None: no table yet), followed from our last one."""
        delta_log = self._log(table)
        try:
            known = self._snapshots.get(table)
            found = delta_log.read() if known is None else delta_log.refresh(known)
        except OSError as error:
            raise LakeUnavailableError(
                f"lake {self.lake.uri}: reading table {table}'s log: {error}. Operator action:"
                " check that the storage is reachable."
            ) from error
        if found is not None:
            self._snapshots[table] = found
        return found

    def version(self, table: str, partition: str, feed: str = COLD) -> int | None:
        """The last source offset of ``partition`` committed to ``table`` (None: none yet)."""
        found = self._snapshot(table)
        return None if found is None else found.txns.get(app_id(self.pipeline, partition, feed))

    def ensure(self, table: str, partition_by: tuple[str, ...]) -> None:
        """Create ``table`` (empty: its partition columns only) if it does not exist, so that
        readers see an empty table, not the files staged before its first commit, and claims
        reach it from the start. (A table without partition columns is created by its first
        commit: Delta needs a column.)"""
        from deltalake.exceptions import DeltaError
        from deltalake.schema import Schema
        from deltalake.transaction import create_table_with_add_actions

        if not partition_by or self._snapshot(table) is not None:
            return
        keys = pa.schema([(k, pa.string() if k == "dt" else pa.int32()) for k in partition_by])
        try:
            create_table_with_add_actions(
                self.uri(table),
                Schema.from_arrow(keys),
                [],
                mode="error",
                partition_by=list(partition_by),
                configuration=TABLE_PROPERTIES,
                storage_options=self.options or None,
            )
        except DeltaError as error:
            if "already exists" not in str(error).lower():
                raise  # else: created meanwhile by another member

    def claim(self, tables: Iterable[str], partitions: Iterable[str]) -> dict[str, list[int]]:
        """Become the owner of ``partitions`` in every existing one of ``tables``: commit a new
        epoch per partition (one commit per table; ours in :attr:`epochs`). A table created
        later gets ours with its first commit.

        Only ``partitions``: an epoch of ours for any other partition is stale (we were its
        owner before a rebalance) and re-committing it would fence off its new owner.

        Returns:
            Per partition, the owner epochs the tables held just before our claim (the previous
            owners, whose checkpoint records we take over: engine.checkpoint), in the order of
            ``tables``; empty for a partition never owned.

        Raises:
            LakeUnavailableError: a table refused the claim on every attempt (we would then
                fence ourselves off the partitions there).
        """
        claimed = {p: new_epoch() for p in partitions}
        self.epochs.update(claimed)
        previous: dict[str, list[int]] = {p: [] for p in claimed}
        now = int(time.time() * 1000)
        apps = [txn_action(owner_app(self.pipeline, p), e, now) for p, e in claimed.items()]
        for table in tables:
            for attempt in range(_COMMIT_ATTEMPTS):
                found = self._snapshot(table)
                if found is None:
                    break
                try:
                    self._snapshots[table] = self._log(table).append(found, apps)
                except CommitConflict:
                    _back_off(attempt)  # another commit took the version: follow it, retry
                    continue
                for partition, owners in previous.items():
                    before = found.txns.get(owner_app(self.pipeline, partition))
                    if before is not None and before not in owners:
                        owners.append(before)  # as of the version our claim followed
                break
            else:
                raise LakeUnavailableError(
                    f"lake {self.lake.uri}: claiming partitions {sorted(claimed)} in table"
                    f" {table}: {_COMMIT_ATTEMPTS} attempts lost to concurrent commits."
                    " Operator action: check that no other writer uses this pipeline's name."
                )
        return previous

    def release(self, partitions: Iterable[str]) -> None:
        """Forget our epochs of ``partitions`` (revoked: another member owns them now)."""
        for partition in partitions:
            self.epochs.pop(partition, None)

    def commit(
        self,
        table: str,
        files: list[StagedFile],
        positions: Mapping[str, Mapping[str, int]],
        feeds: tuple[str, ...] = (COLD,),
        partition_by: tuple[str, ...] = (),
        fence: bool = True,
    ) -> list[str]:
        """Commit ``files`` to ``table`` with ``positions`` (source partition -> feed -> last
        offset; the table's ``feeds`` only) as app transactions, in one Delta transaction;
        create the table on its first commit.

        Idempotent: a partition whose committed versions are all at or past its positions (a
        commit that went through before a crash) is left out, with its files.

        Args:
            feeds: the feeds whose positions this table records.
            partition_by: the table's partition columns (used when creating it).
            fence: leave out partitions whose owner epoch is not ours (see the module docs).

        Returns:
            The partitions fenced off (their files not committed).
        """
        from deltalake import CommitProperties, Transaction
        from deltalake.exceptions import DeltaError
        from deltalake.schema import Schema
        from deltalake.transaction import AddAction, create_table_with_add_actions

        by_partition: dict[str, list[StagedFile]] = defaultdict(list)
        for staged in files:
            by_partition[staged.partition].append(staged)
        targets = {
            p: {f: n for f, n in feeds_at.items() if f in feeds}
            for p, feeds_at in positions.items()
        }
        for attempt in range(_COMMIT_ATTEMPTS):
            found = self._snapshot(table)
            txns = {} if found is None else found.txns
            fenced, done = [], []
            for partition in set(targets) | set(by_partition):
                target = targets.get(partition, {})
                owner = txns.get(owner_app(self.pipeline, partition))
                if fence and owner is not None and owner != self.epochs.get(partition):
                    fenced.append(partition)
                elif target and all(
                    txns.get(app_id(self.pipeline, partition, f), -1) >= n
                    for f, n in target.items()
                ):
                    done.append(partition)  # committed before (a crash, a finished prepare)
            left_out = set(fenced) | set(done)
            keep = [p for p, target in targets.items() if target and p not in left_out]
            chosen = [f for p, fs in by_partition.items() if p not in left_out for f in fs]
            if not keep and not chosen:
                return sorted(fenced)
            now = int(time.time() * 1000)
            apps = [(app_id(self.pipeline, p, f), n) for p in keep for f, n in targets[p].items()]
            apps += [
                (owner_app(self.pipeline, p), self.epochs[p]) for p in keep if p in self.epochs
            ]
            schema = self._schema(table, chosen, found, partition_by)
            try:
                if found is None:  # its first commit creates it (delta-rs: protocol, metadata)
                    create_table_with_add_actions(
                        self.uri(table),
                        Schema.from_arrow(schema),
                        [
                            AddAction(
                                f.path,
                                f.size,
                                dict(f.partition_values),
                                now,
                                True,
                                json.dumps(_stats(f)),
                            )
                            for f in chosen
                        ],
                        mode="error",
                        partition_by=list(partition_by) or None,
                        configuration=TABLE_PROPERTIES,
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction(a, n) for a, n in apps]
                        ),
                        storage_options=self.options or None,
                    )
                    return sorted(fenced)
                if Schema.from_arrow(schema) != Schema.from_json(found.schema_string):
                    self._evolve(table, schema)  # its own commit; then decide again
                    continue
                actions = [
                    add_action(f.path, f.size, f.partition_values, _stats(f), now) for f in chosen
                ]
                actions += [txn_action(a, n, now) for a, n in apps]
                self._snapshots[table] = self._log(table).append(found, actions)
                return sorted(fenced)
            except CommitConflict:
                _back_off(attempt)  # another writer committed first: follow its commit, retry
                continue
            except DeltaError as error:
                if found is None and "already exists" in str(error).lower():
                    continue  # created meanwhile by another writer
                raise
            except OSError as error:
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise LakeUnavailableError(
                        f"lake {self.lake.uri}: committing to {table} failed {_COMMIT_ATTEMPTS}"
                        f" times, last with {type(error).__name__}: {error}. Operator action:"
                        " check that the storage is reachable; the commit is safe to retry."
                    ) from error
                time.sleep(0.2 * 2**attempt)
        raise LakeUnavailableError(
            f"lake {self.lake.uri}: committing to {table}: {_COMMIT_ATTEMPTS} attempts lost to"
            " concurrent commits. Operator action: check that no other writer uses this"
            " pipeline's name; the commit is safe to retry."
        )

    def _schema(
        self,
        table: str,
        files: list[StagedFile],
        found: Snapshot | None,
        partition_by: tuple[str, ...],
    ) -> pa.Schema:
        """The table's schema grown by the files' schemas (partition columns last)."""
        schemas = []
        if found is not None:
            schemas.append(found.schema)
        for staged in files:
            schemas.append(staged.schema if staged.schema is not None else self._footer(staged))
        keys = [pa.field("dt", pa.string()), pa.field("hour", pa.int32())]
        if found is None:
            schemas.append(pa.schema([k for k in keys if k.name in partition_by]))
        try:
            merged = _as_delta(pa.unify_schemas(schemas, promote_options="permissive"))
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            merged = None  # types that do not even unify: name the column below
        for old in schemas[0] if found is not None else []:
            for schema in [merged] if merged is not None else schemas[1:]:
                index = schema.get_field_index(old.name)
                if index < 0:
                    continue
                changed = _changed(old.name, old.type, _as_delta_type(schema.field(index)))
                if changed:
                    raise LakeSchemaError(
                        f"lake table {table}: column {changed[0]} was {changed[1]} and a file"
                        f" now holds {changed[2]}; a Delta table cannot change a column's type."
                        " Fix: declare the input column's type in policy.schema.columns (e.g."
                        " double) so it is one type from the start, or write to a new table."
                    )
        if merged is None:
            raise LakeSchemaError(f"lake table {table}: the files' schemas do not unify")
        return merged

    def _footer(self, staged: StagedFile) -> pa.Schema:
        import pyarrow.parquet as pq

        with self.lake.fs.open(self.lake.path(staged.table, staged.path), "rb") as handle:
            return pq.read_schema(handle)

    def _evolve(self, table: str, schema: pa.Schema) -> None:
        """Give ``table`` every column and struct field of ``schema`` (a delta-rs merge commit:
        rare, and the one commit here that loads the table's file list)."""
        from deltalake import write_deltalake
        from deltalake.exceptions import CommitFailedError

        found = self._open(table)
        try:
            write_deltalake(
                found,
                schema.empty_table(),
                mode="append",
                schema_mode="merge",
                partition_by=found.metadata().partition_columns or None,
            )
        except CommitFailedError as error:
            # Another member changed the table's metadata (grew its schema too) after we
            # opened it: delta-rs refuses ours ("Metadata changed since last commit"). The
            # caller follows the log and decides again; the schema may need no growth by then.
            raise CommitConflict(str(error)) from error

    def read(self, table: str) -> pa.Table:
        """Every committed row of ``table`` (empty when it does not exist)."""
        found = self._open(table)
        return pa.table({}) if found is None else found.to_pyarrow_dataset().to_table()

    def tables(self) -> list[str]:
        """The lake's Delta tables (folders holding a ``_delta_log``, one or two levels down)."""
        fs, root = self.lake.fs, self.lake.root
        found = fs.glob(f"{root}/*/_delta_log") + fs.glob(f"{root}/*/*/_delta_log")
        return sorted(p.removeprefix(f"{root}/").removesuffix("/_delta_log") for p in found)

    def vacuum(
        self, table: str, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False
    ) -> list[str]:
        """Remove ``table``'s files that no version references (staged by a run that crashed
        before committing them, or replaced by a compaction) once older than the retention.

        Returns:
            The files removed (or, with ``dry_run``, that would be).
        """
        found = self._open(table)
        if found is None:
            return []
        removed = found.vacuum(
            retention_hours=retention_hours,
            dry_run=dry_run,
            enforce_retention_duration=False,  # our own floor is checked by the caller
            full=True,  # also files never committed: the log does not know them
        )
        return list(removed)


def data_file_path(lake: Lake, table: str, path: str) -> str:
    """A data file's path on the lake's filesystem, from its add action's path (URI-escaped,
    relative to the table, or absolute). Not ``DeltaTable.file_uris()``: delta-rs escapes the
    table's root there but not the rest, so a lake folder with a space is not found.

    Example:
        >>> data_file_path(Lake("/tmp/a b"), "events", "dt=2026-11-20/x%2520y.parquet")
        '/tmp/a b/events/dt=2026-11-20/x%20y.parquet'
    """
    from urllib.parse import unquote

    path = unquote(path)
    return path if "://" in path else lake.path(table, path)


def _stats(staged: StagedFile) -> dict[str, int]:
    # The row count only, on purpose: delta-rs 1.6.6's dataset reads a column without bounds in
    # a file that has other bounds as `column >= null` and skips the file for any filter on it
    # (a column added after the file was written, filtered with is_null, returned no rows).
    # tests/test_delta_stats.py holds filtered reads to full ones.
    return {"numRecords": staged.rows}


def _back_off(attempt: int) -> None:
    """A random pause after a lost commit race, growing with the losses: members that lost to
    each other do not collide again in lockstep."""
    time.sleep(random.uniform(0, 0.005 * 2 ** min(attempt, 6)))
