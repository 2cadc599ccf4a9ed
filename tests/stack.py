"""The local stack as a test starts it: ``python -m devstack`` on free ports, its logs, and the check that it
answered no unexpected 500. Imported by tests/conftest.py and by the tests that start a stack of their own
(a module, not a conftest: a bare `import conftest` finds whichever scope's conftest is first on sys.path).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVSTACK_START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DevStack:
    """A running ``python -m devstack``."""

    process: subprocess.Popen[str]
    base_url: str
    moto_url: str
    issuer: str
    state_dir: Path
    # The WebSocket API's listener (http://127.0.0.1:<port>): its URL when the template has one.
    ws_base_url: str
    table_name: str
    # The Prometheus endpoint (devstack/metrics.py).
    metrics_url: str = ""
    output: list[str] = field(default_factory=list)
    # Integration errors a test provokes on purpose (a failpoint killing the function, an init timeout):
    # a 500 with one of these is the test's doing; any other 500 is a defect (see server_errors).
    expected_crashes: tuple[str, ...] = ()

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def access_log(self) -> list[dict[str, Any]]:
        path = self.log_dir / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def server_errors(self) -> list[dict[str, Any]]:
        """Requests answered 500 (a crash, an unhandled error, a malformed response) other than the crashes
        the test provoked. 503 is not among them: it is the service's answer to a slow dependency."""
        return [
            record
            for record in self.access_log()
            if record.get("status") == 500 and record.get("integrationError") not in self.expected_crashes
        ]

    def client(self, service: str) -> Any:
        """A boto3 client of `service` on the stack's moto server, with the dummy credentials it accepts."""
        import boto3

        from devstack.resources import DUMMY_CREDENTIALS

        return boto3.client(service, endpoint_url=self.moto_url, region_name="us-east-1", **DUMMY_CREDENTIALS)

    def token(self, sub: str = "alice", scope: str = "state:read state:write", **kw: Any) -> str:
        from devstack.token import mint

        kw.setdefault("issuer", self.issuer)
        kw.setdefault("state_dir", self.state_dir)
        return mint(sub, scope, **kw)

    def stop(self, *, check_server_errors: bool = True) -> None:
        """Stop the stack; then fail if any request it served answered 500 unexpectedly: no input, however
        hostile, may make the service crash, so every e2e test doubles as a check of that."""
        self._stop_process()
        if check_server_errors:
            errors = self.server_errors()
            assert not errors, f"{len(errors)} requests answered 500:\n" + "\n".join(
                json.dumps(record) for record in errors[:20]
            )

    def _stop_process(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_devstack(
    state_dir: Path, extra_env: dict[str, str] | None = None, *, expected_crashes: tuple[str, ...] = ()
) -> DevStack:
    """Run ``python -m devstack`` on free ports and wait for ``devstack ready``. `expected_crashes`: the
    integration errors the test provokes on purpose (DevStack.server_errors)."""
    port, moto_port, oidc_port, redis_port, ws_port = free_port(), free_port(), free_port(), free_port(), free_port()
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "STATE_OIDC_ISSUER", "REDIS_URL")}
    env.update(
        {
            "PORT": str(port),
            "MOTO_PORT": str(moto_port),
            "OIDC_PORT": str(oidc_port),
            "LOCAL_WS_PORT": str(ws_port),
            "LOCAL_METRICS_PORT": str(metrics_port),
            "REDIS_PORT": str(redis_port),
            "STATE_DIR": str(state_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, stopped as a whole
    )
    stack = DevStack(
        process=process,
        base_url=f"http://127.0.0.1:{port}",
        moto_url=env.get("AWS_ENDPOINT_URL") or f"http://127.0.0.1:{moto_port}",
        issuer=env.get("STATE_OIDC_ISSUER") or f"http://127.0.0.1:{oidc_port}",
        state_dir=state_dir,
        ws_base_url=f"http://127.0.0.1:{env['LOCAL_WS_PORT']}",
        table_name="state-service-local-StateTable",
        metrics_url=f"http://127.0.0.1:{env['LOCAL_METRICS_PORT']}/metrics",
        expected_crashes=expected_crashes,
    )
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            stack.output.append(line.rstrip("\n"))
            if line.strip() == "devstack ready":
                ready.set()

    threading.Thread(target=pump, name="devstack-output", daemon=True).start()
    deadline = time.monotonic() + DEVSTACK_START_TIMEOUT
    while not ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            stack.stop(check_server_errors=False)
            time.sleep(0.2)
            output = "\n".join(stack.output)
            pytest.fail(f"python -m devstack did not become ready:\n{output}", pytrace=False)
    return stack
