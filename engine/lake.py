"""The lake: layout, safe partition paths and idempotent Parquet writes through fsspec.

Layout under ``lake_uri`` (a local folder by default; any fsspec URL, e.g. ``s3://bucket/prefix``):

- ``events/dt=YYYY-MM-DD/hour=HH/[col=value/...]{pipeline}.{partition}-{first}-{last}.parquet``:
  cold events; ``first``/``last`` are the source offsets the file covers (zero-padded), so the
  same source range always gets the same name and a retry overwrites instead of duplicating
  (:func:`file_stem`: the pipeline's name and the source partition, encoded injectively);
- ``warm/{output_name}/``: warm path outputs;
- ``hot/{name}/``: the hot processor's output rows (e.g. alerts; ``name``: ``hot.output_name``,
  else the processor's name);
- ``state/{name}/``: the hot state at the end of a bounded run (file, synthetic), one row per key;
- ``_dead_letter/``: rows that could not be decoded, with raw bytes and reason.

Partition values never come raw from events: ``dt``/``hour`` are formatted from the event time,
and any other partition value goes through :func:`encode_partition_value`, an injective encoding
into one safe path segment, so ``../../etc`` stays one folder inside the lake and two different
values never share a folder (where they would overwrite each other's files).

The folder name is only a place to put rows: it cannot carry every value back (``""`` and long
values do not survive it), so the ``partition_by`` columns stay inside the Parquet files and
:meth:`Lake.read` takes them from there. A reader that decodes ``col=value`` folders (pyarrow's
``partitioning="hive"``, DuckDB's default ``hive_partitioning``) lets the folder win over the
file, which changes ``""`` and long values; read the lake with :meth:`Lake.read`, or with DuckDB
as ``read_parquet(files, union_by_name=true, hive_partitioning=false)``.

Storage failures (any ``OSError`` but a missing path or a permission problem, which are
configuration mistakes and raise at once) are retried with exponential backoff, then surface as
:class:`LakeUnavailableError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from routers.errors import ThermoclineError

__all__ = [
    "COLD",
    "FEEDS",
    "HOT_DIR",
    "PATHS",
    "STATE_DIR",
    "DEAD_LETTER_DIR",
    "EVENTS_DIR",
    "NULL_PARTITION",
    "Lake",
    "StagedFile",
    "LakeUnavailableError",
    "deltable",
    "is_local",
    "encode_partition_value",
    "numbers_as_double",
    "file_stem",
    "scope",
    "storable",
    "on_stage_threads",
    "put_if_absent",
]

EVENTS_DIR: Final[str] = "events"
#: The feeds of rows a lake table may hold, each with its own position per source partition:
#: rows the lake writer staged (cold events, dead letters of decoding), and rows the hot and
#: warm paths made (warm outputs, alerts, dead letters of processors), which run ahead of it.
COLD: Final[str] = "cold"
PATHS: Final[str] = "paths"
FEEDS: Final[tuple[str, str]] = (COLD, PATHS)
DEAD_LETTER_DIR: Final[str] = "_dead_letter"
HOT_DIR: Final[str] = "hot"
STATE_DIR: Final[str] = "state"
_T = TypeVar("_T")

#: The null folder, as Hive, Spark, pyarrow and DuckDB name it.
NULL_PARTITION: Final[str] = "__HIVE_DEFAULT_PARTITION__"
#: Longest encoded value: leaves room for ``column=`` within the usual 255-byte file name limit.
_MAX_SEGMENT: Final[int] = 200
#: ``-`` escaped. The plain encoding never escapes ``-``, so this marks the empty string and
#: separates a long value's prefix from its hash, and no plain encoding can contain it.
_TAG: Final[str] = "%2D"
#: Readable head of a long value: what is left of the segment after the tag and a sha256 hex.
_PREFIX_BYTES: Final[int] = _MAX_SEGMENT - len(_TAG) - 64
_PLAIN: Final[frozenset[int]] = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
)
_ESCAPED: Final[tuple[str, ...]] = tuple(chr(b) if b in _PLAIN else f"%{b:02X}" for b in range(256))
#: The dataset keys the lake writes itself; they are read from folder names, nothing else is.
_PATH_KEYS: Final[dict[str, pa.DataType]] = {"dt": pa.string(), "hour": pa.int32()}

#: Storage retries: 5 attempts, 0.2 s doubling, ~3 s of waiting in all: rides out a throttled or
#: briefly unreachable object store without holding a flush back for long.
_ATTEMPTS: Final[int] = 5
_FIRST_DELAY_S: Final[float] = 0.2
#: OSErrors that retrying cannot fix: the lake is misconfigured (wrong path, no access).
_PERMANENT: Final = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


#: Files of one flush written at once: Parquet encoding and compression release the GIL, and
#: the files of a flush (one per hour folder: late rows reach dozens) were a serial tail at the
#: end of a bounded run.
_STAGERS: Final[int] = 4
_stager_pool: ThreadPoolExecutor | None = None


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local filesystem (renames are atomic there; objects are not)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def put_if_absent(fs: Any, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists (False then): the one atomic
    compare-and-set an object store and a folder both give. On an object store an
    ``If-None-Match: *`` PUT (s3fs ``mode="create"``); locally a complete temporary file
    hard-linked to the name, so no reader sees a half-written file (delta-rs writes its own
    commits the same two ways)."""
    if not is_local(fs):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def on_stage_threads(stage: Callable[[_T], StagedFile], items: list[_T]) -> list[StagedFile]:
    """``stage`` over ``items`` on this process's staging threads (created by the first flush:
    on a lake writer's thread, whose lowered CPU priority they inherit, engine.priority); a
    single item in the calling thread."""
    global _stager_pool
    if len(items) <= 1:
        return [stage(item) for item in items]
    if _stager_pool is None:
        _stager_pool = ThreadPoolExecutor(_STAGERS, thread_name_prefix="thermocline-stage")
    return list(_stager_pool.map(stage, items))


