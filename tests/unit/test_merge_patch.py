"""RFC 7396 JSON Merge Patch: every example of Appendix A."""

import pytest

from state_core.domain.merge_patch import apply_merge_patch

pytestmark = pytest.mark.unit

APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), APPENDIX_A)
def test_appendix_a_example_gives_the_rfc_result(target, patch, expected):
    assert apply_merge_patch(target, patch) == expected


def test_merge_leaves_its_arguments_unchanged():
    target, patch = {"a": {"b": 1}}, {"a": {"b": None, "c": 2}}
    apply_merge_patch(target, patch)
    assert target == {"a": {"b": 1}}
    assert patch == {"a": {"b": None, "c": 2}}
