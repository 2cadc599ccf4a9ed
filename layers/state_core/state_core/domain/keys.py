"""State keys: 1-256 characters of [A-Za-z0-9_.:-], the first one alphanumeric: nothing a URL path must
escape, and never the `#` or `{}` that the table's other item keys and the Redis key names are built with."""

from __future__ import annotations

import re

from state_core.domain.errors import InvalidKey

MAX_KEY_LENGTH = 256
# \Z rather than $: `$` also matches before a trailing newline, which would let "a\n" through.
KEY_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}"
_KEY = re.compile(KEY_PATTERN + r"\Z")
# One segment of a key: the key alphabet without the separator.
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
# Actors the service itself writes as (`system:ttl` for expiries); no caller's subject may start with it.
SYSTEM_ACTOR_PREFIX = "system:"


def validate_key(key: str) -> str:
    """Return `key` if it is a valid state key; raise InvalidKey (400) otherwise, before any I/O."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidKey("a key is 1-256 characters of A-Z a-z 0-9 _ . : - and starts with a letter or digit")
    return key


def is_key_segment(text: str) -> bool:
    """True if `text` can stand for `${sub}` in a key pattern: key characters other than the separator `:`.

    A subject holding `:` would reach into another subject's namespace (`alice:settings` expanded into
    `user:${sub}:*` covers `user:alice:settings:theme`, a key of `alice`), so such a subject gets nothing
    from a `${sub}` grant rather than an escaped one."""
    return len(text) <= MAX_KEY_LENGTH and _SEGMENT.fullmatch(text) is not None
