"""Conditions of routing rules: a small tree compiled to ``pyarrow.compute`` expressions.

The YAML form (``{field: tier, eq: vip}``, ``{age: {gt: 1h}}``, ``all/any/not``) is parsed into this
tree once, at load; :meth:`Condition.to_expression` turns it into one vectorized expression.

Null semantics (the same for every operator, so ``not`` and ``any`` behave as a reader expects):
a comparison on a null value, or on a column the batch does not have, is *false*, never null;
``exists: false`` is true for it. Combinators therefore only ever see true/false. A comparison on
a column of another kind than its literal (``{field: level, gte: 90}`` on a string column, after
a client's type drifted) is false as well: it does not match, like a null, instead of failing.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, Union

import pyarrow as pa
import pyarrow.compute as pc

from routers.duration import parse_duration_ms

__all__ = [
    "AGE_COLUMN",
    "COMPARISONS",
    "FIELD_OPS",
    "AgeCondition",
    "AllOf",
    "AnyOf",
    "Condition",
    "ExpressionCondition",
    "FieldCondition",
    "Not",
    "age_ms",
    "parse_condition",
]

#: Column the router adds before evaluating: ``now - event time`` in milliseconds (int64).
AGE_COLUMN: Final[str] = "__thermocline_age_ms"
#: Operators that order values.
COMPARISONS: Final[dict[str, str]] = {
    "gt": "greater",
    "gte": "greater_equal",
    "lt": "less",
    "lte": "less_equal",
}
#: Every operator a ``{field: F, OP: V}`` condition may use.
FIELD_OPS: Final[tuple[str, ...]] = (
    "eq",
    "ne",
    "in",
    "not_in",
    *COMPARISONS,
    "exists",
    "matches",
)
_COMBINATORS: Final[tuple[str, ...]] = ("all", "any", "not")

#: A compiled node: an expression, or a constant once a missing column has folded it.
Compiled: TypeAlias = Union[pc.Expression, bool]  # noqa: UP007 - evaluated at runtime


def age_ms() -> pc.Expression:
    """The age of each event in milliseconds, for Python-form rules.

    Example:
        >>> from routers.duration import parse_duration_ms
        >>> stale = age_ms() > parse_duration_ms("1h")
        >>> "__thermocline_age_ms" in str(stale)
        True
    """
    return pc.field(AGE_COLUMN)


class Condition(ABC):
    """A node of a rule's condition tree."""

    @abstractmethod
    def to_expression(
        self, missing: frozenset[str] = frozenset(), types: Mapping[str, pa.DataType] | None = None
    ) -> Compiled:
        """Compile to a boolean expression that is never null.

        Args:
            missing: columns the batch does not have; conditions on them fold to constants.
            types: the batch's column types; a comparison whose literal cannot meet its column's
                type folds to false (see :meth:`mismatched`).
        """

    def mismatched(self, types: Mapping[str, pa.DataType]) -> bool:
        """Whether some comparison in this condition meets a column of another kind."""
        return False

    @abstractmethod
    def fields(self) -> frozenset[str]:
        """Columns this condition reads (``AGE_COLUMN`` for age conditions)."""

    @abstractmethod
    def describe(self) -> str:
        """A one-line human form, for ``thermocline validate``."""


def _scalar(value: Any) -> pa.Scalar:
    return pa.scalar(value)


@dataclass(frozen=True)
class FieldCondition(Condition):
    """``{field: F, OP: V}``: compares one column with a literal."""

    field: str
    op: str
    value: Any

    def fields(self) -> frozenset[str]:
        return frozenset({self.field})

    def mismatched(self, types: Mapping[str, pa.DataType]) -> bool:
        kind = types.get(self.field)
        return kind is not None and not _comparable(self.op, self.value, kind)

    def to_expression(
        self, missing: frozenset[str] = frozenset(), types: Mapping[str, pa.DataType] | None = None
    ) -> Compiled:
        if self.field in missing:
            return self.op == "exists" and self.value is False
        if types is not None and self.mismatched(types):
            return False
        col = pc.field(self.field)
        if self.op == "exists":
            return col.is_valid() if self.value else col.is_null()
        if self.op == "in":
            # is_in is false (not null) for a null input when the value set has no null.
            return pc.is_in(col, value_set=pa.array(self.value))
        if self.op == "not_in":
            return col.is_valid() & ~pc.is_in(col, value_set=pa.array(self.value))
        if self.op == "eq":
            raw = col == _scalar(self.value)
        elif self.op == "ne":
            raw = col != _scalar(self.value)
        elif self.op == "matches":
            raw = pc.match_substring_regex(col, pattern=self.value)
        else:
            raw = getattr(pc, COMPARISONS[self.op])(col, _scalar(self.value))
        return pc.coalesce(raw, pa.scalar(False))

    def describe(self) -> str:
        return f"{self.field} {self.op} {self.value!r}"


