"""Integers read from client input (query parameters, cursors, ETags).

`str.isdigit()` and `int()` disagree (`"²".isdigit()` is true, `int("²")` raises; `int(" 5")`, `int("+5")`,
`int("5_0")` and Arabic-Indic digits all succeed), so client text is matched against ASCII digits first and only
then converted: a malformed value is a clear 400, never an exception past the handler.
"""

from __future__ import annotations

import re

from state_core.domain.errors import BadRequest

# ASCII only: `\d` would also match other scripts' digits, and `\Z` (unlike `$`) refuses a trailing newline.
_DIGITS = re.compile(r"[0-9]{1,32}\Z")
# One entity tag as this service writes them, `"<version>"`, maybe weak (`W/`, group 1), the version in
# group 2; ASCII digits and blanks only (`\s` would match other scripts' spaces).
ETAG = re.compile(r'[ \t]*(W/)?"([0-9]{1,18})"[ \t]*\Z')


def ascii_int(text: str, *, low: int, high: int) -> int | None:
    """`text` as an integer from `low` to `high` if it is only ASCII digits; None otherwise."""
    if not isinstance(text, str) or _DIGITS.match(text) is None:
        return None
    number = int(text)
    return number if low <= number <= high else None


def page_size(text: str | None, *, default: int, maximum: int) -> int:
    """`?limit=N` of a paged listing: `default` when absent, else ASCII digits from 1 to `maximum` (400 if not)."""
    if text is None:
        return default
    limit = ascii_int(text, low=1, high=maximum)
    if limit is None:
        raise BadRequest(f"limit must be an integer from 1 to {maximum}")
    return limit
