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

Evolution: a `checked` publish whose patterns govern stored values does not publish at once. It records the
version as pending, with a check (a job), and the check reads every governed key's current value through
the listing index. While the version is pending, a write of a key it governs must satisfy it as well as the
current version, so neither outcome leaves a value that slipped past: the check passes (the pending version
becomes current) or is refused (offending keys listed, the pending version dropped).

The race with writes: a container may still check writes against the registry it read up to
`cache_seconds` before the version became pending, and such a write may land up to a write function's
timeout later. So the check reads no value before `settle_seconds` (both together, and a margin) have
passed since the version became pending. From then on every write that lands was checked against the
pending version; every value the check reads it judges itself.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from state_core.domain.codec import canonical_json, check_depth
from state_core.domain.errors import BadRequest, NotFound, ServiceUnavailable
from state_core.domain.listing import KeyRange
from state_core.domain.records import rfc3339
from state_core.domain.schemas import (
    MAX_OFFENDING_RECORDED,
    MAX_SCHEMA_BYTES,
    MAX_VIOLATIONS,
    OFFENDING_VIOLATIONS,
    CheckProgress,
    OffendingKey,
    SchemaCheck,
    SchemaConflict,
    SchemaSource,
    SchemaVersion,
    SchemaViolation,
    Violation,
    cursor_at,
    governing,
    overlapping,
    pattern_matches,
    validate_name,
    validate_patterns,
)
from state_core.domain.sealing import canonical_of

if TYPE_CHECKING:
    from state_core.domain.ports import ListIndex, MetricsSink, ValueCipher
    from state_core.domain.records import StateRecord

