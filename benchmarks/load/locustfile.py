"""The mixed workload `make load` runs: one locust user class whose tasks are the service's operations.

`python -m benchmarks.load` (the wrapper beside this file) sets `StateUser.workload` and `StateUser.token`
from its options before any user starts. The file also works as a plain locustfile
(`locust -f benchmarks/load/locustfile.py --host URL`, TOKEN in the environment) with the default mix.

Each request is named after its operation, so locust's statistics have one row per operation. A status
the operation may legitimately answer under this workload (a 404 for a key another user deleted) counts
as a success; anything else is a failure named by its status, which the wrapper counts against the
error threshold.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any, ClassVar

from locust import FastHttpUser, constant, constant_throughput
from locust.contrib.fasthttp import ResponseContextManager

from benchmarks.load.workload import OPERATIONS, RETRY_LATER_IS_EXPECTED, Workload, filler


def _check(response: ResponseContextManager, operation: str) -> None:
    status = response.status_code
    retry_after = response.headers.get("Retry-After") if response.headers is not None else None
    if status in OPERATIONS[operation] or (status == 503 and operation in RETRY_LATER_IS_EXPECTED and retry_after):
        response.success()
    elif status == 0:
        response.failure(f"no response: {getattr(response, 'error', None)!r}")
    else:
        response.failure(f"HTTP {status}")


class StateUser(FastHttpUser):
    """A client of the state service; `configure` sets what it does (the wrapper calls it before any user
    starts; the default mix otherwise)."""

    workload: ClassVar[Workload] = Workload()
    token: ClassVar[str] = ""
    # FastHttpUser's timeouts: a request the service is slow to answer is an error, not a hang.
    connection_timeout = 10.0
    network_timeout = 30.0

    @classmethod
    def configure(cls, workload: Workload, token: str) -> None:
        cls.workload, cls.token = workload, token
        operations: dict[str, Callable[[StateUser], None]] = {
            "get": StateUser.get,
            "put": StateUser.put,
            "patch": StateUser.patch,
            "delete": StateUser.delete,
            "history": StateUser.history,
            "large": StateUser.large_put_get,
        }
        # locust picks a task uniformly from this list: an operation appears as many times as its weight.
        cls.tasks = [operations[name] for name, weight in workload.mix.items() for _ in range(weight)]

    def wait_time(self) -> float:
        workload = self.workload
        if workload.rate > 0:
            return float(constant_throughput(workload.rate / max(1, workload.users))(self))
        return float(constant(0)(self))

    def on_start(self) -> None:
        self.rng = random.Random()
        self.small = filler(self.workload.small_bytes, self.rng)
        self.large = filler(self.workload.large_bytes, self.rng)

    def _send(
        self, operation: str, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        with self.client.request(
            method,
            path,
            name=operation,
            # The class's token, read at each request: the wrapper may replace it while the users run.
            headers={"Authorization": f"Bearer {StateUser.token}", **(headers or {})},
            catch_response=True,
            **kwargs,
        ) as response:
            _check(response, operation)

    def get(self) -> None:
        self._send("get", "GET", f"/state/{self.workload.key(self.rng)}")

    def put(self) -> None:
        value = {"n": self.rng.randrange(1 << 30), "text": self.small}
        self._send("put", "PUT", f"/state/{self.workload.key(self.rng)}", json={"value": value})

    def patch(self) -> None:
        # A merge patch setting one of a few members: concurrent PATCHes of one key merge, none is lost.
        patch = {f"m{self.rng.randrange(8)}": self.rng.randrange(1 << 30)}
        self._send(
            "patch",
            "PATCH",
            f"/state/{self.workload.key(self.rng)}",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )

    def delete(self) -> None:
        self._send("delete", "DELETE", f"/state/{self.workload.key(self.rng)}")

    def history(self) -> None:
        self._send("history", "GET", f"/state/{self.workload.key(self.rng)}/history?limit=10")

    def large_put_get(self) -> None:
        path = f"/state/{self.workload.large_key(self.rng)}"
        self._send("large put", "PUT", path, json={"value": {"blob": self.large}})
        self._send("large get", "GET", path)


StateUser.configure(Workload(), os.environ.get("TOKEN", ""))