@dataclass(frozen=True)
class AgeCondition(Condition):
    """``{age: {OP: DURATION}}``: compares ``now - event time`` with a duration."""

    op: str
    ms: int

    def fields(self) -> frozenset[str]:
        return frozenset({AGE_COLUMN})

    def to_expression(
        self, missing: frozenset[str] = frozenset(), types: Mapping[str, pa.DataType] | None = None
    ) -> Compiled:
        if AGE_COLUMN in missing:
            return False
        raw = getattr(pc, COMPARISONS[self.op])(pc.field(AGE_COLUMN), pa.scalar(self.ms))
        return pc.coalesce(raw, pa.scalar(False))

    def describe(self) -> str:
        return f"age {self.op} {self.ms}ms"


@dataclass(frozen=True)
class AllOf(Condition):
    """``all: [...]``: every child matches."""

    children: tuple[Condition, ...]

    def fields(self) -> frozenset[str]:
        return frozenset().union(*(c.fields() for c in self.children))

    def mismatched(self, types: Mapping[str, pa.DataType]) -> bool:
        return any(c.mismatched(types) for c in self.children)

    def to_expression(
        self, missing: frozenset[str] = frozenset(), types: Mapping[str, pa.DataType] | None = None
    ) -> Compiled:
        parts: list[pc.Expression] = []
        for child in self.children:
            compiled = child.to_expression(missing, types)
            if compiled is False:
                return False
            if compiled is not True:
                parts.append(compiled)
        if not parts:
            return True
        result = parts[0]
        for part in parts[1:]:
            result = result & part
        return result

    def describe(self) -> str:
        return "(" + " and ".join(c.describe() for c in self.children) + ")"


@dataclass(frozen=True)
class AnyOf(Condition):
    """``any: [...]``: at least one child matches."""

    children: tuple[Condition, ...]

    def fields(self) -> frozenset[str]:
        return frozenset().union(*(c.fields() for c in self.children))

    def mismatched(self, types: Mapping[str, pa.DataType]) -> bool:
        return any(c.mismatched(types) for c in self.children)

    def to_expression(
        self, missing: frozenset[str] = frozenset(), types: Mapping[str, pa.DataType] | None = None
    ) -> Compiled:
        parts: list[pc.Expression] = []
        for child in self.children:
            compiled = child.to_expression(missing, types)
            if compiled is True:
                return True
            if compiled is not False:
                parts.append(compiled)
        if not parts:
            return False
        result = parts[0]
        for part in parts[1:]:
            result = result | part
        return result

    def describe(self) -> str:
        return "(" + " or ".join(c.describe() for c in self.children) + ")"


@dataclass(frozen=True)
class Not(Condition):
    """``not: {...}``: the child does not match."""

    child: Condition

    def fields(self) -> frozenset[str]:
        return self.child.fields()

    def mismatched(self, types: Mapping[str, pa.DataType]) -> bool:
        return self.child.mismatched(types)

    def to_expression(
        self, missing: frozenset[str] = frozenset(), types: Mapping[str, pa.DataType] | None = None
    ) -> Compiled:
        compiled = self.child.to_expression(missing, types)
        if isinstance(compiled, bool):
            return not compiled
        return ~compiled

    def describe(self) -> str:
        return f"not {self.child.describe()}"


@dataclass(frozen=True)
class ExpressionCondition(Condition):
    """A ``pyarrow.compute.Expression`` given directly (the Python form for embedders).

    A null result counts as no match. The expression's columns must exist in every batch (the
    router cannot see inside it to fold missing columns); use :func:`age_ms` for event age.
    """

    expression: pc.Expression

    def fields(self) -> frozenset[str]:
        # Arrow exposes no field list for an expression; its text names the age column if used.
        return frozenset({AGE_COLUMN}) if AGE_COLUMN in str(self.expression) else frozenset()

    def to_expression(
        self, missing: frozenset[str] = frozenset(), types: Mapping[str, pa.DataType] | None = None
    ) -> Compiled:
        return pc.coalesce(self.expression, pa.scalar(False))

    def describe(self) -> str:
        return str(self.expression)


_SCALAR_TYPES = (str, int, float, bool)


def _comparable(op: str, value: Any, kind: pa.DataType) -> bool:
    """Whether ``op`` with literal ``value`` can be evaluated on a column of type ``kind``."""
    if op == "exists":
        return True
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if op == "matches":
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)
    sample = value[0] if op in ("in", "not_in") else value
    if isinstance(sample, bool):
        return pa.types.is_boolean(kind)
    if isinstance(sample, (int, float)):
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    if isinstance(sample, str):
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)
    return False


def _check_scalar(value: Any, path: str, problems: list[str]) -> bool:
    if isinstance(value, _SCALAR_TYPES):
        return True
    problems.append(f"{path}: expected a string, number or boolean, got {value!r}")
    return False


