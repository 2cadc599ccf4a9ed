"""JSON in and out of the service (strict parsing, size and depth limits) and the stored, compressed form
of values.

A value's canonical form is `json.dumps(v, separators=(",", ":"), ensure_ascii=False)` in UTF-8: sizes are
measured on it, it is what gets compressed and stored, and a read returns it byte for byte.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, NoReturn

from state_core.domain.errors import CorruptStoredValue, InvalidJson, PayloadTooLarge

MAX_VALUE_BYTES = 1_048_576
# Room for the PUT envelope around a 1 MiB value; anything larger is refused before parsing.
MAX_BODY_BYTES = MAX_VALUE_BYTES + 65_536
MAX_DEPTH = 64

ENCODING_ZLIB = "zlib"
ENCODING_IDENTITY = "identity"
# A sealed value's encoding is this prefix before the encoding of the bytes it seals ("aes256gcm+zlib"): its
# data is an envelope (security/envelope.py) that only the service's read path opens. `canonical()` of a
# sealed value fails as an unknown encoding, so ciphertext is never served as JSON.
SEALED_PREFIX = "aes256gcm+"


def reject_constant(name: str) -> NoReturn:
    """json's `parse_constant` hook: NaN, Infinity and -Infinity are not JSON numbers, whoever parses."""
    raise InvalidJson(f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise InvalidJson("a number is too large to represent")
    return number


def object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's `object_pairs_hook`: parsers disagree on which duplicate member wins, so an object that
    could mean two things is refused."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # The name is not echoed: member names are part of the value, which no message may contain.
        raise InvalidJson("an object has a duplicate member name")
    return obj


_DECODER = json.JSONDecoder(
    object_pairs_hook=object_without_duplicates,
    parse_constant=reject_constant,
    parse_float=_parse_float,
)


def check_body_size(body: bytes | str) -> None:
    """Refuse a request body over the pre-parse limit (413), before any parsing."""
    size = len(body) if isinstance(body, bytes) else len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the request body is {size} bytes; the limit is {MAX_BODY_BYTES}")


def parse_json(body: bytes | str) -> Any:
    """Parse a request body strictly: UTF-8, no NaN/Infinity, no overflowing numbers, no duplicate
    member names. Nesting is checked on the value afterwards (check_depth); parsing only guards against
    nesting so deep that it would exhaust the stack."""
    check_body_size(body)
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise InvalidJson("the body is not valid UTF-8") from exc
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise InvalidJson(f"JSON nesting is deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise InvalidJson("a number cannot be represented") from exc
    return value


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise InvalidJson if containers nest deeper than `limit` (a scalar has depth 0, `[]` depth 1).

    Breadth-first over containers only, so a flat 1 MiB array costs one pass of isinstance checks.
    """
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise InvalidJson(f"JSON nesting is deeper than {limit} levels")
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 form of `value`; lone surrogates are InvalidJson."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJson("a string holds a lone surrogate, which is not valid Unicode") from exc
    except ValueError as exc:
        raise InvalidJson(str(exc)) from exc


def check_value_size(canonical: bytes) -> None:
    if len(canonical) > MAX_VALUE_BYTES:
        raise PayloadTooLarge(f"the value's canonical JSON is {len(canonical)} bytes; the limit is {MAX_VALUE_BYTES}")


@dataclass(frozen=True, slots=True)
class StoredValue:
    """A value as stored: its encoding, the encoded bytes, and the size of its canonical JSON."""

    encoding: str
    data: bytes
    size: int

    @classmethod
    def encode(cls, canonical: bytes) -> StoredValue:
        compressed = zlib.compress(canonical, 6)
        if len(compressed) < len(canonical):
            return cls(ENCODING_ZLIB, compressed, len(canonical))
        return cls(ENCODING_IDENTITY, canonical, len(canonical))

    @property
    def sealed(self) -> bool:
        return self.encoding.startswith(SEALED_PREFIX)

    def canonical(self) -> bytes:
        """The canonical JSON, checked against the declared size. Whoever can write the store (or the
        cache) chooses these bytes: a value that inflates past the 1 MiB limit, carries trailing bytes or
        differs from its declared size raises CorruptStoredValue after at most MAX_VALUE_BYTES + 1 bytes of
        output, never a decompression bomb's gigabytes."""
        if not 0 <= self.size <= MAX_VALUE_BYTES:
            raise CorruptStoredValue("a stored value declares a size beyond the limit")
        if self.encoding == ENCODING_ZLIB:
            inflater = zlib.decompressobj()
            try:
                canonical = inflater.decompress(self.data, MAX_VALUE_BYTES + 1)
            except zlib.error as exc:
                raise CorruptStoredValue("a stored value is not valid zlib data") from exc
            if inflater.unconsumed_tail or len(canonical) > MAX_VALUE_BYTES:
                raise CorruptStoredValue("a stored value inflates beyond the size limit")
            if not inflater.eof or inflater.unused_data:
                raise CorruptStoredValue("a stored value's zlib stream is truncated or followed by other bytes")
        elif self.encoding == ENCODING_IDENTITY:
            canonical = self.data
        else:
            raise CorruptStoredValue("a stored value has an unknown encoding")
        if len(canonical) != self.size:
            raise CorruptStoredValue("a stored value does not match its declared size")
        return canonical
