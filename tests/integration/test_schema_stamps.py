"""Every read of a governed key, and its StateChanged event, names the value schema (name and version) its
value was checked against when it was written; an ungoverned key's never does. Through the real handlers
against the moto server (and a real Redis when the session has one): PUT, PATCH, a transaction, GET from
the table and from the cache, the bulk read, the listing with values, and the event built from the item."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration import test_list_state as listing
from tests.integration import test_schemas as base
from tests.integration.conftest import http_event
from tests.integration.test_batch_get import batch_event
from tests.integration.test_list_state import list_event
from tests.integration.test_schemas import patch, put
from tests.integration.test_transactions import tx_event

pytestmark = pytest.mark.integration

call, publish, name, prefix, cursor_key = base.call, base.publish, base.name, base.prefix, listing.cursor_key
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}


def read(call, key: str, *, consistent: bool) -> dict[str, Any]:
    query = {"consistent": "true"} if consistent else None
    status, body = call(http_event("get", key, query=query), "get_state")
    assert status == 200, body
    return body


def test_reads_of_a_governed_key_name_the_schema_version_it_was_written_under(call, invoke, publish, name, prefix):
    assert publish(name, SCHEMA, [f"{prefix}*"])[0] == 201
    key, free = f"{prefix}k", f"un{prefix}k"
    stamp = {"name": name, "version": 1}

    status, written = put(call, key, {"n": 1})
    assert (status, written["schema"]) == (201, stamp)
    assert read(call, key, consistent=True)["schema"] == stamp
    assert read(call, key, consistent=False)["schema"] == stamp  # filled into the cache, then from it
    assert read(call, key, consistent=False)["schema"] == stamp
    assert put(call, free, {"n": "anything"})[0] == 201
    assert "schema" not in read(call, free, consistent=True)
    assert "schema" not in read(call, free, consistent=False)

    # A new version: the next write of the key is checked against it and says so; a PATCH too.
    assert publish(name, SCHEMA, [f"{prefix}*"], query={"mode": "forward"})[1]["version"] == 2
    status, patched = patch(call, key, {"n": 2})
    assert (status, patched["schema"]) == (200, {"name": name, "version": 2})
    assert read(call, key, consistent=False)["schema"] == {"name": name, "version": 2}

    response = invoke("batch_get_state", batch_event({"keys": [key, free]}))
    items = json.loads(response["body"])["items"]
    assert [item.get("schema") for item in items] == [{"name": name, "version": 2}, None]

    status, page = call(list_event({"prefix": prefix, "include": "value"}, scopes="state:read"), "list_state")
    assert status == 200
    assert [(entry["key"], entry["schema"]) for entry in page["keys"]] == [(key, {"name": name, "version": 2})]
    status, page = call(list_event({"prefix": f"un{prefix}", "include": "value"}), "list_state")
    assert "schema" not in page["keys"][0]


def test_a_transaction_stamps_what_it_writes_and_a_delete_drops_the_stamp(call, invoke, publish, name, prefix):
    assert publish(name, SCHEMA, [f"{prefix}*"])[0] == 201
    governed, patched, free = f"{prefix}t", f"{prefix}p", f"un{prefix}t"
    assert put(call, patched, {"n": 1})[0] == 201
    assert put(call, free, {"n": 1})[0] == 201
    operations = [
        {"op": "put", "key": governed, "value": {"n": 5}},
        {"op": "patch", "key": patched, "patch": {"n": 6}},
        {"op": "put", "key": free, "value": {"n": 7}},
    ]
    response = invoke("transact_state", tx_event({"operations": operations}))
    assert response["statusCode"] == 200, response["body"]

    stamp = {"name": name, "version": 1}
    assert read(call, governed, consistent=True)["schema"] == stamp
    assert read(call, patched, consistent=False)["schema"] == stamp
    assert "schema" not in read(call, free, consistent=True)

    assert call(http_event("delete", governed), "delete_state")[0] == 204
    assert call(http_event("get", governed, query={"consistent": "true"}), "get_state")[0] == 404


def test_the_event_of_a_governed_write_names_the_schema_and_satisfies_the_published_event_schema(
    call, publish, name, prefix, store
):
    from state_core.stream.events import Operation, state_changed
    from tests.event_schemas import assert_valid_detail

    assert publish(name, SCHEMA, [f"{prefix}*"])[0] == 201
    assert put(call, f"{prefix}e", {"n": 1})[0] == 201
    assert put(call, f"un{prefix}e", {"n": 1})[0] == 201

    governed, free = (
        state_changed(store.get(key), operation=Operation.CREATED, previous_version=None, max_detail_bytes=200_000)
        for key in (f"{prefix}e", f"un{prefix}e")
    )
    assert json.loads(governed.detail())["schema"] == {"name": name, "version": 1}
    assert "schema" not in json.loads(free.detail())
    assert_valid_detail(governed.detail())
    assert_valid_detail(free.detail())


def test_an_old_version_read_from_the_history_names_the_schema_it_was_written_under(
    call, publish, name, prefix, state_table, client, store
):
    from state_core.storage.history import HistoryStore
    from state_core.stream.lifecycle import StreamLifecycle
    from tests.doubles import utc_now
    from tests.streams import record_history, stream_records

    assert publish(name, SCHEMA, [f"{prefix}*"])[0] == 201
    key = f"{prefix}h"
    assert put(call, key, {"n": 1})[0] == 201
    assert publish(name, SCHEMA, [f"{prefix}*"], query={"mode": "forward"})[1]["version"] == 2
    assert patch(call, key, {"n": 2})[0] == 200
    assert call(http_event("delete", key), "delete_state")[0] == 204
    # The stream's publisher records each version in the history.
    history = HistoryStore(client, state_table, retention_seconds=86_400)
    lifecycle = StreamLifecycle(client, state_table, history=history, states=store, blobs=store.blobs, clock=utc_now)
    record_history(lifecycle, stream_records(state_table, {key}))

    stamps = []
    for version in (1, 2):
        status, body = call(http_event("get", key, query={"version": str(version)}), "get_state")
        assert status == 200, body
        stamps.append(body["schema"])
    assert stamps == [{"name": name, "version": 1}, {"name": name, "version": 2}]
    listing = http_event("get", key)
    listing["rawPath"] = listing["requestContext"]["http"]["path"] = f"/state/{key}/history"
    listing["routeKey"] = listing["requestContext"]["routeKey"] = "GET /state/{key}/history"
    status, page = call(listing, "get_state")
    assert status == 200, page
    assert [entry.get("schema") for entry in page["versions"]] == [None, {"name": name, "version": 2}, stamps[0]]
