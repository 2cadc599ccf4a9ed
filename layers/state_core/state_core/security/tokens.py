"""Bearer JWT validation for the Lambda authorizer.

Keys come from the issuer's JWKS (found through `<issuer>/.well-known/openid-configuration`) through our
own cache (`jwks.py`). The token is parsed strictly before any key is looked up: three canonical base64url
segments (a JWE has five), JSON without duplicate members, an algorithm on the allow-list of asymmetric
algorithms (so neither `none` nor HMAC "signed" with a public key can pass), no `crit`, no nested token,
and no key referenced or embedded in the header (`jku`, `x5u`, `jwk`, `x5c` are refused, never followed).
PyJWT then checks the signature only; every claim is checked here, with the types RFC 7519 intends and
nothing coerced (`"exp": "9999999999"` is refused, not parsed).

Only access tokens are accepted. A token that says it is something else is refused whatever its audience:
an ID token (Cognito's `token_use: "id"`, Keycloak's `typ: "ID"`, `at_hash`/`c_hash`, which only ID tokens
carry, or a JOSE `typ` of `id_token+jwt`) unless `accept_id_tokens` is set, and always a refresh, logout or
other kind of token (`token_use`, the payload's `typ` or the JOSE `typ` naming another kind).

The authorizer's answer may be cached by API Gateway per token, so it depends on the token alone, never
on the route or key. Rejection reasons name the check that failed and never contain the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from state_core.config import AuthorizerSettings
from state_core.domain.codec import object_without_duplicates, reject_constant
from state_core.domain.errors import InvalidJson
from state_core.domain.keys import SYSTEM_ACTOR_PREFIX
from state_core.security.jwks import JwksCache, discover_jwks_uri

# API Gateway refuses a request whose request line and headers exceed 10,240 bytes, so no longer
# token can arrive through it; refusing it here bounds the parsing work whatever the caller.
MAX_TOKEN_BYTES = 10_240
MANDATORY_CLAIMS = ("iss", "exp", "iat")
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
# Headers that name or carry a key: trusting them would let the token choose its own verification key.
KEY_REFERENCE_HEADERS = ("jku", "x5u", "jwk", "x5c")
MAX_NUMERIC_DATE = 2**53  # beyond JSON's exact integers; also far beyond any real expiry
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z")
_KID = re.compile(r"[\x21-\x7e]{1,256}\Z")  # printable ASCII: logs and lookups stay boring
# API Gateway puts the subject into its JSON access log as it is, unescaped: a quote or backslash would
# forge or break fields, a control character or line separator would forge lines.
_UNLOGGABLE = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_KEY_FAMILIES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# JOSE `typ` values (lower case, without `application/`) an access token may carry: the generic `JWT` and
# RFC 9068's `at+jwt`; then an ID token's. Any other (`logout+jwt`, `secevent+jwt`, `dpop+jwt`, ...) names
# another kind of JWT.
_ACCESS_TYPS = frozenset({"jwt", "at+jwt"})
_ID_TYPS = frozenset({"id_token+jwt"})
# Claims naming the kind of token: (an access token's value, an ID token's), lower case. Cognito's
# `token_use`; Keycloak's `typ` (also `Refresh`, `Offline`, `Logout` for its other tokens).
_KIND_CLAIMS = {"token_use": ("access", "id"), "typ": ("bearer", "id")}
# Claims OpenID Connect defines for ID tokens only (hashes of the access token and code issued with it).
_ID_TOKEN_CLAIMS = ("at_hash", "c_hash")
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


# Why a token was refused, in words a metric may carry: a short, fixed set (the message has the detail, and is
# logged, never a label). The authorizer adds its own refusals: no token, the issuer unavailable, its settings.
DENIAL_REASONS = frozenset(
    {
        "malformed",
        "unknown_key",
        "algorithm",
        "signature",
        "expired",
        "not_yet_valid",
        "lifetime",
        "issuer",
        "audience",
        "claims",
        "not_access_token",
        "no_token",
        "issuer_unavailable",
        "misconfigured",
    }
)


class TokenRejected(Exception):
    """The token is not acceptable. The message names the reason and never contains the token; `reason` is one
    of DENIAL_REASONS."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class IssuerUnavailable(Exception):
    """The issuer's discovery document could not be had (now, or within the cooldown of a failure)."""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    # The token's exp: a WebSocket connection is closed when it passes (the HTTP authorizer does not need it).
    expires_at: int = 0

    def authorizer_context(self) -> dict[str, str]:
        """Simple-response context values must be strings: scopes space-separated, roles a JSON array."""
        return {"sub": self.subject, "scopes": " ".join(self.scopes), "roles": json.dumps(list(self.roles))}


