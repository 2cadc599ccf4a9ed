"""The service over real HTTP: the local gateway, the real authorizer and handlers, the serialized moto
server, with dev tokens: the contract as a client of the deployed API sees it."""

import base64
import json
import threading
import uuid

import pytest
import requests

from tests.doubles import ApiClient

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(devstack):
    return ApiClient(devstack)


@pytest.fixture
def key():
    return f"e2e:{uuid.uuid4().hex}"


def assert_problem(response, status):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert {"type", "title", "status", "detail"} <= set(problem)
    return problem


def assert_absent(client, key):
    assert_problem(client.get(key), 404)


def test_the_whole_life_of_a_key(client, key):
    created = client.put(key, {"theme": "dark", "lang": "en"})
    assert (created.status_code, created.headers["ETag"]) == (201, '"1"')
    assert "value" not in created.json()

    replaced = client.put(key, {"theme": "light", "lang": "en"})
    assert (replaced.status_code, replaced.headers["ETag"]) == (200, '"2"')

    read = client.get(key)
    assert read.status_code == 200
    assert read.headers["ETag"] == '"2"'
    assert read.json()["value"] == {"theme": "light", "lang": "en"}
    assert read.json()["version"] == 2

    assert client.get(key, headers={"If-None-Match": '"2"'}).status_code == 304

    patched = client.patch(key, {"lang": None, "size": 3})
    assert patched.status_code == 200
    assert patched.json()["value"] == {"theme": "light", "size": 3}
    assert patched.headers["ETag"] == '"3"'

    deleted = client.delete(key)
    assert (deleted.status_code, deleted.headers["ETag"], deleted.content) == (204, '"4"', b"")
    assert_absent(client, key)
    assert_problem(client.delete(key), 404)

    again = client.put(key, "back")
    assert (again.status_code, again.headers["ETag"]) == (201, '"5"')


def test_if_match_mismatch_is_412_with_the_current_version_and_writes_nothing(client, key):
    client.put(key, "v1")
    refused = client.put(key, "v2", headers={"If-Match": '"9"'})
    assert assert_problem(refused, 412)["current_version"] == 1
    assert_problem(client.patch(key, {"a": 1}, headers={"If-Match": '"9"'}), 412)
    assert_problem(client.delete(key, headers={"If-Match": '"9"'}), 412)
    assert client.get(key).json()["value"] == "v1"


def test_if_none_match_star_on_an_existing_key_is_412_and_writes_nothing(client, key):
    assert client.put(key, "first", headers={"If-None-Match": "*"}).status_code == 201
    refused = client.put(key, "second", headers={"If-None-Match": "*"})
    assert assert_problem(refused, 412)["current_version"] == 1
    assert client.get(key).json() | {"value": "first", "version": 1} == client.get(key).json()


def test_20_concurrent_patches_each_land_exactly_once(client, key):
    client.put(key, {})
    statuses = []

    def add_member(index):
        statuses.append(client.patch(key, {f"member{index}": index}).status_code)

    threads = [threading.Thread(target=add_member, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    state = client.get(key).json()
    assert statuses == [200] * 20
    assert state["value"] == {f"member{i}": i for i in range(20)}
    assert state["version"] == 21


def test_compressible_value_of_exactly_1_mib_round_trips(client, key):
    value = {"blob": "ab" * 524_280}
    canonical = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    value["blob"] += "x" * (1_048_576 - len(canonical))
    canonical = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(canonical) == 1_048_576

    assert client.put(key, value).status_code == 201
    read = client.get(key)
    assert json.dumps(read.json()["value"], separators=(",", ":"), ensure_ascii=False).encode() == canonical


@pytest.mark.parametrize("bad_key", ["a" * 257, "%C3%A9t%C3%A9", ":leading", "with%20space", "semi;colon"])
def test_invalid_keys_are_400(client, bad_key):
    assert_problem(client.get(bad_key), 400)
    assert_problem(client.put(bad_key, 1), 400)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("{not json", 400),
        ('{"value": NaN}', 400),
        ('{"value": {"a": 1, "a": 2}}', 400),
        ('{"value": "\\udc00"}', 400),
        ('{"value": ' + "[" * 65 + "]" * 65 + "}", 400),
        ('{"wrong": 1}', 422),
        ('{"value": 1, "ttl_seconds": "soon"}', 400),  # a bad TTL is a bad parameter, not a wrong shape
    ],
)
def test_bad_put_bodies_are_refused_and_nothing_is_written(client, key, body, status):
    assert_problem(client.put(key, body=body), status)
    assert_absent(client, key)


