"""``thermocline serve``: the HTTP ingestion service for game clients (see docs/serve.md).

It embeds the router: a client's batch of events is decoded with the pipeline's decoder,
classified by the pipeline's policy, and produced to one Kafka topic per temperature (keyed by
player), dead letters to their own topic; the pipeline consumes those topics like any others.
The hot path's output rows come back to the player's connections over WebSocket or SSE.
"""

from __future__ import annotations

from engine.serve.app import API_KEY_HEADER, SLOW_CLIENT_CLOSE, IngestService
from engine.serve.main import serve

__all__ = ["API_KEY_HEADER", "SLOW_CLIENT_CLOSE", "IngestService", "serve"]
