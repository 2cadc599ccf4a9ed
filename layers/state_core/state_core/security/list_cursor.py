"""The listing's cursors: where a page ended, signed for one caller and one prefix.

A listing cursor positions across keys, so unlike a history cursor (bound to the one key the caller may
read) it is signed: HMAC-SHA256 under the service's listing key (a Secrets Manager secret, read at the
function's first listing) over the caller's subject, the prefix and the last key listed. A cursor replayed
by another caller, for another prefix, or altered in any bit is refused. It is not encrypted: it holds
only the last key the caller was shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from state_core.domain.errors import BadRequest
from state_core.domain.keys import validate_key

_FORMAT = b"l1"
_TAG_BYTES = 16
# Long enough that a key guessed from a listing cannot be used to guess the signing key.
MIN_CURSOR_KEY_BYTES = 32


class ListCursors:
    """Signs and checks listing cursors under one key."""

    def __init__(self, signing_key: bytes) -> None:
        if len(signing_key) < MIN_CURSOR_KEY_BYTES:
            raise ValueError(f"the listing cursor key is shorter than {MIN_CURSOR_KEY_BYTES} bytes")
        self._key = signing_key

    def _tag(self, subject: str, prefix: str, last_key: str) -> bytes:
        # Length-prefixed fields: no two (subject, prefix, key) triples share a message.
        message = b"".join(
            len(part).to_bytes(4, "big") + part
            for part in (_FORMAT, subject.encode("utf-8"), prefix.encode("utf-8"), last_key.encode("utf-8"))
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def issue(self, subject: str, prefix: str, last_key: str) -> str:
        raw = _FORMAT + self._tag(subject, prefix, last_key) + last_key.encode("ascii")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def last_key(self, cursor: str, *, subject: str, prefix: str) -> str:
        """The key a cursor continues after; BadRequest if this service did not issue it to `subject` for
        `prefix` (the same answer for a garbled, a tampered and a misdirected cursor: nothing to probe)."""
        refused = BadRequest("cursor is not one this service issued to this caller for this prefix")
        if len(cursor) > 400:
            raise refused
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != cursor:
                raise ValueError("not canonical base64url")
            last_key = raw[len(_FORMAT) + _TAG_BYTES :].decode("ascii")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise refused from None
        tag = raw[len(_FORMAT) : len(_FORMAT) + _TAG_BYTES]
        if raw[: len(_FORMAT)] != _FORMAT or not hmac.compare_digest(tag, self._tag(subject, prefix, last_key)):
            raise refused
        validate_key(last_key)
        return last_key
