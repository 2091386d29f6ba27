"""A circuit breaker for the service's Kafka producer: stop sending to a broker that is down.

Hand-written rather than taken from a library (pybreaker, aiobreaker): those wrap a call and
judge its exception, while a producer's failures arrive later, in delivery reports on another
thread, and the breaker here closes on a probe of its own (no request needs to arrive).
"""

from __future__ import annotations

import threading
import time
from typing import Final, Literal

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open"]


class CircuitBreaker:
    """Closed: requests go to Kafka. Open: they get 503 at once, until a probe succeeds.

    ``failures`` failed requests in a row (or the producer's report that every broker is down)
    open it; while open, :meth:`probe_due` says when to probe the broker (every ``cooldown``
    seconds); a successful probe or delivery closes it. Thread-safe (delivery reports arrive on
    the producer's thread).

    Example:
        >>> breaker = CircuitBreaker(failures=2, cooldown=5.0)
        >>> breaker.record_failure(); breaker.state
        'closed'
        >>> breaker.record_failure(); breaker.state
        'open'
        >>> 0 < breaker.retry_after() <= 5
        True
        >>> breaker.record_success(); breaker.state
        'closed'
    """

    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures: Final = failures
        self.cooldown: Final = cooldown
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._opened_at: float | None = None
        self.opened = 0  # times it opened, for metrics

    @property
    def state(self) -> State:
        return "closed" if self._opened_at is None else "open"

    def record_success(self) -> None:
        with self._lock:
            self._in_a_row = 0
            self._opened_at = None

    def record_failure(self) -> None:
        with self._lock:
            self._in_a_row += 1
            if self._in_a_row >= self.failures and self._opened_at is None:
                self._open()

    def trip(self) -> None:
        """Open now (the producer reported every broker down)."""
        with self._lock:
            if self._opened_at is None:
                self._open()

    def _open(self) -> None:
        self._opened_at = time.monotonic()
        self.opened += 1

    def retry_after(self) -> float:
        """Seconds until the next probe (what a refused client should wait)."""
        opened = self._opened_at
        if opened is None:
            return 0.0
        return max(0.0, opened + self.cooldown - time.monotonic())

    def probe_due(self) -> bool:
        """Open, and the cool-down has passed: time to probe (restarts the cool-down)."""
        with self._lock:
            if self._opened_at is None or time.monotonic() < self._opened_at + self.cooldown:
                return False
            self._opened_at = time.monotonic()
            return True
