"""Event schema: which columns play the four roles every path relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pyarrow as pa

__all__ = ["TEMPERATURES", "TIME_TYPE", "EventSchema", "Temperature"]

Temperature = str
#: The three temperatures, in the order of their codes in ``Router.classify``'s dictionary.
TEMPERATURES: Final[tuple[str, str, str]] = ("hot", "warm", "cold")
#: Event times are normalized to this type at decode time.
TIME_TYPE: Final[pa.DataType] = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class EventSchema:
    """Names of the columns that play the four roles; every other column is payload.

    Attributes:
        id: unique event id (string).
        key: the unit of hot state, e.g. ``player_id`` (string).
        time: event time, normalized to ``timestamp[ms, UTC]``.
        type: event type, e.g. ``event_type`` (string).

    Example:
        >>> EventSchema(key="user_id").required
        ('event_id', 'user_id', 'event_time', 'event_type')
    """

    id: str = "event_id"
    key: str = "player_id"
    time: str = "event_time"
    type: str = "event_type"

    @property
    def required(self) -> tuple[str, str, str, str]:
        """The role columns, in the order their problems are reported."""
        return (self.id, self.key, self.time, self.type)

    @property
    def string_roles(self) -> tuple[str, str, str]:
        """Role columns decoded as strings (the time role has its own normalization)."""
        return (self.id, self.key, self.type)
