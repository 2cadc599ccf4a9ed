"""Domain errors. Each carries the HTTP status it maps to; `api.edge.problem` turns them into RFC 9457 documents.

Details never contain a stored value or a token: they are logged and returned to clients.
"""

from __future__ import annotations


class StateError(Exception):
    """Base of every error the core reports to a client."""

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidKey(StateError):
    status, title, slug = 400, "Invalid key", "invalid-key"


class InvalidJson(StateError):
    status, title, slug = 400, "Invalid JSON", "invalid-json"


class BadRequest(StateError):
    status, title, slug = 400, "Bad request", "bad-request"


class Unauthenticated(StateError):
    status, title, slug = 401, "Unauthenticated", "unauthenticated"


class Forbidden(StateError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(StateError):
    status, title, slug = 404, "Not found", "not-found"


class PreconditionFailed(StateError):
    status, title, slug = 412, "Precondition failed", "precondition-failed"

    def __init__(self, detail: str, current_version: int | None) -> None:
        super().__init__(detail)
        self.current_version = current_version


class PayloadTooLarge(StateError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(StateError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class UnprocessableBody(StateError):
    status, title, slug = 422, "Unprocessable body", "unprocessable-body"


class ServiceUnavailable(StateError):
    status, title, slug = 503, "Service unavailable", "service-unavailable"

    def __init__(self, detail: str, retry_after_seconds: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class OutcomeUnknown(ServiceUnavailable):
    """A write was sent but no answer came back (timeout, dropped connection, 5xx): it may have landed, and
    a newer write may already have replaced it. Never retried by the service; the client reads the key,
    or retries with If-Match (If-None-Match: * for a create), which cannot apply twice."""

    title, slug = "Write outcome unknown", "write-outcome-unknown"


class CorruptStoredValue(ServiceUnavailable, ValueError):
    """A stored value that fails its own checks (bad compression, inflating past the limit, a size or
    checksum mismatch). Not the client's fault and not a code path that crashed: the data is unusable
    until an operator restores or rewrites it (a PUT still replaces it), so 503 like an unavailable
    table, with a problem type of its own for alarms. A ValueError too, so the stream publisher treats
    its record as unreadable (retried, then kept in the failure bucket) rather than crashing the batch."""

    title, slug = "Stored value unreadable", "stored-value-unreadable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, retry_after_seconds=30)


class DecryptionFailed(CorruptStoredValue):
    """A sealed value that does not open: its ciphertext was altered, moved to another key or version, or
    sealed under a key this function may not use. Never a wrong value in its place: 503 with a problem type
    of its own, and the DecryptionFailures metric, which is alarmed."""

    title, slug = "Stored value cannot be decrypted", "value-decryption-failed"


class EncryptionNotConfigured(StateError):
    """A sensitive value was to be written, or read, by a function that has no values key configured
    (STATE_KMS_KEY_ID): a deployment fault, never the client's."""

    status, title, slug = 500, "Encryption not configured", "encryption-not-configured"


class Gone(StateError):
    """A version that existed but has left the history's retention."""

    status, title, slug = 410, "Gone", "gone"


class Conflict(StateError):
    status, title, slug = 409, "Conflict", "conflict"
