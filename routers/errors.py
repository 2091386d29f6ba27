"""Exceptions shared by every Thermocline package.

The root is :class:`ThermoclineError`; each layer adds a few narrow subclasses. A class says whether
retrying can help (``retriable``); retry logic reads that attribute instead of matching types.
Bad *events* are never exceptions: they become dead-letter rows with a reason.
"""

from __future__ import annotations

__all__ = ["ConfigError", "PolicyError", "RouterError", "ThermoclineError"]


class ThermoclineError(Exception):
    """Root of every error Thermocline raises on purpose."""

    retriable: bool = False


class ConfigError(ThermoclineError, ValueError):
    """A configuration value is wrong. ``problems`` lists every ``path: message`` found.

    Example:
        >>> str(ConfigError(["rules[0].route: expected one of cold, hot, warm, got 'lukewarm'"]))
        "rules[0].route: expected one of cold, hot, warm, got 'lukewarm'"
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class PolicyError(ConfigError):
    """A routing policy is invalid (caught at load, never at classify time)."""


class RouterError(ThermoclineError):
    """A batch cannot be routed by this policy (e.g. a column has a type the rule cannot compare).

    This is an operator problem (policy and data disagree), not a bad event: it is raised, with the
    rule named, rather than silently sending rows to the wrong path.
    """
