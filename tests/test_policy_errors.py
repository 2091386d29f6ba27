"""A bad policy fails at load, naming the rule, the field path and what was expected."""

from __future__ import annotations

import pytest

from routers import Policy, PolicyError, Router, parse_duration_ms


def load_error(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        Router.from_yaml(text)
    return str(info.value)


def test_unknown_operator() -> None:
    msg = load_error("rules: [{name: a, route: hot, when: {field: x, equals: 1}}]")
    assert "rules[0] (a).when.equals: unknown operator 'equals'" in msg
    assert "eq, ne, in" in msg


def test_unknown_route() -> None:
    msg = load_error("rules: [{name: a, route: lukewarm, when: {field: x, eq: 1}}]")
    assert "rules[0] (a).route: expected one of cold, hot, warm, got 'lukewarm'" in msg


def test_unparsable_duration_has_dotted_path() -> None:
    msg = load_error(
        "rules:\n - name: live\n   route: hot\n"
        "   when: {all: [{field: x, eq: 1}, {age: {lte: soon}}]}"
    )
    assert "rules[0] (live).when.all[1].age.lte: expected a duration like" in msg
    assert "got 'soon'" in msg


def test_bad_regex() -> None:
    msg = load_error("rules: [{name: a, route: hot, when: {field: x, matches: '(unclosed'}}]")
    assert "rules[0] (a).when.matches: invalid regular expression '(unclosed'" in msg


def test_duplicate_rule_name() -> None:
    msg = load_error(
        "rules:\n - {name: a, route: hot, when: {field: x, eq: 1}}\n"
        " - {name: a, route: cold, when: {field: x, eq: 2}}"
    )
    assert "rules[1] (a).name: duplicate rule name 'a', first used by rules[0]" in msg


def test_unknown_top_level_and_rule_keys() -> None:
    msg = load_error(
        "defualt: hot\nrules: [{name: a, route: hot, when: {field: x, eq: 1}, pin: 1}]"
    )
    assert "defualt: unknown key; expected one of schema, default, rules" in msg
    assert "rules[0] (a).pin: unknown key" in msg


def test_all_problems_reported_at_once() -> None:
    msg = load_error(
        "default: tepid\nrules:\n - {name: a, route: hot, when: {age: {gt: 5}}}\n - {route: hot}"
    )
    lines = msg.splitlines()
    assert "default: expected one of cold, hot, warm, got 'tepid'" in lines
    assert any(line.startswith("rules[0] (a).when.age.gt") for line in lines)
    assert "rules[1]: missing 'name'" in lines
    assert "rules[1]: missing 'when'" in lines


@pytest.mark.parametrize(
    "when",
    [
        "{field: x}",
        "{field: x, eq: 1, ne: 2}",
        "{field: x, in: []}",
        "{field: x, in: [a, 1]}",
        "{field: x, exists: maybe}",
        "{field: x, eq: null}",
        "{age: {within: 1h}}",
        "{all: []}",
        "{some: [{field: x, eq: 1}]}",
        "plain",
    ],
)
def test_malformed_conditions(when: str) -> None:
    msg = load_error(f"rules: [{{name: a, route: hot, when: {when}}}]")
    assert msg.startswith("rules[0] (a).when")


def test_schema_roles_checked() -> None:
    msg = load_error("schema: {key: user_id, shard: x}")
    assert "schema.shard: unknown key; expected one of id, key, time, type, arrival" in msg
    policy = Policy.from_yaml("schema: {key: user_id}")
    assert policy.schema.key == "user_id"
    assert policy.schema.time == "event_time"


def test_schema_names_equal_but_for_case_are_refused() -> None:
    msg = load_error("schema: {key: Event_ID}")
    assert "schema: 'event_id' and 'Event_ID' differ only in case" in msg and "rename one" in msg
    msg = load_error("schema: {columns: {amount: double, Amount: int64}}")
    assert "'amount' and 'Amount' differ only in case" in msg


def test_yaml_syntax_error_and_missing_file(tmp_path) -> None:
    assert "not valid YAML" in load_error("rules: [unclosed")
    with pytest.raises(PolicyError, match=r"nope\.yaml: no such policy file"):
        Policy.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("30s", 30_000),
        ("15m", 900_000),
        ("2h", 7_200_000),
        ("7d", 604_800_000),
        ("1h30m", 5_400_000),
        ("1.5s", 1_500),
        ("0s", 0),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["soon", "", "15", "15 m", "-1s", "1w", "m15", 15, None])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like"):
        parse_duration_ms(text)
