"""Events from files: newline-delimited JSON or Parquet, one file or a folder of them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from engine.sources.base import Source, SourceBlock

__all__ = ["FileSource"]

_SUFFIXES = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".parquet": "parquet"}


class FileSource(Source):
    """Read a file, or every .ndjson, .jsonl, .json or .parquet file under a folder, recursively
    and in path order: Hive-partitioned folders (``dt=2026-11-27/hour=10/``) included, hidden
    (``.x``) and underscore (``_x``) files and folders skipped, as Arrow's datasets skip them.

    Each file is one partition, named after its path under the folder and its version (see
    :meth:`partitions`); offsets are line numbers (NDJSON) or row numbers (Parquet), so
    re-reading a file gives the same positions.

    Args:
        path: a file or a folder.
        format: ``auto`` (by extension), ``ndjson`` or ``parquet``.
        block_rows: rows (Parquet) or lines (NDJSON) per block.
    """

    name = "file"

    def __init__(self, path: str | Path, format: str = "auto", block_rows: int = 20_000) -> None:
        self.path = Path(path)
        self.format = format
        self.block_rows = block_rows
        self._files: list[Path] | None = None
        self._partitions: dict[Path, str] | None = None
        #: Partitions not to read (files an earlier run read whole into the lake).
        self.skip: set[str] = set()
        #: Partitions read to their end by :meth:`blocks` (not cut short by a stop).
        self.finished: list[str] = []
        if not self.path.exists():
            raise FileNotFoundError(f"source.path: {self.path} does not exist")

    def files(self) -> list[Path]:
        """The files this source reads, in order (the folder is listed once per source)."""
        if self._files is None:
            self._files = self._list()
        return self._files

    def _list(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(
            p
            for p in self.path.rglob("*")
            if p.suffix in _SUFFIXES
            and p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(self.path).parts)
        )

    def partitions(self) -> dict[Path, str]:
        """Each file's partition name (it names lake files and checkpoints): its path under the
        folder (its name, for a single file), ``@``, and a digest of its size and modification
        time. A file is known by its own path and content alone, so more files around do not
        rename it, and a new file dropped under an old name is new data, not a rerun of the old
        one (the same length used to give the same lake file names, and replace them).

        Named once per source (the versions as the run found them)."""
        if self._partitions is not None:
            return self._partitions
        names: dict[Path, str] = {}
        for file in self.files():
            relative = file.name if self.path.is_file() else file.relative_to(self.path).as_posix()
            stat = file.stat()
            version = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
            names[file] = f"{relative}@{version[:10]}"
        self._partitions = names
        return names

    @property
    def replay_id(self) -> str:
        """Always the same: a partition's name already says which file version it is."""
        return "files"

    def blocks(self) -> Iterator[SourceBlock | None]:
        for file, partition in self.partitions().items():
            if partition in self.skip:
                continue
            kind = self.format if self.format != "auto" else _SUFFIXES.get(file.suffix, "ndjson")
            read = self._parquet if kind == "parquet" else self._ndjson
            for block in read(file, partition):
                if self.stopping:
                    return
                yield block
            self.finished.append(partition)

    def _parquet(self, file: Path, partition: str) -> Iterator[SourceBlock]:
        offset = 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=self.block_rows):
            yield SourceBlock(partition, offset, offset + batch.num_rows - 1, batch=batch)
            offset += batch.num_rows

    def _ndjson(self, file: Path, partition: str) -> Iterator[SourceBlock]:
        offset = 0
        with file.open("rb") as handle:
            while True:
                lines = handle.readlines(self.block_rows * 256)  # ~block_rows lines of ~256 bytes
                if not lines:
                    return
                data = b"".join(lines)
                yield SourceBlock(partition, offset, offset + len(lines) - 1, data=data)
                offset += len(lines)
