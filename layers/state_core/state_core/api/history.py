"""The history's HTTP side: the query parameters of `GET /state/{key}?version=N` and
`GET /state/{key}/history`, and the body of the page that listing answers (its model, for the OpenAPI
document only, is in openapi.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from state_core.domain.errors import BadRequest
from state_core.domain.params import ascii_int, page_size

if TYPE_CHECKING:
    from state_core.domain.history import HistoryEntry
    from state_core.service.history import HistoryPage

MAX_PAGE = 1000
DEFAULT_PAGE = 100
# The history numbers versions with 12 digits; `?version=` takes up to 15 (a version past the key's
# current one is a 404, not a 400).
MAX_REQUESTED_VERSION = 10**15 - 1


def page_limit(text: str | None) -> int:
    """`?limit=N`: ASCII digits, 1 to MAX_PAGE."""
    return page_size(text, default=DEFAULT_PAGE, maximum=MAX_PAGE)


def requested_version(text: str | None) -> int | None:
    """`?version=N`: ASCII digits, 1 to MAX_REQUESTED_VERSION."""
    if text is None:
        return None
    version = ascii_int(text, low=1, high=MAX_REQUESTED_VERSION)
    if version is None:
        raise BadRequest(f"version must be an integer from 1 to {MAX_REQUESTED_VERSION}")
    return version


def version_summary(entry: HistoryEntry) -> dict[str, Any]:
    """What the listing shows of a version (openapi.HistoryEntryModel's fields; never the value)."""
    summary: dict[str, Any] = {
        "version": entry.version,
        "operation": entry.operation,
        "actor": entry.actor,
        "occurred_at": entry.occurred_at,
        "size": entry.size,
    }
    if entry.transaction_id is not None:
        summary["transaction_id"] = entry.transaction_id  # as in the version's StateChanged event
    if entry.proposal_id is not None:
        # An approved change: the actor proposed it, these approved it (approvals.md).
        summary["proposal_id"] = entry.proposal_id
        summary["approved_by"] = list(entry.approved_by)
    if entry.schema is not None:
        summary["schema"] = entry.schema.fields()  # absent for an ungoverned key's version
    return summary


def page_body(page: HistoryPage) -> str:
    """The listing's JSON body (openapi.HistoryPageModel), built without the model on the request path."""
    return json.dumps(
        {"key": page.key, "versions": [version_summary(e) for e in page.entries], "next_cursor": page.next_cursor},
        separators=(",", ":"),
        ensure_ascii=False,
    )
