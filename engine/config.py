"""Pipeline configuration: one YAML file, validated at load, frozen.

Unknown keys and bad values are rejected with their dotted path, the value and what was expected
(``hot.actors: Input should be greater than 0, got 0``). :func:`load_config` is the only place that
reads configuration; environment overrides are explicit arguments of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from routers import ConfigError, Policy, PolicyError, parse_duration_ms
from routers.yamlfile import YamlFileError, read_yaml

__all__ = [
    "PIPELINE_KEYS",
    "ColdConfig",
    "HotConfig",
    "PipelineConfig",
    "ServeConfig",
    "ServeTopics",
    "SourceConfig",
    "WarmConfig",
    "load_config",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _duration(value: Any) -> str:
    parse_duration_ms(value)  # raises ValueError with the expected form
    return str(value)


#: A duration like '250ms', '30s', '15m', '2h', '7d', checked when the config loads.
Duration = Annotated[str, BeforeValidator(_duration)]


class SourceConfig(_Frozen):
    """Where events come from.

    ``synthetic`` generates seeded game telemetry; ``file`` reads NDJSON or Parquet (a file or a
    folder of them); ``kafka`` consumes topics as a consumer group member.
    """

    #: synthetic (generated game telemetry), file (NDJSON or Parquet) or kafka (topics).
    kind: Literal["synthetic", "file", "kafka"] = "synthetic"
    #: synthetic: events to generate.
    events: int = Field(1_000_000, ge=0)
    #: synthetic: events per second of wall time (None: as fast as the pipeline takes them).
    rate: float | None = Field(None, gt=0)
    #: synthetic: distinct players (the hot path's keys).
    players: int = Field(100_000, ge=1)
    #: synthetic: seed; the same seed gives the same bytes.
    seed: int = 42
    #: Events per source block: the unit of decode, routing and position tracking.
    block_rows: int = Field(20_000, ge=1)
    #: synthetic: source partitions the blocks are dealt to, in turn.
    partitions: int = Field(1, ge=1)
    #: synthetic: share of events that arrive late (seconds to minutes).
    late_share: float = Field(0.05, ge=0, le=1)
    #: synthetic: share of events that arrive stale (hours).
    stale_share: float = Field(0.02, ge=0, le=1)
    #: synthetic: share of lines that are malformed (truncated, not JSON, no player, bad time).
    malformed_share: float = Field(0.001, ge=0, le=1)
    #: synthetic: share of events sending their time as an ISO-8601 string, not epoch ms.
    iso_time_share: float = Field(0.0, ge=0, le=1)
    #: synthetic: event types and their relative weights (default: engine.sources.EVENT_MIX).
    event_mix: dict[str, float] | None = None
    #: synthetic: share of players whose ids are JSON integers (64-bit account ids) not "p123".
    numeric_id_share: float = Field(0.2, ge=0, le=1)
    #: synthetic: share of events missing each optional common field (tier, region, scores...).
    missing_share: float = Field(0.1, ge=0, le=1)
    #: synthetic: share of events sending their time as epoch seconds (a decimal) not ms.
    epoch_seconds_share: float = Field(0.0, ge=0, le=1)
    #: synthetic: share of events from mid-stream on sent by a drifted client (new fields, strings).
    drift: float = Field(0.0, ge=0, le=1)

    @field_validator("event_mix")
    @classmethod
    def _positive_mix(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        if mix is not None and (
            not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0
        ):
            raise ValueError("expected event types with weights >= 0 and a positive total")
        return mix

    #: file: a path (file or folder); format from the extension unless given.
    path: str | None = None
    #: file: auto (by extension: .ndjson, .jsonl, .json, .parquet), ndjson or parquet.
    format: Literal["auto", "ndjson", "parquet"] = "auto"

    #: kafka: bootstrap servers, ``host:port[,host:port]``.
    bootstrap: str | None = None
    #: kafka: topics to consume.
    topics: tuple[str, ...] = ()
    #: kafka: consumer group id (members share the partitions; checkpoints are per partition).
    group: str = "thermocline"
    #: kafka: where partitions without a checkpoint or commit start: committed (else earliest),
    #: earliest, latest, or an epoch-milliseconds timestamp.
    start: Literal["committed", "earliest", "latest"] | int = "committed"
    #: kafka: records per poll, at most.
    max_records: int = Field(20_000, ge=1)
    #: kafka: stop after this long without records while owning partitions (None: never).
    idle_timeout: Duration | None = None
    #: kafka: stop after this many records (None: never).
    max_events: int | None = Field(None, ge=0)
    #: kafka: blocks (polls of one partition) read ahead while the pipeline works.
    prefetch: int = Field(8, ge=1)
    #: kafka: bytes of read-ahead blocks at most (a single larger block still passes).
    prefetch_bytes: int = Field(64 << 20, ge=1)
    #: kafka: extra KafkaConsumer settings (e.g. security); kept out of reprs and logs.
    consumer: dict[str, Any] = Field(default_factory=dict, repr=False)

    @model_validator(mode="after")
    def _kind_needs(self) -> SourceConfig:
        if self.kind == "file" and not self.path:
            raise ValueError("kind 'file' needs 'path': a file or folder of .ndjson/.parquet")
        if self.kind == "kafka" and (not self.bootstrap or not self.topics):
            raise ValueError("kind 'kafka' needs 'bootstrap' (host:port) and 'topics' (a list)")
        return self


class HotConfig(_Frozen):
    """Hot path: keyed stateful actors."""

    #: Hot actors; each owns a contiguous range of key groups and its keys' state.
    actors: int = Field(2, ge=1)
    #: Fixed number of key groups hashed from the key; actors own key groups.
    key_groups: int = Field(256, ge=1, le=65_536)
    #: Calls in flight per actor before the driver waits (backpressure).
    max_in_flight: int = Field(4, ge=1)
    #: Hot processor: a registered name or ``package.module:Class``.
    processor: str = "player_features"
    #: Keyword arguments of the hot processor.
    options: dict[str, Any] = Field(default_factory=dict)
    #: Lake folder of the hot processor's output rows (``hot/<name>/``) and of its state at the
    #: end of a bounded run (``state/<name>/``). None: the processor's name.
    output_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$")
    #: Drop a key's state once the newest event time an actor has seen is this far past the
    #: key's latest event (event time, so a replay drops the same keys). None: keep every key.
    state_ttl: Duration | None = None
    #: CPU reserved per actor (fractional: on the embedded default all paths share few cores).
    num_cpus: float = Field(0.25, ge=0)
    #: Custom Ray resources per actor, e.g. ``{hot: 1}`` to land on cluster.yaml's hot nodes.
    resources: dict[str, float] = Field(default_factory=dict)

    @property
    def lake_name(self) -> str:
        """The folder name of its outputs and state: ``output_name``, else the processor's
        name with anything but letters, digits, ``_`` and ``-`` as ``_``.

        Example:
            >>> HotConfig(processor="my.module:Features").lake_name
            'my_module_Features'
        """
        return self.output_name or re.sub(r"[^A-Za-z0-9_-]", "_", self.processor)

    @model_validator(mode="after")
    def _groups_cover_actors(self) -> HotConfig:
        if self.key_groups < self.actors:
            raise ValueError(
                f"key_groups ({self.key_groups}) must be >= actors ({self.actors}): "
                "every actor owns at least one key group"
            )
        return self


class WarmConfig(_Frozen):
    """Warm path: micro-batches on a size or time trigger, one Ray task each."""

    #: A micro-batch is cut at this many rows buffered (all source partitions together; a
    #: micro-batch holds one partition's rows, the largest buffer is cut)...
    max_batch_rows: int = Field(100_000, ge=1)
    #: ...or when its oldest row has waited this long.
    max_delay: Duration = "2s"
    #: Micro-batch tasks running at most before the driver waits (backpressure).
    max_in_flight: int = Field(2, ge=1)
    #: Warm processor: a registered name or ``package.module:Class``.
    processor: str = "minute_kpis"
    #: Lake folder of the warm outputs: ``warm/<output_name>/``.
    output_name: str = Field("minute_kpis", pattern=r"^[A-Za-z0-9_-]+$")
    #: Bytes bound of the micro-batch buffer (the size trigger fires on rows or bytes).
    max_batch_bytes: int = Field(64 << 20, ge=1)
    #: Keyword arguments of the warm processor.
    options: dict[str, Any] = Field(default_factory=dict)
    #: CPU reserved per micro-batch task.
    num_cpus: float = Field(0.25, ge=0)
    #: Custom Ray resources per task, e.g. ``{warm: 1}`` (cluster.yaml's warm nodes).
    resources: dict[str, float] = Field(default_factory=dict)

    @property
    def max_delay_s(self) -> float:
        return parse_duration_ms(self.max_delay) / 1000


class ColdConfig(_Frozen):
    """Cold path: the lake (Delta Lake tables) and its writer."""

    #: The lake: a folder or an fsspec URL (``s3://bucket/lake``).
    lake_uri: str = "lake"
    #: Parquet bytes of a cold file: a source partition's files are closed and staged
    #: (committed by the next checkpoint) when one of them reaches this size (its rows are
    #: encoded as they come, so the size is known; see engine.cold)...
    target_file_size: int = Field(32 << 20, ge=1 << 10)
    #: ...or when its oldest held row has waited this long (how far the lake, and the source
    #: position committed, lag behind the stream).
    flush_interval: Duration = "2m"
    #: Memory bound of what the writer holds, in rows: everything is flushed at this many.
    flush_rows: int = Field(10_000_000, ge=1)
    #: Memory bound of what the writer holds, in bytes (encoded Parquet, plus rows waiting for
    #: their row group as Arrow): each source partition holds a little more than
    #: ``target_file_size`` before its file is staged, plus its late rows' files.
    flush_bytes: int = Field(1 << 30, ge=1)
    #: Extra Hive partition columns after dt/hour (values are percent-encoded, never raw paths).
    partition_by: tuple[str, ...] = ()
    #: What the lake's events table holds: ``cold``, the cold path's events; ``all``, every good
    #: event, hot and warm ones too, each with its temperature (``route``) and its place in the
    #: stream (``source_partition``, ``source_offset``): the master dataset of the lambda
    #: architecture, which batch jobs such as ``jobs.daily_features`` read whole and
    #: ``jobs.replay`` re-runs in order (the lake writer then encodes every event).
    archive: Literal["cold", "all"] = "cold"
    #: fsspec storage options (e.g. S3 endpoint); kept out of reprs and logs.
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    #: CPU reserved for the lake writer actor.
    num_cpus: float = Field(0.25, ge=0)
    #: Custom Ray resources of the lake writer, e.g. ``{cold: 1}`` (cluster.yaml's cold nodes).
    resources: dict[str, float] = Field(default_factory=dict)

    @property
    def flush_interval_s(self) -> float:
        return parse_duration_ms(self.flush_interval) / 1000


class ServeTopics(_Frozen):
    """The Kafka topics ``thermocline serve`` writes to: one per temperature, and dead letters."""

    #: Events the router sent hot, keyed by player (one player's events in one partition).
    hot: str = "events.hot"
    #: Events the router sent warm, keyed by player.
    warm: str = "events.warm"
    #: Events the router sent cold, keyed by player.
    cold: str = "events.cold"
    #: Dead letters: the event's exact bytes as the value, the reason in a ``reason`` header.
    dead: str = "events.dead"


def _rate(value: Any) -> str:
    from limits import parse  # the rate-limit library of the service (engine.serve)

    try:
        parse(str(value))
    except ValueError:
        raise ValueError(
            "expected a rate like '1000/second', '50 per minute' or '10/2 seconds'"
        ) from None
    return str(value)


#: A rate like '1000/second' or '50 per minute' (the ``limits`` library's notation).
Rate = Annotated[str, BeforeValidator(_rate)]


class ServeConfig(_Frozen):
    """``thermocline serve``: the HTTP ingestion service for game clients (``engine.serve``).

    API keys are never part of the file's printed form; prefer the environment variable
    (``api_keys_env``, comma-separated) to keys written in the file.
    """

    #: Interface to listen on (loopback by default; a load balancer in front for the world).
    host: str = "127.0.0.1"
    #: Port to listen on (0: any free one, printed at start).
    port: int = Field(8080, ge=0, le=65_535)
    #: Kafka ``host:port`` (default: ``source.bootstrap``).
    bootstrap: str | None = None
    #: Where each temperature's events and the dead letters go (the ``serve.topics.`` keys).
    topics: ServeTopics = Field(default_factory=ServeTopics)
    #: Topic of the hot path's output rows pushed to clients (default: ``alerts_topic``).
    push_topic: str | None = None
    #: Keys accepted in the ``X-API-Key`` header, besides those of ``api_keys_env``.
    api_keys: tuple[str, ...] = Field((), repr=False)
    #: Environment variable holding more keys, comma-separated.
    api_keys_env: str = "THERMOCLINE_API_KEYS"
    #: Requests per API key (per service process): e.g. '1000/second'. Over it: 429.
    rate_limit: Rate = "1000/second"
    #: Largest request body, after gzip decompression too. Over it: 413.
    max_body_bytes: int = Field(4 << 20, ge=1024)
    #: Most events in one request. Over it: 413.
    max_events: int = Field(1000, ge=1)
    #: Largest event; a larger one is a dead letter (``too_large``), its first bytes kept.
    #: Keep it below the topics' ``max.message.bytes`` (1 MB by default) with room for the key
    #: and headers: an event the broker refuses gets 413 for its whole request.
    max_event_bytes: int = Field(64 << 10, ge=64, le=900_000)
    #: How long the broker has to acknowledge a request's events before the request gets 503.
    delivery_timeout: Duration = "10s"
    #: Failed requests in a row that open the circuit breaker (503 at once, Kafka left alone).
    breaker_failures: int = Field(3, ge=1)
    #: How long the breaker stays open before it probes the broker to close again.
    breaker_cooldown: Duration = "5s"
    #: Events decoded together at most (while one group decodes, the next one gathers).
    group_max_events: int = Field(5000, ge=1)
    #: Pushed messages queued per connection; a client that falls this far behind is dropped.
    push_queue: int = Field(256, ge=1)
    #: Open push connections at most (per process); more are refused (503, Retry-After).
    push_connections: int = Field(10_000, ge=1)
    #: Extra librdkafka producer settings (confluent-kafka), e.g. ``{"linger.ms": 2}``.
    producer: dict[str, Any] = Field(default_factory=dict, repr=False)


class PipelineConfig(_Frozen):
    """The whole pipeline: source, routing policy, and each path's settings and bounds.

    Example:
        >>> cfg = PipelineConfig.from_dict({"hot": {"actors": 3}, "source": {"events": 10}})
        >>> cfg.hot.actors, cfg.policy.default
        (3, 'warm')
        >>> PipelineConfig.from_dict({"hot": {"actorz": 3}})
        Traceback (most recent call last):
        ...
        routers.errors.ConfigError: hot.actorz: unknown key (Extra inputs are not permitted), got 3
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    #: The pipeline's name (letters, digits, '-'): it scopes its checkpoints and lake file
    #: names, so pipelines of different names share one lake without touching each other's
    #: state or files. Required with a kafka source, whose checkpoints outlive the run;
    #: otherwise the source's kind.
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")
    #: Where events come from (the ``source.`` keys).
    source: SourceConfig = Field(default_factory=SourceConfig)
    #: The routing policy, inline (as ``thermocline validate`` reads it) or a file's path.
    policy: Policy = Field(default_factory=Policy)
    #: The hot path (the ``hot.`` keys).
    hot: HotConfig = Field(default_factory=HotConfig)
    #: The warm path (the ``warm.`` keys).
    warm: WarmConfig = Field(default_factory=WarmConfig)
    #: The cold path and the lake (the ``cold.`` keys).
    cold: ColdConfig = Field(default_factory=ColdConfig)
    #: Seconds between progress lines (0: none).
    progress_every_s: float = Field(1.0, ge=0)
    #: How often a checkpointed source (Kafka) is checkpointed: drain, flush, snapshot, commit.
    checkpoint_interval: Duration = "5s"
    #: Kafka topic the hot path's output rows (alerts) are produced to (None: lake only).
    alerts_topic: str | None = None
    #: The HTTP ingestion service (``thermocline serve``; the ``serve.`` keys).
    serve: ServeConfig = Field(default_factory=ServeConfig)
    #: Python modules imported before the processors are looked up, so that the names their
    #: ``@register_hot``/``@register_warm`` give can be used in ``hot.processor`` and
    #: ``warm.processor``; importable from the working directory or PYTHONPATH.
    processors: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Validate plain data into a config; every problem is reported by dotted path.

        Raises:
            ConfigError: listing each ``path: message, got value``.
        """
        data = dict(data)
        problems: list[str] = []
        policy = data.pop("policy", None)
        if policy is not None and not isinstance(policy, Policy):
            # The policy has its own loader (shared with `thermocline validate`); its messages
            # already carry dotted paths, prefixed here with "policy.".
            try:
                data["policy"] = Policy.from_dict(policy, path="policy")
            except PolicyError as exc:
                problems += exc.problems
        elif policy is not None:
            data["policy"] = policy
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            problems += [_describe(e) for e in exc.errors()]
        else:
            if config.source.kind == "kafka" and config.name is None:
                problems.append(
                    "name: required with a kafka source (it scopes this pipeline's checkpoints"
                    " and lake files); add e.g. 'name: game-events' to the config, or --name"
                )
        if problems:
            raise ConfigError(problems)
        return config


def _describe(error: Mapping[str, Any]) -> str:
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown key ({message})"
    inputs = error.get("input")
    quiet = error["type"] == "missing" or isinstance(inputs, Mapping) or ", got " in message
    got = "" if quiet else f", got {inputs!r}"
    return f"{path or '<config>'}: {message}{got}"


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> PipelineConfig:
    """Load a pipeline config from YAML, then apply explicit overrides.

    Args:
        path: a YAML file; ``None`` for the defaults.
        overrides: dotted keys to values, e.g. ``{"source.events": 1000, "cold.lake_uri": "x"}``
            (the CLI's flags end up here).

    Raises:
        ConfigError: unreadable file, bad YAML, unknown keys or bad values, by dotted path.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = read_yaml(path, "pipeline config")
        except YamlFileError as exc:
            raise ConfigError([str(exc)]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: expected a mapping at the top level, got {loaded!r}"])
        data = loaded
        # `policy: policies/game.yaml`: a policy file, next to the config unless absolute.
        if isinstance(data.get("policy"), str):
            data["policy"] = _policy_file(Path(path).parent / data["policy"])
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    [f"{dotted}: cannot override inside {part!r}, a {type(child).__name__}"]
                )
            node = child
        node[leaf] = value
    if isinstance(data.get("policy"), (str, Path)):  # an override (--policy): from here
        data["policy"] = _policy_file(Path(data["policy"]))
    return PipelineConfig.from_dict(data)


#: A pipeline config's top-level keys: a YAML file with any of them is a pipeline config, not a
#: policy (a policy's keys are schema, default, rules).
PIPELINE_KEYS: frozenset[str] = frozenset(PipelineConfig.model_fields)


def _policy_file(path: Path) -> Policy:
    try:
        data = read_yaml(path, "policy")
    except YamlFileError as exc:
        raise ConfigError([f"policy: {exc}"]) from exc
    if isinstance(data, dict) and PIPELINE_KEYS & set(data):
        raise ConfigError(
            [f"policy: {path} is a pipeline config, not a policy; give it as --config, or give"
             " a policy file (schema, default, rules)"]
        )  # fmt: skip
    try:
        return Policy.from_dict(data)
    except PolicyError as exc:
        raise ConfigError([f"policy: {problem}" for problem in exc.problems]) from exc
