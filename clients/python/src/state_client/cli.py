"""`statectl`: the state service from the shell, on top of `StateClient`.

`statectl --help` (and `statectl COMMAND --help`) is the reference. Needs the `cli` extra
(`pip install 'state-client[cli]'`: typer, rich, PyYAML).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import httpx

try:
    import typer
except ModuleNotFoundError as missing:
    # The `statectl` script is installed with the client; its libraries come with the `cli` extra only.
    raise SystemExit(f"statectl needs {missing.name}: pip install 'state-client[cli]'") from None

from state_client import errors
from state_client.auth import AuthError, ClientCredentials

if TYPE_CHECKING:
    from rich.console import Console

    from state_client import StateClient
    from state_client.models import Change, Envelope, KeyInfo, Resync, VersionInfo


class ExitCode(IntEnum):
    """What `statectl` exits with, by the kind of failure: a script branches on these."""

    OK = 0
    ERROR = 1  # anything not below: an unexpected answer (5xx other than 503), a local failure
    USAGE = 2  # the command line is wrong (click's own code for usage errors)
    NOT_FOUND = 3  # 404 absent, deleted or expired; 410 a version past retention
    PRECONDITION_FAILED = 4  # 412: --if-match / --create did not hold
    DENIED = 5  # 401, 403: no token, a rejected one, or not allowed on this key
    BAD_INPUT = 6  # 400, 413, 415, 422, or a value that is not JSON
    UNAVAILABLE = 7  # 503, 429, or the service unreachable: nothing was written, retry later
    # 503 write-outcome-unknown, or a write that went unanswered (a timeout, a dropped connection, another
    # 5xx): it may have landed; read the key before writing again.
    OUTCOME_UNKNOWN = 8


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 other error; 2 usage; 3 not found (404) or gone (410); 4 precondition failed (412); "
    "5 unauthorized or forbidden (401, 403); 6 bad input (400, 413, 415, 422, or not JSON); "
    "7 unavailable (503, 429, unreachable: nothing written); 8 write outcome unknown (write-outcome-unknown, "
    "or a write left unanswered: read the key before writing again)."
)


class Output(StrEnum):
    JSON = "json"
    YAML = "yaml"
    TABLE = "table"


app = typer.Typer(
    name="statectl",
    help="Read, write and watch the JSON state service. " + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class Settings:
    url: str | None
    token: str | ClientCredentials | None
    timeout: float


def _non_empty_key(key: str | None) -> str | None:
    # The service checks keys (400, exit 6); an empty one would instead miss every route and read as a 404.
    if key == "":
        raise typer.BadParameter("a key is 1-256 characters")
    return key


KeyArgument = Annotated[str, typer.Argument(help="The key.", callback=_non_empty_key, show_default=False)]


def _output_available(output: Output) -> Output:
    # Checked before any request: a write must not land and then fail to print.
    if output is Output.YAML:
        try:
            import yaml  # noqa: F401  only whether it imports
        except ModuleNotFoundError:
            raise typer.BadParameter("-o yaml needs PyYAML: pip install 'state-client[cli]'") from None
    return output


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output", "-o", help="json (default), yaml, or table.", case_sensitive=False, callback=_output_available
    ),
]
IfMatchOption = Annotated[
    str | None,
    typer.Option(
        "--if-match", help='Only if the key is at this version ("3", 3, or * for "exists").', show_default=False
    ),
]


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="STATE_API_URL", help="The API's base URL.", show_default=False),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="STATE_TOKEN", help="Bearer token (statectl token mints a local one).", show_default=False
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per HTTP request.", min=0.1)] = 10.0,
    client_id: Annotated[
        str | None,
        typer.Option(
            "--client-id",
            envvar="STATE_CLIENT_ID",
            help="OAuth2 client credentials instead of --token: the client id (with --client-secret, --issuer).",
            show_default=False,
        ),
    ] = None,
    client_secret: Annotated[
        str | None,
        typer.Option("--client-secret", envvar="STATE_CLIENT_SECRET", help="The client's secret.", show_default=False),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option(
            "--issuer",
            envvar="STATE_ISSUER",
            help="The issuer whose discovery document names the token endpoint.",
            show_default=False,
        ),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option("--scope", envvar="STATE_TOKEN_SCOPE", help="Scopes to ask the issuer for.", show_default=False),
    ] = None,
) -> None:
    credentials: str | ClientCredentials | None = token
    if token is None and (client_id is not None or client_secret is not None):
        if client_id is None or client_secret is None or issuer is None:
            raise typer.BadParameter("client credentials need --client-id, --client-secret and --issuer")
        credentials = ClientCredentials(client_id, client_secret, issuer=issuer, scope=scope)
    ctx.obj = Settings(url=url, token=credentials, timeout=timeout)


# ------------------------------------------------------------------------------------------------ commands
@app.command()
def get(
    ctx: typer.Context,
    key: KeyArgument,
    consistent: Annotated[bool, typer.Option("--consistent", help="Bypass the cache.")] = False,
    output: OutputOption = Output.JSON,
) -> None:
    """Read a key: its envelope (value, version, times, author)."""
    with _client(ctx) as client:
        _emit(_envelope(client.get(key, consistent=consistent)), output)


@app.command()
def put(
    ctx: typer.Context,
    key: KeyArgument,
    value: Annotated[str, typer.Argument(help="JSON text, @FILE for a file's, or - for stdin's.")],
    ttl: Annotated[int | None, typer.Option("--ttl", help="Expire after this many seconds.", min=1)] = None,
    if_match: IfMatchOption = None,
    create: Annotated[bool, typer.Option("--create", help="Only if the key does not exist.")] = False,
    output: OutputOption = Output.JSON,
) -> None:
    """Create or replace a key's value."""
    if create and if_match is not None:
        _usage("--create and --if-match exclude each other")
    document = _json_input(value)
    with _client(ctx, writes=True) as client:
        envelope = client.set(
            key, document, ttl_seconds=ttl, if_match=_if_match(if_match), if_none_match="*" if create else None
        )
    # The answer to a write carries no value: echoing the one sent back would only repeat the input.
    _emit({k: v for k, v in _envelope(envelope).items() if k != "value"}, output)


