"""routers.records: the framing of JSON array bodies and the depth scan, against the stdlib's
parser on arbitrary JSON (hypothesis): every element found, with its exact bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routers.records import NotAJsonArray, TooManyElements, max_depth, split_json_array

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    ['"', "\\", "\\\\", '\\"', "[", "]", "{", "}", ",", "\n", "[{,}]"]
)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n  "])


@settings(max_examples=300, deadline=None)
@given(st.lists(_VALUES, max_size=8), st.data())
def test_every_element_of_an_array_with_its_exact_bytes(values: list[object], data) -> None:
    texts = [json.dumps(v, ensure_ascii=data.draw(st.booleans())) for v in values]
    spaces = [data.draw(_SPACE) for _ in range(len(texts) * 2 + 2)]
    body = spaces[0] + "[" + ",".join(
        spaces[2 * i + 1] + t + spaces[2 * i + 2] for i, t in enumerate(texts)
    ) + "]" + spaces[-1]  # fmt: skip
    elements = split_json_array(body.encode())
    assert elements == [t.encode() for t in texts]
    assert [json.loads(e) for e in elements] == json.loads(body)


@settings(max_examples=200, deadline=None)
@given(_VALUES)
def test_depth_as_the_parser_nests(value: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    assert max_depth(json.dumps(value).encode()) == depth(value)


@pytest.mark.parametrize(
    "body",
    [b"", b"  ", b"{}", b'"[1]"', b"[1", b'["a]', b"[1]]", b"[1] x", b"[[1]", b'[1, "\\"]'],
)
def test_bodies_that_are_not_one_array_are_refused(body: bytes) -> None:
    with pytest.raises(NotAJsonArray):
        split_json_array(body)


def test_the_element_count_is_checked_before_any_element_is_cut() -> None:
    with pytest.raises(TooManyElements, match="2000001 events, at most 1000"):
        split_json_array(b"[" + b"1," * 2_000_000 + b"1]", max_elements=1000)
    assert len(split_json_array(b"[" + b"1," * 999 + b"1]", max_elements=1000)) == 1000
