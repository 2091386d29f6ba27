"""Processor interfaces: user code that runs on the hot and warm paths.

Processors are registered by name (``@register_hot("name")``); configs name them, and an unknown
name fails with the list of known ones.

Clients drift, so a payload column may arrive with any Arrow type in a batch (int64 in one,
double or string in the next, null, a struct, or missing). :func:`coerce` and
:func:`coerce_column` turn any of them into the one type a processor computes with, values that
do not convert becoming null, so a processor never has to raise on data.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Final, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from routers import TIME_TYPE, ConfigError, EventSchema

__all__ = [
    "HotProcessor",
    "WarmProcessor",
    "coerce",
    "coerce_column",
    "hot_processor",
    "import_modules",
    "qualified",
    "register_hot",
    "register_warm",
    "warm_processor",
]


class HotProcessor(ABC):
    """Keyed, stateful processing inside a hot actor.

    One instance lives in each hot actor and owns the state of every key of that actor's key
    groups. Every method is called from that actor only, one call at a time: ``process`` gets
    one batch at a time, each batch holding only keys of those groups, in arrival order per
    source partition. State must be a function of the batches processed (no wall clock), so that
    replay rebuilds it.

    Error contract:
        Bad events are data: ``process`` should take any Arrow type in any payload column (see
        :func:`coerce_column`) and skip values it cannot use rather than raise. When it does
        raise anyway, it must leave the state exactly as it was before the call: validate and
        compute everything first, then apply. The engine then retries the batch in halves to
        isolate the offending rows; each of them becomes a dead letter with the reason
        ``processor_error:<path>:<ExceptionType>: <message>`` and the other rows are applied
        once. A processor that mutated state before raising would count those rows twice.

    Memory:
        A hot actor's keys change over its life: ``release`` returns the memory of keys whose
        source partitions were revoked, and ``expire`` (optional, per-key TTL in event time)
        that of keys that went quiet. Both are called between two ``process`` calls.

    Args:
        schema: the role columns (``schema.key`` is the state key).
        **options: from ``hot.options`` in the config.
    """

    def __init__(self, schema: EventSchema, **options: Any) -> None:
        self.schema = schema
        self.options = options

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        """Update state from ``batch``; return output rows (e.g. alerts) or ``None``."""

    @abstractmethod
    def state(self) -> pa.Table:
        """The state, one row per key, with the key in a column named ``schema.key``."""

    def snapshot(self) -> pa.Table:
        """Everything needed to rebuild the state: one row per key (key column ``schema.key``).

        Called at checkpoints, between two ``process`` calls. The engine saves the rows of each
        source partition's keys apart, so a restore may receive any subset of them.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot snapshot its state")

    def restore(self, rows: pa.Table) -> None:
        """Add keys from ``snapshot()`` rows (keys this instance does not hold yet)."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore state")

    def release(self, keys: pa.Array) -> int:
        """Drop the state of ``keys`` and return the memory it held.

        Called when the source partitions those keys came from are revoked (after their
        snapshot is saved): another process owns them now. Keys this instance does not hold are
        ignored, so a repeated call is harmless (idempotent).

        Args:
            keys: state keys, of any Arrow type (compared as strings).

        Returns:
            How many keys were dropped.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot release keys")

    def expire(self, before_ms: int) -> int:
        """Drop every key whose latest event time is before ``before_ms`` (optional TTL).

        Event time, not the wall clock, so a replay expires the same keys. Idempotent.

        Args:
            before_ms: epoch milliseconds; keys last seen strictly before it are dropped.

        Returns:
            How many keys were dropped.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot expire keys")


class WarmProcessor(ABC):
    """Stateless processing of one micro-batch, run as a Ray task (any worker, any time).

    It must be a pure function of the batch: a retried task must produce the same output.

    Error contract:
        As for :class:`HotProcessor`: take any Arrow type in any payload column (see
        :func:`coerce_column`) rather than raise on data. If ``process`` raises, the engine
        retries the batch in halves; the rows that still fail alone become dead letters
        ``processor_error:<path>:<ExceptionType>: <message>``. Being pure, a warm processor has
        no state to protect. Its output schema must not depend on the input's types (the
        outputs of all micro-batches form one table).

    Args:
        schema: the role columns.
        **options: from ``warm.options`` in the config.
    """

    def __init__(self, schema: EventSchema, **options: Any) -> None:
        self.schema = schema
        self.options = options

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> pa.Table:
        """Rows to append to the warm output table for this micro-batch."""


_P = TypeVar("_P")
_HOT: dict[str, type[HotProcessor]] = {}
_WARM: dict[str, type[WarmProcessor]] = {}


def register_hot(name: str) -> Callable[[type[HotProcessor]], type[HotProcessor]]:
    """Class decorator: make a hot processor available by ``name`` in configs."""

    def add(cls: type[HotProcessor]) -> type[HotProcessor]:
        _HOT[name] = cls
        return cls

    return add


def register_warm(name: str) -> Callable[[type[WarmProcessor]], type[WarmProcessor]]:
    """Class decorator: make a warm processor available by ``name`` in configs."""

    def add(cls: type[WarmProcessor]) -> type[WarmProcessor]:
        _WARM[name] = cls
        return cls

    return add


def _lookup(registry: dict[str, type[_P]], name: str, path: str, base: type) -> type[_P]:
    """A registered name, or ``package.module:Class`` for user code importable on every worker."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError([f"{path}: cannot import {name!r} ({exc})"]) from exc
        if not (isinstance(found, type) and issubclass(found, base)):
            raise ConfigError([f"{path}: {name!r} is not a {base.__name__} subclass"])
        return found  # type: ignore[return-value]
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ConfigError(
            [f"{path}: unknown processor {name!r}; known: {known}, or 'package.module:Class'"]
        ) from None


