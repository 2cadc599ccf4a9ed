"""Failpoints for the tests and the local stack: arm the core's named points to pause, delay, raise, kill
the process or answer a value, and fault the DynamoDB client.

The core keeps only a hook (`state_core.failpoints`: a flag and `hit(name, **context)`); arming a point
installs this module's `hit` as its handler, disarming the last one uninstalls it, so a disarmed point
still costs one attribute read. This module lives in the local stack, which template.yaml never packages
(the functions' CodeUri is `functions/*`, the layer's ContentUri `layers/state_core/`): no deployed
function can import it, so none can be armed.

Arming is refused unless the environment says this is a test or the local stack: `STATE_FAILPOINTS=1`
(template.yaml never sets it, a template test guards that), and, inside a Lambda-like process
(`AWS_LAMBDA_FUNCTION_NAME` set), `STATE_LOCAL_STACK=1` as well. A spec where failpoints are not allowed
raises: it is never silently ignored.

Actions: `pause` (block until `release(name)`, or for at most its argument in seconds), `delay(s)`,
`raise` (FailpointError), `kill` (`os._exit`, as a crashed function), `return(v)` (hit() answers v, for
hooks that inject a response), `call` (a Python callable, in-process tests only). Every arming may be
limited to the first `count` hits after `skip` hits, and to a probability.

An observer set by `arm_from_environ` hears each firing before its action runs (the local stack's workers
log it with the request's correlation id, `log_firing`, so a test can tell which request was paused or
killed where).

`STATE_FAILPOINTS_SPEC` arms points in a worker process at start (devstack.workers, before the function's
module is imported): `name=action[(arg)][*count][+skip][%percent][;name=...]`, e.g.
`after_db_write_before_cache=kill*1`, `dynamodb_send=return(throttle)%20` or `dynamodb_answer=return(lost)*2+30`.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from state_core import failpoints as hook

# Points the core and its hooks call; arming an unknown name is refused (a typo must not arm nothing).
POINTS = frozenset(
    {
        "after_db_write_before_cache",  # put/patch/delete: DynamoDB accepted, cache not yet written
        "after_fill_read_before_set",  # get: consistent read done after a miss, fill not yet written
        "after_cache_miss",  # get: the cache missed, the consistent read not yet made
        "after_lock_acquire",  # patch: lock held, nothing read yet
        "before_lock_release",  # patch: written (or failed), lock not yet released
        "after_patch_read",  # patch: version read, merged write not yet sent
        "transact_before_commit",  # transaction: keys read and planned, TransactWriteItems not yet sent
        "transact_after_commit_before_cache",  # transaction: committed, no key's cache written yet
        "transact_after_cache_write",  # transaction: one more key's cache written (per key, in request order)
        "watch_history_between_reads",  # watch replay: a version missed in the history, later ones not yet looked for
        "watch_resume_start",  # resumed prefix: a key without a watermark, the client's versions not yet read
        "watch_replay_before_post",  # watch replay: a version read from the history, its lease not yet renewed
        "watch_after_claim",  # fan-out: a version's claim answered (claimed or refused), nothing posted yet
        "watch_give_back",  # fan-out: a claimed version not posted, its claim not yet given back
        "listing_backfill_before_update",  # listing backfill: an item scanned, its shard not yet written
        "reencrypt_before_switch",  # re-encryption: a value re-sealed (a blob: new chunks written), not yet switched
        "dynamodb_send",  # every DynamoDB HTTP request (botocore before-send hook); return(throttle|unavailable)
        "dynamodb_answer",  # every DynamoDB request not answered at dynamodb_send; return(lost): answer lost
    }
)
# Not armable: the core hands each DynamoDB client it creates here, for the dynamodb_* points to fault.
NEW_DYNAMODB_CLIENT = "new_dynamodb_client"
ACTIONS = frozenset({"pause", "delay", "raise", "kill", "return", "call"})
KILL_EXIT_CODE = 137


class FailpointError(RuntimeError):
    """Raised by a point armed with `raise`."""


class FailpointsForbidden(RuntimeError):
    """Arming was attempted where failpoints are not allowed (a deployed function, or not enabled)."""


@dataclass
class _Arming:
    action: str
    argument: Any = None
    count: int | None = None  # fire this many times, then pass
    skip: int = 0  # pass this many hits first
    probability: float = 1.0
    hits: int = 0
    fired: int = 0
    released: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)


_armed: dict[str, _Arming] = {}
# Called with (point, action) when a point fires, before the action (a kill is heard too).
_observer: Callable[[str, str], None] | None = None
_guard = threading.Lock()
_rng = random.Random()  # noqa: S311 - fault injection, not security


def allowed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process may arm failpoints."""
    env = os.environ if environ is None else environ
    if env.get("STATE_FAILPOINTS") != "1":
        return False
    return not (env.get("AWS_LAMBDA_FUNCTION_NAME") and env.get("STATE_LOCAL_STACK") != "1")


