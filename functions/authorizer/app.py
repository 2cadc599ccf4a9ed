"""Lambda REQUEST authorizer (HTTP API, payload 2.0, simple responses): validates the bearer JWT and puts
the principal (subject, scopes, roles) in the request context. Its answer is cached by API Gateway per
token, so it never looks at the route or the key: the handlers decide on keys. Never logs the token; it
has no table or cache client at all, so a rejected token costs no DynamoDB or Redis call."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from state_core.config import AuthorizerSettings
from state_core.observability import lambda_entry, logger, metrics
from state_core.security.tokens import DiscoveredVerifier, IssuerUnavailable, TokenRejected, bearer_token

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

DENY: dict[str, Any] = {"isAuthorized": False}


def _jwks_fetch_failed(reason: str) -> None:
    logger.warning("JWKS fetch failed; keeping the last good key set", extra={"reason": reason})


@functools.cache
def issuer() -> DiscoveredVerifier:
    return DiscoveredVerifier(AuthorizerSettings.from_environ(os.environ), on_fetch_error=_jwks_fetch_failed)


def _deny(reason: str, code: str) -> dict[str, Any]:
    """Refuse, counted with the reason's code (one of DENIAL_REASONS) beside the metric, where the local stack's
    Prometheus exporter and a Logs Insights query find it; it is no dimension (see docs/decisions.md)."""
    logger.info("token refused", extra={"reason": reason, "denial_reason": code})
    metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
    metrics.add_metadata(key="denial_reason", value=code)
    return DENY


@lambda_entry("authorize")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    token = bearer_token(event.get("headers"))
    if token is None:
        return _deny("no bearer token", "no_token")
    try:
        token_verifier = issuer().verifier()
    except IssuerUnavailable as unavailable:
        # Fail closed; discovery is tried again after the cooldown.
        logger.error("OIDC issuer unavailable", extra={"issuer": issuer().settings.issuer, "reason": str(unavailable)})
        return _deny("the issuer is unavailable", "issuer_unavailable")
    except ValueError:
        # Broken settings: every request is refused with the reason (functools.cache keeps no failure).
        logger.exception("authorizer settings are invalid")
        return _deny("the authorizer's settings are invalid", "misconfigured")
    try:
        verified = token_verifier.verify(token)
    except TokenRejected as rejected:
        return _deny(str(rejected), rejected.reason)
    logger.append_keys(actor=verified.subject)
    return {"isAuthorized": True, "context": verified.authorizer_context()}
