"""Pipeline config: validated at load, unknown keys and bad values rejected by dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import PipelineConfig, load_config
from engine.processors import hot_processor, warm_processor
from routers import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_dict(data)
    return info.value.problems


def test_demo_config_loads() -> None:
    config = load_config(ROOT / "examples" / "demo.yaml")
    assert config.source.events == 1_000_000
    assert [r.name for r in config.policy.rules][:2] == ["monetization", "session-live"]
    assert config.warm.max_delay_s == 2.0


def test_unknown_keys_named_with_their_path() -> None:
    assert problems({"hot": {"actorz": 2}}) == [
        "hot.actorz: unknown key (Extra inputs are not permitted), got 2"
    ]
    assert problems({"sink": {}})[0].startswith("sink: unknown key")


def test_bad_values_named_with_their_path() -> None:
    found = problems(
        {"hot": {"actors": 0}, "warm": {"max_delay": "soon"}, "cold": {"flush_rows": -1}}
    )
    assert "hot.actors: Input should be greater than or equal to 1, got 0" in found
    assert any(p.startswith("warm.max_delay: expected a duration like") for p in found)
    assert any(p.startswith("cold.flush_rows:") for p in found)


def test_cross_field_checks() -> None:
    assert any(
        "key_groups (2) must be >= actors (4)" in p
        for p in problems({"hot": {"actors": 4, "key_groups": 2}})
    )
    assert any("needs 'path'" in p for p in problems({"source": {"kind": "file"}}))


def test_policy_errors_carry_the_policy_prefix() -> None:
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_dict(
            {
                "policy": {
                    "rules": [{"name": "a", "route": "tepid", "when": {"field": "x", "eq": 1}}]
                }
            }
        )
    assert info.value.problems == [
        "policy.rules[0] (a).route: expected one of cold, hot, warm, got 'tepid'"
    ]


def test_overrides_and_file_errors(tmp_path: Path) -> None:
    config = load_config(
        ROOT / "examples" / "demo.yaml", {"source.events": 10, "cold.lake_uri": "s3://b/x"}
    )
    assert (config.source.events, config.cold.lake_uri) == (10, "s3://b/x")
    with pytest.raises(ConfigError, match=r"missing\.yaml: no such pipeline config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(bad)


def test_processor_names() -> None:
    # Known: the built-in ones (and any a test module registered before), by name.
    with pytest.raises(ConfigError, match=r"unknown processor 'nope'; known: .*player_features"):
        hot_processor("nope")
    assert warm_processor("tests.slow:SlowKpis").__name__ == "SlowKpis"
    with pytest.raises(ConfigError, match="is not a HotProcessor subclass"):
        hot_processor("tests.slow:SlowKpis")


def test_storage_secrets_stay_out_of_repr() -> None:
    config = PipelineConfig.from_dict({"cold": {"storage_options": {"secret": "hunter2"}}})
    assert "hunter2" not in repr(config)


def test_event_mix_is_validated_and_used() -> None:
    assert any(
        p.startswith("source.event_mix: expected event types")
        for p in problems({"source": {"event_mix": {"a": -1}}})
    )
    from engine.pipeline import source_from_config

    config = PipelineConfig.from_dict(
        {
            "source": {
                "events": 2_000,
                "event_mix": {"purchase": 1, "refund": 0},
                "malformed_share": 0,
            }
        }
    )
    data = b"".join(b.data or b"" for b in source_from_config(config).blocks())
    assert data.count(b'"event_type":"purchase"') == 2_000


def test_kafka_source_settings() -> None:
    base = {"kind": "kafka", "bootstrap": "127.0.0.1:9092", "topics": ["events"]}
    config = PipelineConfig.from_dict(
        {"name": "k", "source": {**base, "idle_timeout": "3s", "start": 1_764_000_000_000}}
    )
    assert (config.source.idle_timeout, config.source.start) == ("3s", 1_764_000_000_000)
    assert problems({"name": "k", "source": {**base, "idle_timeout": "soon"}}) == [
        "source.idle_timeout: expected a duration like '250ms', '30s', '15m', '2h' or '7d', "
        "got 'soon'"
    ]
    assert any("needs 'bootstrap'" in p for p in problems({"source": {"kind": "kafka"}}))


def test_a_kafka_pipeline_needs_a_name_of_letters_digits_and_dashes() -> None:
    """The name scopes checkpoints and file names in a shared lake (engine.lake.file_stem)."""
    base = {"kind": "kafka", "bootstrap": "127.0.0.1:9092", "topics": ["events"]}
    assert problems({"source": base}) == [
        "name: required with a kafka source (it scopes this pipeline's checkpoints and lake"
        " files); add e.g. 'name: game-events' to the config, or --name"
    ]
    (bad,) = problems({"name": "game_events", "source": base})
    assert bad.startswith("name: String should match pattern") and "got 'game_events'" in bad
    assert PipelineConfig.from_dict({"name": "game-events-2", "source": base}).name == (
        "game-events-2"
    )
    assert PipelineConfig.from_dict({}).name is None  # a bounded source: its kind names it