@app.command()
def patch(
    ctx: typer.Context,
    key: KeyArgument,
    merge_patch: Annotated[
        str, typer.Argument(metavar="PATCH", help="JSON Merge Patch: JSON text, @FILE, or - for stdin.")
    ],
    if_match: IfMatchOption = None,
    output: OutputOption = Output.JSON,
) -> None:
    """Merge a JSON Merge Patch (RFC 7396) into a key's value; null removes a member.

    Prints the merged envelope."""
    document = _json_input(merge_patch)
    with _client(ctx, writes=True) as client:
        _emit(_envelope(client.update(key, document, if_match=_if_match(if_match))), output)


@app.command()
def delete(
    ctx: typer.Context, key: KeyArgument, if_match: IfMatchOption = None, output: OutputOption = Output.JSON
) -> None:
    """Delete a key (its version goes on counting if it is written again)."""
    with _client(ctx, writes=True) as client:
        version = client.delete(key, if_match=_if_match(if_match))
    _emit({"key": key, "version": version, "deleted": True}, output)


@app.command()
def history(
    ctx: typer.Context,
    key: KeyArgument,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many versions.", min=1)] = None,
    output: OutputOption = Output.JSON,
) -> None:
    """A key's versions, newest first: version, operation, actor, time, size."""
    with _client(ctx) as client:
        versions = [_version_info(v) for v in islice(client.history(key, page_size=_page_for(limit)), limit)]
    _emit(versions, output, ["version", "operation", "actor", "occurred_at", "size"])


@app.command()
def version(
    ctx: typer.Context,
    key: KeyArgument,
    number: Annotated[int, typer.Argument(metavar="N", help="The version to read.", min=1)],
    output: OutputOption = Output.JSON,
) -> None:
    """Read version N of a key as it was.

    Exit 3 for a deletion or an expiry (no value), or a version past the history's retention."""
    with _client(ctx) as client:
        _emit(_envelope(client.get_version(key, number)), output)


