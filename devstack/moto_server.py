"""An embedded moto server that serves one request at a time.

Why serialize: moto keeps no per-request locks. Concurrent conditional writes can
both pass their condition, and a failing TransactWriteItems restores a stale copy
of the whole table over writes that other threads made meanwhile (acknowledged
writes vanish). DynamoDB itself gives neither anomaly, so the local stack wraps
moto's WSGI app in a lock held for the whole request, including producing and
closing the response body. Throughput is not the point of the emulator; behaving like DynamoDB is.

moto's own server answers any web page's cross-origin request (it enables CORS for every origin), so a
page the developer opens could read or reset the local data: this one answers only this machine
(devstack/loopback.py) and sends no CORS headers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from werkzeug.serving import BaseWSGIServer, make_server

from devstack.loopback import LoopbackOnlyMiddleware

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SerializingMiddleware:
    """WSGI middleware that lets one request at a time into the wrapped app."""

    def __init__(self, app: WSGIApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self._lock.acquire()
        try:
            result = self._app(environ, start_response)
        except BaseException:
            self._lock.release()
            raise
        return _LockedBody(result, self._lock)


class _LockedBody:
    """Keeps the lock until the server has consumed and closed the response body."""

    def __init__(self, body: Iterable[bytes], lock: threading.Lock) -> None:
        self._body = body
        self._lock = lock
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if not self._released:
                self._released = True
                self._lock.release()


def build_app() -> WSGIApp:
    # Imported here: moto's server modules are heavy and only the emulator needs them.
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    return SerializingMiddleware(DomainDispatcherApplication(create_backend_app))


class SerializedMotoServer:
    """moto in a background thread on 127.0.0.1, one request at a time."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("call start() first")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> SerializedMotoServer:
        import logging

        from moto.moto_server.werkzeug_app import MotoRequestHandler

        # werkzeug logs every emulator request at INFO: noise next to the functions' logs.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

        app = LoopbackOnlyMiddleware(build_app(), port=lambda: self.port)
        self._server = make_server(self._host, self._port, app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> SerializedMotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoProcess:
    """The serialized moto server in a process of its own (`python -m devstack.moto_server`).

    The local stack's gateway, stream poller and TTL sweeper are Python threads of one process; moto beside
    them would share their interpreter lock, and every emulated DynamoDB call (a lock holder's write among
    them) would wait for the gateway's work on dozens of open requests. As a process of its own it runs on
    its own, as DynamoDB does apart from API Gateway. It exits with its parent, even a killed one.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self._host = host
        self._port = port
        self._log_path = log_path
        self._process: subprocess.Popen[str] | None = None
        self._endpoint_url = ""

    @property
    def endpoint_url(self) -> str:
        if not self._endpoint_url:
            raise RuntimeError("call start() first")
        return self._endpoint_url

    def start(self, timeout: float = 60.0) -> MotoProcess:
        log: IO[str] | int = open(self._log_path, "a") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        command = [sys.executable, "-m", "devstack.moto_server", "--port", str(self._port), "--host", self._host]
        self._process = subprocess.Popen(
            [*command, "--exit-with-parent"],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        if not isinstance(log, int):
            log.close()  # the child has its own copy
        banner = self._process.stdout
        assert banner is not None
        ready = threading.Event()
        lines: list[str] = []

        def read_banner() -> None:
            for line in banner:  # drained to the end, so the child never blocks on a full pipe
                if not ready.is_set():
                    lines.append(line)
                    ready.set()

        threading.Thread(target=read_banner, name="moto-banner", daemon=True).start()
        if not ready.wait(timeout) or not lines or " on http://" not in lines[0]:
            self.stop()
            raise RuntimeError(f"moto did not start (see {self._log_path or 'its stderr'})")
        self._endpoint_url = lines[0].rsplit(" on ", 1)[1].strip()
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None


def _exit_with(parent: int, stopped: threading.Event) -> None:
    """Stop once `parent` is gone (re-parented children see another parent id)."""
    while not stopped.wait(0.5):
        if os.getppid() != parent:
            stopped.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto server that serves one request at a time")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process is gone")
    args = parser.parse_args(argv)
    parent = os.getppid()
    server = SerializedMotoServer(port=args.port, host=args.host).start()
    print(f"moto (serialized) listening on {server.endpoint_url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    if args.exit_with_parent:
        threading.Thread(target=_exit_with, args=(parent, stopped), daemon=True).start()
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
