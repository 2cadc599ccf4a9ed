"""Value schemas through the whole local stack: the registry's routes behind the gateway and the authorizer,
and a governed key refusing a value over HTTP while other keys are untouched."""

from __future__ import annotations

import time
import uuid

import pytest

from state_core.service.schemas import DEFAULT_CACHE_SECONDS as CACHE_SECONDS
from tests.doubles import ApiClient

pytestmark = pytest.mark.e2e

SCHEMA = {"type": "object", "required": ["theme"], "properties": {"theme": {"enum": ["dark", "light"]}}}


@pytest.fixture(scope="module")
def owner(devstack) -> ApiClient:
    return ApiClient(devstack, scope="state:read state:write state:schema")


@pytest.fixture(scope="module")
def writer(devstack) -> ApiClient:
    return ApiClient(devstack)


def test_publish_then_a_governed_key_refuses_a_bad_value_over_http(owner, writer):
    prefix = f"e2e{uuid.uuid4().hex[:10]}:"
    name = f"prefs-{uuid.uuid4().hex[:10]}"
    url = f"{owner.base_url}/schemas/{name}"

    assert writer.session.put(url, json={"schema": SCHEMA, "patterns": [f"{prefix}*"]}, timeout=30).status_code == 403
    published = owner.session.put(url, json={"schema": SCHEMA, "patterns": [f"{prefix}*"]}, timeout=30)
    assert published.status_code == 201, published.text
    assert published.json()["version"] == 1

    # A write function's container may hold the list of schemas read before the publish for up to 5 s (the
    # documented staleness): throwaway keys show when it has been read again, and that it is within the bound.
    published_at = time.monotonic()
    while writer.put(f"{prefix}probe-{uuid.uuid4().hex}", {"theme": "mauve"}).status_code != 422:
        assert time.monotonic() - published_at < CACHE_SECONDS + 3, "a publish was not enforced within its bound"
        time.sleep(0.25)

    refused = writer.put(f"{prefix}alice", {"theme": "mauve"})
    assert refused.status_code == 422
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert [v["pointer"] for v in refused.json()["violations"]] == ["/theme"]
    assert writer.get(f"{prefix}alice").status_code == 404
    assert writer.put(f"{prefix}alice", {"theme": "dark"}).status_code == 201
    assert writer.put(f"other{prefix}alice", {"theme": "mauve"}).status_code == 201

    listed = writer.session.get(f"{owner.base_url}/schemas", timeout=30)
    assert name in [s["name"] for s in listed.json()["schemas"]]
    assert writer.session.get(url, params={"version": "1"}, timeout=30).json()["schema"] == SCHEMA


def test_a_version_over_offending_values_is_checked_in_the_background_and_refused_over_http(owner, writer):
    """The check runs as asynchronous invocations of the registry's function by itself (the gateway's
    Lambda Invoke API), settles, reads the stored values and lists the offending key; reads name the schema
    version a value was checked against."""
    prefix = f"e2e{uuid.uuid4().hex[:10]}:"
    name = f"prefs-{uuid.uuid4().hex[:10]}"
    url = f"{owner.base_url}/schemas/{name}"
    loose = {"type": "object"}
    assert owner.session.put(url, json={"schema": loose, "patterns": [f"{prefix}*"]}, timeout=30).status_code == 201
    published_at = time.monotonic()
    while "schema" not in (written := writer.put(f"{prefix}good", {"theme": "dark"})).json():
        assert time.monotonic() - published_at < CACHE_SECONDS + 3, "a publish was not enforced within its bound"
        time.sleep(0.25)
    assert written.json()["schema"] == {"name": name, "version": 1}
    assert writer.put(f"{prefix}bad", {"colour": "mauve"}).status_code == 201
    assert writer.get(f"{prefix}bad").json()["schema"] == {"name": name, "version": 1}

    started = owner.session.put(url, json={"schema": SCHEMA, "patterns": [f"{prefix}*"]}, timeout=30)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    assert location == f"/schemas/{name}/checks/{started.json()['id']}"
    assert writer.session.get(f"{owner.base_url}{location}", timeout=30).status_code == 404  # not the publisher

    deadline = time.monotonic() + 60  # the settle (17 s), then a few steps
    while (check := owner.session.get(f"{owner.base_url}{location}", timeout=30).json())["state"] != "refused":
        assert check["state"] in ("settling", "running"), check
        assert time.monotonic() < deadline, check
        time.sleep(1)
    assert (check["keys_checked"], check["offending_key_count"]) == (2, 1)
    assert [entry["key"] for entry in check["offending_keys"]] == [f"{prefix}bad"]
    assert owner.session.get(url, timeout=30).json()["version"] == 1
