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

from engine.processors import MinuteKpis
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
