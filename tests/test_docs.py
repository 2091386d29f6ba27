"""The docs match the code: the configuration reference is current, links point at real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config_reference import reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_current() -> None:
    checked_in = (ROOT / "docs" / "configuration.md").read_text()
    assert checked_in == reference(), (
        "docs/configuration.md is stale: python -m engine.config_reference > docs/configuration.md"
    )


def test_every_config_key_is_described() -> None:
    rows = [line for line in reference().splitlines() if line.startswith("| `")]
    assert len(rows) > 50
    undescribed = [row.split("|")[1].strip() for row in rows if row.rstrip("| ").endswith("|")]
    assert undescribed == []
    for row in rows:
        assert row.split("|")[4].strip(), row


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md", "docs/configuration.md"])
def test_links_point_at_files_of_the_project(doc: str) -> None:
    path = ROOT / doc
    targets = re.findall(r"\]\(([^)#\s]+)", path.read_text())
    local = [t for t in targets if "://" not in t]
    missing = [t for t in local if not (path.parent / t).exists()]
    assert missing == []
