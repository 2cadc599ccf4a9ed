"""The four state handlers in-process, with events from events/, against the serialized moto server."""

import json

import pytest
from conftest import http_event

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def body_of(response):
    return json.loads(response["body"]) if response.get("body") else None


def put(invoke, key, value, **kwargs):
    return invoke("put_state", http_event("put", key, body={"value": value}, **kwargs))


def get(invoke, key, **kwargs):
    return invoke("get_state", http_event("get", key, **kwargs))


def assert_problem(response, status):
    assert response["statusCode"] == status, response
    assert response["headers"]["Content-Type"] == PROBLEM
    problem = body_of(response)
    assert problem["status"] == status
    assert set(problem) >= {"type", "title", "status", "detail"}
    return problem


def test_put_creates_then_replaces_with_etags(invoke, key):
    created = put(invoke, key, {"a": 1})
    replaced = put(invoke, key, {"a": 2})

    assert created["statusCode"] == 201
    assert created["headers"]["ETag"] == '"1"'
    assert replaced["statusCode"] == 200
    assert replaced["headers"]["ETag"] == '"2"'
    metadata = body_of(replaced)
    assert "value" not in metadata
    assert metadata["key"] == key
    assert metadata["updated_by"] == "alice"
    assert metadata["expires_at"] is None


def test_get_answers_the_envelope_and_304_for_the_current_etag(invoke, key):
    put(invoke, key, {"theme": "dark"})
    response = get(invoke, key)
    envelope = body_of(response)

    assert response["statusCode"] == 200
    assert response["headers"]["ETag"] == '"1"'
    assert envelope["value"] == {"theme": "dark"}
    assert set(envelope) == {"key", "value", "version", "created_at", "updated_at", "updated_by", "expires_at"}
    assert envelope["created_at"].endswith("Z")

    not_modified = get(invoke, key, headers={"If-None-Match": '"1"'})
    assert not_modified["statusCode"] == 304
    assert not not_modified.get("body")
    assert get(invoke, key, headers={"If-None-Match": '"0"'})["statusCode"] == 200


def test_patch_with_a_base64_merge_patch_body_merges(invoke, key):
    put(invoke, key, {"a": 1, "b": 2})
    response = invoke(
        "patch_state",
        http_event(
            "patch", key, body={"b": None, "c": 3}, content_type="application/merge-patch+json", base64_body=True
        ),
    )
    assert response["statusCode"] == 200
    assert body_of(response)["value"] == {"a": 1, "c": 3}
    assert response["headers"]["ETag"] == '"2"'


def test_delete_answers_204_with_the_tombstone_etag_then_get_is_404(invoke, key):
    put(invoke, key, 1)
    deleted = invoke("delete_state", http_event("delete", key))
    assert deleted["statusCode"] == 204
    assert deleted["headers"]["ETag"] == '"2"'
    assert not deleted.get("body")
    assert_problem(get(invoke, key), 404)
    assert_problem(invoke("delete_state", http_event("delete", key)), 404)
    assert put(invoke, key, 2)["headers"]["ETag"] == '"3"'


def test_if_match_mismatch_is_412_with_the_current_version(invoke, key):
    put(invoke, key, "v1")
    refused = put(invoke, key, "v2", headers={"If-Match": '"7"'})
    problem = assert_problem(refused, 412)
    assert problem["current_version"] == 1
    assert refused["headers"]["ETag"] == '"1"'
    assert body_of(get(invoke, key))["value"] == "v1"


@pytest.mark.parametrize("header", ["7", 'W/"1"', '"1", "2"', '"abc"', ""])
def test_malformed_if_match_is_400(invoke, key, header):
    put(invoke, key, "v1")
    assert_problem(put(invoke, key, "v2", headers={"If-Match": header}), 400)
    assert body_of(get(invoke, key))["version"] == 1


def test_request_without_authorizer_context_is_refused(invoke, key):
    assert_problem(get(invoke, key, authorizer=False), 401)
    assert_problem(put(invoke, key, 1, authorizer=False), 401)