DEFAULT_CACHE_SECONDS = 5.0
# A lock wait is far shorter (its budget is a PATCH's, but a queue moves in tens of milliseconds a holder):
# read a second early, and a hold almost never includes the read.
REFRESH_AHEAD_SECONDS = 1.0
# The registry's cache, a write function's timeout (10 s) and a margin for the listing index to show keys
# created just before (normally well under a second).
DEFAULT_SETTLE_SECONDS = 17.0
# Keys a check reads per index query (and per strongly consistent batch read of their values).
CHECK_BATCH = 100
# A check step stops with this much of its invocation left: a DynamoDB attempt starts only with 5.3 s left
# (runtime.DYNAMODB_ATTEMPT_BUDGET_SECONDS), and the step records its progress, then hands over.
CHECK_STEP_MARGIN_SECONDS = 6.0
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
    def __init__(  # noqa: PLR0913  one collaborator each, keyword-only
        self,
        source: SchemaSource,
        *,
        clock: Callable[[], datetime],
        metrics: MetricsSink | None = None,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        index: Callable[[], ListIndex] | None = None,
        load: Callable[[str], StateRecord | None] | None = None,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        cipher: ValueCipher | None = None,
    ) -> None:
        self._source = source
        # A check reads stored values as the readers do: a sensitive one is opened first.
        self._cipher = cipher
        # Only the registry's function enumerates keys: built at first use, so the write functions never do.
        self._index = index
        self._load = load
        self._settle_seconds = settle_seconds
        self._sleep = sleep
        self._clock = clock
        self._metrics = metrics
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._current: list[SchemaVersion] | None = None
        self._read_at = 0.0

    # ------------------------------------------------------------------------------ enforcement
    def current(self) -> list[SchemaVersion]:
        """Every schema's current version and every pending one, as read at most `cache_seconds` ago."""
        return self._read_if_older_than(self._cache_seconds)

    def refresh_ahead(self, margin_seconds: float = REFRESH_AHEAD_SECONDS) -> None:
        """Read the registry now if it would be due within `margin_seconds`. A PATCH calls this before it
        takes the key's lock, so the registry's read (one in `cache_seconds` per container) is not made
        while the lock is held and every waiter behind it waits. Only ever fresher than `current` alone."""
        self._read_if_older_than(max(0.0, self._cache_seconds - margin_seconds))

    def _read_if_older_than(self, age_seconds: float) -> list[SchemaVersion]:
        now = self._monotonic()
        if self._current is None or now - self._read_at >= age_seconds:
            self._current = self._source.registry()
            self._read_at = now
        return self._current

    def governing(self, key: str) -> SchemaVersion | None:
        return governing([schema for schema in self.current() if schema.check_id is None], key)

    def check(self, key: str, value: Any) -> SchemaVersion | None:
        """Raise SchemaViolation (422) unless `value` satisfies the schema governing `key` and the version
        of it being checked, if any; the current schema it was checked against (None when none governs it)."""
        checked_against = None
        for schema in self.current():
            if not schema.governs(key):
                continue
            violations, total = violations_of(schema, value)
            if total:
                if self._metrics is not None:
                    self._metrics.add_metric(name="SchemaViolations", unit="Count", value=1)
                raise SchemaViolation(key, schema, violations, total)
            if schema.check_id is None:
                checked_against = schema
        return checked_against

    # ------------------------------------------------------------------------------ the registry
    def publish(self, name: str, body: Any, *, actor: str, mode: str) -> tuple[SchemaVersion, bool, SchemaCheck | None]:
        """Publish `body` ({"schema": ..., "patterns": [...]}) as `name`'s next version: (the version,
        whether the name is new, the check it waits for). A `checked` version whose patterns govern stored
        values is not published yet: it is pending, with a check to run (`run_check`). BadRequest for a bad
        body or schema, SchemaConflict (409) when its patterns overlap another schema's, another publish came
        first, or a check of the name is still running."""
        validate_name(name)
        document, patterns = _parse_body(body)
        compile_schema(document)
        text = canonical_json(document).decode("utf-8")
        if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
            raise BadRequest(f"a schema is at most {MAX_SCHEMA_BYTES} bytes as canonical JSON")
        revision = self._source.revision()
        registry = self._source.registry()
        running = next((s for s in registry if s.name == name and s.check_id is not None), None)
        if running is not None:
            raise SchemaConflict(
                f"version {running.version} of schema {name} is still being checked; publish after it ends",
                [f"{name}: check {running.check_id} of version {running.version} is running"],
            )
        clashes = overlapping(patterns, registry, name)
        if clashes:
            raise SchemaConflict(
                f"schema {name}'s patterns overlap other schemas': a key would be governed by two", clashes
            )
        previous = next((schema for schema in registry if schema.name == name), None)
        published = SchemaVersion(
            name=name,
            version=(previous.version if previous else 0) + 1,
            document=text,
            patterns=patterns,
            created_at=rfc3339(self._clock()),
            created_by=actor,
            mode=mode,
        )
        previous_version = previous.version if previous else None
        if mode == "checked" and self._governs_stored_values(patterns):
            now = self._clock()
            check = SchemaCheck(
                id=uuid.uuid4().hex,
                name=name,
                version=published.version,
                patterns=patterns,
                state="settling",
                created_at=published.created_at,
                created_by=actor,
                settle_until=round(now.timestamp() + self._settle_seconds, 3),
                progress=CheckProgress(heartbeat=round(now.timestamp(), 3)),
            )
            pending = published.with_check(check.id)
            self._source.begin_check(pending, check, previous=previous_version, revision=revision)
            self._current = None
            return pending, previous is None, check
        self._source.publish(published, previous=previous_version, revision=revision)
        self._current = None  # this container sees its own publish at once
        return published, previous is None, None

    # ------------------------------------------------------------------------------ checks
    def _governs_stored_values(self, patterns: tuple[str, ...]) -> bool:
        """Whether the listing index holds some key under `patterns` (one small query per shard at most)."""
        index = self._key_index()
        for pattern in patterns:
            key_range = _range_of(pattern)
            for shard in key_range.shards():
                listed, _ = index.query(shard, key_range, limit=1)
                if listed:
                    return True
        return False

    def _key_index(self) -> ListIndex:
        if self._index is None:
            raise RuntimeError("this registry was built without the listing index: it cannot check stored values")
        return self._index()

    def get_check(self, name: str, check_id: str) -> SchemaCheck:
        validate_name(name)
        check = self._source.check(name, check_id)
        if check is None:
            raise NotFound(f"schema {name} has no check {check_id}")
        return check

    def offending_keys(self, check: SchemaCheck, *, after: str | None, limit: int) -> tuple[list[OffendingKey], bool]:
        return self._source.offending(check.name, check.id, after=after, limit=limit)

    def stalled(self, check: SchemaCheck, *, after_seconds: float) -> bool:
        """Whether an unfinished check has recorded no progress for `after_seconds` (its runner died)."""
        now = self._clock().timestamp()
        return not check.finished and now >= check.settle_until and now - check.progress.heartbeat > after_seconds

    def run_check(self, name: str, check_id: str, *, seconds_left: Callable[[], float]) -> SchemaCheck:
        """Advance a check as far as `seconds_left` allows (stopping CHECK_STEP_MARGIN_SECONDS short of the
        end), recording its progress after every batch; the check as it stands. Its caller runs it again
        while it is unfinished. Two runners of one check are safe: each batch is recorded only if the check
        is still where its runner read it, and the loser stops."""
        check = self.get_check(name, check_id)
        if check.finished:
            return check
        wait = check.settle_until - self._clock().timestamp()
        if wait > 0:
            # Settling costs the invocation's time, never an invocation of its own per moment of it.
            self._sleep(max(0.0, min(wait, seconds_left() - CHECK_STEP_MARGIN_SECONDS)))
            if self._clock().timestamp() < check.settle_until:
                return check
        pending = next((s for s in self._source.registry() if s.name == name and s.check_id == check_id), None)
        if pending is None:
            return check  # ended by another runner meanwhile
        index = self._key_index()
        batches = 0
        while not check.progress.done:
            if seconds_left() < CHECK_STEP_MARGIN_SECONDS:
                return check
            try:
                progress, offending = self._check_batch(pending, check.progress, index)
                advanced = replace(check, state="running", progress=progress)
                if not self._source.save_progress(advanced, check.progress, offending):
                    return self.get_check(name, check_id)
            except ServiceUnavailable:
                # A slow or throttled table: hand over what this step did; a step that did nothing fails,
                # and its invocation's retries (then a read of the stalled check) take it up again.
                if batches:
                    return check
                raise
            check = advanced
            batches += 1
        return self._end_check(pending, check)

    def _check_batch(
        self, schema: SchemaVersion, progress: CheckProgress, index: ListIndex
    ) -> tuple[CheckProgress, list[OffendingKey]]:
        """The next batch of keys after `progress`: the progress after it, and the offending keys it found."""
        pattern_index, shard_index, last = progress.position()
        pattern = schema.patterns[pattern_index]
        key_range = _range_of(pattern)
        shards = key_range.shards()
        remaining = key_range.after(last)
        listed, more = (
            ([], False) if remaining is None else index.query(shards[shard_index], remaining, limit=CHECK_BATCH)
        )
        now = self._clock()
        # A key an earlier pattern of the schema matches was checked with that pattern.
        keys = [
            item.key
            for item in listed
            if not any(pattern_matches(earlier, item.key) for earlier in schema.patterns[:pattern_index])
        ]
        inline = [item.key for item in listed if item.inline and item.key in keys]
        records = index.values(inline) if inline else {}
        offending: list[OffendingKey] = []
        checked = 0
        for key in keys:
            record = records.get(key) if key in inline else self._load_value(key)
            if record is None or record.value is None or not record.is_live(now):
                continue  # deleted or expired since the index listed it: nothing stored to judge
            checked += 1
            violations, total = violations_of(
                schema, json.loads(canonical_of(record.value, key, record.write_id, self._cipher))
            )
            if total:
                offending.append(OffendingKey(key, total, tuple(violations[:OFFENDING_VIOLATIONS])))
        recorded = max(0, min(len(offending), MAX_OFFENDING_RECORDED - progress.offending))
        if more and listed:
            cursor = cursor_at(pattern_index, shard_index, listed[-1].key)
        elif shard_index + 1 < len(shards):
            cursor = cursor_at(pattern_index, shard_index + 1, None)
        elif pattern_index + 1 < len(schema.patterns):
            cursor = cursor_at(pattern_index + 1, 0, None)
        else:
            cursor = "done"
        advanced = CheckProgress(
            checked=progress.checked + checked,
            offending=progress.offending + len(offending),
            cursor=cursor,
            heartbeat=round(now.timestamp(), 3),
        )
        return advanced, offending[:recorded]

    def _load_value(self, key: str) -> StateRecord | None:
        if self._load is None:
            raise RuntimeError("this registry was built without the store: it cannot read large values")
        return self._load(key)

    def _end_check(self, pending: SchemaVersion, check: SchemaCheck) -> SchemaCheck:
        ended = replace(
            check,
            state="refused" if check.progress.offending else "passed",
            finished_at=rfc3339(self._clock()),
        )
        for _ in range(5):
            revision = self._source.revision()
            try:
                self._source.end_check(pending, ended, revision=revision)
            except SchemaConflict:
                # Another name's publish raised the revision meanwhile (or another runner ended it).
                current = self.get_check(check.name, check.id)
                if current.finished:
                    return current
                continue
            self._current = None
            if self._metrics is not None:
                self._metrics.add_metric(name=f"SchemaChecks{ended.state.capitalize()}", unit="Count", value=1)
            return ended
        raise SchemaConflict(f"the registry kept changing while check {check.id} ended; it is retried", [])

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


def _range_of(pattern: str) -> KeyRange:
    return KeyRange.prefix(pattern[:-1]) if pattern.endswith("*") else KeyRange.key(pattern)


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