@app.command("ls")
def list_keys(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="List the keys starting with this (empty: every key).")] = "",
    values: Annotated[bool, typer.Option("--values", help="With each key's value.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many keys.", min=1)] = None,
    output: OutputOption = Output.JSON,
) -> None:
    """The keys under PREFIX that the caller may read, in key order."""
    with _client(ctx) as client:
        listing = client.list(prefix, include_values=values, page_size=_page_for(limit))
        keys = [_key_info(k, values) for k in islice(listing, limit)]
    columns = ["key", "version", "updated_at", "size", "expires_at"] + (["value"] if values else [])
    _emit(keys, output, columns)


@app.command()
def watch(
    ctx: typer.Context,
    key: Annotated[
        str | None, typer.Argument(help="The key to watch.", callback=_non_empty_key, show_default=False)
    ] = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="Watch every key under this prefix instead.", show_default=False)
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Resume a key's watch after this cursor.", show_default=False)
    ] = None,
    count: Annotated[int | None, typer.Option("--count", help="Stop after this many changes.", min=1)] = None,
    watch_url: Annotated[
        str | None,
        typer.Option("--watch-url", envvar="STATE_WATCH_URL", help="The WebSocket API's URL.", show_default=False),
    ] = None,
    output: OutputOption = Output.JSON,
) -> None:
    """Print each change of a key, or of every key under --prefix, as it happens.

    One JSON document a line with -o json, YAML documents, or tab-separated rows. Reconnects and resumes
    by itself; Ctrl-C stops."""
    if (key is None) == (prefix is None):
        _usage("watch takes a KEY or --prefix: one of them")
    if since is not None and prefix is not None:
        _usage("--since is for a key's watch")
    printer = _StreamPrinter(output)
    try:
        with _client(ctx, watch_url=watch_url) as client:
            for event in islice(client.watch(key=key, prefix=prefix, since=since), count):
                printer.emit(_watch_event(event))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def token(
    sub: Annotated[str, typer.Option("--sub", help="The token's subject.")] = "dev",
    scope: Annotated[str, typer.Option("--scope", help="Space-separated scopes.")] = "state:read state:write",
    roles: Annotated[str | None, typer.Option("--roles", help="Comma-separated roles.", show_default=False)] = None,
    ttl: Annotated[int, typer.Option("--ttl", help="Seconds the token is valid.")] = 3600,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="The local stack's state dir (default: its own).")
    ] = None,
    repo: Annotated[
        Path | None,
        typer.Option("--repo", envvar="STATE_REPO", help="The service's checkout (default: found from here up)."),
    ] = None,
) -> None:
    """Mint a token for the local stack, as `make token` does.

    The local stack only: it signs with the dev issuer's key in the checkout's state dir. Use it as
    STATE_TOKEN=$(statectl token)."""
    root = repo or _checkout_of(Path.cwd())
    if root is None or not (root / "devstack" / "token.py").is_file():
        _fail(ExitCode.USAGE, "statectl token needs the service's checkout: run it there, or give --repo")
    venv_python = root / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    command = [python, "-m", "devstack.token", "--sub", sub, "--scope", scope, "--ttl", str(ttl)]
    if roles is not None:
        command += ["--roles", roles]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir.resolve())]
    minted = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if minted.returncode != 0:
        _fail(ExitCode.ERROR, f"devstack.token failed: {minted.stderr.strip()[-500:]}")
    print(minted.stdout.strip())


def main() -> None:
    """The `statectl` console script."""
    app(prog_name="statectl")


# ------------------------------------------------------------------------------------------------- helpers
# Failures before the request left: nothing can have been written.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@contextmanager
def _client(ctx: typer.Context, *, writes: bool = False, watch_url: str | None = None) -> Iterator[StateClient]:
    """A client from the global options, whose errors become exit codes with one line on stderr. For a
    write (`writes`), a failure after the request left (a read timeout, a dropped connection, a 5xx other
    than 503) may have landed: exit 8, as the service's own write-outcome-unknown."""
    from state_client import StateClient

    settings: Settings = ctx.obj
    try:
        with StateClient(settings.url, token=settings.token, timeout=settings.timeout, watch_url=watch_url) as client:
            yield client
    except errors.StateError as error:
        code = _exit_code_of(error)
        if writes and isinstance(error, errors.ServerError):
            code = ExitCode.OUTCOME_UNKNOWN
        _fail(code, _describe(error))
    except _NOT_SENT as error:
        _fail(ExitCode.UNAVAILABLE, f"cannot reach the service: {type(error).__name__}: {error}")
    except httpx.TransportError as error:
        if writes:
            _fail(ExitCode.OUTCOME_UNKNOWN, f"no answer, the write may have landed: {type(error).__name__}: {error}")
        _fail(ExitCode.UNAVAILABLE, f"no answer from the service: {type(error).__name__}: {error}")


