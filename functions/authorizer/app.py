"""Lambda REQUEST authorizer (HTTP API, payload 2.0, simple responses): validates the bearer JWT and puts
the principal (subject, scopes, roles) in the request context. Never logs the token."""

import functools
import os

from state_core.config import AuthorizerSettings
from state_core.observability import lambda_entry, logger, metrics
from state_core.tokens import TokenRejected, TokenVerifier, bearer_token

DENY = {"isAuthorized": False}


@functools.cache
def verifier() -> TokenVerifier:
    return TokenVerifier.for_issuer(AuthorizerSettings.from_environ(os.environ))


@lambda_entry("authorize")
def lambda_handler(event, context):
    token = bearer_token(event.get("headers"))
    if token is None:
        logger.info("token refused", extra={"reason": "no bearer token"})
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
        return DENY
    try:
        token_verifier = verifier()
    except (OSError, ValueError, KeyError):
        # Fail closed; the next invocation tries discovery again (functools.cache keeps no failure).
        logger.exception("OIDC discovery failed", extra={"issuer": os.environ.get("STATE_OIDC_ISSUER")})
        return DENY
    try:
        verified = token_verifier.verify(token)
    except TokenRejected as rejected:
        logger.info("token refused", extra={"reason": str(rejected)})
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
        return DENY
    logger.append_keys(actor=verified.subject)
    return {"isAuthorized": True, "context": verified.authorizer_context()}
