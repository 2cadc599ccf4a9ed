"""The listing's HTTP side: the query parameters of `GET /state?prefix=&limit=&cursor=&include=` and the
body of its page (the model, for the OpenAPI document only, is in openapi.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from state_core.domain.errors import BadRequest, InvalidKey
from state_core.domain.keys import validate_key
from state_core.domain.params import page_size

if TYPE_CHECKING:
    from state_core.service.listing import ListEntry, ListPage

MAX_LIST_PAGE = 1000
DEFAULT_LIST_PAGE = 100


def list_prefix(text: str | None) -> str:
    """`?prefix=P`: empty (or absent: every key), or what could begin a key: 1-256 characters of the key
    alphabet starting with a letter or digit."""
    if not text:
        return ""
    try:
        return validate_key(text)
    except InvalidKey:
        raise BadRequest(
            "prefix is 1-256 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit, or empty"
        ) from None


def list_limit(text: str | None) -> int:
    return page_size(text, default=DEFAULT_LIST_PAGE, maximum=MAX_LIST_PAGE)


def include_values(text: str | None) -> bool:
    """`?include=value` lists the values too; nothing else may be included."""
    if text is None:
        return False
    if text != "value":
        raise BadRequest("include must be value")
    return True


def _entry_body(entry: ListEntry) -> str:
    fields: dict[str, object] = {
        "key": entry.key,
        "version": entry.version,
        "updated_at": entry.updated_at,
        "size": entry.size,
        "expires_at": entry.expires_at,
    }
    if entry.value_omitted:
        fields["value_omitted"] = True
    if entry.schema is not None:
        fields["schema"] = entry.schema.fields()
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    if entry.value is None:
        return text
    # The stored canonical JSON, spliced in as it is (as GET does), never decoded and encoded again.
    return f'{text[:-1]},"value":{entry.value.decode("utf-8")}}}'


def list_page_body(page: ListPage) -> str:
    """The page as JSON (openapi.ListPageModel)."""
    head = json.dumps({"prefix": page.prefix}, separators=(",", ":"), ensure_ascii=False)[:-1]
    cursor = json.dumps(page.next_cursor)
    return f'{head},"keys":[{",".join(_entry_body(entry) for entry in page.entries)}],"next_cursor":{cursor}}}'
