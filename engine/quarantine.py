"""Poison pills: a processor that raises on a batch never stops the pipeline.

A processor (built-in or user-written) that raises on a batch is called again on its halves,
recursively, until the rows it cannot take are found; those rows become dead letters with the
reason ``processor_error:<path>:<ExceptionType>: <message>`` and every other row is processed.
A batch with one bad row costs about ``2 * log2(rows)`` extra calls; a processor that fails on
every row costs one call per row, so that case is cut short after :data:`MAX_CALLS`: the rest of
the batch is dead-lettered with the same reason.

Retrying halves is exact only if a processor changes no state when it raises (validate, then
apply): the contract written on :class:`engine.processors.HotProcessor`.

Only ``Exception`` is caught: ``KeyboardInterrupt``, ``SystemExit`` and ``MemoryError`` are not
the data's fault, and infrastructure errors a processor meets (``OSError``: disk full, S3 down)
are raised for the engine to retry and, failing that, to stop the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import pyarrow as pa

from routers import row_json

__all__ = ["DEAD_COLUMNS", "MAX_CALLS", "dead_letters", "isolate"]

T = TypeVar("T")

#: Calls one batch may cost before the rest of it is given up as dead letters.
MAX_CALLS: Final[int] = 512
#: Columns of the dead letters made here (as the lake's ``_dead_letter`` files).
DEAD_COLUMNS: Final[pa.Schema] = pa.schema(
    [("raw", pa.binary()), ("reason", pa.string()), ("line", pa.int64())]
)
#: Longest exception message kept in a reason.
_MESSAGE_CHARS: Final[int] = 200


def isolate(
    process: Callable[[pa.RecordBatch], T], batch: pa.RecordBatch, path: str
) -> tuple[list[T], pa.Table | None]:
    """Run ``process`` over ``batch``, isolating the rows it raises on.

    Args:
        process: the processor's ``process``.
        batch: the rows.
        path: ``hot`` or ``warm``, for the reason.

    Returns:
        (the results of every successful call, in row order; the dead letters, or None).

    Example:
        >>> def strict(b):
        ...     if "max" in b.column("level").to_pylist():
        ...         raise ValueError("level is not a number")
        ...     return b.num_rows
        >>> batch = pa.record_batch({"level": ["1", "2", "max", "4"]})
        >>> results, dead = isolate(strict, batch, "hot")
        >>> sum(results), dead.column("reason").to_pylist()
        (3, ['processor_error:hot:ValueError: level is not a number'])
    """
    results: list[T] = []
    bad: list[tuple[pa.RecordBatch, str]] = []
    calls = 0
    last_failure = "processor_error"

    def run(part: pa.RecordBatch) -> None:
        nonlocal calls, last_failure
        calls += 1
        if calls > MAX_CALLS:  # failing nearly everywhere: give the rest up at once
            bad.append((part, last_failure))
            return
        try:
            results.append(process(part))
            return
        except (OSError, MemoryError):
            raise
        except Exception as exc:
            message = str(exc)[:_MESSAGE_CHARS]
            last_failure = f"processor_error:{path}:{type(exc).__name__}: {message}"
        if part.num_rows <= 1:
            bad.append((part, last_failure))
            return
        half = part.num_rows // 2
        run(part.slice(0, half))
        run(part.slice(half))

    run(batch)
    return results, dead_letters(bad) if bad else None


def dead_letters(parts: list[tuple[pa.RecordBatch, str]]) -> pa.Table:
    """Rows given up, as dead letters: each row as one JSON object, with its reason.

    ``line`` is the row's source offset when the batch carries ``kafka_offset``, else null.
    """
    raws: list[bytes] = []
    reasons: list[str] = []
    lines: list[int | None] = []
    for part, reason in parts:
        rows = part.to_pylist()
        raws += [row_json(r) for r in rows]
        reasons += [reason] * len(rows)
        lines += [r.get("kafka_offset") for r in rows]
    return pa.table(
        [pa.array(raws, pa.binary()), pa.array(reasons, pa.string()), pa.array(lines, pa.int64())],
        schema=DEAD_COLUMNS,
    )