def _b64url_decode(segment: str, what: str) -> bytes:
    """Strict base64url: the RFC 7515 alphabet, no padding, and canonical (the unused low bits of the last
    character are zero), so exactly one text encodes each byte string."""
    if not _SEGMENT.match(segment) or len(segment) % 4 == 1:
        raise TokenRejected(f"the {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRejected(f"the {what} is not base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise TokenRejected(f"the {what} is not canonical base64url")
    return raw


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=object_without_duplicates, parse_constant=reject_constant
        )
    except InvalidJson as exc:  # a duplicate member, NaN or Infinity: the same JSON rules as request bodies
        raise TokenRejected(f"the {what} is not JSON: {exc.detail}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenRejected(f"the {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenRejected(f"the {what} is not a JSON object")
    return value


def parse_compact(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, parsed strictly (no signature check)."""
    if len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise TokenRejected("the token is too long or not ASCII")
    segments = token.split(".")
    if len(segments) == 5:
        raise TokenRejected("encrypted tokens (JWE) are not accepted")
    if len(segments) != 3:
        raise TokenRejected("the token is not three segments")
    header = _json_object(_b64url_decode(segments[0], "header"), "header")
    claims = _json_object(_b64url_decode(segments[1], "payload"), "payload")
    _b64url_decode(segments[2], "signature")
    return header, claims


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python; floats, strings and negatives are refused rather than coerced.
    if type(value) is not int or not 0 <= value < MAX_NUMERIC_DATE:
        raise TokenRejected(f"{name} must be a non-negative integer", "claims")
    return value


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    """A claim that is a space-separated string or an array of strings without whitespace."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(item, str) and item and item.split() == [item] for item in value):
        return tuple(value)
    raise TokenRejected(f"{what} must be a string or an array of strings", "claims")


class TokenVerifier:
    """Validates bearer JWTs for one issuer and audience."""

    def __init__(self, settings: AuthorizerSettings, keys: JwksCache, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.keys = keys
        self.clock = clock
        self._required = tuple(
            dict.fromkeys(
                (*MANDATORY_CLAIMS, settings.audience_claim, settings.subject_claim, *settings.required_claims)
            )
        )

    @classmethod
    def for_issuer(
        cls,
        settings: AuthorizerSettings,
        on_fetch_error: Callable[[str], None] | None = None,
        discover: Callable[[str], str] = discover_jwks_uri,
    ) -> TokenVerifier:
        """A verifier whose keys come from the issuer's discovery document (fetched now, once)."""
        keys = JwksCache(
            discover(settings.issuer),
            algorithms=settings.algorithms,
            ttl_seconds=settings.jwks_ttl_seconds,
            cooldown_seconds=settings.jwks_cooldown_seconds,
            on_fetch_error=on_fetch_error,
        )
        return cls(settings, keys)

    def verify(self, token: str) -> VerifiedToken:
        header, claims = parse_compact(token)
        algorithm, kid = self._check_header(header)
        key = self.keys.signing_key(kid)
        if key is None:
            raise TokenRejected("no key of the issuer has this kid", "unknown_key")
        self._check_key_fits(key, algorithm)
        try:
            # Signature only: PyJWT would coerce claim types, so the claims are checked below.
            jwt.PyJWS().decode_complete(token, key=key.key, algorithms=[algorithm])
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"signature: {type(exc).__name__}", "signature") from exc
        return self._check_claims(claims)

    def _check_header(self, header: Mapping[str, Any]) -> tuple[str, str]:
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.settings.algorithms:
            raise TokenRejected("algorithm not allowed", "algorithm")
        if "crit" in header:
            # No extension is understood here, so any critical one makes the token unacceptable (RFC 7515).
            raise TokenRejected("unknown critical header")
        if any(name in header for name in KEY_REFERENCE_HEADERS):
            raise TokenRejected("the header names its own key (jku/x5u/jwk/x5c); keys come only from the JWKS")
        if header.get("enc") is not None or str(header.get("cty", "")).upper() in ("JWT", "APPLICATION/JWT"):
            raise TokenRejected("nested or encrypted tokens are not accepted")
        required_typ = self.settings.required_typ.lower()
        typ = header.get("typ")
        if required_typ:
            if not isinstance(typ, str) or typ.lower().removeprefix("application/") != required_typ:
                raise TokenRejected(f"typ must be {self.settings.required_typ}")
        elif typ is not None:
            if not isinstance(typ, str):
                raise TokenRejected("typ must be a string")
            kind = typ.lower().removeprefix("application/")
            if kind in _ID_TYPS:
                if not self.settings.accept_id_tokens:
                    raise TokenRejected("an ID token (typ), not an access token", "not_access_token")
            elif kind not in _ACCESS_TYPS:
                raise TokenRejected("typ names another kind of token than an access token", "not_access_token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.match(kid):
            raise TokenRejected("kid must be printable ASCII, 1-256 characters")
        return algorithm, kid

    @staticmethod
    def _check_key_fits(key: jwt.PyJWK, algorithm: str) -> None:
        jwk: Mapping[str, Any] = key._jwk_data
        if "alg" in jwk and jwk["alg"] != algorithm:
            raise TokenRejected("the key is for another algorithm", "algorithm")
        if jwk.get("kty") != _KEY_FAMILIES.get(algorithm[:2]):
            raise TokenRejected("the key is of another type than the algorithm", "algorithm")
        if algorithm in _EC_CURVES and jwk.get("crv") != _EC_CURVES[algorithm]:
            raise TokenRejected("the key is on another curve than the algorithm", "algorithm")

    def _check_claims(self, claims: Mapping[str, Any]) -> VerifiedToken:  # noqa: C901, PLR0912  one check per claim, in the order they are validated
        settings = self.settings
        for name in self._required:
            if claims.get(name) is None:
                raise TokenRejected(f"claim {name} is missing", "claims")
        self._check_token_kind(claims)
        expires, not_before, issued = (_numeric_date(claims, name) for name in NUMERIC_DATE_CLAIMS)
        if expires is None or issued is None:  # mandatory, so already refused above; for the type checker
            raise TokenRejected("exp and iat are required", "claims")
        now, leeway = self.clock(), settings.leeway_seconds
        if expires <= now - leeway:
            raise TokenRejected("the token has expired", "expired")
        if not_before is not None and not_before > now + leeway:
            raise TokenRejected("the token is not valid yet (nbf)", "not_yet_valid")
        if issued > now + leeway:
            raise TokenRejected("the token was issued in the future (iat)", "not_yet_valid")
        if expires <= issued:
            # No issuer mints such a token; within the leeway it would otherwise pass as a valid one.
            raise TokenRejected("the token expires before it was issued (exp <= iat)", "lifetime")
        if expires - issued > settings.max_lifetime_seconds:
            raise TokenRejected(
                f"the token's lifetime (exp - iat) is over {settings.max_lifetime_seconds} s", "lifetime"
            )
        if claims["iss"] != settings.issuer:
            raise TokenRejected("wrong issuer", "issuer")
        audience = claims[settings.audience_claim]
        if settings.audience_claim == "aud" and isinstance(audience, list):
            if not all(isinstance(item, str) for item in audience) or settings.audience not in audience:
                raise TokenRejected("wrong audience", "audience")
        elif audience != settings.audience:
            raise TokenRejected("wrong audience", "audience")
        subject = claims[settings.subject_claim]
        if not isinstance(subject, str) or not subject or len(subject) > 1024:
            raise TokenRejected(f"{settings.subject_claim} must be a non-empty string", "claims")
        if _UNLOGGABLE.search(subject):
            raise TokenRejected(f"{settings.subject_claim} holds a quote, backslash or control character", "claims")
        if subject.startswith(SYSTEM_ACTOR_PREFIX):
            raise TokenRejected(
                f"{settings.subject_claim} is in the service's own namespace ({SYSTEM_ACTOR_PREFIX})", "claims"
            )
        scopes = _string_list(claims.get(settings.scope_claim), settings.scope_claim)
        if settings.scope_prefix:
            # Only scopes of our resource server count (Cognito: `<identifier>/state:read`).
            scopes = tuple(s.removeprefix(settings.scope_prefix) for s in scopes if s.startswith(settings.scope_prefix))
        roles = claims.get(settings.roles_claim)
        if roles is not None and (not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)):
            raise TokenRejected(f"{settings.roles_claim} must be an array of strings", "claims")
        return VerifiedToken(subject=subject, scopes=scopes, roles=tuple(roles or ()), expires_at=expires)

    def _check_token_kind(self, claims: Mapping[str, Any]) -> None:
        """Refuse a token whose claims say it is not an access token (an ID token unless accepted)."""
        accept_id = self.settings.accept_id_tokens
        for claim, (access_kind, id_kind) in _KIND_CLAIMS.items():
            if claim not in claims:
                continue
            value = claims[claim]
            kind = value.lower() if isinstance(value, str) else None
            if kind != access_kind and not (kind == id_kind and accept_id):
                raise TokenRejected(f"{claim} says this is not an access token", "not_access_token")
        if not accept_id and any(name in claims for name in _ID_TOKEN_CLAIMS):
            raise TokenRejected("an ID token (at_hash/c_hash), not an access token", "not_access_token")


def bearer_token(headers: Mapping[str, str] | None) -> str | None:
    """The token from `Authorization: Bearer <token>` (scheme case-insensitive), or None."""
    value = (headers or {}).get("authorization", "")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class DiscoveredVerifier:
    """The issuer's TokenVerifier, built on first use from its discovery document.

    A failed discovery is tried again no sooner than the JWKS cooldown: an issuer that is down when a
    container starts is asked at most twice a minute (not once per request), and requests meanwhile are
    refused at once instead of each waiting up to the 1.5 s fetch limit."""

    def __init__(
        self,
        settings: AuthorizerSettings,
        on_fetch_error: Callable[[str], None] | None = None,
        *,
        discover: Callable[[str], str] = discover_jwks_uri,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._on_fetch_error = on_fetch_error
        self._discover = discover
        self._verifier: TokenVerifier | None = None
        self._failed_at: float | None = None
        self._failure = ""
        self._lock = threading.Lock()

    def verifier(self) -> TokenVerifier:
        """The verifier; IssuerUnavailable while discovery fails or cools down after a failure."""
        if self._verifier is not None:
            return self._verifier
        with self._lock:
            if self._verifier is not None:
                return self._verifier
            if self._failed_at is not None:
                waited = self.clock() - self._failed_at
                if waited < self.settings.jwks_cooldown_seconds:
                    raise IssuerUnavailable(f"discovery failed {waited:.0f} s ago ({self._failure}); not retried yet")
            try:
                self._verifier = TokenVerifier.for_issuer(self.settings, self._on_fetch_error, self._discover)
            except (OSError, ValueError, KeyError) as exc:
                self._failed_at, self._failure = self.clock(), f"{type(exc).__name__}: {exc}"
                raise IssuerUnavailable(f"discovery failed ({self._failure})") from exc
            return self._verifier
