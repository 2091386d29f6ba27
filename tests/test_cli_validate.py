"""``thermocline validate``: compiled rules and exit 0, or every problem and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )


def test_valid_policy_prints_compiled_rules() -> None:
    done = run_cli("validate", "examples/policy.yaml")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == "1. monetization -> hot: event_type in ('purchase', 'refund')"
    assert lines[2] == "2. stale -> cold: age gt 3600000ms"
    assert lines[-1] == "default -> warm"


def test_invalid_policy_prints_errors_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: x, route: boiling, when: {age: {gt: soon}}}\n")
    done = run_cli("validate", str(bad))
    assert done.returncode == 1
    assert "rules[0] (x).route: expected one of cold, hot, warm, got 'boiling'" in done.stderr
    assert "rules[0] (x).when.age.gt: expected a duration like" in done.stderr


def test_router_import_does_not_load_ray() -> None:
    code = "import sys, routers; routers.Router.from_yaml('rules: []'); print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
