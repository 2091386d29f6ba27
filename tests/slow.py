"""A deliberately slow warm processor for the backpressure test (imported by Ray workers).

It records when each micro-batch ran in files under ``options["trace_dir"]``, so the test
measures real concurrency from the outside instead of trusting the engine's own counters.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.processors import HotProcessor, MinuteKpis
from routers import EventSchema


class SlowKpis(MinuteKpis):
    def __init__(self, schema: EventSchema, **options: Any) -> None:
        super().__init__(schema)
        self.trace_dir = Path(options["trace_dir"])
        self.seconds = float(options.get("seconds", 0.3))

    def process(self, batch: pa.RecordBatch) -> pa.Table:
        start = time.time()
        time.sleep(self.seconds)
        out = super().process(batch)
        (self.trace_dir / uuid.uuid4().hex).write_text(f"{start} {time.time()} {batch.num_rows}")
        return out


class CountsPerKey(HotProcessor):
    """A hot processor with a dict-based state, as users write them: an actor that got no keys
    returns columns of type null (a review found the end-of-run state join failing on them)."""

    def __init__(self, schema: EventSchema, **options: Any) -> None:
        super().__init__(schema, **options)
        self.counts: dict[str, int] = {}

    def process(self, batch: pa.RecordBatch) -> None:
        for key in batch.column(self.schema.key).to_pylist():  # a test helper, not a stream path
            self.counts[key] = self.counts.get(key, 0) + 1

    def state(self) -> pa.Table:
        return pa.table({"player_id": list(self.counts), "events": list(self.counts.values())})