def test_read_only_token_cannot_write_and_nothing_is_written(invoke, key):
    assert_problem(put(invoke, key, 1, scopes="state:read"), 403)
    assert_problem(invoke("delete_state", http_event("delete", key, scopes="state:read")), 403)
    assert_problem(get(invoke, key), 404)


def test_write_only_token_cannot_read(invoke, key):
    put(invoke, key, 1)
    assert_problem(get(invoke, key, scopes="state:write"), 403)


@pytest.mark.parametrize("bad_key", ["a" * 257, "clé", ":leading", "with space", "semi;colon"])
def test_invalid_keys_are_400_before_any_io(invoke, bad_key):
    assert_problem(get(invoke, bad_key), 400)
    assert_problem(put(invoke, bad_key, 1), 400)


@pytest.mark.parametrize(
    "body",
    [
        '{"value": NaN}',
        '{"value": 1e999}',
        '{"value": {"a": 1, "a": 2}}',
        '{"value": "\\ud800"}',
        '{"value": ',
        '{"value": 1, "value": 2}',
    ],
)
def test_invalid_json_is_400_and_nothing_is_written(invoke, key, body):
    response = invoke("put_state", http_event("put", key, body=body))
    assert_problem(response, 400)
    assert_problem(get(invoke, key), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"val": 1},
        [1],
        '"just a string"',
        {"value": 1, "extra": 2},
    ],
)
def test_put_body_of_the_wrong_shape_is_422_and_nothing_is_written(invoke, key, body):
    problem = assert_problem(invoke("put_state", http_event("put", key, body=body)), 422)
    assert "PutStateRequest" in problem["detail"]
    assert_problem(get(invoke, key), 404)


@pytest.mark.parametrize("ttl", ["60", 0, -5, 1.5, True, None, 10 * 365 * 24 * 3600 + 1, 10**30])
def test_put_with_a_ttl_outside_1_s_to_10_years_is_400_and_nothing_is_written(invoke, key, ttl):
    # A bad ttl_seconds is a bad request (400), not a body of the wrong shape (422): it is a bad parameter.
    body = {"value": 1, "ttl_seconds": ttl} if ttl is not None else '{"value": 1, "ttl_seconds": "soon"}'
    problem = assert_problem(invoke("put_state", http_event("put", key, body=body)), 400)
    assert "ttl_seconds" in problem["detail"]
    assert_problem(get(invoke, key), 404)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json-patch+json"]
)
def test_wrong_content_type_is_415(invoke, key, content_type):
    assert_problem(invoke("put_state", http_event("put", key, body={"value": 1}, content_type=content_type)), 415)
    put(invoke, key, {"a": 1})
    patched = invoke("patch_state", http_event("patch", key, body={"a": 2}, content_type=content_type))
    assert_problem(patched, 415)
    assert body_of(get(invoke, key))["value"] == {"a": 1}


def test_body_over_the_pre_parse_limit_is_413(invoke, key):
    body = '{"value": "' + "x" * (1_048_576 + 65_536) + '"}'
    assert_problem(invoke("put_state", http_event("put", key, body=body)), 413)
    assert_problem(get(invoke, key), 404)


def test_value_of_1_mib_plus_1_byte_is_413(invoke, key):
    assert_problem(put(invoke, key, "x" * (1_048_576 - 1)), 413)
    assert_problem(get(invoke, key), 404)


def test_nesting_65_deep_is_400_and_64_is_accepted(invoke, key):
    assert_problem(put(invoke, key, json.loads("[" * 65 + "]" * 65)), 400)
    assert put(invoke, key, json.loads("[" * 64 + "]" * 64))["statusCode"] == 201


def test_consistent_must_be_a_boolean(invoke, key):
    put(invoke, key, 1)
    assert get(invoke, key, query={"consistent": "true"})["statusCode"] == 200
    assert_problem(get(invoke, key, query={"consistent": "yes"}), 400)


def test_patch_of_a_missing_key_is_404(invoke, key):
    assert_problem(invoke("patch_state", http_event("patch", key, body={"a": 1})), 404)
