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
    started = start_devstack(
        tmp_path_factory.mktemp("client-devstack"), extra_env={"LOCAL_OIDC_TOKEN_TTL_SECONDS": str(TOKEN_TTL)}
    )
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
