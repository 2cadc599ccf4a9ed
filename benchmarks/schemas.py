"""What a value schema costs a write: validating a 1 MiB value against a compiled schema (per container,
compiled once), against the canonical encoding every write of that value already pays."""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks.common import Row, interleaved, row

SCHEMA = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "name", "tags"],
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "name": {"type": "string", "pattern": "^[a-z0-9 ]+$"},
                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
                    "score": {"type": "number"},
                },
            },
        }
    },
}


def large_value(target_bytes: int = 1_000_000) -> Any:
    items: list[dict[str, Any]] = []
    size = 0
    while size < target_bytes:
        n = len(items)
        item = {"id": n, "name": f"item {n} name", "tags": ["a", "b", "c"], "score": n * 0.5}
        items.append(item)
        size += len(json.dumps(item, separators=(",", ":"))) + 1
    return {"items": items}


def run(runs: int) -> list[Row]:
    from state_core.domain.codec import canonical_json
    from state_core.domain.schemas import SchemaVersion
    from state_core.service.schemas import validator_for, violations_of

    value = large_value()
    schema = SchemaVersion("bench", 1, json.dumps(SCHEMA), ("bench:*",), "", "bench")
    started = time.perf_counter()
    validator_for(schema)  # the container's one compile (and the validator's import)
    first_ms = (time.perf_counter() - started) * 1000

    def validate(_: int) -> None:
        _, total = violations_of(schema, value)
        if total:
            raise RuntimeError("the benchmark's value must satisfy its schema")

    measured, base = interleaved(validate, lambda _: canonical_json(value), runs, warmup=3)
    size = len(canonical_json(value))
    return [
        row(
            f"schema check of a {size // 1024} KiB value",
            "its canonical JSON encoding",
            measured,
            base,
            first_compile_and_import_ms=round(first_ms, 2),
        )
    ]