def import_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import the config's ``processors`` modules, so the names they register can be used.

    Raises:
        ConfigError: naming each module that cannot be imported, and why.
    """
    import os
    import sys

    if modules and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does; the console script does not
    problems = []
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as exc:  # any error in user code: reported with the module's name
            problems.append(
                f"processors[{i}]: cannot import {module!r} ({type(exc).__name__}: {exc});"
                " it must be importable from the working directory or PYTHONPATH"
            )
    if problems:
        raise ConfigError(problems)


def qualified(cls: type) -> str:
    """``package.module:Class``: how a worker process finds a processor class by importing it,
    whatever name it was registered under in the driver."""
    return f"{cls.__module__}:{cls.__qualname__}"


def hot_processor(name: str) -> type[HotProcessor]:
    """The hot processor class registered as ``name``."""
    return _lookup(_HOT, name, "hot.processor", HotProcessor)


def warm_processor(name: str) -> type[WarmProcessor]:
    """The warm processor class registered as ``name``."""
    return _lookup(_WARM, name, "warm.processor", WarmProcessor)


# --- Column coercion: any Arrow type in, the one type a processor computes with out ----------

#: A decimal number as JSON and most clients write it (no hex, no ``nan``/``inf``).
_NUMBER: Final[str] = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_INT64_BOUND: Final[float] = 2.0**63
_TARGETS: Final[tuple[pa.DataType, ...]] = (pa.string(), pa.int64(), pa.float64(), TIME_TYPE)


def coerce(values: pa.Array | pa.ChunkedArray, to: pa.DataType) -> pa.Array:
    """``values`` as type ``to``, whatever their type; a value that does not convert is null.

    Never raises on data. Conversions:

    - to ``string``: numbers and booleans are formatted (``12`` -> ``"12"``); a type with no
      string form (struct, list, binary that is not UTF-8) gives nulls;
    - to ``int64``: integers as they are (beyond int64: null), floats floored, decimal strings
      parsed (``"12"``, ``" 7.9 "`` -> 7); NaN, infinities, booleans, non-numeric strings and
      nested types give nulls;
    - to ``float64``: the same, without flooring;
    - to ``timestamp[ms, UTC]``: timestamps of any unit (naive ones read as UTC), dates, epoch
      milliseconds as numbers or numeric strings, ISO-8601 strings with a zone offset.

    Args:
        values: an array of any type (a chunked array is combined).
        to: one of ``pa.string()``, ``pa.int64()``, ``pa.float64()``, ``timestamp[ms, UTC]``.

    Raises:
        TypeError: ``to`` is not one of those (a programming error, not data).

    Example:
        >>> coerce(pa.array(["12", "max", None, "4.7"]), pa.int64()).to_pylist()
        [12, None, None, 4]
        >>> coerce(pa.array([3, 4]), pa.string()).to_pylist()
        ['3', '4']
        >>> coerce(pa.array([{"a": 1}]), pa.float64()).to_pylist()
        [None]
    """
    if to not in _TARGETS:
        raise TypeError(
            f"coerce: cannot convert to {to}; supported: {', '.join(map(str, _TARGETS))}"
        )
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if kind == to and to != pa.float64():  # float64 still loses its NaN and infinities
        return values
    if pa.types.is_dictionary(kind):
        return coerce(values.dictionary_decode(), to)
    if pa.types.is_null(kind):
        return pa.nulls(len(values), to)
    if to == pa.string():
        return _cast_or_nulls(values, to)
    if to == TIME_TYPE:
        return _to_time(values)
    return _to_number(values, to)


def coerce_column(batch: pa.RecordBatch | pa.Table, name: str, to: pa.DataType) -> pa.Array:
    """Column ``name`` of ``batch`` through :func:`coerce`; all nulls when the batch lacks it.

    Example:
        >>> batch = pa.record_batch({"level": [1.5, 3.0]})
        >>> coerce_column(batch, "level", pa.int64()).to_pylist()
        [1, 3]
        >>> coerce_column(batch, "engagement_score", pa.float64()).to_pylist()
        [None, None]
    """
    if name not in batch.schema.names:
        return pa.nulls(batch.num_rows, to)
    return coerce(batch.column(name), to)


def _cast_or_nulls(values: pa.Array, to: pa.DataType) -> pa.Array:
    try:
        return pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pa.nulls(len(values), to)


def _is_text(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def _to_number(values: pa.Array, to: pa.DataType) -> pa.Array:
    """To int64 or float64: parse, then drop what is not finite or not in range."""
    kind = values.type
    if pa.types.is_integer(kind):
        if pa.types.is_uint64(kind):  # the one integer type that can exceed int64
            fits = pc.less_equal(values, pa.scalar(2**63 - 1, pa.uint64()))
            values = pc.if_else(fits, values, pa.scalar(None, kind))
        # int64 -> float64 refuses values beyond 2**53 in safe mode: rounding them is fine here.
        return pc.cast(values, to, safe=False)
    if _is_text(kind):
        text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
        numeric = pc.match_substring_regex(text, _NUMBER)
        values = pc.cast(pc.if_else(numeric, text, pa.scalar(None, pa.string())), pa.float64())
    elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = pc.cast(values, pa.float64(), safe=False)
    else:  # booleans, temporal and nested types are not numbers
        return pa.nulls(len(values), to)
    if to == pa.float64():
        return pc.if_else(pc.is_finite(values), values, pa.scalar(None, pa.float64()))
    floored = pc.floor(values)
    usable = pc.and_(
        pc.is_finite(floored),
        pc.and_(pc.greater_equal(floored, -_INT64_BOUND), pc.less(floored, _INT64_BOUND)),
    )
    return pc.cast(pc.if_else(usable, floored, pa.scalar(None, pa.float64())), pa.int64())


def _to_time(values: pa.Array) -> pa.Array:
    """To ``timestamp[ms, UTC]``."""
    kind = values.type
    if pa.types.is_timestamp(kind):
        if kind.tz is None:  # naive: read as UTC
            values = pc.cast(values, pa.timestamp(kind.unit, "UTC"))
        return pc.cast(values, TIME_TYPE, safe=False)
    if pa.types.is_date(kind):
        return _cast_or_nulls(values, TIME_TYPE)
    if _is_text(kind):
        try:
            return pc.cast(pc.cast(values, pa.string()), TIME_TYPE, safe=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # not all ISO-8601 with a zone: read numeric strings as epoch ms below
    millis = _to_number(values, pa.int64())
    return pc.cast(millis, TIME_TYPE)
