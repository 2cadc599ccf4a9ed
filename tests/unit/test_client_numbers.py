"""Numbers read from client input: query parameters, cursors, ETags, ttl_seconds.

`str.isdigit()` accepts digits that `int()` refuses ("\u00b2"), and `int()` accepts text that is no plain number
(" 5", "+5", "5_0", other scripts' digits): every parser takes ASCII digits within bounds, and anything
else is a 400, never an exception that reaches the client as a 500.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from state_core.api import edge
from state_core.api.bodies import parse_put_body
from state_core.api.history import MAX_PAGE, MAX_REQUESTED_VERSION, page_limit, requested_version
from state_core.api.models import PutStateRequest
from state_core.domain.errors import BadRequest
from state_core.domain.params import ascii_int
from state_core.domain.records import MAX_TTL_SECONDS
from state_core.security import audit
from state_core.service.history import decode_cursor, encode_cursor

pytestmark = pytest.mark.unit

# Text that str.isdigit() or int() accepts but that is not a plain ASCII number.
NOT_PLAIN_NUMBERS = [
    "\u00b2",
    "1\u00b2",
    "\u0663",
    "\uff15",
    " 5",
    "5 ",
    "+5",
    "-5",
    "5_0",
    "5\n",
    "0x5",
    "1e3",
    "1.0",
    "",
    "\u4e94",
]


@pytest.mark.parametrize("text", NOT_PLAIN_NUMBERS)
def test_ascii_int_takes_only_ascii_digits(text):
    assert ascii_int(text, low=0, high=10**20) is None


def test_ascii_int_bounds():
    assert ascii_int("7", low=1, high=7) == 7
    assert ascii_int("007", low=1, high=7) == 7
    assert ascii_int("8", low=1, high=7) is None
    assert ascii_int("0", low=1, high=7) is None
    assert ascii_int("9" * 5000, low=1, high=7) is None  # no int() of a huge text


@pytest.mark.parametrize("text", [*NOT_PLAIN_NUMBERS, "0", str(MAX_PAGE + 1)])
def test_a_bad_limit_is_a_bad_request(text):
    with pytest.raises(BadRequest, match="limit"):
        page_limit(text)


def test_good_limits():
    assert page_limit(None) == 100
    assert page_limit("1") == 1
    assert page_limit(str(MAX_PAGE)) == MAX_PAGE


@pytest.mark.parametrize("text", [*NOT_PLAIN_NUMBERS, "0", str(MAX_REQUESTED_VERSION + 1)])
def test_a_bad_version_is_a_bad_request(text):
    with pytest.raises(BadRequest, match="version"):
        requested_version(text)


def test_good_versions():
    assert requested_version(None) is None
    assert requested_version("1") == 1
    assert requested_version(str(MAX_REQUESTED_VERSION)) == MAX_REQUESTED_VERSION


def forged_cursor(key: str, version_text: str) -> str:
    """A cursor as the service builds one, around any version text (the format is not a secret)."""
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    text = f"h1:{tag}:{version_text}"
    check = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return base64.urlsafe_b64encode(f"{text}:{check}".encode()).decode("ascii").rstrip("=")


@pytest.mark.parametrize("version_text", [" 5", "+5", "5_0", "0", "-1", "1000000000000", ""])
def test_a_forged_cursor_with_a_version_that_is_no_plain_number_in_range_is_a_bad_request(version_text):
    with pytest.raises(BadRequest, match="cursor"):
        decode_cursor("k", forged_cursor("k", version_text))


def test_a_cursor_round_trips_to_its_version():
    assert decode_cursor("k", encode_cursor("k", 1)) == 1
    assert decode_cursor("k", forged_cursor("k", "999999999999")) == 999_999_999_999


def event(headers=None, query=None):
    raw = {"version": "2.0", "headers": headers or {}, "requestContext": {"http": {"method": "GET"}}}
    if query is not None:
        raw["queryStringParameters"] = query
    return APIGatewayProxyEventV2(raw)


@pytest.mark.parametrize(
    "header", ['"\u0663"', '"\uff13"', '"\u00b2"', '\u00a0"3"', '"3"\u2003', '"3"\n', '"+3"', 'W/"3"', '"3", "4"']
)
def test_if_match_takes_one_strong_etag_of_ascii_digits(header):
    with pytest.raises(BadRequest, match="If-Match"):
        edge.expectation(event({"if-match": header}), allow_if_none_match=False)


def test_if_match_good_forms():
    for header, version in (('"3"', 3), (' "3" ', 3), ('\t"12"', 12)):
        assert edge.expectation(event({"if-match": header}), allow_if_none_match=False).if_match == version


@pytest.mark.parametrize("header", ['"\u0663"', 'W/"\uff13"', '"3"\n'])
def test_if_none_match_with_no_plain_etag_matches_nothing(header):
    assert not edge.not_modified(event({"if-none-match": header}), 3)
    assert edge.not_modified(event({"if-none-match": 'W/"3"'}), 3)


def test_the_audit_record_reads_only_plain_etags():
    assert audit._version({"headers": {"ETag": '"7"'}}) == 7
    assert audit._version({"headers": {"ETag": '"\u0667"'}}) is None


@pytest.mark.parametrize("value", ["TRUE", "1", "", "true,true", "tru\u0435"])
def test_consistent_is_true_or_false_given_once(value):
    with pytest.raises(BadRequest, match="consistent"):
        edge.consistent_read_requested(event(query={"consistent": value}))


def test_consistent_good_forms():
    assert edge.consistent_read_requested(event(query={"consistent": "true"})) is True
    assert edge.consistent_read_requested(event(query={"consistent": "false"})) is False
    assert edge.consistent_read_requested(event()) is False


@pytest.mark.parametrize(
    ("ttl", "expected"), [(147499321.0, 147499321), (1.0, 1), (float(MAX_TTL_SECONDS), MAX_TTL_SECONDS)]
)
def test_a_ttl_that_is_a_whole_number_written_with_a_fraction_is_that_integer(ttl, expected):
    # JSON Schema's "integer" (the OpenAPI document's type) includes 147499321.0.
    assert PutStateRequest.model_validate({"value": 1, "ttl_seconds": ttl}).ttl_seconds == expected
    assert parse_put_body({"value": 1, "ttl_seconds": ttl}).ttl_seconds == expected


@pytest.mark.parametrize("ttl", [1.5, "5", True, 0.0, float(MAX_TTL_SECONDS + 1), 1e308, float("nan"), [5]])
def test_a_ttl_that_is_not_a_whole_number_in_range_is_a_bad_request(ttl):
    with pytest.raises(BadRequest, match="ttl_seconds"):
        parse_put_body({"value": 1, "ttl_seconds": ttl})
