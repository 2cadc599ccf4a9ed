"""Where a stored value becomes JSON on the read path: a sealed value is opened first, with the key and the
write id of the item it came from (never with anything the envelope itself says)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from state_core.domain.errors import DecryptionFailed

if TYPE_CHECKING:
    from state_core.domain.codec import StoredValue
    from state_core.domain.ports import ValueCipher


def canonical_of(value: StoredValue, key: str, write_id: str | None, cipher: ValueCipher | None) -> bytes:
    """The canonical JSON of `value`, which the item of `key` written by `write_id` holds."""
    if value.sealed:
        if cipher is None:
            raise DecryptionFailed("a sealed value was read where no values key is configured")
        value = cipher.open(key, write_id, value)
    return value.canonical()