def arm(
    name: str,
    action: str,
    argument: Any = None,
    *,
    count: int | None = None,
    skip: int = 0,
    probability: float = 1.0,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Arm `name` with `action`; FailpointsForbidden where failpoints are not allowed."""
    if not allowed(environ):
        raise FailpointsForbidden(
            "failpoints need STATE_FAILPOINTS=1 (and STATE_LOCAL_STACK=1 inside a function); never in a deployment"
        )
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}")
    if action not in ACTIONS:
        raise ValueError(f"unknown failpoint action {action!r}")
    with _guard:
        _armed[name] = _Arming(action, argument, count, skip, probability)
        hook.install(hit)


def disarm(name: str | None = None) -> None:
    """Disarm one point (releasing anything paused on it), or all of them (and forget the observer)."""
    global _observer
    with _guard:
        if name is None:
            _observer = None
        names = list(_armed) if name is None else [name]
        for each in names:
            arming = _armed.pop(each, None)
            if arming is not None:
                arming.released.set()
        if not _armed:
            hook.uninstall()


def release(name: str) -> None:
    """Let every operation paused at `name` go on (the point stays armed; later hits pass)."""
    arming = _armed.get(name)
    if arming is not None:
        arming.released.set()


def wait_reached(name: str, timeout: float = 5.0) -> bool:
    """Block until an operation fires at `name` (for tests that pause one and act meanwhile)."""
    arming = _armed.get(name)
    return arming is not None and arming.reached.wait(timeout)


def fired(name: str) -> int:
    arming = _armed.get(name)
    return 0 if arming is None else arming.fired


def hit(name: str, **context: Any) -> Any:
    """Run the action armed at `name` (the core's hook calls it while anything is armed). Answers the
    `return` action's value."""
    if name == NEW_DYNAMODB_CLIENT:
        install_dynamodb_faults(context["client"])
        return None
    arming = _armed.get(name)
    if arming is None:
        return None
    with _guard:
        arming.hits += 1
        if arming.hits <= arming.skip:
            return None
        if arming.count is not None and arming.fired >= arming.count:
            return None
        if arming.probability < 1.0 and _rng.random() >= arming.probability:
            return None
        arming.fired += 1
    arming.reached.set()
    action, argument = arming.action, arming.argument
    if _observer is not None:
        _observer(name, action)
    if action == "pause":
        arming.released.wait(None if argument is None else float(argument))
    elif action == "delay":
        time.sleep(float(argument))
    elif action == "raise":
        raise FailpointError(f"failpoint {name}" + (f": {argument}" if argument else ""))
    elif action == "kill":
        os._exit(KILL_EXIT_CODE)
    elif action == "return":
        return argument
    elif action == "call":
        return argument(name, **context)
    return None


_SPEC = re.compile(
    r"^(?P<name>[a-z_]+)=(?P<action>[a-z]+)(?:\((?P<arg>[^)]*)\))?"
    r"(?:\*(?P<count>\d+))?(?:\+(?P<skip>\d+))?(?:%(?P<percent>\d+(?:\.\d+)?))?$"
)


def parse_spec(spec: str) -> list[tuple[str, str, Any, int | None, int, float]]:
    """`name=action[(arg)][*count][+skip][%percent]` items separated by `;`."""
    parsed = []
    for item in (part.strip() for part in spec.split(";")):
        if not item:
            continue
        match = _SPEC.match(item)
        if match is None:
            raise ValueError(f"bad failpoint spec {item!r}")
        action = match["action"]
        if action == "call":
            raise ValueError("`call` cannot be armed from the environment")
        count = int(match["count"]) if match["count"] else None
        skip = int(match["skip"]) if match["skip"] else 0
        probability = float(match["percent"]) / 100 if match["percent"] else 1.0
        parsed.append((match["name"], action, match["arg"] or None, count, skip, probability))
    return parsed


def arm_from_environ(
    environ: Mapping[str, str] | None = None, observer: Callable[[str, str], None] | None = None
) -> bool:
    """Arm what `STATE_FAILPOINTS_SPEC` names (the local stack's workers, at cold start), and have
    `observer(point, action)` hear each firing. False if the spec is empty.

    A spec where failpoints are not allowed raises FailpointsForbidden: loud, never silently armed."""
    global _observer
    env = os.environ if environ is None else environ
    spec = env.get("STATE_FAILPOINTS_SPEC", "")
    if not spec.strip():
        return False
    for name, action, argument, count, skip, probability in parse_spec(spec):
        arm(name, action, argument, count=count, skip=skip, probability=probability, environ=env)
    _observer = observer
    return True


def log_firing(point: str, action: str) -> None:
    """The local stack's observer: on the function's logger, with the request's correlation id, so the
    history checker knows which request was paused or killed where."""
    from state_core.observability import logger

    logger.warning("failpoint fired", extra={"failpoint": point, "failpoint_action": action})


# --- DynamoDB faults through botocore's event system ---------------------------------------------------

_DYNAMODB_FAULTS = {
    # (status, error code): what DynamoDB answers when it throttles or has an internal error.
    "throttle": (400, "ThrottlingException"),
    "provisioned": (400, "ProvisionedThroughputExceededException"),
    "unavailable": (503, "ServiceUnavailable"),
    "internal": (500, "InternalServerError"),
}


def install_dynamodb_faults(client: Any) -> None:
    """Let the `dynamodb_send` point answer a DynamoDB request in DynamoDB's place, before it is sent, and
    the `dynamodb_answer` point lose the answer of a request the table has applied.

    botocore's retries (standard mode) see the injected answer as they would a real one, so the point is
    hit once per attempt. At `dynamodb_send` nothing reaches the table: an injected fault can never be a
    partial write. (A state write answered 5xx is not retried, and its client is told its outcome is
    unknown, as it must be for a real 5xx.) `dynamodb_answer=return(lost)` sends the request itself, so the
    table applies it, then fails the attempt with a read timeout, as an answer that never came."""

    def before_send(request: Any, **_: Any) -> Any:
        if not hook.ENABLED:
            return None
        operation = request.headers.get("X-Amz-Target", b"")
        fault = hit("dynamodb_send", operation=operation)
        if fault is None:
            if hit("dynamodb_answer", operation=operation) == "lost":
                _apply_and_lose_the_answer(request)
            return None
        from botocore.awsrequest import AWSResponse

        status, code = _DYNAMODB_FAULTS[str(fault)]
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"}).encode()
        return AWSResponse(
            request.url,
            status,
            {"Content-Type": "application/x-amz-json-1.0"},  # type: ignore[arg-type]  # botocore takes any mapping
            _Raw(body),
        )

    client.meta.events.register("before-send.dynamodb", before_send)


def _apply_and_lose_the_answer(request: Any) -> None:
    from botocore.exceptions import ReadTimeoutError
    from botocore.httpsession import URLLib3Session

    session = URLLib3Session()
    try:
        session.send(request)
    finally:
        session.close()
    raise ReadTimeoutError(endpoint_url=request.url)


class _Raw:
    """The minimal raw stream AWSResponse reads its content from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body
