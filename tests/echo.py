"""A warm processor for tests (imported by Ray workers): its output is its micro-batch's event ids,
so a test sees exactly which rows each warm output file holds."""

from __future__ import annotations

import pyarrow as pa

from engine.processors import WarmProcessor


class EventIds(WarmProcessor):
    def process(self, batch: pa.RecordBatch) -> pa.Table:
        return pa.table({"event_id": batch.column("event_id")})