def _exit_code_of(error: errors.StateError) -> ExitCode:
    if isinstance(error, errors.WriteOutcomeUnknown):
        return ExitCode.OUTCOME_UNKNOWN
    if isinstance(error, errors.NotFound | errors.Gone):
        return ExitCode.NOT_FOUND
    if isinstance(error, errors.PreconditionFailed):
        return ExitCode.PRECONDITION_FAILED
    if isinstance(error, errors.Unauthorized | errors.Forbidden | AuthError):
        return ExitCode.DENIED
    if isinstance(error, errors.BadRequest | errors.Unprocessable | errors.TooLarge):
        return ExitCode.BAD_INPUT
    if isinstance(error, errors.RetryableError):
        return ExitCode.UNAVAILABLE
    return ExitCode.ERROR


def _describe(error: errors.StateError) -> str:
    text = str(error)
    if isinstance(error, errors.PreconditionFailed):
        current = "none (the key does not exist)" if error.current_version is None else error.current_version
        text += f" (current version: {current})"
    if isinstance(error, errors.RetryableError) and error.retry_after is not None:
        text += f" (retry after {error.retry_after:g} s)"
    return text


def _fail(code: ExitCode, message: str) -> NoReturn:
    _stderr().print(f"statectl: {message}", markup=False, highlight=False)
    raise typer.Exit(int(code))


def _usage(message: str) -> NoReturn:
    raise typer.BadParameter(message)


def _json_input(text: str) -> Any:
    """A JSON document from the argument itself, from @FILE, or from stdin (-)."""
    if text == "-":
        source, raw = "stdin", sys.stdin.buffer.read()
    elif text.startswith("@"):
        path = Path(text[1:])
        try:
            source, raw = str(path), path.read_bytes()
        except OSError as error:
            _fail(ExitCode.USAGE, f"cannot read {path}: {error.strerror}")
    else:
        source, raw = "the argument", text.encode("utf-8")
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as error:
        _fail(ExitCode.BAD_INPUT, f"{source} is not JSON: {error}")


def _no_constants(name: str) -> NoReturn:
    # NaN and Infinity are not JSON; the service would refuse them (400), so refuse them before sending.
    raise ValueError(f"{name} is not a JSON number")


def _if_match(text: str | None) -> int | str | None:
    """`3`, `"3"` or `*`; anything else is a usage error before any request."""
    if text is None:
        return None
    bare = text.strip()
    if bare == "*":
        return "*"
    bare = bare.removeprefix('"').removesuffix('"')
    if bare.isascii() and bare.isdigit() and int(bare) >= 1:
        return int(bare)
    raise typer.BadParameter(f'{text!r} is not a version ("3", 3) or *', param_hint="--if-match")


def _page_for(limit: int | None) -> int | None:
    """A page no larger than what --limit keeps (the API's pages hold at most 1,000)."""
    return None if limit is None else min(limit, 1000)


