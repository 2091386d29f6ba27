"""A Parquet data file written as its rows come: row groups encoded in memory, stored at close.

The lake writer keeps one open file per lake folder (``dt=/hour=/``...) of each source partition
(:mod:`engine.cold`). Rows wait as Arrow until a row group's worth has come, then are encoded
(zstd) into the file's in-memory buffer, so the encoding runs while the stream goes on rather
than all at once when the file is staged (a bounded run's last flush was its tail), the writer
holds compressed bytes instead of ~8x as many Arrow bytes, and the file's size is known, not
estimated. This is Flink's and Kafka Connect's rolling part file, kept in memory so that storing
it stays one PUT of a finished file (an object store has no append, and no reader may see a
half-written file).

Example:
    >>> import pyarrow.parquet as pq
    >>> part = RollingFile(pa.schema([("id", pa.string()), ("amount", pa.float64())]), 1 << 20)
    >>> part.fits(pa.schema([("id", pa.string())]))  # a column the rows lack: written as null
    True
    >>> part.fits(pa.schema([("id", pa.int64())]))  # another type: the caller rolls a new file
    False
    >>> part.add(pa.table({"id": ["a", "b"], "amount": [4.99, None]}))
    >>> part.add(pa.table({"id": ["c"]}))
    >>> pq.read_table(pa.BufferReader(part.close())).to_pylist()[-1]
    {'id': 'c', 'amount': None}
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ROW_GROUP_ROWS", "RollingFile"]

#: Rows per row group at most: DuckDB's own row-group size. Larger groups compress a little
#: better but are encoded later (and held longer as Arrow).
ROW_GROUP_ROWS: Final[int] = 122_880


class RollingFile:
    """An in-memory Parquet file (zstd) that takes rows until it is closed.

    Args:
        schema: the file's columns; rows added later may lack some (they are written as nulls)
            but no other column or type (see :meth:`fits`).
        group_bytes: Arrow bytes that make a row group at most (with :data:`ROW_GROUP_ROWS`):
            a fraction of the target file size, so a file of the target holds several groups
            and overshoots it by less than one.
    """

    def __init__(self, schema: pa.Schema, group_bytes: int) -> None:
        self.schema = schema
        self.group_bytes = group_bytes
        self._sink = pa.BufferOutputStream()
        self._writer = pq.ParquetWriter(self._sink, schema, compression="zstd")
        self._waiting: list[pa.Table] = []
        self._waiting_rows = 0
        self._waiting_bytes = 0
        #: Rows added so far (encoded or waiting).
        self.rows = 0

    def fits(self, schema: pa.Schema) -> bool:
        """Whether rows of ``schema`` can go into this file: each of their columns is one of
        the file's, with the same type."""
        return all(
            self.schema.get_field_index(f.name) >= 0 and self.schema.field(f.name).type == f.type
            for f in schema
        )

    def add(self, table: pa.Table) -> None:
        """Take ``table``'s rows (``fits(table.schema)`` must hold); encode a row group when
        enough wait."""
        if not table.schema.equals(self.schema):
            n = table.num_rows
            table = pa.Table.from_arrays(
                [table[f.name] if f.name in table.column_names else pa.nulls(n, f.type)
                 for f in self.schema],
                schema=self.schema,
            )  # fmt: skip
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
        self._writer.close()
        return self._sink.getvalue()

    def _encode(self) -> None:
        if not self._waiting:
            return
        rows = pa.concat_tables(self._waiting) if len(self._waiting) > 1 else self._waiting[0]
        self._writer.write_table(rows, row_group_size=ROW_GROUP_ROWS)
        self._waiting, self._waiting_rows, self._waiting_bytes = [], 0, 0
