"""``thermocline serve`` refuses what cannot work before it listens: one line naming the setting
and the fix, exit status 2 (configuration) or 1 (the environment)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from engine.cli import main as cli


def _config(tmp_path: Path, **serve: object) -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"serve": serve}))
    return str(path)


def test_no_api_key_is_refused_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THERMOCLINE_API_KEYS", raising=False)
    assert cli(["serve", "--config", _config(tmp_path, bootstrap="127.0.0.1:1")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "serve.api_keys" in err and "THERMOCLINE_API_KEYS" in err


def test_no_kafka_address_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THERMOCLINE_API_KEYS", "k")
    assert cli(["serve", "--config", _config(tmp_path)]) == 2
    assert "serve.bootstrap" in capsys.readouterr().err


def test_a_bad_setting_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["serve", "--config", _config(tmp_path, rate_limit="fast", max_evnts=3)]) == 2
    err = capsys.readouterr().err
    assert "serve.rate_limit" in err and "'1000/second'" in err
    assert "serve.max_evnts: unknown key" in err


def test_a_port_in_use_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THERMOCLINE_API_KEYS", "k")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _config(tmp_path, bootstrap="127.0.0.1:1")
        assert cli(["serve", "--config", config, "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err


def test_keys_never_show_in_the_printed_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.config import PipelineConfig

    config = PipelineConfig.from_dict({"serve": {"api_keys": ["s3cret-key"]}})
    assert "s3cret-key" not in repr(config) and "s3cret-key" not in str(config)
