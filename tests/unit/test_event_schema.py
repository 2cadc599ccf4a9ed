"""The published StateChanged event schema: well formed, registered as is, and compatible with what was
published before (a change that would break a consumer fails here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from devstack.template import load_yaml
from state_core.domain.codec import StoredValue
from state_core.domain.records import SchemaStamp, StateRecord
from state_core.stream.events import Operation, state_changed
from tests.event_schemas import (
    CURRENT,
    assert_valid_detail,
    breaking_changes,
    detail_schema,
    load,
    published_versions,
)

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_schema_is_draft_04_as_the_eventbridge_registry_takes_it():
    schema = load(CURRENT)

    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    jsonschema_rs.Draft4Validator(schema)  # compiles: every keyword well formed
    assert jsonschema_rs.meta.is_valid(schema)


def test_the_template_registers_the_repository_schema_verbatim():
    resources = load_yaml(REPO_ROOT / "template.yaml")["Resources"]
    registered = resources["StateChangedEventSchema"]["Properties"]

    assert resources["EventSchemaRegistry"]["Type"] == "AWS::EventSchemas::Registry"
    assert registered["Type"] == "JSONSchemaDraft4"
    assert json.loads(registered["Content"]) == load(CURRENT)


def test_the_current_schema_breaks_no_consumer_of_any_published_version():
    versions = published_versions()

    assert versions, "no published version to compare with"
    for published in versions:
        assert breaking_changes(load(published), load(CURRENT)) == [], published.name


def mutated(change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(load(CURRENT))
    change(schema["definitions"]["StateChanged"])
    return schema


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["properties"].pop("actor"), "/detail/actor: removed"),
        (lambda d: d["required"].remove("actor"), "/detail/actor: no longer required"),
        (lambda d: d["properties"]["version"].update(type=["integer", "string"]), "/detail/version: type"),
        (lambda d: d["properties"]["version"].pop("type"), "/detail/version: type"),
        (lambda d: d["properties"]["operation"]["enum"].append("renamed"), "/detail/operation: enum"),
        (lambda d: d["properties"]["key"].update(pattern=".*"), "/detail/key: pattern"),
        (lambda d: d["properties"]["version"].pop("minimum"), "/detail/version: minimum"),
    ],
    ids=["removed", "optional", "widened-type", "untyped", "widened-enum", "pattern", "minimum"],
)
def test_a_change_that_would_break_a_consumer_is_caught(change, expected):
    problems = breaking_changes(load(CURRENT), mutated(change))

    assert any(p.startswith(expected) for p in problems), problems


def test_adding_a_member_or_narrowing_breaks_nobody():
    def grow(detail: dict[str, Any]) -> None:
        detail["properties"]["region_hint"] = {"type": "string"}
        detail["properties"]["previous_version"]["type"] = "integer"
        detail["properties"]["operation"]["enum"].remove("expired")

    assert breaking_changes(load(CURRENT), mutated(grow)) == []


def record(**overrides: Any) -> StateRecord:
    fields: dict[str, Any] = {
        "key": "user:1",
        "version": 3,
        "value": StoredValue.encode(b'{"theme":"dark"}'),
        "created_at": "2026-11-28T05:00:00.000Z",
        "updated_at": "2026-11-28T06:00:00.000Z",
        "updated_by": "alice",
        "deleted": False,
        "expires_at": None,
    }
    fields.update(overrides)
    return StateRecord(**fields)


@pytest.mark.parametrize("operation", list(Operation))
def test_every_operation_and_shape_of_detail_satisfies_the_schema(operation):
    details = [
        state_changed(record(), operation=operation, previous_version=2, max_detail_bytes=65_536),
        state_changed(record(), operation=operation, previous_version=None, max_detail_bytes=10),
        state_changed(record(transaction_id="tx-1"), operation=operation, previous_version=2, max_detail_bytes=65_536),
        state_changed(
            record(schema=SchemaStamp("user-prefs", 2)),
            operation=operation,
            previous_version=2,
            max_detail_bytes=65_536,
        ),
    ]

    for detail in details:
        assert_valid_detail(detail.detail())


def test_the_schema_refuses_what_a_consumer_could_not_read():
    validator = jsonschema_rs.Draft4Validator(detail_schema(load(CURRENT)))
    good = json.loads(
        state_changed(record(), operation=Operation.UPDATED, previous_version=2, max_detail_bytes=65_536).detail()
    )

    assert validator.is_valid(good)
    for bad in (
        {**good, "version": "3"},
        {**good, "operation": "renamed"},
        {**good, "occurred_at": "yesterday"},
        {**good, "value_omitted": False},
        {**good, "surprise": 1},
        {k: v for k, v in good.items() if k != "actor"},
    ):
        assert not validator.is_valid(bad), bad