def _check_regex(pattern: Any, path: str, problems: list[str]) -> bool:
    if not isinstance(pattern, str):
        problems.append(f"{path}: expected a regular expression string, got {pattern!r}")
        return False
    try:
        # Validate with Arrow's own engine (RE2), the one that will run the pattern.
        pc.match_substring_regex(pa.array([""]), pattern=pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        problems.append(f"{path}: invalid regular expression {pattern!r} ({exc})")
        return False
    try:
        re.compile(pattern)
    except re.error as exc:
        problems.append(f"{path}: invalid regular expression {pattern!r} ({exc})")
        return False
    return True


def _parse_field(node: Mapping[str, Any], path: str, problems: list[str]) -> Condition | None:
    field = node["field"]
    if not isinstance(field, str) or not field:
        problems.append(f"{path}.field: expected a column name, got {field!r}")
        return None
    ops = [k for k in node if k != "field"]
    unknown = [k for k in ops if k not in FIELD_OPS]
    if unknown:
        problems.append(
            f"{path}.{unknown[0]}: unknown operator {unknown[0]!r}; expected one of "
            f"{', '.join(FIELD_OPS)}"
        )
        return None
    if len(ops) != 1:
        problems.append(
            f"{path}: expected exactly one operator ({', '.join(FIELD_OPS)}) beside 'field', "
            f"got {len(ops)}: {', '.join(ops) or 'none'}"
        )
        return None
    op = ops[0]
    value = node[op]
    where = f"{path}.{op}"
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            problems.append(f"{where}: expected a non-empty list of values, got {value!r}")
            return None
        if not all(_check_scalar(v, f"{where}[{i}]", problems) for i, v in enumerate(value)):
            return None
        kinds = {
            str if isinstance(v, str) else bool if isinstance(v, bool) else float for v in value
        }
        if len(kinds) > 1:
            problems.append(f"{where}: expected values of one kind (all strings or all numbers)")
            return None
        return FieldCondition(field, op, tuple(value))
    if op == "exists":
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
            return None
        return FieldCondition(field, op, value)
    if op == "matches":
        return FieldCondition(field, op, value) if _check_regex(value, where, problems) else None
    if value is None:
        problems.append(f"{where}: null never matches a comparison; use 'exists: false'")
        return None
    if not _check_scalar(value, where, problems):
        return None
    return FieldCondition(field, op, value)


def _parse_age(node: Mapping[str, Any], path: str, problems: list[str]) -> Condition | None:
    extra = [k for k in node if k != "age"]
    spec = node["age"]
    if extra:
        problems.append(f"{path}: unexpected key {extra[0]!r} beside 'age'")
        return None
    if not isinstance(spec, Mapping) or len(spec) != 1:
        problems.append(
            f"{path}.age: expected one comparison like {{gt: 1h}} (gt, gte, lt, lte), got {spec!r}"
        )
        return None
    ((op, text),) = spec.items()
    if op not in COMPARISONS:
        problems.append(
            f"{path}.age.{op}: unknown operator {op!r}; expected one of {', '.join(COMPARISONS)}"
        )
        return None
    try:
        return AgeCondition(op, parse_duration_ms(text))
    except ValueError as exc:
        problems.append(f"{path}.age.{op}: {exc}")
        return None


def parse_condition(node: Any, path: str, problems: list[str]) -> Condition | None:
    """Parse one YAML condition into a :class:`Condition`, appending every problem found.

    Args:
        node: the YAML value (a mapping), or a ``pyarrow.compute.Expression``.
        path: dotted path of ``node`` for messages, e.g. ``rules[2].when``.
        problems: list to append ``path: message`` strings to.

    Returns:
        The condition, or ``None`` when ``node`` has problems (they are in ``problems``).

    Example:
        >>> problems = []
        >>> parse_condition({"field": "tier", "eq": "vip"}, "rules[0].when", problems).describe()
        "tier eq 'vip'"
        >>> parse_condition({"age": {"gt": "soon"}}, "rules[1].when", problems) is None
        True
        >>> problems[0].endswith("got 'soon'")
        True
    """
    if isinstance(node, pc.Expression):
        return ExpressionCondition(node)
    if isinstance(node, Condition):
        return node
    if not isinstance(node, Mapping) or not node:
        problems.append(
            f"{path}: expected a condition mapping ({{field: ...}}, {{age: ...}}, all, any, not), "
            f"got {node!r}"
        )
        return None
    if "field" in node:
        return _parse_field(node, path, problems)
    if "age" in node:
        return _parse_age(node, path, problems)
    keys = list(node)
    if len(keys) != 1 or keys[0] not in _COMBINATORS:
        problems.append(
            f"{path}: unknown condition {', '.join(map(repr, keys))}; expected 'field' with an "
            f"operator, 'age', or one of {', '.join(_COMBINATORS)}"
        )
        return None
    kind, body = keys[0], node[keys[0]]
    if kind == "not":
        child = parse_condition(body, f"{path}.not", problems)
        return Not(child) if child is not None else None
    if not isinstance(body, Sequence) or isinstance(body, str) or not body:
        problems.append(f"{path}.{kind}: expected a non-empty list of conditions, got {body!r}")
        return None
    children = [parse_condition(c, f"{path}.{kind}[{i}]", problems) for i, c in enumerate(body)]
    if any(c is None for c in children):
        return None
    parsed = tuple(c for c in children if c is not None)
    return AllOf(parsed) if kind == "all" else AnyOf(parsed)
