"""The lake: layout, safe partition paths and idempotent Parquet writes through fsspec.

Layout under ``lake_uri`` (a local folder by default; any fsspec URL, e.g. ``s3://bucket/prefix``):

- ``events/dt=YYYY-MM-DD/hour=HH/[col=value/...]{source}-{partition}-{first}-{last}.parquet``:
  cold events; ``first``/``last`` are the source offsets the file covers (zero-padded), so the
  same source range always gets the same name and a retry overwrites instead of duplicating;
- ``warm/{output_name}/``: warm path outputs;
- ``hot/alerts/``: alerts emitted by the hot processor;
- ``_dead_letter/dt=YYYY-MM-DD/``: rows that could not be decoded, with raw bytes and reason.

Partition values never come raw from events: ``dt``/``hour`` are formatted from the event time,
and any other partition value is percent-encoded (``/``, ``\\``, ``%``, ``..`` and control
characters), so an event field like ``../../etc`` stays one directory level inside the lake.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import quote

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "DEAD_LETTER_DIR",
    "EVENTS_DIR",
    "Lake",
    "encode_partition_value",
    "file_stem",
]

EVENTS_DIR: Final[str] = "events"
DEAD_LETTER_DIR: Final[str] = "_dead_letter"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


def encode_partition_value(value: object) -> str:
    """A partition value that is one safe path segment (Hive-style percent-encoding).

    Example:
        >>> encode_partition_value("../../etc")
        '%2E%2E%2F%2E%2E%2Fetc'
        >>> encode_partition_value("eu-1")
        'eu-1'
    """
    if value is None:
        return "__HIVE_DEFAULT_PARTITION__"
    text = quote(str(value), safe="-_ ").replace(".", "%2E")
    return text or "%00"


def file_stem(source: str, partition: str, first: int, last: int) -> str:
    """File name (without extension) for rows of one source range.

    Example:
        >>> file_stem("kafka", "games-3", 100, 199)
        'kafka-games-3-00000000000000000100-00000000000000000199'
    """
    safe = [_SAFE_NAME.sub("_", part) for part in (source, partition)]
    return f"{safe[0]}-{safe[1]}-{first:020d}-{last:020d}"


class Lake:
    """A lake at ``uri``, written through fsspec.

    Args:
        uri: folder path or fsspec URL.
        storage_options: passed to fsspec (e.g. S3 endpoint and credentials).
    """

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **dict(storage_options or {}))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _write_atomically(self, relative: str, write: Callable[[Any], object]) -> str:
        """Call ``write(handle)`` on a hidden temporary file, then rename it to ``relative``.

        Readers (pyarrow datasets skip names starting with ``.``) never see a half-written file,
        and writing the same content to the same name again replaces the file.
        """
        final = self.path(relative)
        folder, name = final.rsplit("/", 1)
        self.fs.makedirs(folder, exist_ok=True)
        temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(temporary, "wb") as handle:
            write(handle)
        self.fs.mv(temporary, final)
        return final

    def write_parquet(self, table: pa.Table, relative: str) -> str:
        """Write ``table`` to ``relative`` atomically (see :meth:`_write_atomically`)."""
        return self._write_atomically(
            relative, lambda handle: pq.write_table(table, handle, compression="zstd")
        )

    def write_partitioned(
        self,
        table: pa.Table,
        time_column: str,
        stem: str,
        directory: str = EVENTS_DIR,
        partition_by: tuple[str, ...] = (),
        hourly: bool = True,
    ) -> list[str]:
        """Write ``table`` Hive-partitioned by event date (and hour, and ``partition_by``).

        Returns:
            The paths written, one per partition present in ``table``.
        """
        if table.num_rows == 0:
            return []
        # Integer hour (or day) buckets: formatting dates once per partition, not once per row.
        bucket_ms = 3_600_000 if hourly else 86_400_000
        millis = pc.cast(table[time_column], pa.int64()).to_numpy(zero_copy_only=False)
        keys = {"__bucket": pa.array(np.floor_divide(millis, bucket_ms))}
        for column in partition_by:
            values = table[column] if column in table.column_names else pa.nulls(table.num_rows)
            keys[column] = pc.cast(values, pa.string())
        groups = pa.table(keys).append_column("__row", pa.array(range(table.num_rows)))
        written = []
        for names, rows in _group_rows(groups, list(keys)):
            start = datetime.fromtimestamp(names.pop("__bucket") * bucket_ms / 1000, timezone.utc)
            parts = [f"dt={start:%Y-%m-%d}"] + ([f"hour={start:%H}"] if hourly else [])
            parts += [f"{k}={encode_partition_value(v)}" for k, v in names.items()]
            segment = "/".join(parts)
            written.append(
                self.write_parquet(table.take(rows), f"{directory}/{segment}/{stem}.parquet")
            )
        return written

    def write_text(self, text: str, relative: str) -> str:
        """Write a small text file atomically (see :meth:`_write_atomically`)."""
        return self._write_atomically(relative, lambda handle: handle.write(text.encode()))

    def read_text(self, relative: str) -> str | None:
        """A small text file's content, or None when it does not exist."""
        try:
            with self.fs.open(self.path(relative), "rb") as handle:
                return bytes(handle.read()).decode()
        except FileNotFoundError:
            return None

    def files(self, directory: str) -> list[str]:
        """Every file below ``directory`` (full paths; empty when it does not exist)."""
        path = self.path(directory)
        return sorted(self.fs.find(path)) if self.fs.exists(path) else []

    def read(self, directory: str) -> pa.Table:
        """Read a lake directory back as one table (Hive partition columns included)."""
        import pyarrow.dataset as ds

        path = self.path(directory)
        if not self.fs.exists(path):
            return pa.table({})
        return ds.dataset(
            path, filesystem=self.fs, format="parquet", partitioning="hive"
        ).to_table()


def _group_rows(groups: pa.Table, keys: list[str]) -> Iterator[tuple[dict[str, Any], pa.Array]]:
    """(partition values, row indices) for each distinct partition, in first-seen order."""
    lists = groups.group_by(keys, use_threads=False).aggregate([("__row", "list")])
    for i in range(lists.num_rows):  # one iteration per partition, not per event
        names = {k: lists[k][i].as_py() for k in keys}
        yield names, lists["__row_list"][i].values