class LakeUnavailableError(ThermoclineError):
    """The lake's storage kept failing after every retry (network, throttling, a full disk).

    Retriable: the write or read can be repeated as is (writes are atomic and idempotent).
    """

    retriable = True


@dataclass(frozen=True)
class StagedFile:
    """A data file written into a table's folder, not yet committed.

    Attributes:
        table: the table's folder, relative to the lake (``events``, ``warm/kpis``...).
        path: the file, relative to the table's folder (what the Delta log records).
        size: bytes.
        rows: rows in the file.
        partition_values: the table's partition columns for this file (``dt``, ``hour``).
        partition: the source partition the rows came from (its position is committed with it).
        schema: the file's Arrow schema (kept in memory only; read from the file when a
            prepared commit is rolled forward by another process).
    """

    table: str
    path: str
    size: int
    rows: int
    partition_values: Mapping[str, str | None]
    partition: str
    schema: pa.Schema | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "path": self.path,
            "size": self.size,
            "rows": self.rows,
            "partition_values": dict(self.partition_values),
            "partition": self.partition,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StagedFile:
        return cls(
            data["table"],
            data["path"],
            int(data["size"]),
            int(data["rows"]),
            dict(data["partition_values"]),
            data["partition"],
        )


def _escape(text: str) -> str:
    # surrogatepass: a lone surrogate (possible in a Python str) still gets its own bytes.
    return "".join(_ESCAPED[b] for b in text.encode("utf-8", "surrogatepass"))


