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


def test_a_whole_pipeline_config_is_told_apart_and_checked(tmp_path: Path) -> None:
    done = run_cli("validate", "examples/demo.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("examples/demo.yaml: a valid pipeline config")
    assert "1. monetization -> hot" in done.stdout
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("hot: {actors: 0}\npolicy: {default: boiling}\n")
    done = run_cli("validate", str(bad))
    assert done.returncode == 1
    assert "invalid pipeline config" in done.stderr
    assert "policy.default: expected one of cold, hot, warm, got 'boiling'" in done.stderr
    assert "hot.actors: Input should be greater than or equal to 1, got 0" in done.stderr
    # --pipeline: a file with only policy keys read as a pipeline (then `rules` is unknown).
    done = run_cli("validate", "--pipeline", "examples/policy.yaml")
    assert done.returncode == 1 and "rules: unknown key" in done.stderr


def test_files_that_cannot_be_used_say_so_with_the_file_and_line(tmp_path: Path) -> None:
    done = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"thermocline: {tmp_path / 'missing.yaml'}: no such policy or pipeline config file"
    )
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    done = run_cli("validate", str(empty))
    assert done.returncode == 1 and "the policy or pipeline config file is empty" in done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("default: hot\nrules:\n  - name: x\n   route: hot\n")
    done = run_cli("validate", str(broken))
    assert done.returncode == 1
    assert f"{broken}:4:" in done.stderr and "not valid YAML" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_pipeline_config_may_name_its_policy_file(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "game.yaml").write_text("default: cold\nrules: []\n")
    config = tmp_path / "pipeline.yaml"
    config.write_text("policy: policies/game.yaml\nsource: {events: 10}\n")
    done = run_cli("validate", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("default -> cold")
    (tmp_path / "policies" / "game.yaml").write_text("default: tepid\n")
    done = run_cli("validate", str(config))
    assert done.returncode == 1
    assert "policy: default: expected one of cold, hot, warm, got 'tepid'" in done.stderr


def test_help_says_what_the_tool_is_and_every_flag_has_its_default() -> None:
    top = run_cli("--help").stdout
    assert "routes every event of a stream as hot" in top
    assert "validate" in top and "run" in top
    run_help = run_cli("run", "--help").stdout
    flags = [w for w in run_help.split() if w.startswith("--") and w != "--help"]
    assert {"--config", "--policy", "--path", "--events", "--lake", "--num-cpus"} <= set(flags)
    sections = run_help.split("\n  -")[1:]
    for section in sections:
        if section.startswith("h, --help"):
            continue
        assert (
            "default" in section
            or "store_true" in section
            or section.startswith(("q, --quiet", "v, --verbose", "-json", "-topic", "-path"))
        ), section


def test_a_billion_laughs_file_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("rules: [" + ", ".join(["*a8"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")  # 700 bytes, ~3.9 billion values expanded
    done = run_cli("validate", str(bomb))
    assert done.returncode == 1
    assert "more than 2,000,000 values once its aliases (*name) are expanded" in done.stderr
