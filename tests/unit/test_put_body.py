"""PUT's body is checked by hand on the request path (api/bodies.py) and documented by the pydantic model the
OpenAPI document is built from (api/models.py): both must give the same answer on every body. For each body,
generated or hostile: both accept it with the same value and ttl, or both refuse it, and the hand check's
status (400 when only ttl_seconds is wrong, else 422) is the one the model's errors call for."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from state_core.api.bodies import PutBody, parse_put_body
from state_core.api.models import PutStateRequest
from state_core.domain.errors import BadRequest, UnprocessableBody
from state_core.domain.records import MAX_TTL_SECONDS

pytestmark = pytest.mark.unit

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ttls = (
    st.integers(min_value=-5, max_value=MAX_TTL_SECONDS + 5)
    | st.sampled_from([0, 1, MAX_TTL_SECONDS, MAX_TTL_SECONDS + 1, 10**30, -(10**30)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1.0, 1.5, float(MAX_TTL_SECONDS), 1e308, -0.0])
    | json_values
)
bodies = (
    st.fixed_dictionaries({"value": json_values}, optional={"ttl_seconds": ttls, "extra": json_values})
    | st.fixed_dictionaries({}, optional={"ttl_seconds": ttls, "val": json_values})
    | json_values
)


def model_answer(body: Any) -> PutBody | int:
    """What the documented model makes of `body`: the parsed body, or the status its errors call for."""
    try:
        model = PutStateRequest.model_validate(body)
    except ValidationError as refused:
        fields = {error["loc"][:1] for error in refused.errors()}
        return 400 if fields == {("ttl_seconds",)} else 422
    return PutBody(model.value, model.ttl_seconds)


def hand_answer(body: Any) -> PutBody | int:
    try:
        return parse_put_body(body)
    except BadRequest:
        return 400
    except UnprocessableBody:
        return 422


def same(left: PutBody | int, right: PutBody | int) -> bool:
    if isinstance(left, PutBody) and isinstance(right, PutBody):
        # Compared as JSON would (1 == 1.0 in Python too) and type for type, so 1 and True do not pass as equal.
        return repr(left.value) == repr(right.value) and left.ttl_seconds == right.ttl_seconds
    return left == right


@settings(max_examples=600, deadline=None)
@given(bodies)
def test_the_hand_check_and_the_documented_model_agree_on_every_body(body):
    assert same(hand_answer(body), model_answer(body)), body


@pytest.mark.parametrize(
    "body",
    [
        {"value": None},
        {"value": {"a": [1, 2, {"b": None}]}, "ttl_seconds": 60},
        {"value": 1, "ttl_seconds": None},
        {"value": 1, "ttl_seconds": 3600.0},
        {"value": 1, "ttl_seconds": True},
        {"value": 1, "ttl_seconds": "60"},
        {"value": 1, "ttl_seconds": 0},
        {"value": 1, "ttl_seconds": MAX_TTL_SECONDS + 1},
        {"value": 1, "ttl_seconds": math.ulp(0.0)},
        {"value": 1, "ttl_seconds": [60]},
        {"value": 1, "extra": 2},
        {"value": 1, "extra": 2, "ttl_seconds": "x"},
        {"ttl_seconds": 60},
        {},
        [],
        "value",
        None,
        {"Value": 1},
    ],
)
def test_the_two_agree_on_the_edges(body):
    assert same(hand_answer(body), model_answer(body)), body


def test_a_refusal_names_members_and_never_echoes_a_value():
    secret = "s3cr3t-value-never-echoed"
    with pytest.raises(UnprocessableBody) as refused:
        parse_put_body({"value": secret, secret: 1})
    assert "not a member of the body" in str(refused.value)
    with pytest.raises(UnprocessableBody) as many:
        parse_put_body({"value": 1, **{f"member-{i}-" + "x" * 10_000: i for i in range(50)}})
    assert len(str(many.value)) < 600
    assert "and 45 more" in str(many.value)
    with pytest.raises(BadRequest) as bad_ttl:
        parse_put_body({"value": 1, "ttl_seconds": secret})
    assert secret not in str(bad_ttl.value)
    assert "ttl_seconds" in str(bad_ttl.value)