def encode_partition_value(value: object) -> str:
    """One safe path segment for a partition value; different values never share one.

    The rule: every UTF-8 byte outside ``[A-Za-z0-9-]`` becomes ``%XX`` (``.``, ``_``, ``/``,
    ``\\``, ``%`` included); ``None`` is ``__HIVE_DEFAULT_PARTITION__`` and ``""`` is ``%2D``.
    A value whose encoding would pass 200 bytes becomes its encoded head, ``%2D``, and the
    sha256 hex of the whole value. Since ``-`` is never escaped otherwise and ``_`` always is,
    the three forms cannot meet, and each is injective (the long one as far as sha256 is).
    Non-string values are encoded as ``str(value)``; a column has one type, so ``5`` and
    ``"5"`` never meet in one table.

    The segment is injective on case-sensitive storage (Linux file systems, object stores), not
    on case-insensitive ones (``A`` and ``a`` share a folder there).

    Example:
        >>> encode_partition_value("eu-1")
        'eu-1'
        >>> encode_partition_value("../../etc")
        '%2E%2E%2F%2E%2E%2Fetc'
        >>> [encode_partition_value(v) for v in (None, "__HIVE_DEFAULT_PARTITION__", "", "\\x00")]
        ['__HIVE_DEFAULT_PARTITION__', '%5F%5FHIVE%5FDEFAULT%5FPARTITION%5F%5F', '%2D', '%00']
        >>> long = encode_partition_value("a" * 1000)
        >>> long[:4], long[133:136], len(long)
        ('aaaa', '%2D', 200)
    """
    if value is None:
        return NULL_PARTITION
    text = str(value)
    if not text:
        return _TAG
    if len(text) <= _MAX_SEGMENT:  # a longer text cannot fit: skip escaping all of it
        encoded = _escape(text)
        if len(encoded) <= _MAX_SEGMENT:
            return encoded
    head: list[str] = []
    size = 0
    for char in text[:_PREFIX_BYTES]:  # whole characters, so the head still decodes as UTF-8
        piece = _escape(char)
        if size + len(piece) > _PREFIX_BYTES:
            break
        head.append(piece)
        size += len(piece)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return "".join(head) + _TAG + digest


def file_stem(pipeline: str, partition: str, first: int, last: int) -> str:
    """File name (without extension) for rows of one source range of one pipeline.

    ``{pipeline}.{partition}-{first}-{last}``, each name through :func:`encode_partition_value`
    (which escapes ``.`` and ``_``), so different (pipeline, partition) pairs never share a stem:
    topics ``game.events`` and ``game_events`` stay apart, and the ``.`` between the two names
    cannot occur inside either.

    Example:
        >>> file_stem("game-kpis", "games.eu-3", 100, 199)
        'game-kpis.games%2Eeu-3-00000000000000000100-00000000000000000199'
        >>> file_stem("game-kpis", "games_eu-3", 100, 199)[:22]
        'game-kpis.games%5Feu-3'
    """
    return f"{scope(pipeline, partition)}-{first:020d}-{last:020d}"


def scope(pipeline: str, partition: str) -> str:
    """The stem prefix of one pipeline's files of one source partition (see :func:`file_stem`).

    Example:
        >>> scope("kpis", "0")
        'kpis.0'
    """
    return f"{encode_partition_value(pipeline)}.{encode_partition_value(partition)}"


