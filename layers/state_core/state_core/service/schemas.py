"""The value schema registry and its enforcement.

Publishing checks a schema (a valid draft 2020-12 document, at most 64 KB, patterns that no other schema's
patterns overlap) and writes it as its name's next version. Enforcement finds the schema governing a key
among the current versions, read at most once per `cache_seconds` per container, and validates a value
against it before anything is written.

Staleness: a container keeps the list of current schemas for `cache_seconds` (5 s by default), so for up to
that long after a publish a write may still be checked against the previous version (or, for a brand new
schema, not at all). Compiled validators are cached per container by name and version, which never change.

The validator (jsonschema_rs) is imported only when a governed key is written or a schema published, so
a write function's cold start does not pay for it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from state_core.domain.codec import canonical_json, check_depth
from state_core.domain.errors import BadRequest, NotFound
from state_core.domain.records import rfc3339
from state_core.domain.schemas import (
    MAX_SCHEMA_BYTES,
    MAX_VIOLATIONS,
    SchemaConflict,
    SchemaSource,
    SchemaVersion,
    SchemaViolation,
    Violation,
    governing,
    overlapping,
    validate_name,
    validate_patterns,
)

if TYPE_CHECKING:
    from state_core.domain.ports import MetricsSink

DEFAULT_CACHE_SECONDS = 5.0
VALUE_MASK = "(value)"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# Compiled validators by (name, version): a published version never changes, so they never go stale.
_compiled: dict[tuple[str, int], Any] = {}
_compiled_lock = threading.Lock()


def compile_schema(document: Any) -> Any:
    """A draft 2020-12 validator for `document`; BadRequest when it is not a valid schema."""
    import jsonschema_rs

    try:
        # Messages mask the value: a PATCH's merged result holds stored parts a writer may not be allowed to
        # read, and a problem document must not disclose them. Remote references are never fetched (a
        # schema cannot make the service call out).
        # Linear-time regular expressions: a schema's `pattern` cannot make a write spin (no lookaround or
        # backreferences, which a publish refuses).
        return jsonschema_rs.Draft202012Validator(
            document, mask=VALUE_MASK, retriever=_no_remote, pattern_options=jsonschema_rs.RegexOptions()
        )
    except (jsonschema_rs.ValidationError, ValueError, TypeError) as exc:
        raise BadRequest(f"not a valid JSON Schema (draft 2020-12): {_first_line(exc)}") from None


def _no_remote(uri: str) -> Any:
    raise ValueError(f"remote references are not fetched: {uri[:200]}")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def validator_for(schema: SchemaVersion) -> Any:
    key = (schema.name, schema.version)
    found = _compiled.get(key)
    if found is None:
        found = compile_schema(json.loads(schema.document))
        with _compiled_lock:
            _compiled[key] = found
    return found


def _pointer(path: Any) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def violations_of(schema: SchemaVersion, value: Any) -> tuple[list[Violation], int]:
    """The first MAX_VIOLATIONS violations of `value` (JSON Pointer and message) and how many in all. A
    message names the schema's expectation, never more of the value than the validator quotes of the
    offending part."""
    found: list[Violation] = []
    total = 0
    for error in validator_for(schema).iter_errors(value):
        total += 1
        if len(found) < MAX_VIOLATIONS:
            found.append(Violation(_pointer(error.instance_path), _message(error)))
    return found, total


def _message(error: Any) -> str:
    text = str(error.message)
    return text if len(text) <= 300 else text[:297] + "..."


class SchemaRegistry:
    def __init__(
        self,
        source: SchemaSource,
        *,
        clock: Callable[[], datetime],
        metrics: MetricsSink | None = None,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._clock = clock
        self._metrics = metrics
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._current: list[SchemaVersion] | None = None
        self._read_at = 0.0

    # ------------------------------------------------------------------------------ enforcement
    def current(self) -> list[SchemaVersion]:
        """Every schema's current version, as read at most `cache_seconds` ago."""
        now = self._monotonic()
        if self._current is None or now - self._read_at >= self._cache_seconds:
            self._current = self._source.current()
            self._read_at = now
        return self._current

    def governing(self, key: str) -> SchemaVersion | None:
        return governing(self.current(), key)

    def check(self, key: str, value: Any) -> SchemaVersion | None:
        """Raise SchemaViolation (422) unless `value` satisfies the schema governing `key`; the schema it
        was checked against (None when no schema governs the key)."""
        schema = self.governing(key)
        if schema is None:
            return None
        violations, total = violations_of(schema, value)
        if total:
            if self._metrics is not None:
                self._metrics.add_metric(name="SchemaViolations", unit="Count", value=1)
            raise SchemaViolation(key, schema, violations, total)
        return schema

    # ------------------------------------------------------------------------------ the registry
    def publish(self, name: str, body: Any, *, actor: str, mode: str) -> tuple[SchemaVersion, bool]:
        """Publish `body` ({"schema": ..., "patterns": [...]}) as `name`'s next version: (the version,
        whether the name is new). BadRequest for a bad body or schema, SchemaConflict (409) when its
        patterns overlap another schema's or another publish came first."""
        validate_name(name)
        document, patterns = _parse_body(body)
        compile_schema(document)
        text = canonical_json(document).decode("utf-8")
        if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
            raise BadRequest(f"a schema is at most {MAX_SCHEMA_BYTES} bytes as canonical JSON")
        revision = self._source.revision()
        current = self._source.current()
        clashes = overlapping(patterns, current, name)
        if clashes:
            raise SchemaConflict(
                f"schema {name}'s patterns overlap other schemas': a key would be governed by two", clashes
            )
        previous = next((schema for schema in current if schema.name == name), None)
        published = SchemaVersion(
            name=name,
            version=(previous.version if previous else 0) + 1,
            document=text,
            patterns=patterns,
            created_at=rfc3339(self._clock()),
            created_by=actor,
            mode=mode,
        )
        self._source.publish(published, previous=previous.version if previous else None, revision=revision)
        self._current = None  # this container sees its own publish at once
        return published, previous is None

    def previous_patterns(self, name: str) -> tuple[str, ...]:
        """The patterns `name` governs now (empty for a new name): replacing them needs the right to them too."""
        schema = self._source.version(name, None)
        return schema.patterns if schema is not None else ()

    def get(self, name: str, version: int | None) -> SchemaVersion:
        validate_name(name)
        schema = self._source.version(name, version)
        if schema is None:
            which = "any version" if version is None else f"version {version}"
            raise NotFound(f"schema {name} has no {which}")
        return schema

    def list_current(self) -> list[SchemaVersion]:
        return sorted(self._source.current(), key=lambda schema: schema.name)


def _parse_body(body: Any) -> tuple[Any, tuple[str, ...]]:
    if not isinstance(body, dict) or set(body) - {"schema", "patterns"} or "schema" not in body:
        raise BadRequest('the body is {"schema": <JSON Schema>, "patterns": [<key pattern>, ...]}')
    document = body["schema"]
    if not isinstance(document, dict | bool):
        raise BadRequest("schema must be a JSON Schema: an object or a boolean")
    if isinstance(document, dict) and document.get("$schema", DRAFT_2020_12) != DRAFT_2020_12:
        raise BadRequest(f"schemas are draft 2020-12: $schema, if given, is {DRAFT_2020_12}")
    check_depth(document)
    return document, validate_patterns(body.get("patterns"))


__all__ = ["SchemaConflict", "SchemaRegistry", "compile_schema", "validator_for", "violations_of"]