def test_body_over_the_pre_parse_limit_is_413(client, key):
    body = '{"value": "' + "x" * (1_048_576 + 65_536) + '"}'
    assert_problem(client.put(key, body=body), 413)
    assert_absent(client, key)


def test_value_of_1_mib_plus_1_byte_is_413(client, key):
    assert_problem(client.put(key, "x" * (1_048_576 - 1)), 413)
    assert_absent(client, key)


def test_wrong_content_type_is_415(client, key):
    response = client.session.put(client.url(key), data='{"value": 1}', headers={"Content-Type": "text/plain"})
    assert_problem(response, 415)
    assert_absent(client, key)


def test_patch_of_a_missing_key_is_404(client, key):
    assert_problem(client.patch(key, {"a": 1}), 404)


def test_no_token_is_401_from_the_gateway(devstack, key):
    response = requests.get(f"{devstack.base_url}/state/{key}", timeout=30)
    assert (response.status_code, response.json()) == (401, {"message": "Unauthorized"})


def test_token_without_the_needed_scope_is_403_and_writes_nothing(devstack, client, key):
    reader = ApiClient(devstack, scope="state:read")
    assert_problem(reader.put(key, 1), 403)
    assert_problem(reader.delete(key), 403)
    assert_absent(client, key)


@pytest.mark.parametrize(
    "claims",
    [
        {"ttl": -300},
        {"issuer": "http://127.0.0.1:1/another-issuer"},
        {"audience": "another-service"},
    ],
    ids=["expired", "other-issuer", "other-audience"],
)
def test_rejected_tokens_are_403_from_the_gateway(devstack, key, claims):
    token = devstack.token(**claims)
    response = requests.get(
        f"{devstack.base_url}/state/{key}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert (response.status_code, response.json()) == (403, {"message": "Forbidden"})


def test_unmatched_route_is_the_gateways_404(client):
    response = client.session.get(f"{client.base_url}/nothing/here", timeout=30)
    assert (response.status_code, response.json()) == (404, {"message": "Not Found"})


def test_a_value_never_appears_in_any_log_or_error(devstack, client, key):
    canary = f"canary-{uuid.uuid4().hex}"
    responses = [
        client.put(key, {"secret": canary}),
        client.get(key),
        client.patch(key, {"also": canary}),
        client.put(key, body='{"value": {"' + canary + '": 1, "' + canary + '": 2}}'),  # duplicate member
        client.put(key, body='{"value": "' + canary + '", "extra": "' + canary + '"}'),  # wrong shape
        client.put(key, body='{"value": ["' + canary + '", NaN]}'),  # invalid JSON
        client.delete(key),
    ]
    assert [r.status_code for r in responses] == [201, 200, 200, 400, 422, 400, 204]
    for refused in responses[3:6]:
        assert canary not in refused.text

    logs = [path for path in devstack.log_dir.rglob("*") if path.is_file()]
    assert logs, "the stack wrote no logs to check"
    assert any(key in path.read_text(errors="replace") for path in logs), "the logs do not name the key"
    encoded = base64.b64encode(canary.encode()).decode()[:16]
    for path in logs:
        text = path.read_text(errors="replace")
        assert canary not in text, path
        assert encoded not in text, path
    assert canary not in "\n".join(devstack.output)