class Lake:
    """A lake at ``uri``, written through fsspec.

    Args:
        uri: folder path or fsspec URL.
        storage_options: passed to fsspec (e.g. S3 endpoint and credentials).

    Example:
        >>> import tempfile
        >>> lake = Lake(tempfile.mkdtemp())
        >>> t0 = datetime(2024, 5, 1, 13, 5, tzinfo=timezone.utc)
        >>> table = pa.table({
        ...     "id": [1, 2, 3],
        ...     "time": pa.array([t0] * 3, pa.timestamp("ms", "UTC")),
        ...     "region": [None, "", "__HIVE_DEFAULT_PARTITION__"],
        ... })
        >>> files = lake.stage_partitioned(table, "time", "s-0-1-3", "p", partition_by=("region",))
        >>> for folder in sorted(f.path.split("/")[-2] for f in files):
        ...     print(folder)
        region=%2D
        region=%5F%5FHIVE%5FDEFAULT%5FPARTITION%5F%5F
        region=__HIVE_DEFAULT_PARTITION__
        >>> from engine.delta import LakeTables  # staged files are invisible until committed
        >>> LakeTables(lake, "doc").commit("events", files, {}, (), ("dt", "hour"), fence=False)
        []
        >>> back = lake.read("events").sort_by("id")
        >>> back["region"].to_pylist(), back["dt"][0].as_py(), back["hour"][0].as_py()
        ([None, '', '__HIVE_DEFAULT_PARTITION__'], '2024-05-01', 13)
    """

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **self.storage_options)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _retrying(self, doing: str, relative: str, call: Callable[[], _T]) -> _T:
        """``call()``, again after 0.2, 0.4, 0.8, 1.6 s while storage fails (see ``_ATTEMPTS``).

        Raises:
            FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError: at once.
            LakeUnavailableError: another ``OSError`` on every attempt.
        """
        delay = _FIRST_DELAY_S
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return call()
            except _PERMANENT:
                raise
            except OSError as error:
                if attempt == _ATTEMPTS:
                    cause = " ".join(f"{type(error).__name__}: {error}".split())
                    raise LakeUnavailableError(
                        f"lake {self.uri}: {doing} {relative} failed {_ATTEMPTS} times, last with"
                        f" {cause}. Operator action: check that the storage is reachable and"
                        " has room; the operation is safe to retry."
                    ) from error
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _write_atomically(self, relative: str, write: Callable[[Any], object]) -> str:
        """Call ``write(handle)`` and make the result ``relative`` at once: on an object store
        one PUT (atomic there: no rename, which S3 does as a copy and a delete), locally a hidden
        temporary file renamed.

        Readers (pyarrow datasets skip names starting with ``.``) never see a half-written file,
        and writing the same content to the same name again replaces the file. Retried as a
        whole (a fresh temporary name each time) while storage fails.
        """
        final = self.path(relative)
        folder, name = final.rsplit("/", 1)

        def attempt() -> str:
            if not is_local(self.fs):
                buffer = io.BytesIO()
                write(buffer)
                self.fs.pipe_file(final, buffer.getvalue())
                return final
            self.fs.makedirs(folder, exist_ok=True)
            temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
            try:
                with self.fs.open(temporary, "wb") as handle:
                    write(handle)
                self.fs.mv(temporary, final)
            except BaseException:
                # A leftover would be harmless (hidden) but would pile up over retries.
                with contextlib.suppress(OSError):
                    self.fs.rm(temporary)
                raise
            return final

        return self._retrying("writing", relative, attempt)

    def write_parquet(self, table: pa.Table, relative: str) -> str:
        """Write ``table`` to ``relative`` atomically (see :meth:`_write_atomically`).

        A JSON ``{}`` is read as an empty struct, which Parquet cannot store: such a struct
        (at any depth) is written with one null child, ``_`` (:func:`storable`).
        """
        table = storable(table)
        return self._write_atomically(
            relative, lambda handle: pq.write_table(table, handle, compression="zstd")
        )

    def segments(
        self, table: pa.Table, time_column: str, partition_by: tuple[str, ...] = ()
    ) -> list[tuple[str, dict[str, str], pa.Table]]:
        """``table`` cut into the lake's folders: (folder ``dt=.../hour=.../col=...``, its
        Delta partition values ``dt`` and ``hour``, its rows) per folder, in first-seen order.

        ``dt``/``hour`` are the event time's date and hour (UTC); then a folder per
        ``partition_by`` value (:func:`encode_partition_value`) that only places the rows: the
        values stay in the files, so a Delta reader (which takes ``dt``/``hour`` from the log)
        reads them exact.

        Raises:
            ValueError: a ``partition_by`` name that is not a plain column name, starts with
                ``_`` (readers skip such folders) or is ``dt``/``hour``.
        """
        for column in partition_by:
            if column in _PATH_KEYS or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", column):
                raise ValueError(
                    f"partition_by: expected column names of letters, digits, '_' and '-' not"
                    f" starting with '_' and other than dt/hour, got {column!r}"
                )
        if table.num_rows == 0:
            return []
        # Integer hour buckets: formatting dates once per folder, not once per row.
        bucket_ms = 3_600_000
        millis = pc.cast(table[time_column], pa.int64()).to_numpy(zero_copy_only=False)
        keys = {"__bucket": pa.array(np.floor_divide(millis, bucket_ms))}
        for column in partition_by:
            values = table[column] if column in table.column_names else pa.nulls(table.num_rows)
            keys[column] = _as_text(values)
        groups = pa.table(keys).append_column("__row", pa.array(range(table.num_rows)))
        found = []
        for names, rows in _group_rows(groups, list(keys)):
            start = datetime.fromtimestamp(names.pop("__bucket") * bucket_ms / 1000, timezone.utc)
            parts = [f"dt={start:%Y-%m-%d}", f"hour={start:%H}"]
            parts += [f"{k}={encode_partition_value(v)}" for k, v in names.items()]
            values = {"dt": f"{start:%Y-%m-%d}", "hour": str(start.hour)}
            whole = len(rows) == table.num_rows  # one folder: no copy
            found.append(("/".join(parts), values, table if whole else table.take(rows)))
        return found

    def stage_parquet(
        self,
        table: pa.Table,
        directory: str,
        stem: str,
        partition: str,
        folder: str = "",
        partition_values: Mapping[str, str | None] | None = None,
    ) -> StagedFile:
        """Write ``table`` as a data file of the Delta table at ``directory``, to be committed
        later (see :meth:`stage_file`). Empty structs and null-typed columns are made storable
        first (:func:`deltable`)."""
        table = deltable(table)
        return self.stage_file(
            lambda handle: pq.write_table(table, handle, compression="zstd"),
            table.num_rows,
            table.schema,
            directory,
            stem,
            partition,
            folder,
            partition_values,
        )

    def stage_file(
        self,
        write: Callable[[Any], object],
        rows: int,
        schema: pa.Schema,
        directory: str,
        stem: str,
        partition: str,
        folder: str = "",
        partition_values: Mapping[str, str | None] | None = None,
    ) -> StagedFile:
        """Write a data file of the Delta table at ``directory`` with ``write(handle)``, to be
        committed later (engine.delta): ``{folder}/{stem}-{random}.parquet``, a single PUT
        under a name no one else uses (no temporary file, no rename: an uncommitted file is
        invisible to Delta readers, and a crashed write leaves only such a file, for
        ``vacuum``). ``rows`` and ``schema`` describe what ``write`` writes.
        """
        name = f"{stem}-{uuid.uuid4().hex[:12]}.parquet"
        inner = f"{folder}/{name}" if folder else name
        target = self.path(directory, inner)

        def attempt() -> int:
            # One request on an object store (the lake is a local folder or an object store):
            # no folders to make there (s3fs's makedirs asks whether the bucket exists, and
            # made a missing one: a missing bucket now fails the write), and the size is what
            # was written (no HEAD after the PUT). One PUT below s3fs's 50 MiB block size, so
            # for files of the default target size. The lake writer stages a file per flush
            # per partition: these two requests were two thirds of its traffic.
            if is_local(self.fs):
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(target, "wb") as handle:
                write(handle)
                size = handle.tell()
            return int(size)

        size = self._retrying("writing", f"{directory}/{inner}", attempt)
        return StagedFile(
            directory, inner, size, rows, dict(partition_values or {}), partition, schema
        )

    def stage_partitioned(
        self,
        table: pa.Table,
        time_column: str,
        stem: str,
        partition: str,
        directory: str = EVENTS_DIR,
        partition_by: tuple[str, ...] = (),
    ) -> list[StagedFile]:
        """:meth:`stage_parquet` per folder of ``table`` (:meth:`segments`), on the staging
        threads.

        Raises:
            ValueError: a bad ``partition_by`` name (see :meth:`segments`).
        """

        def stage(segment: tuple[str, dict[str, str], pa.Table]) -> StagedFile:
            folder, values, rows = segment
            return self.stage_parquet(rows, directory, stem, partition, folder, values)

        return on_stage_threads(stage, self.segments(table, time_column, partition_by))

    def write_text(self, text: str, relative: str) -> str:
        """Write a small text file atomically (see :meth:`_write_atomically`)."""
        return self._write_atomically(relative, lambda handle: handle.write(text.encode()))

    def read_text(self, relative: str) -> str | None:
        """A small text file's content, or None when it does not exist."""

        def attempt() -> str | None:
            try:
                with self.fs.open(self.path(relative), "rb") as handle:
                    return bytes(handle.read()).decode()
            except FileNotFoundError:
                return None

        return self._retrying("reading", relative, attempt)

    def files(self, directory: str) -> list[str]:
        """Every file below ``directory`` (full paths; empty when it does not exist)."""
        path = self.path(directory)
        return self._retrying(
            "listing",
            directory,
            lambda: sorted(self.fs.find(path)) if self.fs.exists(path) else [],
        )

    def read(self, directory: str) -> pa.Table:
        """Read a lake directory back as one table, every column as the files hold it.

        Columns come from the files, the ``dt``/``hour`` columns from the folder names, when
        there are such folders. Files written at different times may differ in schema: columns
        added later, in another order, or widened (``int64`` then ``double``) are read as one
        table whose schema unifies them (``promote_options="permissive"``); a column a file
        lacks reads as null there.

        Raises:
            pyarrow.ArrowTypeError: two files hold one column with types that do not unify.
            LakeUnavailableError: storage kept failing (see :meth:`_retrying`).
        """
        return self._retrying("reading", directory, lambda: self._read(directory))

    def _read(self, directory: str) -> pa.Table:
        import pyarrow.dataset as ds

        path = self.path(directory)
        if not self.fs.exists(path):
            return pa.table({})
        if self.fs.exists(f"{path}/_delta_log"):
            # A Delta table: its committed files only, typed as the table says.
            from deltalake import DeltaTable

            from engine.delta import delta_storage_options

            options = delta_storage_options(self.uri, self.storage_options) or None
            found = DeltaTable(f"{self.uri}/{directory}", storage_options=options)
            return found.to_pyarrow_dataset().to_table()
        # The partitioning names only the keys the lake writes. Measured (pyarrow 26): with
        # partitioning="hive" every `k=v` folder becomes a partition expression that wins over
        # the file's own column (`region=%2D` read "-" where the file holds ""); with an
        # explicit hive schema the other `k=v` folders are not parsed at all, so partition_by
        # columns come only from the files.
        found = ds.dataset(path, filesystem=self.fs, format="parquet")
        fragments = list(found.get_fragments())
        if not fragments:
            return found.to_table()
        files = [fragment.path for fragment in fragments]
        folders = {
            part.split("=", 1)[0]
            for file in files
            for part in file.removeprefix(f"{path}/").split("/")[:-1]
        }
        keys = pa.schema([(k, t) for k, t in _PATH_KEYS.items() if k in folders])
        # Each file's footer, not just the first file's: a column added or widened later exists
        # only in the newer files.
        physical = pa.unify_schemas(
            [fragment.physical_schema for fragment in fragments], promote_options="permissive"
        )
        return ds.dataset(
            files,  # as listed above: no second listing
            filesystem=self.fs,
            format="parquet",
            partitioning=ds.partitioning(keys, flavor="hive") if len(keys) else None,
            partition_base_dir=path,
            schema=pa.unify_schemas([physical, keys]),
        ).to_table()


