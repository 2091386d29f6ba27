"""The service's Prometheus metrics (``GET /metrics``), in a registry per service instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServeMetrics"]


class ServeMetrics:
    """Requests, events per temperature, rejects by reason, latency, breaker state, push.

    Dead-letter reasons are counted by their kind (``bad_type``, not ``bad_type:level``): the
    part after the colon names a client's column, and a label must not take unbounded values.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "thermocline_serve_requests", "HTTP requests by route and status.",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.events = Counter(
            "thermocline_serve_events",
            "Events acknowledged by Kafka, by temperature (dead: dead letters).",
            ["temperature"], registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "thermocline_serve_dead_letters", "Dead letters by kind of reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.rejects = Counter(
            "thermocline_serve_rejects",
            "Requests refused, by reason (unauthorized, rate_limited, too_large, ...).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "thermocline_serve_request_seconds", "POST /v1/events latency (to the response).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )  # fmt: skip
        self.breaker_open = Gauge(
            "thermocline_serve_breaker_open", "1 while the Kafka circuit breaker is open.",
            registry=r,
        )  # fmt: skip
        self.push_connections = Gauge(
            "thermocline_serve_push_connections", "Open push connections.", registry=r
        )
        self.push_dropped = Counter(
            "thermocline_serve_push_dropped", "Push connections dropped for falling behind.",
            registry=r,
        )  # fmt: skip
