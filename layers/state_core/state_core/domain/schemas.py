"""Value schemas: a named JSON Schema (draft 2020-12) governing the keys that match its patterns.

Pure rules, no I/O and no validator: names, patterns and which keys a schema governs, the registry's
records, and the 422 a value that violates its schema gets. The validator itself is loaded by
`service.schemas` only when a governed key is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from state_core.domain.errors import BadRequest, Conflict, StateError
from state_core.domain.keys import KEY_PATTERN

NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
_NAME = re.compile(NAME_PATTERN + r"\Z")
# A pattern is an exact key, or a prefix followed by `*` (an empty prefix would govern every key).
_PATTERN = re.compile(rf"(?:{KEY_PATTERN})\*?\Z")
MAX_PATTERNS = 20
MAX_SCHEMA_BYTES = 65_536
# A 422 lists this many violations, then how many more there were.
MAX_VIOLATIONS = 20
MODES = ("checked", "forward")


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise BadRequest(
            f"a schema name is 1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit: {name!r}"
        )
    return name


def validate_patterns(patterns: object) -> tuple[str, ...]:
    """1 to 20 distinct patterns, each an exact key or a key prefix ending in `*`."""
    if not isinstance(patterns, list) or not patterns or len(patterns) > MAX_PATTERNS:
        raise BadRequest(f"patterns must be a list of 1 to {MAX_PATTERNS} key patterns")
    for pattern in patterns:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise BadRequest(f"a pattern is a key, or a key prefix followed by '*': {pattern!r}")
    if len(set(patterns)) != len(patterns):
        raise BadRequest("patterns must be distinct")
    return tuple(patterns)


def pattern_matches(pattern: str, key: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some key matches both patterns."""
    if a.endswith("*") and b.endswith("*"):
        return a[:-1].startswith(b[:-1]) or b[:-1].startswith(a[:-1])
    if a.endswith("*"):
        return pattern_matches(a, b)
    if b.endswith("*"):
        return pattern_matches(b, a)
    return a == b


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One published version of a named schema. `document` is the JSON Schema as published (canonical
    JSON text); `mode` is `forward` when it was published without checking the values already stored."""

    name: str
    version: int
    document: str
    patterns: tuple[str, ...]
    created_at: str
    created_by: str
    mode: str = "checked"

    def governs(self, key: str) -> bool:
        return any(pattern_matches(pattern, key) for pattern in self.patterns)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "patterns": list(self.patterns),
            "mode": self.mode,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


def governing(schemas: tuple[SchemaVersion, ...] | list[SchemaVersion], key: str) -> SchemaVersion | None:
    """The schema governing `key`, if any: publishing refuses overlapping patterns, so at most one does."""
    for schema in schemas:
        if schema.governs(key):
            return schema
    return None


def overlapping(patterns: tuple[str, ...], others: list[SchemaVersion], name: str) -> list[str]:
    """What in other schemas' patterns a key of `patterns` could also match: a key governed by two schemas
    would have two answers to "is this value valid", so publishing refuses it."""
    return [
        f"{pattern} overlaps {other.name}'s {theirs}"
        for other in others
        if other.name != name
        for theirs in other.patterns
        for pattern in patterns
        if patterns_overlap(pattern, theirs)
    ]


@dataclass(frozen=True, slots=True)
class Violation:
    pointer: str  # JSON Pointer (RFC 6901) into the value
    message: str


class SchemaViolation(StateError):
    """A value its key's schema refuses: 422, nothing written. Lists at most MAX_VIOLATIONS violations,
    each a JSON Pointer and the validator's message, and how many there were in all."""

    status, title, slug = 422, "Value violates its schema", "schema-violation"

    def __init__(self, key: str, schema: SchemaVersion, violations: list[Violation], total: int) -> None:
        super().__init__(
            f"the value of key {key} does not satisfy schema {schema.name} version {schema.version}: "
            f"{total} violation{'s' if total != 1 else ''}"
        )
        self.key = key
        self.schema_name = schema.name
        self.schema_version = schema.version
        self.violations = violations[:MAX_VIOLATIONS]
        self.total = total
        self.operation_index: int | None = None  # a transaction's operation

    def extensions(self) -> dict[str, Any]:
        where = {} if self.operation_index is None else {"index": self.operation_index}
        return {
            **where,
            "key": self.key,
            "schema": {"name": self.schema_name, "version": self.schema_version},
            "violations": [{"pointer": v.pointer, "message": v.message} for v in self.violations],
            "violation_count": self.total,
        }


class SchemaConflict(Conflict):
    """A publish the registry refuses as it stands: another publish came first, or patterns overlap."""

    def __init__(self, detail: str, reasons: list[str]) -> None:
        super().__init__(detail)
        self.reasons = reasons

    def extensions(self) -> dict[str, Any]:
        return {"reasons": self.reasons}


class SchemaSource(Protocol):
    """The registry's storage (storage.schemas.SchemaStore), as the service needs it."""

    def current(self) -> list[SchemaVersion]: ...
    def version(self, name: str, version: int | None) -> SchemaVersion | None: ...
    def versions(self, name: str) -> list[SchemaVersion]: ...
    def publish(self, schema: SchemaVersion, *, previous: int | None, revision: int) -> None: ...
    def revision(self) -> int: ...
