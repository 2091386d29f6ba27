"""The router: classify every row of a batch as hot, warm or cold, and split the batch.

Pure and vectorized: the policy is compiled to one Arrow expression (a ``case_when`` over the
rules' conditions, first match wins), evaluated by Arrow's engine in one pass. Age rules measure
each event's time against its arrival time (the schema's ``arrival`` column, set by the source),
so a replay routes every event as the first run did; rows without one use ``now``, an argument.
The same batch and ``now`` always give the same answer. No Ray here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc

from routers.conditions import AGE_COLUMN
from routers.decode import decode_ndjson
from routers.errors import RouterError
from routers.policy import Policy
from routers.schema import TEMPERATURES

__all__ = ["DEFAULT_RULE", "Router"]

#: Name under which rows that no rule matched are counted.
DEFAULT_RULE = "default"
_TEMPERATURE_DICT = pa.array(TEMPERATURES, pa.string())


class Router:
    """Routes event batches by a :class:`~routers.policy.Policy`.

    Not thread-safe (it keeps counters); use one router per thread.

    Args:
        policy: the compiled routing policy.

    Example:
        >>> import pyarrow as pa
        >>> from datetime import datetime, timezone
        >>> router = Router.from_yaml('''
        ... default: warm
        ... rules:
        ...   - {name: monetization, route: hot, when: {field: event_type, in: [purchase]}}
        ...   - {name: stale, route: cold, when: {age: {gt: 1h}}}
        ... ''')
        >>> now = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> batch = pa.record_batch({
        ...     "event_type": ["purchase", "login", "login"],
        ...     "event_time": pa.array([now, now, datetime(2025, 1, 1, tzinfo=timezone.utc)],
        ...                            pa.timestamp("ms", "UTC")),
        ... })
        >>> router.classify(batch, now=now).to_pylist()
        ['hot', 'warm', 'cold']
        >>> {t: b.num_rows for t, b in router.split(batch, now=now).items()}
        {'hot': 1, 'warm': 1, 'cold': 1}
        >>> router.counts
        {'monetization': 2, 'stale': 2, 'default': 2}
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.rule_names: tuple[str, ...] = tuple(r.name for r in policy.rules)
        # Temperature code of each rule index; the last entry is the default's.
        codes = [TEMPERATURES.index(r.route) for r in policy.rules]
        self._codes = pa.array([*codes, TEMPERATURES.index(policy.default)], pa.int8())
        self._fields = frozenset().union(*(r.condition.fields() for r in policy.rules))
        self._uses_age = AGE_COLUMN in self._fields
        self._compiled: dict[tuple[frozenset[str], tuple[str, ...]], pc.Expression] = {}
        # Compile for a batch that has every column: this is the expression used in steady state.
        self._expression(frozenset(), {})
        self._totals = np.zeros(len(policy.rules) + 1, dtype=np.int64)
        self._last = np.zeros(len(policy.rules) + 1, dtype=np.int64)
        self._mismatches = np.zeros(len(policy.rules), dtype=np.int64)

    @classmethod
    def from_yaml(cls, source: str | Path) -> Router:
        """A router for the policy in a YAML file or YAML text (see :meth:`Policy.from_yaml`)."""
        return cls(Policy.from_yaml(source))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Router:
        """A router for a policy given as plain data (the parsed YAML)."""
        return cls(Policy.from_dict(data))

    # -- counters ---------------------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """Rows decided by each rule (and ``default``) since this router was made."""
        return dict(zip((*self.rule_names, DEFAULT_RULE), self._totals.tolist(), strict=True))

    @property
    def type_mismatches(self) -> dict[str, int]:
        """Rows each rule could not compare because a column had another kind than its literal
        (the comparison did not match them, as with a null); only rules with any are listed."""
        return {
            name: int(n) for name, n in zip(self.rule_names, self._mismatches, strict=True) if n
        }

    @property
    def last_counts(self) -> dict[str, int]:
        """Rows decided by each rule (and ``default``) in the last ``classify``/``split`` call."""
        return dict(zip((*self.rule_names, DEFAULT_RULE), self._last.tolist(), strict=True))

    # -- routing ----------------------------------------------------------------------------

    def rule_index(self, batch: pa.RecordBatch, now: datetime | None = None) -> pa.Array:
        """Index of the deciding rule for each row (``len(rules)`` for the default), int16.

        Counters are updated here; :meth:`classify` and :meth:`split` call it once.
        """
        prepared, missing = self._prepare(batch, now)
        types = {f.name: f.type for f in batch.schema if f.name in self._fields}
        expression = self._expression(missing, types)
        for i, rule in enumerate(self.policy.rules):
            if types and rule.condition.mismatched(types):
                self._mismatches[i] += batch.num_rows
        try:
            result = (
                acero.Declaration.from_sequence(
                    [
                        acero.Declaration("table_source", acero.TableSourceNodeOptions(prepared)),
                        acero.Declaration("project", acero.ProjectNodeOptions([expression])),
                    ]
                )
                # One thread keeps the output in input order; Arrow's kernels are the cost here.
                .to_table(use_threads=False)
                .column(0)
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            types = {f.name: str(f.type) for f in batch.schema}
            raise RouterError(
                f"cannot evaluate the policy on this batch ({exc}). Operator action: check that "
                f"the rules' literals match the column types {types}"
            ) from exc
        index = result.combine_chunks() if isinstance(result, pa.ChunkedArray) else result
        if len(index) != batch.num_rows:  # e.g. an all-constant expression on an empty input
            index = pa.nulls(batch.num_rows, pa.int16()).fill_null(len(self.rule_names))
        self._last = np.bincount(
            index.to_numpy(zero_copy_only=False), minlength=len(self.rule_names) + 1
        ).astype(np.int64)
        self._totals += self._last
        return index

    def classify(self, batch: pa.RecordBatch, now: datetime | None = None) -> pa.DictionaryArray:
        """The temperature of every row: ``"hot"``, ``"warm"`` or ``"cold"`` (dictionary-encoded).

        Args:
            batch: events; the columns the rules name (and the time role, for age rules).
            now: timezone-aware current time for age rules; default: the wall clock.

        Raises:
            RouterError: a rule's literal cannot be compared with the batch's column type.
        """
        codes = pc.take(self._codes, self.rule_index(batch, now))
        return pa.DictionaryArray.from_arrays(codes, _TEMPERATURE_DICT)

    def split(
        self, batch: pa.RecordBatch, now: datetime | None = None
    ) -> dict[str, pa.RecordBatch]:
        """Split a batch by temperature; every row lands in exactly one part, order kept.

        Returns:
            ``{"hot": ..., "warm": ..., "cold": ...}``, each with the input's schema.
        """
        codes = pc.take(self._codes, self.rule_index(batch, now))
        counts = np.bincount(codes.to_numpy(zero_copy_only=False), minlength=3)
        parts: dict[str, pa.RecordBatch] = {}
        for code, temperature in enumerate(TEMPERATURES):
            if counts[code] == batch.num_rows:
                parts[temperature] = batch
            elif counts[code] == 0:
                parts[temperature] = batch.slice(0, 0)
            else:
                parts[temperature] = batch.filter(pc.equal(codes, code))
        return parts

    def decode(self, data: bytes) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """Decode newline-delimited JSON with this policy's schema: ``(good, dead_letters)``.

        See :func:`routers.decode.decode_ndjson`; dead letters have ``raw`` and ``reason``.
        """
        decoded = decode_ndjson(data, self.policy.schema)
        return decoded.good, decoded.dead

    # -- internals --------------------------------------------------------------------------

    def _expression(self, missing: frozenset[str], types: dict[str, pa.DataType]) -> pc.Expression:
        key = (missing, tuple(f"{name}:{kind}" for name, kind in sorted(types.items())))
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        conditions: list[pc.Expression] = []
        values: list[pa.Scalar] = []
        for i, rule in enumerate(self.policy.rules):
            condition = rule.condition.to_expression(missing, types)
            if condition is False:
                continue  # can never match this batch
            conditions.append(pc.scalar(True) if condition is True else condition)
            values.append(pa.scalar(i, pa.int16()))
            if condition is True:
                break  # later rules are unreachable
        default = pa.scalar(len(self.policy.rules), pa.int16())
        if conditions:
            names = [str(i) for i in range(len(conditions))]
            compiled = pc.case_when(
                pc.make_struct(*conditions, field_names=names), *values, default
            )
        else:
            compiled = pc.scalar(default)
        self._compiled[key] = compiled
        return compiled

    def _prepare(
        self, batch: pa.RecordBatch, now: datetime | None
    ) -> tuple[pa.Table, frozenset[str]]:
        names = set(batch.schema.names)
        table = pa.Table.from_batches([batch])
        time_column = self.policy.schema.time
        if self._uses_age and time_column in names:
            arrival_column = self.policy.schema.arrival
            arrival = batch.column(arrival_column) if arrival_column in names else None
            table = table.append_column(
                AGE_COLUMN, _age_ms(batch.column(time_column), now, arrival)
            )
            names.add(AGE_COLUMN)
        return table, frozenset(self._fields - names)


def _epoch_ms(times: pa.Array) -> pa.Array:
    if pa.types.is_timestamp(times.type):
        return pc.cast(pc.cast(times, pa.timestamp("ms", times.type.tz), safe=False), pa.int64())
    if pa.types.is_integer(times.type):
        return pc.cast(times, pa.int64())
    raise RouterError(
        f"the time column has type {times.type}; age rules need a timestamp or epoch "
        f"milliseconds. Operator action: decode with Router.decode or cast the column"
    )


def _age_ms(times: pa.Array, now: datetime | None, arrival: pa.Array | None = None) -> pa.Array:
    """``arrival - time`` in milliseconds (int64; null where the time is null).

    ``arrival`` per row where given and not null, else ``now`` (default: the wall clock).
    """
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        raise ValueError(
            f"now must be timezone-aware, got {now!r}; e.g. datetime.now(timezone.utc)"
        )
    reference = pa.scalar(int(now.timestamp() * 1000), pa.int64())
    if arrival is not None and arrival.null_count < len(arrival):
        reference = pc.coalesce(_epoch_ms(arrival), reference)
    return pc.subtract(reference, _epoch_ms(times))
