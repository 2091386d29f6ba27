"""Durations as operators write them: ``250ms``, ``30s``, ``15m``, ``2h``, ``7d``, ``1h30m``."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["parse_duration_ms"]

_UNIT_MS: Final[dict[str, int]] = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def parse_duration_ms(text: object) -> int:
    """Parse a duration string into whole milliseconds.

    Args:
        text: a string of one or more ``<number><unit>`` parts, units ``ms s m h d``.

    Returns:
        The duration in milliseconds (fractions below 1 ms are truncated).

    Raises:
        ValueError: when ``text`` is not such a string; the message shows the expected form.

    Example:
        >>> parse_duration_ms("1h30m")
        5400000
        >>> parse_duration_ms("250ms")
        250
    """
    if not isinstance(text, str) or not _WHOLE.fullmatch(text.strip()):
        raise ValueError(
            f"expected a duration like '250ms', '30s', '15m', '2h' or '7d', got {text!r}"
        )
    total = 0.0
    for number, unit in _PART.findall(text.strip()):
        total += float(number) * _UNIT_MS[unit]
    return int(total)
