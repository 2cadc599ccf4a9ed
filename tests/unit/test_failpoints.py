"""Failpoints: armed only in tests and the local stack, zero cost when disarmed, each action does what it
says, and nothing of the arming ships with the functions."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devstack import failpoints
from devstack.template import load_yaml
from state_core import failpoints as hook
from state_core import runtime

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE = REPO_ROOT / "layers" / "state_core" / "state_core"
FAILPOINT_VARIABLES = ("STATE_FAILPOINTS", "STATE_FAILPOINTS_SPEC", "STATE_LOCAL_STACK")


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in (*FAILPOINT_VARIABLES, "AWS_LAMBDA_FUNCTION_NAME"):
        monkeypatch.delenv(name, raising=False)
    yield
    failpoints.disarm()


@pytest.fixture
def enabled(monkeypatch):
    monkeypatch.setenv("STATE_FAILPOINTS", "1")


# --- impossible to arm in a deployment ------------------------------------------------------------------


def test_arming_is_refused_without_state_failpoints():
    with pytest.raises(failpoints.FailpointsForbidden):
        failpoints.arm("after_lock_acquire", "raise")
    assert hook.ENABLED is False


def test_arming_is_refused_inside_a_function_that_is_not_the_local_stack(enabled, monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "state-service-PutStateFunction")
    with pytest.raises(failpoints.FailpointsForbidden):
        failpoints.arm("after_lock_acquire", "raise")


def test_a_spec_in_a_deployed_function_fails_loudly_at_cold_start():
    env = {"AWS_LAMBDA_FUNCTION_NAME": "f", "STATE_FAILPOINTS_SPEC": "after_lock_acquire=kill", "STATE_FAILPOINTS": "1"}
    with pytest.raises(failpoints.FailpointsForbidden):
        failpoints.arm_from_environ(env)
    assert hook.ENABLED is False


def test_a_spec_nothing_armed_fails_the_core_loudly(monkeypatch):
    """A deployed function has no arming code: a stray spec there must not pass for a fault test."""
    monkeypatch.setenv("STATE_FAILPOINTS_SPEC", "after_lock_acquire=kill")
    runtime.state_manager.cache_clear()
    with pytest.raises(RuntimeError, match="STATE_FAILPOINTS_SPEC"):
        runtime.state_manager()


def test_a_local_stack_worker_may_be_armed_from_its_environment():
    env = {
        "AWS_LAMBDA_FUNCTION_NAME": "f",
        "STATE_LOCAL_STACK": "1",
        "STATE_FAILPOINTS": "1",
        "STATE_FAILPOINTS_SPEC": "after_db_write_before_cache=delay(0.01)*2+1%50; dynamodb_send=return(throttle)",
    }
    assert failpoints.arm_from_environ(env) is True
    assert hook.ENABLED is True
    assert failpoints.hit("dynamodb_send") == "throttle"


def test_the_observer_hears_each_firing_and_only_firings():
    env = {"STATE_FAILPOINTS": "1", "STATE_FAILPOINTS_SPEC": "after_patch_read=delay(0)*1+1"}
    heard = []
    failpoints.arm_from_environ(env, observer=lambda point, action: heard.append((point, action)))
    for _ in range(3):
        failpoints.hit("after_patch_read")
    assert heard == [("after_patch_read", "delay")]
    failpoints.disarm()
    failpoints.arm("after_patch_read", "delay", 0, environ=env)
    failpoints.hit("after_patch_read")
    assert heard == [("after_patch_read", "delay")]  # disarming everything forgot the observer


def test_no_function_in_the_template_sets_a_failpoint_variable():
    text = (REPO_ROOT / "template.yaml").read_text()
    template = load_yaml(REPO_ROOT / "template.yaml")
    environments = [template.get("Globals", {}).get("Function", {}).get("Environment", {})]
    environments += [
        resource.get("Properties", {}).get("Environment", {}) for resource in template["Resources"].values()
    ]
    for environment in environments:
        assert not set((environment or {}).get("Variables", {})) & set(FAILPOINT_VARIABLES)
    for name in FAILPOINT_VARIABLES:
        assert name not in text


def test_unknown_points_and_actions_are_refused(enabled):
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.arm("after_db_write_befor_cache", "raise")
    with pytest.raises(ValueError, match="action"):
        failpoints.arm("after_lock_acquire", "explode")
    with pytest.raises(ValueError, match="spec"):
        failpoints.parse_spec("after_lock_acquire")


# --- zero cost when disarmed ----------------------------------------------------------------------------


def test_every_call_in_the_core_sits_behind_the_module_flag():
    """A disarmed point costs one attribute read: the core never calls hit() unguarded."""
    calls = 0
    for path in CORE.rglob("*.py"):
        if path.name == "failpoints.py":
            continue
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "failpoints.hit(" in line:
                calls += 1
                above = number - 1
                while "failpoints.hit(" in lines[above]:  # several points in one guarded block
                    above -= 1
                assert lines[above].strip() == "if failpoints.ENABLED:", f"{path.name}:{number + 1}"
    assert calls >= 6


def test_disarming_everything_clears_the_flag(enabled):
    failpoints.arm("after_lock_acquire", "delay", 0)
    failpoints.arm("before_lock_release", "delay", 0)
    failpoints.disarm("after_lock_acquire")
    assert hook.ENABLED is True
    failpoints.disarm()
    assert hook.ENABLED is False


def test_every_named_point_is_called_somewhere_in_the_core():
    source = "\n".join(p.read_text() for p in CORE.rglob("*.py"))
    called = set(re.findall(r'failpoints\.hit\("([a-z_]+)"', source)) | {"dynamodb_send", "dynamodb_answer"}
    assert called == {*failpoints.POINTS, failpoints.NEW_DYNAMODB_CLIENT}


def test_the_core_hook_hands_a_new_dynamodb_client_over_for_faults(enabled):
    from botocore.config import Config
    from botocore.exceptions import ClientError
    from botocore.session import get_session

    # A real client; the armed fault answers in DynamoDB's place, so nothing is sent anywhere.
    client = get_session().create_client(
        "dynamodb",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    failpoints.arm("dynamodb_send", "return", "throttle")
    hook.hit(failpoints.NEW_DYNAMODB_CLIENT, client=client)
    with pytest.raises(ClientError, match="ThrottlingException"):
        client.describe_limits()
    assert failpoints.fired("dynamodb_send") == 1


# --- nothing of the arming in production code -----------------------------------------------------------


def test_the_core_hook_only_forwards_to_a_handler_it_is_given():
    """state_core.failpoints: the flag, hit, and install/uninstall of a handler; no arming, no environment."""
    source = (CORE / "failpoints.py").read_text()
    tree = ast.parse(source)
    public = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            public.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            public.update(t.id for t in targets if isinstance(t, ast.Name))
    assert {name for name in public if not name.startswith("_")} == {"ENABLED", "hit", "install", "uninstall"}
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "collections.abc", "typing"}
    code = [line for line in ast.unparse(tree).splitlines() if line.strip()]
    assert len(code) <= 30, "the production hook must stay tiny: arming belongs in devstack.failpoints"

    heard = []
    hook.install(lambda name, **context: heard.append((name, context)) or "answer")
    try:
        assert hook.ENABLED is True
        assert hook.hit("after_patch_read", key="k") == "answer"
    finally:
        hook.uninstall()
    assert heard == [("after_patch_read", {"key": "k"})]
    assert hook.ENABLED is False
    assert hook.hit("after_patch_read") is None


# What only arming code contains (each is in devstack/failpoints.py, the test checks): the environment that
# allows arming, the spec, the actions' kill and errors, and the DynamoDB fault hooks.
ARMING_MARKERS = (
    '"STATE_FAILPOINTS"',
    '"STATE_LOCAL_STACK"',
    "def arm(",
    "def parse_spec(",
    "def arm_from_environ(",
    "os._exit(",
    "class FailpointError(",
    "def install_dynamodb_faults(",
    "_DYNAMODB_FAULTS",
)


def test_nothing_sam_packages_for_a_function_contains_arming_code():
    """The layer (ContentUri, built by `sam build` from its files plus third-party requirements) and every
    function's CodeUri: the arming code lives in devstack/, which none of them includes."""
    template = load_yaml(REPO_ROOT / "template.yaml")
    packaged = []
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            packaged.append(properties["ContentUri"])
        elif resource["Type"] == "AWS::Serverless::Function":
            packaged.append(properties["CodeUri"])
    layer_roots = [REPO_ROOT / uri for uri in packaged if uri.startswith("layers/")]
    assert layer_roots == [REPO_ROOT / "layers" / "state_core"]
    assert all(not (REPO_ROOT / uri).resolve().is_relative_to((REPO_ROOT / "devstack").resolve()) for uri in packaged)
    files = [path for uri in packaged for path in (REPO_ROOT / uri).rglob("*") if path.is_file()]
    files = [path for path in files if "__pycache__" not in path.parts]
    assert any(path.name == "failpoints.py" for path in files)  # the hook itself ships, and only it
    arming = (REPO_ROOT / "devstack" / "failpoints.py").read_text()
    assert [marker for marker in ARMING_MARKERS if marker not in arming] == []
    for path in files:
        text = path.read_text(errors="replace")
        found = [marker for marker in (*ARMING_MARKERS, "import devstack", "from devstack") if marker in text]
        assert not found, f"{path.relative_to(REPO_ROOT)}: {found}"
    # The layer's third-party requirements are pinned names from the registry, never a path to this repository.
    requirements = (REPO_ROOT / "layers" / "state_core" / "requirements.txt").read_text().splitlines()
    for line in requirements:
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+(\[[a-z,]+\])?==[0-9.]+", line.strip()), line


