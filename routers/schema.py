"""Event schema: which columns play the four roles every path relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pyarrow as pa

from routers.contract import parse_type

__all__ = ["TEMPERATURES", "TIME_TYPE", "TIME_UNITS", "EventSchema", "Temperature"]

Temperature = str
#: The three temperatures, in the order of their codes in ``Router.classify``'s dictionary.
TEMPERATURES: Final[tuple[str, str, str]] = ("hot", "warm", "cold")
#: Event times are normalized to this type at decode time.
TIME_TYPE: Final[pa.DataType] = pa.timestamp("ms", tz="UTC")
#: Units an epoch-number time may be declared in; ``auto`` picks one by magnitude.
TIME_UNITS: Final[tuple[str, ...]] = ("auto", "s", "ms", "us", "ns")
#: Default plausible event times: 2000-01-01 to 2100-01-01 (epoch ms), outside is ``bad_value``.
DEFAULT_TIME_RANGE: Final[tuple[int, int]] = (946_684_800_000, 4_102_444_800_000)


@dataclass(frozen=True)
class EventSchema:
    """The columns that play the roles every path relies on, and the payload's declared types.

    Attributes:
        id: unique event id. JSON strings or integers; normalized to a string (an integer keeps
            its exact digits, 64-bit and larger included).
        key: the unit of hot state, e.g. ``player_id``; strings or integers, as ``id``.
        time: event time, normalized to ``timestamp[ms, UTC]``; an ISO-8601 string (UTC when it
            has no offset) or an epoch number in ``time_unit``.
        type: event type, e.g. ``event_type`` (string).
        arrival: when the event arrived (set by the source: the Kafka record timestamp, the
            receive time of an HTTP request, a synthetic schedule); age rules measure from it, so
            a replay routes alike.
        time_unit: unit of epoch-number times; ``auto`` reads the magnitude: below 1e11 seconds,
            below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
        time_range: plausible event times (epoch ms, start inclusive, end exclusive); a time
            outside makes the event a dead letter ``bad_value:<time>``.
        columns: declared payload types, ``(name, type name)`` pairs (see
            :data:`routers.contract.TYPE_NAMES`); other payload columns are inferred.

    Example:
        >>> EventSchema(key="user_id").required
        ('event_id', 'user_id', 'event_time', 'event_type')
    """

    id: str = "event_id"
    key: str = "player_id"
    time: str = "event_time"
    type: str = "event_type"
    arrival: str = "arrival_time"
    time_unit: str = "auto"
    time_range: tuple[int, int] = DEFAULT_TIME_RANGE
    columns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.time_unit not in TIME_UNITS:
            raise ValueError(f"time_unit: expected one of {', '.join(TIME_UNITS)}")
        for name, kind in self.columns:
            parse_type(kind)  # raises with the known names
            if name in self.required:
                raise ValueError(f"columns.{name}: a role column is typed by its role")
        named: dict[str, str] = {}
        for name in [*self.required, self.arrival, *(n for n, _ in self.columns)]:
            if named.setdefault(name.lower(), name) != name:
                raise ValueError(
                    f"{named[name.lower()]!r} and {name!r} differ only in case, and the lake's "
                    "column names do not tell them apart; rename one"
                )

    @property
    def declared(self) -> dict[str, pa.DataType]:
        """Declared payload columns with their Arrow types."""
        return {name: parse_type(kind) for name, kind in self.columns}

    @property
    def required(self) -> tuple[str, str, str, str]:
        """The role columns, in the order their problems are reported."""
        return (self.id, self.key, self.time, self.type)

    @property
    def string_roles(self) -> tuple[str, str, str]:
        """Role columns decoded as strings (the time role has its own normalization)."""
        return (self.id, self.key, self.type)
