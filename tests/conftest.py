"""Shared fixtures: the serialized moto server, tables from template.yaml, the dev stack.

Fixture names here are imported by other test modules: keep them stable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stack import DevStack, start_devstack

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Give the test process the Powertools environment every function has in Lambda (template Globals),
    before any handler or core module is imported: Metrics reads its namespace when it is created."""
    from devstack.template import load_template

    environment = load_template(REPO_ROOT / "template.yaml").function("GetStateFunction").environment
    for name, value in environment.items():
        if name.startswith("POWERTOOLS_"):
            os.environ.setdefault(name, str(value))


EMULATOR_CANARY = "tests/devstack/test_emulator.py"


# Under pytest-xdist (make test) whole files are handed to the workers in collection order: the longest go first,
# so that none of them starts last and keeps one worker busy while the others have finished. By marker, end-to-end
# files (a local stack each, seconds a test) before integration before unit; these, measured the longest of their
# kind, before the rest.
LONGEST_FILES = (
    "tests/e2e/test_benchmarks_run.py",
    "tests/e2e/test_history.py",
    "tests/integration/test_transaction_concurrency.py",
    "tests/integration/test_watch.py",
)
MARKER_ORDER = ("e2e", "integration")
# Except the watch's full-size load test, handed out last: it keeps both cores busy for two minutes and more
# by itself, and the tests with a time budget that ran beside it (a long-poll woken within 100 ms, a worker
# started within 30 s) failed for its sake. Last, it runs mostly alone: beside it, only what is left of the
# other worker's last file.
LAST_FILES = ("tests/e2e/test_watch_ws.py",)


def _parallel_rank(item: pytest.Item) -> tuple[int, int, int]:
    path = item.nodeid.split("::", 1)[0]
    last = 1 if path in LAST_FILES else 0
    longest = LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)
    kind = next((i for i, name in enumerate(MARKER_ORDER) if item.get_closest_marker(name)), len(MARKER_ORDER))
    return last, longest, kind


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The emulator canary runs first: if moto misbehaves, that is known before any test that
    relies on its conditional writes fails for moto's sake rather than the code's."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Stable: a file's tests keep their order, and every worker collects the same order (xdist checks).
        items.sort(key=_parallel_rank)
    items.sort(key=lambda item: 0 if item.nodeid.startswith(EMULATOR_CANARY) else 1)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    failed = [r for r in terminalreporter.stats.get("failed", []) if r.nodeid.startswith(EMULATOR_CANARY)]
    if failed:
        terminalreporter.section("EMULATOR CANARY FAILED", sep="!", red=True)
        terminalreporter.write_line(
            "The AWS emulator (moto) broke a guarantee the core relies on; failures of other tests may be the "
            "emulator's, not the code's:"
        )
        for report in failed:
            terminalreporter.write_line(f"  {report.nodeid}")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A SerializedMotoServer on a free port; the AWS environment points at it."""
    from devstack.moto_server import SerializedMotoServer

    server = SerializedMotoServer(port=0).start()
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield server.endpoint_url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A real redis-server without persistence on a free port (stop, pause and resume it in tests)."""
    from devstack.redis_server import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def raw_redis(redis_server: Any) -> Any:
    """A plain client of the test redis-server, to look at or disturb the cache behind the code's back."""
    import redis

    return redis.Redis.from_url(redis_server.url)


@pytest.fixture(scope="session")
def state_template() -> Any:
    """The repository's template.yaml, loaded with local defaults."""
    from devstack.template import load_template

    return load_template(REPO_ROOT / "template.yaml")


@pytest.fixture(scope="session")
def state_table(moto_server: str, state_template: Any) -> str:
    """The state table, created in moto from template.yaml under a unique name."""
    import boto3

    name = f"state-test-{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    ddb.create_table(**state_template.table_create_kwargs("StateTable", name))
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    return name


@pytest.fixture(scope="session")
def dev_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The dev OIDC issuer (discovery + JWKS) on a free port, served from a background event loop."""
    import asyncio
    import threading

    from devstack.oidc import DevIssuer

    issuer = DevIssuer(tmp_path_factory.mktemp("issuer"), port=0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(issuer.start(), loop).result(timeout=10)
    yield issuer
    asyncio.run_coroutine_threadsafe(issuer.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """The whole local stack (real template, handlers and authorizer) as a subprocess."""
    stack = start_devstack(tmp_path_factory.mktemp("devstack-state"))
    try:
        yield stack
    finally:
        stack.stop()
