"""Processor interfaces: user code that runs on the hot and warm paths.

Processors are registered by name (``@register_hot("name")``); configs name them, and an unknown
name fails with the list of known ones.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa

from routers import ConfigError, EventSchema

__all__ = [
    "HotProcessor",
    "WarmProcessor",
    "hot_processor",
    "register_hot",
    "register_warm",
    "warm_processor",
]


class HotProcessor(ABC):
    """Keyed, stateful processing inside a hot actor.

    One instance lives in each hot actor and owns the state of every key of that actor's key
    groups. ``process`` is called from that actor only, one batch at a time, each batch holding
    only keys of those groups, in arrival order per source partition. State must be a function of
    the batches processed (no wall clock), so that replay rebuilds it.

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


class WarmProcessor(ABC):
    """Stateless processing of one micro-batch, run as a Ray task (any worker, any time).

    It must be a pure function of the batch: a retried task must produce the same output.

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


def hot_processor(name: str) -> type[HotProcessor]:
    """The hot processor class registered as ``name``."""
    return _lookup(_HOT, name, "hot.processor", HotProcessor)


def warm_processor(name: str) -> type[WarmProcessor]:
    """The warm processor class registered as ``name``."""
    return _lookup(_WARM, name, "warm.processor", WarmProcessor)
