"""The bulk read's HTTP side: the body of `POST /state:batchGet` (`{"keys": [...], "snapshot": bool,
"consistent": bool}`) and the body of its answer, one item per key in request order.

Checked by hand like PUT's body (api/bodies.py), without pydantic on the request path; the documented model is
openapi.BatchGetRequestModel. Every malformed body is a 400 that names the member, never a value.

The answer must fit Lambda's response payload (6 MB, the function's whole JSON answer, in which the body is
one escaped string). Values go in, in request order, while the escaped body stays within RESPONSE_BUDGET_BYTES;
a value that would take it past is left out, its item marked `value_omitted` (its version says which value
to fetch: `GET /state/{key}?version=N` reads exactly that one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from state_core.domain.errors import BadRequest, InvalidKey, StateError
from state_core.domain.keys import validate_key

if TYPE_CHECKING:
    from state_core.service.manager import StateView

MAX_BATCH_KEYS = 100
# Lambda answers at most 6,291,456 bytes; the rest covers the status, the headers and the wrapper around the body.
RESPONSE_BUDGET_BYTES = 6_000_000
_MEMBERS = ("keys", "snapshot", "consistent")
_PROBLEM_TYPE_BASE = "https://state.service/problems/"


@dataclass(frozen=True, slots=True)
class BatchGetBody:
    keys: list[str]
    snapshot: bool = False
    consistent: bool = False


def parse_batch_get_body(data: Any) -> BatchGetBody:
    """`data` (parsed JSON) as a bulk read's body, or BadRequest naming what is wrong."""
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object with keys (and optionally snapshot, consistent)")
    unknown = [name for name in data if name not in _MEMBERS]
    if unknown:
        # Names a client chose: shown short and few, so the answer never grows with what was sent.
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise BadRequest(f"unknown member(s) of the body: {shown}; the members are keys, snapshot, consistent")
    keys = data.get("keys")
    if not isinstance(keys, list):
        raise BadRequest("keys is required: a list of 1 to 100 keys")
    if not 1 <= len(keys) <= MAX_BATCH_KEYS:
        raise BadRequest(f"keys holds 1 to {MAX_BATCH_KEYS} keys, not {len(keys)}")
    seen: set[str] = set()
    for index, key in enumerate(keys):
        try:
            validate_key(key)
        except InvalidKey as exc:
            raise InvalidKey(f"keys[{index}]: {exc.detail}") from None
        if key in seen:
            raise BadRequest(f"keys[{index}] repeats key {key}: each key may be asked for once")
        seen.add(key)
    flags = {}
    for name in ("snapshot", "consistent"):
        value = data.get(name, False)
        if not isinstance(value, bool):
            raise BadRequest(f"{name} must be true or false")
        flags[name] = value
    return BatchGetBody(keys=list(keys), snapshot=flags["snapshot"], consistent=flags["consistent"])


def problem_fields(error: StateError) -> dict[str, Any]:
    """An item's own problem document (RFC 9457 members), as `api.edge.problem` writes a response's."""
    return {
        "type": _PROBLEM_TYPE_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One key's answer: its view (status 200) or its error (403, 404, 503)."""

    key: str
    answer: StateView | StateError


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    body: str
    # Per key, for the audit record: key, status, version (never a value).
    outcomes: list[dict[str, Any]]
    omitted: int


def _escaped_size(text: str) -> int:
    """The bytes `text` takes inside the JSON string Lambda carries the body in (non-ASCII escaped: the most
    it can take)."""
    return len(json.dumps(text)) - 2


def batch_get_body(items: list[BatchItem], *, snapshot: bool, budget: int = RESPONSE_BUDGET_BYTES) -> BatchAnswer:
    """The answer's JSON, values spliced in as stored (never decoded and encoded again) while they fit."""
    heads: list[str] = []
    outcomes: list[dict[str, Any]] = []
    for item in items:
        answer = item.answer
        if isinstance(answer, StateError):
            fields: dict[str, Any] = {"key": item.key, "status": answer.status, "problem": problem_fields(answer)}
            outcomes.append({"key": item.key, "status": answer.status, "version": None})
        else:
            fields = {"key": item.key, "status": 200, **answer.record.metadata_fields()}
            outcomes.append({"key": item.key, "status": 200, "version": answer.record.version})
        heads.append(json.dumps(fields, separators=(",", ":"), ensure_ascii=False))
    opening = f'{{"snapshot":{json.dumps(snapshot)},"items":['
    used = _escaped_size(opening) + 2 + sum(_escaped_size(head) for head in heads) + max(0, len(heads) - 1)
    omitted = 0
    texts: list[str] = []
    for item, head in zip(items, heads, strict=True):
        answer = item.answer
        if isinstance(answer, StateError):
            texts.append(head)
            continue
        value = f',"value":{answer.canonical_value.decode("utf-8")}'
        cost = _escaped_size(value)
        if used + cost <= budget:
            used += cost
            texts.append(f"{head[:-1]}{value}}}")
        else:
            omitted += 1
            texts.append(f'{head[:-1]},"value_omitted":true}}')
            used += len(',"value_omitted":true')
    return BatchAnswer(body=f"{opening}{','.join(texts)}]}}", outcomes=outcomes, omitted=omitted)