# --- actions ---------------------------------------------------------------------------------------------


def test_raise_fires_only_count_times_after_skip(enabled):
    failpoints.arm("after_lock_acquire", "raise", count=2, skip=1)
    outcomes = []
    for _ in range(5):
        try:
            failpoints.hit("after_lock_acquire")
            outcomes.append("pass")
        except failpoints.FailpointError:
            outcomes.append("raise")
    assert outcomes == ["pass", "raise", "raise", "pass", "pass"]
    assert failpoints.fired("after_lock_acquire") == 2


def test_delay_sleeps(enabled):
    failpoints.arm("after_lock_acquire", "delay", 0.05)
    started = time.monotonic()
    failpoints.hit("after_lock_acquire")
    assert time.monotonic() - started >= 0.05


def test_pause_blocks_until_released(enabled):
    failpoints.arm("after_fill_read_before_set", "pause")
    done = threading.Event()
    thread = threading.Thread(target=lambda: (failpoints.hit("after_fill_read_before_set"), done.set()))
    thread.start()
    assert failpoints.wait_reached("after_fill_read_before_set", 2)
    assert not done.wait(0.1)
    failpoints.release("after_fill_read_before_set")
    assert done.wait(2)
    thread.join()


def test_call_runs_the_callable_with_the_context(enabled):
    seen = []
    failpoints.arm("after_patch_read", "call", lambda name, **context: seen.append((name, context)) or "x")
    assert failpoints.hit("after_patch_read", key="k", version=3) == "x"
    assert seen == [("after_patch_read", {"key": "k", "version": 3})]


def test_kill_ends_the_process_at_once():
    code = (
        "from devstack import failpoints\n"
        "failpoints.arm('after_db_write_before_cache', 'kill')\n"
        "failpoints.hit('after_db_write_before_cache')\n"
        "print('survived')\n"
    )
    env = {
        "STATE_FAILPOINTS": "1",
        "PYTHONPATH": os.pathsep.join((str(CORE.parent), str(REPO_ROOT))),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == failpoints.KILL_EXIT_CODE
    assert "survived" not in result.stdout
