"""Routing policy: ordered rules, first match wins, a default temperature for the rest.

Two forms compile to the same thing: the operators' YAML (:meth:`Policy.from_yaml`) and Python
(:class:`Rule` with a condition mapping or a ``pyarrow.compute.Expression``). Everything is checked
at load; a policy that loads never fails later for reasons of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Final

import pyarrow.compute as pc

from routers.conditions import Condition, parse_condition
from routers.contract import parse_type
from routers.errors import PolicyError
from routers.schema import TEMPERATURES, TIME_UNITS, EventSchema
from routers.yamlfile import YamlFileError, read_yaml

__all__ = ["Policy", "Rule"]

_TOP_LEVEL: Final[tuple[str, ...]] = ("schema", "default", "rules")
_RULE_KEYS: Final[tuple[str, ...]] = ("name", "route", "when")
_ROLE_KEYS: Final[tuple[str, ...]] = ("id", "key", "time", "type", "arrival")
_SCHEMA_KEYS: Final[tuple[str, ...]] = (*_ROLE_KEYS, "time_unit", "time_range", "columns")
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
#: Rule indices are int16 in the router: far beyond any readable policy.
MAX_RULES: Final[int] = 10_000


@dataclass(frozen=True)
class Rule:
    """One routing rule: rows matching ``when`` go to ``route``.

    Args:
        name: unique within the policy; counters are kept by it.
        route: ``"hot"``, ``"warm"`` or ``"cold"``.
        when: a condition mapping as in YAML, a parsed :class:`Condition`, or a
            ``pyarrow.compute.Expression`` (see :func:`routers.age_ms` for event age).

    Example:
        >>> import pyarrow.compute as pc
        >>> Rule("monetization", "hot", pc.field("event_type").isin(["purchase"])).route
        'hot'
    """

    name: str
    route: str
    when: Condition | Mapping[str, Any] | pc.Expression = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.when, Condition):
            problems: list[str] = []
            parsed = parse_condition(self.when, f"rule {self.name!r}.when", problems)
            if parsed is None:
                raise PolicyError(problems)
            object.__setattr__(self, "when", parsed)

    @property
    def condition(self) -> Condition:
        """The parsed condition tree."""
        assert isinstance(self.when, Condition)  # normalized in __post_init__
        return self.when


@dataclass(frozen=True)
class Policy:
    """A complete routing policy.

    Args:
        rules: evaluated in order; the first rule that matches a row decides its temperature.
        default: temperature of rows that no rule matches.
        schema: the role columns.

    Raises:
        PolicyError: listing every problem by dotted path.

    Example:
        >>> policy = Policy.from_yaml('''
        ... default: warm
        ... rules:
        ...   - {name: stale, route: cold, when: {age: {gt: 1h}}}
        ... ''')
        >>> [r.name for r in policy.rules], policy.default
        (['stale'], 'warm')
    """

    rules: tuple[Rule, ...] = ()
    default: str = "warm"
    schema: EventSchema = field(default_factory=EventSchema)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        problems: list[str] = []
        if self.default not in TEMPERATURES:
            problems.append(f"default: {_expected_route(self.default)}")
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            where = f"rules[{i}] ({rule.name})"
            if rule.name in seen:
                problems.append(
                    f"{where}.name: duplicate rule name {rule.name!r}, first used by "
                    f"rules[{seen[rule.name]}]"
                )
            seen.setdefault(rule.name, i)
            if rule.route not in TEMPERATURES:
                problems.append(f"{where}.route: {_expected_route(rule.route)}")
        if len(self.rules) > MAX_RULES:
            problems.append(f"rules: at most {MAX_RULES} rules, got {len(self.rules)}")
        if problems:
            raise PolicyError(problems)

    @classmethod
    def from_yaml(cls, source: str | Path) -> Policy:
        """Load a policy from a YAML file path or from YAML text.

        Args:
            source: a path to a ``.yaml`` file, or the YAML text itself.

        Raises:
            PolicyError: the file cannot be read or parsed, or the policy is invalid.
        """
        import yaml  # only the YAML form needs it; embedders using Python rules do not

        if isinstance(source, Path) or ("\n" not in source and source.endswith((".yaml", ".yml"))):
            return cls.from_file(source)
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise PolicyError([f"<yaml>: not valid YAML ({exc})"]) from exc
        return cls.from_dict(data if data is not None else {})

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Load a policy from a YAML file: a missing, empty or oversized file and YAML errors are
        reported with the file (and line), see :func:`routers.yamlfile.read_yaml`.

        Raises:
            PolicyError: the file cannot be used, or the policy is invalid.
        """
        try:
            data = read_yaml(path, "policy")
        except YamlFileError as exc:
            raise PolicyError([str(exc)]) from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Policy:
        """Build a policy from plain data (the parsed YAML), checking every key and value.

        Args:
            data: a mapping with ``schema``, ``default`` and ``rules``.
            path: prefix for messages when the policy is nested in a larger config.

        Raises:
            PolicyError: listing every problem by dotted path.
        """
        prefix = f"{path}." if path else ""
        if not isinstance(data, Mapping):
            raise PolicyError([f"{path or '<policy>'}: expected a mapping, got {data!r}"])
        problems: list[str] = []
        for key in data:
            if key not in _TOP_LEVEL:
                problems.append(
                    f"{prefix}{key}: unknown key; expected one of {', '.join(_TOP_LEVEL)}"
                )
        schema = _parse_schema(data.get("schema", {}), f"{prefix}schema", problems)
        default = data.get("default", "warm")
        if default not in TEMPERATURES:
            problems.append(f"{prefix}default: {_expected_route(default)}")
        raw_rules = data.get("rules", [])
        rules: list[Rule] = []
        if not isinstance(raw_rules, Sequence) or isinstance(raw_rules, str):
            problems.append(f"{prefix}rules: expected a list of rules, got {raw_rules!r}")
            raw_rules = []
        if len(raw_rules) > MAX_RULES:  # before parsing any of them
            raise PolicyError([f"{prefix}rules: at most {MAX_RULES} rules, got {len(raw_rules)}"])
        names: dict[str, int] = {}
        for i, raw in enumerate(raw_rules):
            rule = _parse_rule(raw, i, f"{prefix}rules[{i}]", names, problems)
            if rule is not None:
                rules.append(rule)
        if problems:
            raise PolicyError(problems)
        return cls(rules=tuple(rules), default=default, schema=schema)

    def describe(self) -> str:
        """The compiled rules, one per line, as ``thermocline validate`` prints them."""
        s = self.schema
        lines = [f"schema: id={s.id} key={s.key} time={s.time} type={s.type}"]
        for i, rule in enumerate(self.rules):
            lines.append(f"{i + 1}. {rule.name} -> {rule.route}: {rule.condition.describe()}")
        lines.append(f"default -> {self.default}")
        return "\n".join(lines)


