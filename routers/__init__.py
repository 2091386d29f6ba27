"""Thermocline's router: classify event batches as hot, warm or cold. Needs only pyarrow.

Example:
    >>> from routers import Router
    >>> router = Router.from_yaml("default: cold\\nrules: []")
    >>> router.policy.default
    'cold'
"""

from __future__ import annotations

from routers.conditions import AGE_COLUMN, Condition, age_ms
from routers.contract import SchemaContract, concat_conformed
from routers.decode import (
    DEAD_LETTER_SCHEMA,
    Decoded,
    DecodeHints,
    decode_arrow,
    decode_ndjson,
    new_contract,
    normalize_time,
    row_json,
)
from routers.duration import parse_duration_ms
from routers.errors import ConfigError, PolicyError, RouterError, ThermoclineError
from routers.policy import Policy, Rule
from routers.router import DEFAULT_RULE, Router
from routers.schema import TEMPERATURES, TIME_TYPE, EventSchema

__all__ = [
    "AGE_COLUMN",
    "DEAD_LETTER_SCHEMA",
    "DEFAULT_RULE",
    "TEMPERATURES",
    "TIME_TYPE",
    "Condition",
    "ConfigError",
    "DecodeHints",
    "Decoded",
    "EventSchema",
    "Policy",
    "PolicyError",
    "Router",
    "RouterError",
    "Rule",
    "SchemaContract",
    "ThermoclineError",
    "age_ms",
    "concat_conformed",
    "decode_arrow",
    "decode_ndjson",
    "new_contract",
    "normalize_time",
    "row_json",
    "parse_duration_ms",
]
