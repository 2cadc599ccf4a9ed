"""State keys (DESIGN §3): 1-256 characters of [A-Za-z0-9_.:-], the first one alphanumeric."""

from __future__ import annotations

import re

from state_core.errors import InvalidKey

MAX_KEY_LENGTH = 256
# \Z rather than $: `$` also matches before a trailing newline, which would let "a\n" through.
KEY_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}"
_KEY = re.compile(KEY_PATTERN + r"\Z")


def validate_key(key: str) -> str:
    """Return `key` if it is a valid state key; raise InvalidKey (400) otherwise, before any I/O."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidKey("a key is 1-256 characters of A-Z a-z 0-9 _ . : - and starts with a letter or digit")
    return key


def is_key_fragment(text: str) -> bool:
    """True if `text` may appear inside a key (used to expand `${sub}` in key patterns)."""
    return bool(text) and len(text) <= MAX_KEY_LENGTH and re.fullmatch(r"[A-Za-z0-9_.:-]+", text) is not None
