"""The configuration reference (``docs/configuration.md``), generated from the config models.

Every key of a pipeline config with its type, default and description: the description is the
``#:`` comment above the field in :mod:`engine.config`, so the code stays the one source. A test
checks that the checked-in file is current; regenerate it with::

    python -m engine.config_reference > docs/configuration.md
"""

from __future__ import annotations

import ast
import inspect
import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from engine import config as config_module
from engine.config import (
    ColdConfig,
    HotConfig,
    PipelineConfig,
    ServeConfig,
    ServeTopics,
    SourceConfig,
    WarmConfig,
)

__all__ = ["reference"]

_SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("", PipelineConfig),
    ("source", SourceConfig),
    ("hot", HotConfig),
    ("warm", WarmConfig),
    ("cold", ColdConfig),
    ("serve", ServeConfig),
    ("serve.topics", ServeTopics),
)


def reference() -> str:
    """The reference as Markdown."""
    comments, annotations = _fields()
    out = [
        "# Configuration reference",
        "",
        "Generated from `engine/config.py` by `python -m engine.config_reference`; do not edit.",
        "A pipeline config is one YAML file (`thermocline run --config FILE`); unknown keys are",
        "refused by name, and every value is checked when the file loads. The policy's own keys",
        "(`policy.schema`, `policy.default`, `policy.rules`) are described in the README and",
        "checked by `thermocline validate`. A `Duration` is a string like `250ms`, `30s`, `15m`,",
        "`2h` or `7d`.",
    ]
    for prefix, model in _SECTIONS:
        out += ["", f"## `{prefix}`" if prefix else "## top level", ""]
        doc = inspect.getdoc(model) or ""
        out += [doc.split("\n\n")[0].replace("\n", " "), ""]
        out += ["| key | type | default | what |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            if prefix == "" and name in {"source", "hot", "warm", "cold"}:
                what = comments.get((model.__name__, name), "")
                out.append(f"| `{name}` | section | see below | {what} |")
                continue
            key = f"{prefix}.{name}" if prefix else name
            kind = f"`{annotations[(model.__name__, name)]}`".replace("|", "\\|")
            out.append(
                f"| `{key}` | {kind} | {_default(field)} |"
                f" {_cell(comments.get((model.__name__, name), ''))} |"
            )
    return "\n".join(out) + "\n"


def _fields() -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """(class, field) -> the ``#:`` comment lines right above the field, joined; and -> the
    field's annotation as written (``Duration | None``, not what it expands to)."""
    source = inspect.getsource(config_module)
    lines = source.splitlines()
    found: dict[tuple[str, str], str] = {}
    written: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                text: list[str] = []
                row = item.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#:"):
                    text.insert(0, lines[row].strip()[2:].strip())
                    row -= 1
                found[(node.name, item.target.id)] = " ".join(text)
                written[(node.name, item.target.id)] = ast.unparse(item.annotation)
    return found, written


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "see below"
        if not isinstance(value, (dict, list, tuple)):  # the policy: route everything warm
            return "`{default: warm, rules: []}`"
        return f"`{json.dumps(value)}`"
    if field.default is PydanticUndefined:
        return "required"
    value = field.default
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`" if value is not None else "none"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


if __name__ == "__main__":
    print(reference(), end="")
