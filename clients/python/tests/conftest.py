"""The client's tests run against the real local stack (tests/stack.py): one stack per e2e module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.stack import DevStack, start_devstack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[DevStack]:
    """A local stack for the module; a module sets `STACK_ENV` for settings of its own."""
    extra_env = getattr(request.module, "STACK_ENV", None)
    started = start_devstack(tmp_path_factory.mktemp("client-devstack"), extra_env=extra_env)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def key() -> str:
    return f"client:{uuid.uuid4().hex[:12]}"
