"""`statectl` end to end: the real command (a subprocess, as a shell runs it) against the real local stack.

Every command, every input source (argument, @file, stdin), every output format, and the exit code of
every class of error."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from state_client import StateClient
from state_client.cli import ExitCode
from tests.stack import DevStack, free_port

pytestmark = pytest.mark.e2e

CLIENT_ROOT = Path(__file__).resolve().parent.parent
REPO_ROOT = CLIENT_ROOT.parent.parent
ANSI = re.compile(r"\x1b\[")
# An SGR sequence that sets a foreground colour (standard, bright, 256 or true colour).
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38;)")


def environment(stack: DevStack, token: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATE_") and k not in ("NO_COLOR", "FORCE_COLOR")}
    env["PYTHONPATH"] = os.pathsep.join([str(CLIENT_ROOT / "src"), env.get("PYTHONPATH", "")])
    env["STATE_API_URL"] = stack.base_url
    env["STATE_WATCH_URL"] = stack.ws_base_url.replace("http://", "ws://") + "/watch"
    if token is not None:
        env["STATE_TOKEN"] = token
    env.update(extra)
    return env


class Statectl:
    """Runs `python -m state_client.cli` (what the `statectl` script calls) with the stack in its environment."""

    def __init__(self, stack: DevStack, token: str | None) -> None:
        self.stack = stack
        self.env = environment(stack, token)

    def __call__(self, *args: str, stdin: bytes | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "state_client.cli", *args],
            input=stdin,
            capture_output=True,
            env={**self.env, **env},
            timeout=60,
            check=False,
            cwd=REPO_ROOT,
        )
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
        )

    def json_with_env(self, env: dict[str, str], *args: str) -> Any:
        done = self(*args, **env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def json(self, *args: str, stdin: bytes | None = None) -> Any:
        done = self(*args, stdin=stdin)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def statectl(stack: DevStack) -> Statectl:
    return Statectl(stack, stack.token("alice", "state:read state:write"))


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Any:
    with StateClient(stack.base_url, token=stack.token("alice", "state:read state:write")) as state:
        yield state


def test_the_life_of_a_key_through_every_command_and_input(statectl, key, tmp_path):
    created = statectl.json("put", key, '{"theme": "dark"}', "--ttl", "3600")
    assert (created["key"], created["version"], created["updated_by"]) == (key, 1, "alice")
    assert "value" not in created  # a write's answer carries no value
    assert created["expires_at"] is not None

    read = statectl.json("get", key)
    assert (read["value"], read["version"]) == ({"theme": "dark"}, 1)

    document = tmp_path / "value.json"
    document.write_text('{"theme": "light", "lang": "en"}', encoding="utf-8")
    assert statectl.json("put", key, f"@{document}")["version"] == 2
    assert statectl.json("get", key, "--consistent")["value"] == {"theme": "light", "lang": "en"}

    patched = statectl.json("patch", key, "-", stdin=b'{"lang": null, "font": "serif"}')
    assert (patched["value"], patched["version"]) == ({"theme": "light", "font": "serif"}, 3)

    assert statectl.json("put", key, "-", stdin='[1, "ü", null]'.encode())["version"] == 4
    assert statectl.json("get", key)["value"] == [1, "ü", None]

    assert statectl.json("version", key, "2")["value"] == {"theme": "light", "lang": "en"}

    deleted = statectl.json("delete", key)
    assert deleted == {"key": key, "version": 5, "deleted": True}
    assert statectl("get", key).returncode == ExitCode.NOT_FOUND
    assert statectl("version", key, "5").returncode == ExitCode.NOT_FOUND  # a deletion has no value
    assert statectl("version", key, "99").returncode == ExitCode.NOT_FOUND

    versions = statectl.json("history", key)
    assert [(v["version"], v["operation"]) for v in versions] == [
        (5, "deleted"),
        (4, "updated"),
        (3, "updated"),
        (2, "updated"),
        (1, "created"),
    ]
    assert all(v["actor"] == "alice" for v in versions)
    assert [v["version"] for v in statectl.json("history", key, "--limit", "2")] == [5, 4]


def test_yaml_and_table_outputs(statectl, key):
    statectl.json("put", key, '{"n": 1, "s": "3"}')

    as_yaml = statectl("get", key, "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout) == statectl.json("get", key)

    table = statectl("get", key, "--output", "table")
    assert table.returncode == 0, table.stderr
    assert key in table.stdout
    assert '{"n":1,"s":"3"}' in table.stdout  # values as JSON in a table: "3" is not 3
    assert not ANSI.search(table.stdout)  # not a terminal: no colour

    history = statectl("history", key, "-o", "table")
    assert history.returncode == 0
    assert re.search(r"version\s.*operation\s.*actor", history.stdout)
    assert "created" in history.stdout

    assert yaml.safe_load(statectl("history", key, "-o", "yaml").stdout)[0]["operation"] == "created"


def test_conditional_writes(statectl, key):
    assert statectl("put", key, "1", "--create").returncode == 0
    refused = statectl("put", key, "2", "--create")
    assert refused.returncode == ExitCode.PRECONDITION_FAILED
    assert "current version: 1" in refused.stderr

    assert statectl("put", key, "2", "--if-match", '"1"').returncode == 0
    stale = statectl("patch", key, "3", "--if-match", "1")
    assert stale.returncode == ExitCode.PRECONDITION_FAILED
    assert "current version: 2" in stale.stderr
    assert statectl("delete", key, "--if-match", "1").returncode == ExitCode.PRECONDITION_FAILED
    assert statectl.json("get", key)["value"] == 2  # nothing written by the refused ones

    assert statectl.json("delete", key, "--if-match", "*")["version"] == 3
    gone = statectl("put", key, "4", "--if-match", "*")
    assert gone.returncode == ExitCode.PRECONDITION_FAILED
    assert "does not exist" in gone.stderr


def test_listing_by_prefix(statectl, client):
    prefix = f"cli{uuid.uuid4().hex[:8]}:"
    for n in range(3):
        client.set(f"{prefix}{n}", {"n": n})

    deadline = time.monotonic() + 15  # the listing's index follows the writes asynchronously
    while len(listed := statectl.json("ls", prefix)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [k["key"] for k in listed] == [f"{prefix}{n}" for n in range(3)]
    assert "value" not in listed[0]

    with_values = statectl.json("ls", prefix, "--values", "--limit", "2")
    assert [(k["key"], k["value"]) for k in with_values] == [(f"{prefix}0", {"n": 0}), (f"{prefix}1", {"n": 1})]

    table = statectl("ls", prefix, "-o", "table", "--values")
    assert table.returncode == 0
    assert f"{prefix}2" in table.stdout
    assert '{"n":2}' in table.stdout
    assert yaml.safe_load(statectl("ls", prefix, "-o", "yaml").stdout)[1]["key"] == f"{prefix}1"

    empty = statectl("ls", f"{prefix}none:", "-o", "table")
    assert empty.returncode == 0
    assert "key" in empty.stdout  # the header of an empty listing


def test_exit_codes_by_class_of_error(statectl, stack, key, tmp_path):
    # 5: no token (the gateway's 401), a token without the scope (403)
    no_token = Statectl(stack, None)
    assert no_token("get", key).returncode == ExitCode.DENIED
    reader = Statectl(stack, stack.token("alice", "state:read"))
    denied = reader("put", key, "1")
    assert denied.returncode == ExitCode.DENIED
    assert "403" in denied.stderr

    # 6: a bad key (400), a value that is not JSON (refused before sending), a value over 1 MiB (413)
    assert statectl("get", "-bad-key").returncode in (ExitCode.BAD_INPUT, ExitCode.USAGE)
    assert statectl("get", "bad key!").returncode == ExitCode.BAD_INPUT
    not_json = statectl("put", key, "{theme: dark}")
    assert not_json.returncode == ExitCode.BAD_INPUT
    assert "not JSON" in not_json.stderr
    assert statectl("put", key, "NaN").returncode == ExitCode.BAD_INPUT
    assert statectl("put", key, "-", stdin=b"\xff\xfe").returncode == ExitCode.BAD_INPUT
    big = tmp_path / "big.json"
    big.write_text(json.dumps("x" * (1024 * 1024)), encoding="utf-8")
    too_large = statectl("put", key, f"@{big}")
    assert too_large.returncode == ExitCode.BAD_INPUT
    assert "413" in too_large.stderr
    assert statectl("get", key).returncode == ExitCode.NOT_FOUND  # none of them wrote anything
    # The largest value there is (1 MiB canonical) goes through stdin and back.
    largest = json.dumps("x" * (1024 * 1024 - 2)).encode()
    assert statectl("put", key, "-", stdin=largest).returncode == 0
    assert len(statectl("get", key, "--consistent").stdout.encode()) > 1024 * 1024

    # Hostile keys: refused by the service (6), an empty one before sending (2); nothing written either way.
    for hostile in ("../x", "a/b", "a?b=1", "k" * 257, "ключ"):
        assert statectl("put", hostile, "1").returncode == ExitCode.BAD_INPUT, hostile
    assert statectl("get", "").returncode == ExitCode.USAGE
    assert statectl("put", "", "1").returncode == ExitCode.USAGE
    assert statectl("ls", "not a prefix").returncode == ExitCode.BAD_INPUT
    assert statectl("version", key, "1000000000000000").returncode == ExitCode.BAD_INPUT
    assert statectl("put", key, "1", "--ttl", "999999999999").returncode == ExitCode.BAD_INPUT

    # 7: nothing listening
    unreachable = statectl("get", key, STATE_API_URL=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == ExitCode.UNAVAILABLE
    assert "cannot reach" in unreachable.stderr

    # 2: the command line itself
    assert statectl("put", key).returncode == ExitCode.USAGE
    assert statectl("get", key, "-o", "xml").returncode == ExitCode.USAGE
    assert statectl("put", key, "1", "--if-match", "latest").returncode == ExitCode.USAGE
    assert statectl("put", key, "1", "--if-match", "0").returncode == ExitCode.USAGE
    assert statectl("put", key, "1", "--create", "--if-match", "1").returncode == ExitCode.USAGE
    assert statectl("put", key, f"@{tmp_path / 'missing.json'}").returncode == ExitCode.USAGE
    assert statectl("version", key, "0").returncode == ExitCode.USAGE
    assert statectl("watch").returncode == ExitCode.USAGE
    assert statectl("watch", key, "--prefix", "p:").returncode == ExitCode.USAGE
    assert statectl("nonsense").returncode == ExitCode.USAGE


def test_errors_go_to_stderr_and_never_echo_the_value(statectl, key):
    statectl.json("put", key, '"secret-value-never-shown"', "--create")
    refused = statectl("put", key, '"secret-value-never-shown"', "--create")
    assert refused.returncode == ExitCode.PRECONDITION_FAILED
    assert refused.stdout == ""
    assert "secret-value-never-shown" not in refused.stderr


def test_token_mints_a_local_token_the_stack_accepts(stack, statectl, key):
    minted = statectl("token", "--sub", "bob", "--scope", "state:read state:write", "--state-dir", str(stack.state_dir))
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.count(".") == 2

    as_bob = Statectl(stack, token)
    assert as_bob.json("put", key, "{}")["updated_by"] == "bob"

    outside = statectl("token", "--repo", "/nonexistent")
    assert outside.returncode == ExitCode.USAGE


def test_client_credentials_instead_of_a_token(stack, key):
    anonymous = Statectl(stack, None)
    written = anonymous.json_with_env(
        {"STATE_CLIENT_ID": "dev-client", "STATE_CLIENT_SECRET": "dev-secret", "STATE_ISSUER": stack.issuer},
        "put",
        key,
        "1",
    )
    assert written["updated_by"] == "dev-client"  # the dev issuer's tokens name the client

    wrong = anonymous("--client-id", "dev-client", "--client-secret", "nope", "--issuer", stack.issuer, "get", key)
    assert wrong.returncode == ExitCode.DENIED
    assert "nope" not in wrong.stderr
    incomplete = anonymous("--client-id", "dev-client", "--client-secret", "dev-secret", "get", key)
    assert incomplete.returncode == ExitCode.USAGE


def test_watch_prints_each_change_as_a_json_line(stack, statectl, client, key):
    client.set(key, {"n": 0})
    lines = watch_while_writing(statectl, client, key, ["watch", key, "--count", "2"])
    changes = [json.loads(line) for line in lines]
    assert [c["type"] for c in changes] == ["change", "change"]
    assert all(c["key"] == key for c in changes)
    assert changes[1]["version"] == changes[0]["version"] + 1
    assert changes[0]["value"] == {"n": changes[0]["version"] - 1}
    assert all(isinstance(c["cursor"], str) for c in changes)


def test_watch_resumes_after_a_cursor(statectl, client, key):
    client.set(key, {"n": 0})
    (first,) = [json.loads(line) for line in watch_while_writing(statectl, client, key, ["watch", key, "--count", "1"])]
    latest = client.get(key, consistent=True).version
    client.set(key, {"n": "a"})
    client.set(key, {"n": "b"})

    # Everything after the cursor is replayed from the history, without any write meanwhile.
    wanted = latest + 2 - first["version"]
    replayed = statectl("watch", key, "--since", first["cursor"], "--count", str(wanted))
    assert replayed.returncode == 0, replayed.stderr
    versions = [json.loads(line)["version"] for line in replayed.stdout.splitlines()]
    assert versions == list(range(first["version"] + 1, latest + 3))


def test_watch_refused_exits_denied(stack, key):
    outsider = Statectl(stack, stack.token("alice", "state:read:other:*"))
    refused = outsider("watch", key, "--count", "1")
    assert refused.returncode == ExitCode.DENIED
    assert "403" in refused.stderr


def test_watch_a_prefix_in_yaml_and_as_rows(stack, statectl, client):
    prefix = f"clw{uuid.uuid4().hex[:8]}:"
    key = f"{prefix}a"
    client.set(key, {"n": 0})
    documents = list(
        yaml.safe_load_all(
            "\n".join(
                watch_while_writing(statectl, client, key, ["watch", "--prefix", prefix, "-o", "yaml", "--count", "1"])
            )
        )
    )
    assert len(documents) == 1
    assert documents[0]["key"] == key

    rows = watch_while_writing(statectl, client, key, ["watch", key, "-o", "table", "--count", "1"])
    assert rows[0].split("\t")[:4] == ["TYPE", "KEY", "VERSION", "OPERATION"]
    assert rows[1].split("\t")[:2] == ["change", key]


def watch_while_writing(statectl: Statectl, client: StateClient, key: str, args: list[str]) -> list[str]:
    """Run a watch and write the key every 0.3 s until the watch has printed what it was asked for: a fresh
    watch starts after the key's version when it subscribed, so the writes go on until it has."""
    process = subprocess.Popen(
        [sys.executable, "-m", "state_client.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=statectl.env,
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 45
        while process.poll() is None and time.monotonic() < deadline:
            current = client.get(key, consistent=True)
            client.set(key, {"n": current.version})
            time.sleep(0.3)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    return out.splitlines()


def test_colour_only_on_a_terminal_and_never_with_no_color(statectl, key):
    statectl.json("put", key, '{"colour": true}')
    assert COLOUR.search(on_a_terminal(statectl, ["get", key], {"TERM": "xterm-256color"}))
    assert not ANSI.search(on_a_terminal(statectl, ["get", key], {"TERM": "xterm-256color", "NO_COLOR": "1"}))
    # Piped: plain JSON, parseable as is.
    assert json.loads(statectl("get", key).stdout)["value"] == {"colour": True}


def on_a_terminal(statectl: Statectl, args: list[str], env: dict[str, str]) -> str:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "state_client.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env={**statectl.env, **env},
        cwd=REPO_ROOT,
    )
    os.close(terminal)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
        process.wait(timeout=30)
    assert process.returncode == 0, output
    return output.decode("utf-8", "replace")


def test_the_statectl_script_is_the_cli_main():
    scripts = tomllib.loads((CLIENT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    module, _, name = scripts["statectl"].partition(":")
    assert (module, name) == ("state_client.cli", "main")
    from state_client import cli

    assert callable(getattr(cli, name))
