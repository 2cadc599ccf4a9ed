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
