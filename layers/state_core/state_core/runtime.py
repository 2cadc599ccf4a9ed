"""Composition root: clients and the StateManager, built once per container from validated settings.

Nothing here runs at import: the first invocation builds what it needs, so tests (and the local stack)
can point the environment at their emulator before any client exists.
"""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config

from state_core.config import ServiceSettings
from state_core.manager import PatchPolicy, StateManager
from state_core.observability import metrics
from state_core.store import StateStore

# botocore's default 60 s read timeout would turn a slow table into an API Gateway timeout (30 s):
# fail fast, let standard-mode retries (with their own backoff and retry quota) absorb blips, then 503.
DYNAMODB_CONFIG = Config(
    connect_timeout=1,
    read_timeout=2,
    retries={"mode": "standard", "max_attempts": 3},
    tcp_keepalive=True,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@functools.cache
def service_settings() -> ServiceSettings:
    return ServiceSettings.from_environ(os.environ)  # type: ignore[no-any-return]


@functools.cache
def dynamodb_client() -> Any:
    return boto3.client("dynamodb", config=DYNAMODB_CONFIG)


@functools.cache
def state_manager() -> StateManager:
    settings = service_settings()
    return StateManager(
        StateStore(dynamodb_client(), settings.table_name),
        clock=utc_now,
        metrics=metrics,
        patch_policy=PatchPolicy(time_budget_seconds=settings.patch_time_budget_seconds),
    )