def _expected_route(value: Any) -> str:
    return f"expected one of {', '.join(sorted(TEMPERATURES))}, got {value!r}"


def _parse_schema(data: Any, path: str, problems: list[str]) -> EventSchema:
    if not isinstance(data, Mapping):
        problems.append(f"{path}: expected a mapping of roles to column names, got {data!r}")
        return EventSchema()
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _SCHEMA_KEYS:
            problems.append(f"{path}.{key}: unknown key; expected one of {', '.join(_SCHEMA_KEYS)}")
        elif key in _ROLE_KEYS:
            if not isinstance(value, str) or not value:
                problems.append(f"{path}.{key}: expected a column name, got {value!r}")
            else:
                values[key] = value
        elif key == "time_unit":
            if value not in TIME_UNITS:
                problems.append(
                    f"{path}.time_unit: expected one of {', '.join(TIME_UNITS)}, got {value!r}"
                )
            else:
                values[key] = value
        elif key == "time_range":
            bounds = _parse_time_range(value, f"{path}.time_range", problems)
            if bounds is not None:
                values[key] = bounds
        else:
            columns = _parse_columns(value, f"{path}.columns", problems)
            if columns is not None:
                values[key] = columns
    roles = [values.get(k, getattr(EventSchema, k)) for k in ("id", "key", "time", "type")]
    if len(set(roles)) != 4 or values.get("arrival", EventSchema.arrival) in roles:
        problems.append(f"{path}: each role needs its own column, got {tuple(roles)}")
        return EventSchema()
    for name, _ in values.get("columns", ()):
        if name in roles:
            problems.append(f"{path}.columns.{name}: a role column is typed by its role; remove it")
            return EventSchema()
    # The lake (Delta) compares column names ignoring case: two such names cannot both be kept.
    named: dict[str, str] = {}
    arrival = values.get("arrival", EventSchema.arrival)
    for name in [*roles, arrival, *(n for n, _ in values.get("columns", ()))]:
        other = named.setdefault(name.lower(), name)
        if other != name:
            problems.append(
                f"{path}: {other!r} and {name!r} differ only in case, and the lake's column "
                "names do not tell them apart; rename one"
            )
            return EventSchema()
    return EventSchema(**values)


