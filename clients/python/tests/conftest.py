"""The client's end-to-end tests share one local stack (tests/stack.py): the stack starts in ~10 s, and
nothing here needs a fresh one. Its dev issuer grants client-credentials tokens living 5 s, so a test can
watch the client refresh one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.stack import DevStack, start_devstack

TOKEN_TTL = 5


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # Four GET and four PUT workers at most: twenty concurrent `modify` calls otherwise start twenty-eight
    # cold workers at once, and on two loaded cores some outlast the stack's 20 s init timeout (a 500 the
    # client rightly does not retry). What those tests check is the client's optimistic loop, which races
    # the same with four writers in flight as with twenty; further requests queue in the gateway.
    env = {
        "LOCAL_OIDC_TOKEN_TTL_SECONDS": str(TOKEN_TTL),
        "LOCAL_MAX_CONCURRENCY_GetStateFunction": "4",
        "LOCAL_MAX_CONCURRENCY_PutStateFunction": "4",
    }
    started = start_devstack(tmp_path_factory.mktemp("client-devstack"), extra_env=env)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def key() -> str:
    return f"client:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def token_ttl() -> int:
    """The lifetime of the stack's client-credentials tokens."""
    return TOKEN_TTL
