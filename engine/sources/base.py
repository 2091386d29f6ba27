"""The source interface: blocks of events with their position in the source."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

__all__ = ["Source", "SourceBlock"]


@dataclass(frozen=True)
class SourceBlock:
    """A contiguous range of one source partition.

    Exactly one of ``data`` (newline-delimited JSON, decoded by the pipeline) and ``batch``
    (already columnar, e.g. Parquet) is set. Offsets are the source's own positions (Kafka
    offsets, line or row numbers), inclusive; they name lake files, so a re-read of the same range
    yields the same names.
    """

    partition: str
    first_offset: int
    last_offset: int
    data: bytes | None = None
    batch: pa.RecordBatch | None = None

    @property
    def events(self) -> int:
        return self.last_offset - self.first_offset + 1


class Source(ABC):
    """Produces :class:`SourceBlock` s; called from the driver process only.

    Contract: ``blocks()`` yields each partition's blocks in offset order with no gaps; it may
    block while waiting for data and ends when the source is exhausted (bounded sources) or when
    :meth:`close` is called.
    """

    #: Short name used in lake file names and metrics (letters, digits, '-', '_').
    name: str = "source"

    @abstractmethod
    def blocks(self) -> Iterator[SourceBlock]:
        """Yield blocks in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default does nothing."""
