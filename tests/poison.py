"""User-written processors that raise on some rows (imported by Ray workers in the tests).

Both refuse events whose ``tier`` is ``"poison"``, as user code meeting a value it did not expect
would. The hot one validates before it changes state (the contract the engine relies on).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.processors import MinuteKpis, PlayerFeatures
from routers import EventSchema


def _refuse_poison(batch: pa.RecordBatch) -> None:
    if "tier" in batch.schema.names and pc.any(pc.equal(batch.column("tier"), "poison")).as_py():
        raise ValueError("tier 'poison' is not a tier")


class PickyFeatures(PlayerFeatures):
    def __init__(self, schema: EventSchema, **options: Any) -> None:
        super().__init__(schema, **options)

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        _refuse_poison(batch)  # before any state changes
        return super().process(batch)


class PickyKpis(MinuteKpis):
    def process(self, batch: pa.RecordBatch) -> pa.Table:
        _refuse_poison(batch)
        return super().process(batch)
