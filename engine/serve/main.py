"""Running the service: configuration checks first, then uvicorn on a socket of our own."""

from __future__ import annotations

import os
import socket
import sys

import uvicorn

from engine.config import PipelineConfig
from engine.preflight import StartupError
from engine.serve.app import IngestService
from routers import Router, parse_duration_ms

__all__ = ["api_keys", "build_service", "serve"]


def api_keys(config: PipelineConfig) -> tuple[str, ...]:
    """The accepted keys: ``serve.api_keys`` and those of the ``serve.api_keys_env`` variable."""
    serve = config.serve
    from_env = os.environ.get(serve.api_keys_env, "")
    return tuple(
        dict.fromkeys([*serve.api_keys, *(k.strip() for k in from_env.split(",") if k.strip())])
    )


def build_service(config: PipelineConfig) -> IngestService:
    """The service of ``config`` (its ``serve`` section, policy, Kafka and alerts topic).

    Raises:
        StartupError: no Kafka address or no API key, each with the fix.
    """
    serve = config.serve
    bootstrap = serve.bootstrap or config.source.bootstrap
    if not bootstrap:
        raise StartupError(
            "serve.bootstrap: no Kafka address; set serve.bootstrap (or source.bootstrap) in"
            " the config, or pass --bootstrap HOST:PORT"
        )
    keys = api_keys(config)
    if not keys:
        raise StartupError(
            f"serve.api_keys: no API key; set {serve.api_keys_env}=KEY[,KEY...] in the"
            " environment (or serve.api_keys in the config): every request must carry one"
        )
    return IngestService(
        serve, Router(config.policy), bootstrap, keys, serve.push_topic or config.alerts_topic
    )


def serve(config: PipelineConfig) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's graceful shutdown: in-flight requests finish)."""
    service = build_service(config)
    host, port = config.serve.host, config.serve.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise StartupError(f"serve.port: cannot listen on {host}:{port} ({exc.strerror})"
                           "; choose another with --port", status=1) from None  # fmt: skip
    topics = config.serve.topics
    print(
        f"thermocline serve: listening on http://{host}:{sock.getsockname()[1]}; events to"
        f" {topics.hot}, {topics.warm}, {topics.cold} (dead letters: {topics.dead}) at"
        f" {service.bootstrap}; push from {service.push_topic or 'nothing (no alerts_topic)'}",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            service.app,
            loop="uvloop",
            http="httptools",
            ws="websockets-sansio",
            lifespan="on",
            access_log=False,  # requests carry API keys in headers; counts are in /metrics
            log_level="warning",
            ws_max_size=1 << 16,  # clients say nothing on the push channel
            # SIGTERM: in-flight requests get their delivery timeout to finish; open push
            # streams (SSE never ends by itself) are closed after it.
            timeout_graceful_shutdown=int(parse_duration_ms(config.serve.delivery_timeout) / 1000)
            + 1,
        )
    )
    server.run(sockets=[sock])
