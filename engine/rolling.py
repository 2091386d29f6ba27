"""A Parquet data file written as its rows come: row groups encoded in memory, stored at close.

The lake writer keeps one open file per lake folder (``dt=/hour=/``...) of each source partition
(:mod:`engine.cold`). Rows wait as Arrow until a row group's worth has come, then are encoded
(zstd) into the file's in-memory buffer, so the encoding runs while the stream goes on rather
than all at once when the file is staged (a bounded run's last flush was its tail), the writer
holds compressed bytes instead of ~8x as many Arrow bytes, and the file's size is known, not
estimated. This is Flink's and Kafka Connect's rolling part file, kept in memory so that storing
it stays one PUT of a finished file (an object store has no append, and no reader may see a
half-written file).

Rows come as the stream's contract gives them, and its schema may grow between blocks (a new
column, a wider type, a type for a column that was all null so far). Until a file encodes its
first row group, growth is taken in: the waiting rows are unified, as one flush of them would be.
After it, the file's columns are fixed, and rows whose schema grew do not fit (:meth:`fits`): the
caller ends the file and starts another. What is stored is :func:`engine.lake.deltable` of the
rows (what a Delta table can hold).

Example:
    >>> import pyarrow.parquet as pq
    >>> part = RollingFile(group_bytes=1 << 20)
    >>> part.add(pa.table({"id": ["a"], "tags": pa.array([[]], pa.list_(pa.null()))}))
    >>> part.add(pa.table({"id": ["b"], "tags": [[1.5]]}))  # the list's type came later
    >>> back = pq.read_table(pa.BufferReader(part.close()))
    >>> back.schema.field("tags").type, back["tags"].to_pylist()
    (ListType(list<element: double>), [[], [1.5]])
    >>> part.fits(pa.schema([("id", pa.int64())]))  # after the first row group: fixed
    False
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from engine.lake import deltable
from routers import concat_conformed

__all__ = ["ROW_GROUP_ROWS", "RollingFile"]

#: Rows per row group at most: DuckDB's own row-group size. Larger groups compress a little
#: better but are encoded later (and held longer as Arrow).
ROW_GROUP_ROWS: Final[int] = 122_880


class RollingFile:
    """An in-memory Parquet file (zstd) that takes rows until it is closed (see the module docs).

    Args:
        group_bytes: Arrow bytes that make a row group at most (with :data:`ROW_GROUP_ROWS`):
            a fraction of the target file size, so a file of the target holds several groups
            and overshoots it by less than one.
    """

    def __init__(self, group_bytes: int) -> None:
        self.group_bytes = group_bytes
        #: The rows' schema (as the contract gave them): unified until the first row group,
        #: then fixed.
        self.source_schema: pa.Schema | None = None
        #: The stored schema (``deltable`` of the rows'), set by the first row group.
        self.schema: pa.Schema | None = None
        self._sink = pa.BufferOutputStream()
        self._writer: pq.ParquetWriter | None = None
        self._waiting: list[pa.Table] = []
        self._waiting_rows = 0
        self._waiting_bytes = 0
        #: Rows added so far (encoded or waiting).
        self.rows = 0

    def fits(self, schema: pa.Schema) -> bool:
        """Whether rows of ``schema`` can go into this file: before its first row group, when
        their schema unifies with the waiting rows'; after it, when each of their columns is
        one of the file's, with the same type."""
        if self.source_schema is None:
            return True
        if self._writer is None:
            try:
                pa.unify_schemas([self.source_schema, schema], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return False
            return True
        return all(
            self.source_schema.get_field_index(f.name) >= 0
            and self.source_schema.field(f.name).type == f.type
            for f in schema
        )

    def add(self, table: pa.Table) -> None:
        """Take ``table``'s rows (``fits(table.schema)`` must hold); encode a row group when
        enough wait."""
        known = self.source_schema
        if self._writer is None:
            both = [table.schema] if known is None else [known, table.schema]
            self.source_schema = pa.unify_schemas(both, promote_options="permissive")
        elif known is not None and not table.schema.equals(known):
            table = concat_conformed([known.empty_table(), table])  # the file's column order
        self._waiting.append(table)
        self._waiting_rows += table.num_rows
        self._waiting_bytes += table.nbytes
        self.rows += table.num_rows
        if self._waiting_rows >= ROW_GROUP_ROWS or self._waiting_bytes >= self.group_bytes:
            self._encode()

    @property
    def size(self) -> int:
        """Parquet bytes encoded so far (the file's size, but for its waiting rows and footer)."""
        return int(self._sink.tell())

    @property
    def held_bytes(self) -> int:
        """Memory this file holds: its encoded bytes and the Arrow bytes of its waiting rows."""
        return self.size + self._waiting_bytes

    def close(self) -> pa.Buffer:
        """Encode the waiting rows, finish the file; its bytes."""
        self._encode()
        if self._writer is None:
            raise ValueError("a RollingFile without rows has nothing to store")
        self._writer.close()
        return self._sink.getvalue()

    def _encode(self) -> None:
        if not self._waiting:
            return
        rows = concat_conformed(self._waiting)  # one schema: the file's, or the unified one
        stored = deltable(rows)
        if self._writer is None:
            self.source_schema, self.schema = rows.schema, stored.schema
            self._writer = pq.ParquetWriter(self._sink, stored.schema, compression="zstd")
        self._writer.write_table(stored, row_group_size=ROW_GROUP_ROWS)
        self._waiting, self._waiting_rows, self._waiting_bytes = [], 0, 0
