"""Lambda REQUEST authorizer (HTTP API, payload 2.0, simple responses): validates the bearer JWT and puts
the principal (subject, scopes, roles) in the request context. Its answer is cached by API Gateway per
token, so it never looks at the route or the key: the handlers decide on keys. Never logs the token; it
has no table or cache client at all, so a rejected token costs no DynamoDB or Redis call."""

import functools
import os

from state_core.config import AuthorizerSettings
from state_core.observability import lambda_entry, logger, metrics
from state_core.tokens import TokenRejected, TokenVerifier, bearer_token

DENY = {"isAuthorized": False}


def _jwks_fetch_failed(reason: str) -> None:
    logger.warning("JWKS fetch failed; keeping the last good key set", extra={"reason": reason})


@functools.cache
def verifier() -> TokenVerifier:
    return TokenVerifier.for_issuer(AuthorizerSettings.from_environ(os.environ), on_fetch_error=_jwks_fetch_failed)


def _deny(reason: str) -> dict:
    logger.info("token refused", extra={"reason": reason})
    metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
    return DENY


@lambda_entry("authorize")
def lambda_handler(event, context):
    token = bearer_token(event.get("headers"))
    if token is None:
        return _deny("no bearer token")
    try:
        token_verifier = verifier()
    except (OSError, ValueError, KeyError):
        # Fail closed; the next invocation tries discovery again (functools.cache keeps no failure).
        logger.exception("OIDC discovery failed", extra={"issuer": os.environ.get("STATE_OIDC_ISSUER")})
        return DENY
    try:
        verified = token_verifier.verify(token)
    except TokenRejected as rejected:
        return _deny(str(rejected))
    logger.append_keys(actor=verified.subject)
    return {"isAuthorized": True, "context": verified.authorizer_context()}