def _checkout_of(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        if (directory / "devstack" / "token.py").is_file():
            return directory
    return None


# --------------------------------------------------------------------------------------- data and output
def _time(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def _envelope(envelope: Envelope) -> dict[str, Any]:
    return {
        "key": envelope.key,
        "value": envelope.value,
        "version": envelope.version,
        "created_at": _time(envelope.created_at),
        "updated_at": _time(envelope.updated_at),
        "updated_by": envelope.updated_by,
        "expires_at": _time(envelope.expires_at),
    }


def _version_info(info: VersionInfo) -> dict[str, Any]:
    return {
        "version": info.version,
        "operation": info.operation,
        "actor": info.actor,
        "occurred_at": _time(info.occurred_at),
        "size": info.size,
    }


def _key_info(info: KeyInfo, with_values: bool) -> dict[str, Any]:
    listed: dict[str, Any] = {
        "key": info.key,
        "version": info.version,
        "updated_at": _time(info.updated_at),
        "size": info.size,
        "expires_at": _time(info.expires_at),
    }
    if with_values:
        listed["value"] = info.value
        if info.value_omitted:
            listed["value_omitted"] = True
    return listed


def _watch_event(event: Change | Resync) -> dict[str, Any]:
    from state_client.models import Resync

    if isinstance(event, Resync):
        if event.key is None:
            return {"type": "resync", "prefix": event.prefix, "reason": event.reason}
        return {"type": "resync", "key": event.key, "reason": event.reason}
    change: dict[str, Any] = {
        "type": "change",
        "key": event.key,
        "version": event.version,
        "operation": event.operation,
        "occurred_at": _time(event.occurred_at),
        "cursor": event.cursor,
    }
    if event.value_omitted:
        change["value_omitted"] = True
    elif event.operation in ("created", "updated"):
        change["value"] = event.value
    return change


def _stdout() -> Console:
    from rich.console import Console

    # Colour only on a terminal; rich also honours NO_COLOR and TERM=dumb.
    console = Console()
    if not console.is_terminal:
        # A pipe has no width to fit: rows stay whole rather than wrapped at 80 columns.
        console.width = 1_000_000
    return console


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _emit(data: Any, output: Output, columns: list[str] | None = None) -> None:
    """`data` on stdout as `output` says; a table's `columns` (else every field of the rows) keep an empty
    listing's header."""
    if output is Output.JSON:
        console = _stdout()
        if console.is_terminal and not console.no_color:
            # NO_COLOR leaves rich's bold and italics: JSON is plainer without any of them.
            console.print_json(data=data, ensure_ascii=False)
        else:
            print(json.dumps(data, indent=2, ensure_ascii=False))
    elif output is Output.YAML:
        print(_yaml(data), end="")
    else:
        _stdout().print(_table(data, columns) if isinstance(data, list) else _fields_table(data))


def _yaml(data: Any) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _cell(name: str, row: dict[str, Any]) -> str:
    """A table cell: values as compact JSON (so "3" and 3 differ), other fields as they read."""
    value = row.get(name)
    if name == "value" and name in row:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _table(rows: list[dict[str, Any]], columns: list[str] | None) -> Any:
    from rich.table import Table

    names = columns or list(dict.fromkeys(name for row in rows for name in row))
    if any(name not in names for row in rows for name in row):
        names += [name for name in dict.fromkeys(n for row in rows for n in row) if name not in names]
    table = Table(show_edge=False, highlight=False)
    for name in names:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(name, row) for name in names))
    return table


def _fields_table(document: dict[str, Any]) -> Any:
    """One document as a table of its fields, a row each."""
    from rich.table import Table

    table = Table(show_edge=False, show_header=False, highlight=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name in document:
        table.add_row(name, _cell(name, document))
    return table


class _StreamPrinter:
    """One document per watched change, written as it comes (flushed: a pipe sees each at once). A table
    cannot wait for its last row here, so -o table prints one tab-separated row a change under one header."""

    COLUMNS: tuple[str, ...] = ("type", "key", "version", "operation", "occurred_at", "value", "cursor")

    def __init__(self, output: Output) -> None:
        self.output = output
        self.header_done = False

    def emit(self, document: dict[str, Any]) -> None:
        if self.output is Output.JSON:
            print(json.dumps(document, ensure_ascii=False, separators=(",", ":")), flush=True)
        elif self.output is Output.YAML:
            print("---\n" + _yaml(document), end="", flush=True)
        else:
            if not self.header_done:
                print("\t".join(name.upper() for name in self.COLUMNS), flush=True)
                self.header_done = True
            print("\t".join(_cell(name, document) for name in self.COLUMNS), flush=True)


if __name__ == "__main__":
    main()
