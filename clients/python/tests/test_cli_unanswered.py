"""What statectl exits with when a request goes unanswered: a tiny real HTTP server that answers 502, drops
the connection, or answers too late (the local stack does none of these at will)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner

from state_client.cli import ExitCode, app

pytestmark = pytest.mark.integration


class Misbehaving(BaseHTTPRequestHandler):
    """A server that answers 502, or drops the connection once the request is in, or answers late."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode = unquote(self.path).split("/")[2].split(":")[0]
        if mode == "bad-gateway":
            body = b'{"message":"Bad Gateway"}'
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif mode == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            time.sleep(2)  # past the client's timeout

    do_GET = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("mode", "command", "code"),
    [
        # A write sent and not answered, or answered by a failing gateway, may have landed.
        ("bad-gateway", ["put", "bad-gateway:k", "1"], ExitCode.OUTCOME_UNKNOWN),
        ("drop", ["patch", "drop:k", "{}"], ExitCode.OUTCOME_UNKNOWN),
        ("slow", ["delete", "slow:k"], ExitCode.OUTCOME_UNKNOWN),
        # A read that fails so changed nothing.
        ("bad-gateway", ["get", "bad-gateway:k"], ExitCode.ERROR),
        ("drop", ["get", "drop:k"], ExitCode.UNAVAILABLE),
        ("slow", ["version", "slow:k", "1"], ExitCode.UNAVAILABLE),
    ],
)
def test_a_write_left_unanswered_is_outcome_unknown_and_a_read_is_not(misbehaving, mode, command, code):
    result = CliRunner().invoke(app, ["--url", misbehaving, "--token", "t", "--timeout", "0.5", *command])
    assert result.exit_code == code, result.output
    assert mode in command[1]
