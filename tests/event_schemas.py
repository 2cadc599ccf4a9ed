"""The published StateChanged event schema (schemas/events/), and what the tests check events against.

Every event a test produces is validated against the current schema and, as a consumer written against it
would read it (ignoring members it does not know), against every previously published version.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas" / "events"
CURRENT = SCHEMAS / "StateChanged.json"
PUBLISHED = SCHEMAS / "published"


def load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def published_versions() -> list[Path]:
    """The published versions, oldest first (StateChanged.v<N>.json)."""
    return sorted(PUBLISHED.glob("StateChanged.v*.json"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))


def consumer_view(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as a consumer applies it: members it does not know are ignored, not refused."""
    relaxed = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("additionalProperties") is False:
                del node["additionalProperties"]
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(relaxed)
    return relaxed


def detail_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of the event's detail alone, its definitions kept for references."""
    return {**schema["definitions"]["StateChanged"], "definitions": schema["definitions"]}


@cache
def _validators() -> tuple[tuple[str, Any, Any], ...]:
    found = [(CURRENT.name, load(CURRENT))]
    found += [(path.name, consumer_view(load(path))) for path in published_versions()]
    return tuple(
        (name, jsonschema_rs.Draft4Validator(schema), jsonschema_rs.Draft4Validator(detail_schema(schema)))
        for name, schema in found
    )


def _problems(validator: Any, instance: Any) -> list[str]:
    return [f"{'/' + '/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(instance)]


def assert_valid_event(event: dict[str, Any]) -> None:
    """A whole EventBridge event (envelope and detail), as a rule's target receives it."""
    for name, whole, _ in _validators():
        problems = _problems(whole, event)
        assert not problems, f"event does not satisfy {name}: {problems}"


def assert_valid_detail(detail: dict[str, Any] | str) -> None:
    """An event's detail (parsed, or the PutEvents entry's Detail text)."""
    parsed = json.loads(detail) if isinstance(detail, str) else detail
    for name, _, part in _validators():
        problems = _problems(part, parsed)
        assert not problems, f"event detail does not satisfy {name}: {problems}"


def _types(node: dict[str, Any]) -> set[str] | None:
    declared = node.get("type")
    if declared is None:
        return None  # any JSON
    return {declared} if isinstance(declared, str) else set(declared)


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        path = node["$ref"].removeprefix("#/").split("/")
        target: Any = root
        for part in path:
            target = target[part]
        node = target
    return node


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in `new` would break a consumer written against `old`: a member removed or no longer required,
    a type, an enum or a pattern widened or changed. Adding members (required or not) breaks no consumer
    that ignores what it does not know, which the schema's description asks of consumers."""
    found: list[str] = []

    def compare(was: dict[str, Any], now: dict[str, Any], where: str) -> None:
        was, now = _resolve(old, was), _resolve(new, now)
        old_types, new_types = _types(was), _types(now)
        if old_types is not None and (new_types is None or not new_types <= old_types):
            found.append(f"{where}: type {sorted(old_types)} became {sorted(new_types or {'any'})}")
        if "enum" in was and (
            "enum" not in now or not set(map(json.dumps, now["enum"])) <= set(map(json.dumps, was["enum"]))
        ):
            found.append(f"{where}: enum {was['enum']} became {now.get('enum', 'unrestricted')}")
        for word in ("pattern", "format", "minimum", "maximum", "maxLength", "minLength", "items"):
            if word in was and word != "items" and was[word] != now.get(word):
                found.append(f"{where}: {word} {was[word]!r} became {now.get(word)!r}")
        if "items" in was:
            if "items" not in now:
                found.append(f"{where}: items are no longer described")
            else:
                compare(was["items"], now["items"], f"{where}/items")
        was_required, now_required = set(was.get("required", ())), set(now.get("required", ()))
        for member in sorted(was_required - now_required):
            found.append(f"{where}/{member}: no longer required")
        now_members = now.get("properties", {})
        for member, described in was.get("properties", {}).items():
            if member not in now_members:
                found.append(f"{where}/{member}: removed")
            else:
                compare(described, now_members[member], f"{where}/{member}")

    compare(old, new, "")
    if old.get("x-amazon-events-detail-type") != new.get("x-amazon-events-detail-type"):
        found.append("detail type changed")
    return found


PROPOSALS = SCHEMAS / "ProposalLifecycle.json"


@cache
def _proposal_validators() -> tuple[tuple[str, Any], ...]:
    found = [(PROPOSALS.name, load(PROPOSALS))]
    found += [
        (path.name, consumer_view(load(path)))
        for path in sorted(PUBLISHED.glob("ProposalLifecycle.v*.json"), key=lambda p: int(p.stem.rsplit(".v", 1)[1]))
    ]
    return tuple((name, jsonschema_rs.Draft4Validator(schema)) for name, schema in found)


def assert_valid_proposal_event(entry: dict[str, Any]) -> None:
    """A proposal lifecycle event's PutEvents entry, as the bus delivers it (the envelope around its detail),
    against the current ProposalLifecycle schema and, as their consumers read it, every published version."""
    event = {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": entry["DetailType"],
        "source": entry["Source"],
        "account": "123456789012",
        "time": "2026-12-02T05:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": json.loads(entry["Detail"]),
    }
    for name, validator in _proposal_validators():
        problems = _problems(validator, event)
        assert not problems, f"{entry['DetailType']} does not satisfy {name}: {problems}"