def _parse_columns(
    value: Any, path: str, problems: list[str]
) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(value, Mapping):
        problems.append(f"{path}: expected a mapping of column names to types, got {value!r}")
        return None
    columns = []
    for name, kind in value.items():
        try:
            parse_type(kind)
        except ValueError as exc:
            problems.append(f"{path}.{name}: {exc}")
            continue
        columns.append((str(name), str(kind)))
    return tuple(columns)


def _parse_time_range(value: Any, path: str, problems: list[str]) -> tuple[int, int] | None:
    """``[start, end]`` as ISO dates or datetimes (YAML may have parsed them already)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        problems.append(
            f"{path}: expected [start, end] like [2000-01-01, 2100-01-01], got {value!r}"
        )
        return None
    bounds = []
    for item in value:
        if isinstance(item, datetime):
            moment = item if item.tzinfo else item.replace(tzinfo=timezone.utc)
        elif isinstance(item, date):
            moment = datetime(item.year, item.month, item.day, tzinfo=timezone.utc)
        else:
            try:
                moment = datetime.fromisoformat(str(item))
            except ValueError:
                problems.append(f"{path}: expected ISO dates like 2000-01-01, got {item!r}")
                return None
            moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        bounds.append(int(moment.timestamp() * 1000))
    if bounds[0] >= bounds[1]:
        problems.append(f"{path}: the start must be before the end, got {value!r}")
        return None
    return bounds[0], bounds[1]


def _parse_rule(
    raw: Any, index: int, path: str, names: dict[str, int], problems: list[str]
) -> Rule | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: expected a rule mapping with name, route and when, got {raw!r}")
        return None
    name = raw.get("name")
    where = f"{path} ({name})" if isinstance(name, str) else path
    before = len(problems)
    for key in raw:
        if key not in _RULE_KEYS:
            problems.append(f"{where}.{key}: unknown key; expected one of {', '.join(_RULE_KEYS)}")
    for key in _RULE_KEYS:
        if key not in raw:
            problems.append(f"{where}: missing '{key}'")
    if isinstance(name, str) and _NAME.fullmatch(name):
        if name in names:
            problems.append(
                f"{where}.name: duplicate rule name {name!r}, first used by rules[{names[name]}]"
            )
        names.setdefault(name, index)
    elif "name" in raw:
        problems.append(f"{where}.name: expected a name of letters, digits, '_.:-', got {name!r}")
    route = raw.get("route")
    if "route" in raw and route not in TEMPERATURES:
        problems.append(f"{where}.route: {_expected_route(route)}")
    condition = parse_condition(raw["when"], f"{where}.when", problems) if "when" in raw else None
    if len(problems) > before or condition is None:
        return None
    assert isinstance(name, str) and isinstance(route, str)
    return Rule(name=name, route=route, when=condition)