def _as_text(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Partition values as text: scalars cast; objects and lists (a column a client first sent
    as an object) as their JSON, so a value never stops the writer."""
    try:
        return pc.cast(values, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.array(
            [None if v is None else json.dumps(v, default=str) for v in values.to_pylist()],
            pa.string(),
        )


def _group_rows(groups: pa.Table, keys: list[str]) -> Iterator[tuple[dict[str, Any], pa.Array]]:
    """(partition values, row indices) for each distinct partition, in first-seen order."""
    lists = groups.group_by(keys, use_threads=False).aggregate([("__row", "list")])
    for i in range(lists.num_rows):  # one iteration per partition, not per event
        names = {k: lists[k][i].as_py() for k in keys}
        yield names, lists["__row_list"][i].values


def deltable(table: pa.Table) -> pa.Table:
    """``table`` as a Delta table can hold it: a column of type null (every value so far was
    null: its type is not known yet) is left out (a reader sees it as null until a file holds
    it with a type); a null type inside a list or struct becomes ``string``; an empty struct
    (a JSON ``{}``) gets one ``string`` child ``_``, always null.

    Example:
        >>> t = pa.table({"a": pa.array([{}, None], pa.struct([])), "z": [None, None], "n": [1, 2]})
        >>> d = deltable(t)
        >>> d.column_names, d.schema.field("a").type, d.column("a").to_pylist()
        (['a', 'n'], StructType(struct<_: string>), [{'_': None}, None])
    """
    keep = [field.name for field in table.schema if field.type != pa.null()]
    if len(keep) < table.num_columns:
        table = table.select(keep)
    targets = [_nulls_as_text(kind) for kind in table.schema.types]
    if targets == table.schema.types:
        return table
    table = storable(table)  # empty structs get a null child, then every null type a string
    columns = []
    for column in table.columns:
        target = _nulls_as_text(column.type)
        columns.append(column.cast(target) if target != column.type else column)
    return pa.table(columns, names=table.column_names)


def _map_type(kind: pa.DataType, leaf: Callable[[pa.DataType], pa.DataType]) -> pa.DataType:
    """``kind`` with ``leaf`` applied to each type inside it that is neither a list nor a
    struct with fields (an empty struct is a leaf), at any depth."""
    if pa.types.is_struct(kind) and kind.num_fields:
        return pa.struct([f.with_type(_map_type(f.type, leaf)) for f in kind])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_map_type(kind.value_type, leaf)))
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(_map_type(kind.value_type, leaf)))
    return leaf(kind)


def _nulls_as_text(kind: pa.DataType) -> pa.DataType:
    def leaf(kind: pa.DataType) -> pa.DataType:
        if kind == pa.null():
            return pa.string()
        if pa.types.is_struct(kind):  # empty
            return pa.struct([pa.field("_", pa.string())])
        return kind

    return _map_type(kind, leaf)


def numbers_as_double(table: pa.Table, keep: Iterable[str] = ()) -> pa.Table:
    """``table`` with every integer (at any depth) of the columns not in ``keep`` as double.

    The lake's rule for payload numbers the policy did not declare: JSON has one number type,
    a client sends ``5`` before ``4.99``, and a Delta column cannot widen from long to double
    once it exists; so such a column is double from its first file.

    Example:
        >>> t = pa.table({"amount": [5], "level": [3], "tags": [[1, 2]]})
        >>> numbers_as_double(t, keep=["level"]).schema.types
        [DataType(double), DataType(int64), ListType(list<item: double>)]
    """
    kept = set(keep)
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        target = column.type if name in kept else _ints_as_double(column.type)
        columns.append(column if target == column.type else column.cast(target))
    return pa.table(columns, names=table.column_names)


def _ints_as_double(kind: pa.DataType) -> pa.DataType:
    return _map_type(kind, lambda k: pa.float64() if pa.types.is_integer(k) else k)


def storable(table: pa.Table) -> pa.Table:
    """``table`` with every empty struct (a JSON ``{}``, at any depth) given one null child
    ``_``, so Parquet can store it (it refuses a struct without fields); other columns as is.

    Example:
        >>> t = pa.table({"a": pa.array([{}, None], pa.struct([])), "n": [1, 2]})
        >>> storable(t).column("a").to_pylist(), storable(t).column("n").to_pylist()
        ([{'_': None}, None], [1, 2])
    """
    if not any(_has_empty_struct(field.type) for field in table.schema):
        return table
    columns = [
        pa.chunked_array([_fill(chunk) for chunk in column.chunks], _filled(column.type))
        if _has_empty_struct(column.type)
        else column
        for column in table.columns
    ]
    return pa.table(columns, names=table.column_names)


def _has_empty_struct(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        return kind.num_fields == 0 or any(_has_empty_struct(f.type) for f in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _has_empty_struct(kind.value_type)
    return False


def _filled(kind: pa.DataType) -> pa.DataType:
    empty = pa.struct([pa.field("_", pa.null())])
    return _map_type(kind, lambda k: empty if pa.types.is_struct(k) else k)


def _fill(array: pa.Array) -> pa.Array:
    kind = array.type
    if not _has_empty_struct(kind):
        return array
    mask = array.is_null() if array.null_count else None
    if pa.types.is_struct(kind):
        if kind.num_fields == 0:
            return pa.StructArray.from_arrays([pa.nulls(len(array))], names=["_"], mask=mask)
        children = [_fill(array.field(i)) for i in range(kind.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(_filled(kind)), mask=mask)
    # A list: its values filled, the same offsets (of this slice) and nulls.
    builder = pa.ListArray if pa.types.is_list(kind) else pa.LargeListArray
    offsets = array.offsets
    first = offsets[0].as_py()
    values = _fill(array.values.slice(first, offsets[-1].as_py() - first))
    rebased = pc.subtract(offsets, pa.scalar(first, offsets.type))
    return builder.from_arrays(rebased, values, type=_filled(kind), mask=mask)
