"""Every error class the client raises maps to the exit code `statectl --help` documents (the end-to-end test
provokes the ones the local stack can answer; 503, 429 and a lost write's outcome it cannot at will)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from state_client import errors
from state_client.auth import AuthError
from state_client.cli import EXIT_CODES_HELP, ExitCode, _exit_code_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFound(404), ExitCode.NOT_FOUND),
        (errors.Gone(410), ExitCode.NOT_FOUND),
        (errors.PreconditionFailed(412, current_version=3), ExitCode.PRECONDITION_FAILED),
        (errors.Unauthorized(401), ExitCode.DENIED),
        (errors.Forbidden(403), ExitCode.DENIED),
        (AuthError(400), ExitCode.DENIED),
        (errors.BadRequest(400), ExitCode.BAD_INPUT),
        (errors.BadRequest(415), ExitCode.BAD_INPUT),
        (errors.Unprocessable(422), ExitCode.BAD_INPUT),
        (errors.TooLarge(413), ExitCode.BAD_INPUT),
        (errors.Unavailable(503, retry_after=1.0), ExitCode.UNAVAILABLE),
        (errors.RateLimited(429, retry_after=None), ExitCode.UNAVAILABLE),
        (errors.WriteOutcomeUnknown(503, retry_after=1.0), ExitCode.OUTCOME_UNKNOWN),
        (errors.ServerError(502), ExitCode.ERROR),
        (errors.StateError(418), ExitCode.ERROR),
    ],
)
def test_each_error_class_has_its_exit_code(error, code):
    assert _exit_code_of(error) is code


def test_the_help_lists_every_exit_code():
    for code in ExitCode:
        assert f"{int(code)} " in EXIT_CODES_HELP


@pytest.mark.parametrize(
    ("blocked", "args", "message"),
    [
        ("typer", ["get", "k"], "statectl needs typer: pip install 'state-client[cli]'"),
        # Refused before any request (nothing listens on port 9): a write must not land and then fail to print.
        ("yaml", ["--url", "http://127.0.0.1:9", "put", "k", "1", "-o", "yaml"], "-o yaml needs PyYAML"),
    ],
)
def test_without_the_cli_extra_statectl_says_what_to_install(blocked, args, message, tmp_path):
    # As if the library were installed without [cli]: the module cannot be imported.
    script = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from state_client.cli import main\n"
        f"sys.argv = ['statectl', *{args!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False, cwd=tmp_path
    )
    assert ran.returncode in (1, ExitCode.USAGE)
    assert message in ran.stderr
    assert "Traceback" not in ran.stderr
