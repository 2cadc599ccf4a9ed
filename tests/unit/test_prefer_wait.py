"""RFC 7240's `Prefer: wait=N` as the GET handler reads it: the first `wait` counts, a malformed one is
ignored (a preference is never an error), huge values are clamped without converting unbounded digits, and
no header drives the parser into quadratic backtracking."""

from __future__ import annotations

import time

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from state_core.api import edge

pytestmark = pytest.mark.unit


def requested(prefer: str | None) -> int | None:
    headers = {} if prefer is None else {"prefer": prefer}
    return edge.requested_wait(APIGatewayProxyEventV2({"headers": headers, "requestContext": {}}))


@pytest.mark.parametrize(
    ("prefer", "seconds"),
    [
        (None, None),
        ("", None),
        ("wait=10", 10),
        ("WAIT=10", 10),  # preference names are case-insensitive
        (' wait = "7" ', 7),  # BWS around "=", and a quoted word
        ("wait=007", 7),
        ("wait=0", 0),
        ("respond-async, wait=3", 3),
        ("return=minimal; foo=bar, wait=4;x=1", 4),
        ("wait=4;", 4),
        ('x="a,b", wait=2', 2),  # a comma inside a quoted string separates nothing
        ("wait=3, wait=9", 3),  # only the first counts
        ("wait=" + "9" * 40, 10**9),  # clamped later; never converted digit by digit
        ("handling=lenient", None),
    ],
)
def test_a_wait_preference_is_read_as_rfc_7240_writes_it(prefer: str | None, seconds: int | None) -> None:
    assert requested(prefer) == seconds


@pytest.mark.parametrize(
    "prefer",
    [
        "wait=-1",
        "wait=+1",
        "wait=1.5",
        "wait=",
        "wait",
        "wait=abc",
        "wait=\u00b2",
        "wait=\u0661",
        'wait="1',
        "wait=1 2",
        "wait=abc, wait=5",
        "wait=1e3",
        "wait=0x10",
    ],
)
def test_a_malformed_wait_is_ignored(prefer: str) -> None:
    assert requested(prefer) is None


@pytest.mark.parametrize(
    "prefer",
    [
        "wait=1;" + " " * 9000 + "x",
        "a" + ";" * 9000,
        'x="' + "\\a" * 4500,
        "wait=1" + " ;" * 4500 + "!",
        "," * 10_000,
        '"' * 10_000,
    ],
)
def test_a_hostile_header_of_api_gateways_largest_size_is_parsed_in_linear_time(prefer: str) -> None:
    started = time.perf_counter()
    requested(prefer)
    assert time.perf_counter() - started < 0.05
