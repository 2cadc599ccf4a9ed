"""A history checker over HTTP against the whole local stack, with faults (issue 7).

Concurrent clients run random mixes of GET, PUT, PATCH, DELETE and If-Match writes on a few keys, each
operation recorded with its invoke and completion time, status and version. Every key's history is then
checked against the contract:

- acknowledged write versions are unique, and increase in real-time order (a write that completed before
  another began has the smaller version); an If-Match write lands exactly on the next version;
- every read returns a version not older than the last write acknowledged before the read began;
- a member added by an acknowledged PATCH is never lost: any later version descending from the same PUT
  still holds it (each PUT stamps its value with its own id, PATCHes add members named by theirs);
- a write answered 503 (Retry-After required) or 4xx left nothing behind; a 500 is allowed only where a
  failpoint killed the function (the gateway logs Runtime.ExitError), and is indeterminate;
- every acknowledged version has its StateChanged event in `state-changes` (checked once, at the end).

Faults: the stack's workers are armed (STATE_FAILPOINTS_SPEC) to throttle a burst of DynamoDB requests in
each worker (botocore retries, then 503), to kill the function at each failpoint of the request path now
and then, and to pause a PATCH that holds the key's lock and has read the item past the lock's lease, so
that another writer takes the lock and writes first (the workers log each firing with the request id, and
a check at the end asserts that each of these faults happened). Redis is owned by the test and, in the
fault seeds, paused (SIGSTOP), made slower than the 50 ms timeout (short pauses), or stopped and restarted
mid-run. Reads that begin less than `REDIS_FAULT_GRACE` seconds after a Redis fault ended may be stale
(DESIGN §5: bounded by the stream repair and the breaker); they are counted, not failed.

20 seeds in make test, 100 in make verify (STATE_VERIFY=1).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from devstack.event_tail import take_messages
from devstack.redis_server import RedisServer
from devstack.resources import DUMMY_CREDENTIALS

pytestmark = [pytest.mark.e2e, pytest.mark.verify]

VERIFY = os.environ.get("STATE_VERIFY") == "1"
SEEDS = range(100 if VERIFY else 20)
CLIENTS = 4
OPS_PER_CLIENT = 25 if VERIFY else 12
KEYS = 3
# Per worker process: its 41st-43rd DynamoDB requests are throttled (all of botocore's attempts of one
# call, so a client sees 503); and at every failpoint of the request path, 0.5% of the passes kill the
# function there (between DynamoDB and the cache, holding a lock, between a read and its fill...).
KILL_POINTS = (
    "after_db_write_before_cache",
    "after_fill_read_before_set",
    "after_cache_miss",
    "after_lock_acquire",
    "before_lock_release",
)
# 5% of PATCHes pause holding the lock, after reading the item, for longer than the lock's lease (the
# deployed default, 2 s): a waiting writer takes the expired lock and writes; the paused one must then
# lose its conditional write, merge into the newer version, and release nothing of the other's lock.
LOCK_LEASE_SECONDS = 2.0
PAUSE_PAST_LEASE = LOCK_LEASE_SECONDS + 0.4
FAILPOINT_SPEC = ";".join(
    [
        "dynamodb_send=return(throttle)*3+40",
        *(f"{point}=kill%0.5" for point in KILL_POINTS),
        f"after_patch_read=delay({PAUSE_PAST_LEASE})%5",
    ]
)
# The workers' breaker opens for 10 s on Redis errors; the stream repair follows within a second or two.
REDIS_FAULT_GRACE = 13.0
EVENT_TIMEOUT = 30.0  # without a new event, after the run


@dataclass
class Op:
    client: int
    op_id: str
    kind: str  # get | put | patch | delete
    key: str
    invoked: float
    completed: float = 0.0
    status: int = 0
    version: int | None = None
    if_match: int | None = None
    value: Any = None  # what a GET or PATCH answered
    retry_after: str | None = None
    detail: str = ""  # a problem's detail (tells a throttled 503 from a timed-out one)
    request_id: str = ""

    @property
    def write(self) -> bool:
        return self.kind != "get"

    @property
    def acknowledged(self) -> bool:
        return self.write and 200 <= self.status < 300


@dataclass
class Faults:
    redis_windows: list[tuple[float, float]] = field(default_factory=list)

    def excused(self, moment: float) -> bool:
        return any(start <= moment <= end + REDIS_FAULT_GRACE for start, end in self.redis_windows)

    def since_fault(self, moment: float) -> float:
        return min((max(0.0, moment - end) for start, end in self.redis_windows if start <= moment), default=0.0)


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    excused_stale_reads: int = 0
    # Seconds after the end of the Redis fault that excused the latest stale read.
    stale_after_fault: float = 0.0


def root_conftest(config):
    """tests/conftest.py as pytest loaded it (a bare `import conftest` finds whichever conftest comes first
    on sys.path when several scopes run together)."""
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    return config.pluginmanager.get_plugin(str(path))


@pytest.fixture(scope="module")
def history_stack(request, tmp_path_factory):
    start_devstack = root_conftest(request.config).start_devstack
    redis_server = RedisServer().start()
    stack = start_devstack(
        tmp_path_factory.mktemp("history-stack"),
        {
            "REDIS_URL": redis_server.url,
            "STATE_LOCK_LEASE_MS": str(int(LOCK_LEASE_SECONDS * 1000)),
            "STATE_FAILPOINTS": "1",
            "STATE_FAILPOINTS_SPEC": FAILPOINT_SPEC,
        },
        expected_crashes=INDETERMINATE_ERRORS,
    )
    stack.redis = redis_server
    try:
        yield stack
    finally:
        stack.stop()
        redis_server.stop()


@pytest.fixture(scope="module")
def ledger():
    """Every operation of every seed, for the event check at the end, and the Redis faults."""
    counts = dict.fromkeys(("kills", "init_timeouts", "throttled", "excused", "seeds", "paused", "overtaken"), 0)
    return {"ops": [], "events": set(), "faults": Faults(), "seconds": 0.0, "stale_after_fault": 0.0, **counts}


@pytest.fixture(scope="module")
def collect_events(history_stack):
    """collect_events(events): take what `state-changes` holds now into `events` as (key, version); answers
    how many messages were taken.

    Called after every seed as well as at the end: the emulator's receive costs grow with the queue's
    length (about 1 s a call with 2,000 waiting), so a queue left to fill for 100 seeds took ten minutes
    to drain."""
    sqs = boto3.client("sqs", endpoint_url=history_stack.moto_url, region_name="us-east-1", **DUMMY_CREDENTIALS)
    url = sqs.get_queue_url(QueueName="state-service-local-state-changes")["QueueUrl"]

    def collect(events: set[tuple[str, int]]) -> int:
        taken = 0
        while messages := take_messages(sqs, url):
            events.update((message["detail"]["key"], message["detail"]["version"]) for message in messages)
            taken += len(messages)
        return taken

    return collect


def run_client(stack, number: int, seed: int, keys: list[str], ops: list[Op], start: threading.Barrier) -> None:
    rng = random.Random(f"{seed}-{number}")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.token()}"
    seen: dict[str, int] = {}
    start.wait()
    for index in range(OPS_PER_CLIENT):
        key = rng.choice(keys)
        kind = rng.choices(["get", "put", "patch", "delete"], weights=[4, 3, 4, 1])[0]
        op = Op(number, f"c{number}n{index}", kind, key, time.monotonic())
        headers: dict[str, str] = {}
        if kind != "get" and key in seen and rng.random() < 0.3:
            op.if_match = seen[key]
            headers["If-Match"] = f'"{op.if_match}"'
        url = f"{stack.base_url}/state/{key}"
        op.invoked = time.monotonic()
        if kind == "get":
            response = session.get(url, timeout=40)
        elif kind == "put":
            response = session.put(url, json={"value": {"put": op.op_id}}, headers=headers, timeout=40)
        elif kind == "patch":
            headers["Content-Type"] = "application/merge-patch+json"
            response = session.patch(url, data=json.dumps({op.op_id: 1}), headers=headers, timeout=40)
        else:
            response = session.delete(url, headers=headers, timeout=40)
        op.completed = time.monotonic()
        op.status = response.status_code
        op.request_id = response.headers.get("apigw-requestid", "")
        op.retry_after = response.headers.get("Retry-After")
        if response.status_code >= 400 and response.headers.get("Content-Type", "").startswith("application/problem"):
            op.detail = response.json().get("detail", "")
        etag = response.headers.get("ETag")
        if etag and response.status_code < 300:
            op.version = int(etag.strip('"'))
            seen[key] = op.version
        if kind in ("get", "patch") and response.status_code == 200:
            op.value = response.json()["value"]
        ops.append(op)


def inject_redis_fault(stack, seed: int, faults: Faults, stop: threading.Event) -> None:
    """Seeds with a Redis fault: 1 pause, 2 slow, 3 stop and restart (every fourth seed from 15 on in make
    test, so that most seeds check every read strictly)."""
    kind = seed % 4 if VERIFY else (0 if seed < 15 else 1 + seed % 3)
    if kind == 0:
        return
    stop.wait(0.3)
    began = time.monotonic()
    redis_server = stack.redis
    if kind == 1:
        redis_server.pause()
        stop.wait(0.4)
        redis_server.resume()
    elif kind == 2:
        for _ in range(6):  # slower than the 50 ms timeout, again and again
            redis_server.pause()
            time.sleep(0.08)
            redis_server.resume()
            time.sleep(0.02)
    else:
        redis_server.stop()
        stop.wait(0.4)
        redis_server.start()
    faults.redis_windows.append((began, time.monotonic()))


# Runtime.ExitError: a failpoint killed the worker. Runtime.InitTimeout: the local stack could not start a
# worker within Lambda's 10 s init phase (a loaded machine): the emulator's failure, not the logic's, so it
# is counted and reported, never hidden, and the operation is indeterminate.
INDETERMINATE_ERRORS = ("Runtime.ExitError", "Runtime.InitTimeout")


def killed_request_ids(stack) -> dict[str, str]:
    killed = {}
    for line in (stack.log_dir / "access.log").read_text().splitlines():
        record = json.loads(line)
        if record.get("integrationError") in INDETERMINATE_ERRORS:
            killed[record["requestId"]] = record["integrationError"]
    return killed


def paused_request_ids(stack) -> set[str]:
    """Requests whose PATCH was paused past the lock's lease (the workers log each failpoint firing)."""
    paused = set()
    for line in (stack.log_dir / "PatchStateFunction.log").read_text(errors="replace").splitlines():
        if '"failpoint fired"' not in line:
            continue
        record = json.loads(line)
        if record.get("failpoint") == "after_patch_read" and record.get("failpoint_action") == "delay":
            paused.add(record["correlation_id"])
    return paused


def overtaken(paused_patch: Op, ops: list[Op]) -> list[Op]:
    """Writes on the paused PATCH's key that began after it and were acknowledged before it was (its pause
    is most of its time, so nearly always while it was paused)."""
    return [
        op
        for op in ops
        if op.acknowledged
        and op.key == paused_patch.key
        and paused_patch.invoked < op.invoked
        and op.completed < paused_patch.completed
    ]


def check_key(ops: list[Op], killed: dict[str, str], faults: Faults, findings: Findings) -> None:
    problems = findings.problems
    writes = [op for op in ops if op.acknowledged]
    versions = [op.version for op in writes]
    if len(versions) != len(set(versions)):
        problems.append(f"{ops[0].key}: duplicate acknowledged versions {sorted(versions)}")
    for a in writes:
        for b in writes:
            if a.completed < b.invoked and a.version >= b.version:
                problems.append(f"{a.key}: {a.op_id} v{a.version} completed before {b.op_id} began, got v{b.version}")
        if a.if_match is not None and a.version != a.if_match + 1:
            problems.append(f"{a.key}: {a.op_id} If-Match {a.if_match} landed on v{a.version}")
    failed_ids: dict[str, str] = {}
    for op in ops:
        if op.status == 503 and not op.retry_after:
            problems.append(f"{op.key}: {op.op_id} 503 without Retry-After")
        if op.status >= 500 and op.status != 503 and op.request_id not in killed:
            problems.append(f"{op.key}: {op.op_id} answered {op.status} without a killed function")
        # A 503 because DynamoDB did not answer in time is indeterminate (the write may have landed before
        # the timeout); a throttled 503, a lost PATCH and every 4xx wrote nothing.
        if op.write and ((op.status == 503 and "in time" not in op.detail) or 400 <= op.status < 500):
            failed_ids[op.op_id] = f"{op.status} {op.detail}"
        if op.status not in (200, 201, 204, 404, 412, 503) and op.request_id not in killed:
            problems.append(f"{op.key}: {op.op_id} unexpected status {op.status}")
    # Reads: never older than a write acknowledged before the read began.
    for read in (op for op in ops if op.kind == "get" and op.status in (200, 404)):
        before = [w for w in writes if w.completed < read.invoked]
        if not before:
            continue
        last = max(before, key=lambda w: w.version)
        stale = False
        if read.status == 200:
            stale = read.version < last.version
        elif last.kind != "delete":
            # 404 after a live version: only a delete at or above it (acknowledged or not) explains it.
            deletes = [
                op for op in ops if op.kind == "delete" and op.invoked < read.completed and op.status not in (404, 412)
            ]
            stale = not any(d.version is None or d.version > last.version for d in deletes)
        if stale:
            if faults.excused(read.invoked):
                findings.excused_stale_reads += 1
                findings.stale_after_fault = max(findings.stale_after_fault, faults.since_fault(read.invoked))
            else:
                got = read.version if read.status == 200 else "404"
                problems.append(f"{read.key}: read {read.op_id} got {got} after v{last.version} was acknowledged")
    # Merged members are never lost, and a refused write leaves nothing behind.
    answers = [op for op in ops if op.value is not None and isinstance(op.value, dict)]
    for patch in (op for op in writes if op.kind == "patch"):
        lineage = patch.value.get("put")
        for later in answers:
            if later.version > patch.version and later.value.get("put") == lineage and patch.op_id not in later.value:
                problems.append(f"{patch.key}: member of {patch.op_id} (v{patch.version}) lost at v{later.version}")
    for answer in answers:
        leaked = ({answer.value.get("put")} | set(answer.value)) & set(failed_ids)
        if leaked:
            why = "; ".join(f"{op_id}: {failed_ids[op_id]}" for op_id in sorted(leaked))
            problems.append(f"{answer.key}: refused writes visible at v{answer.version} ({why})")


@pytest.mark.parametrize("seed", SEEDS)
def test_concurrent_histories_satisfy_the_contract(history_stack, ledger, collect_events, seed):
    run = uuid.uuid4().hex[:6]
    keys = [f"h:{seed}:{run}:{n}" for n in range(KEYS)]
    ops: list[Op] = []
    start = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_client, args=(history_stack, n, seed, keys, ops, start)) for n in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    start.wait()
    fault = threading.Thread(target=inject_redis_fault, args=(history_stack, seed, ledger["faults"], stop))
    fault.start()
    for thread in threads:
        thread.join(timeout=300)
    stop.set()
    fault.join(timeout=30)
    assert len(ops) == CLIENTS * OPS_PER_CLIENT

    killed = killed_request_ids(history_stack)
    findings = Findings()
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    for key_ops in by_key.values():
        check_key(key_ops, killed, ledger["faults"], findings)
    ledger["ops"].extend(ops)
    ledger["kills"] += sum(killed.get(op.request_id) == "Runtime.ExitError" for op in ops)
    ledger["init_timeouts"] += sum(killed.get(op.request_id) == "Runtime.InitTimeout" for op in ops)
    ledger["throttled"] += sum(op.status == 503 for op in ops)
    ledger["excused"] += findings.excused_stale_reads
    ledger["stale_after_fault"] = max(ledger["stale_after_fault"], findings.stale_after_fault)
    paused_ids = paused_request_ids(history_stack)
    paused = [op for op in ops if op.kind == "patch" and op.request_id in paused_ids]
    # Whether a paused holder lost anything is checked above with every PATCH (its members, and those of
    # the writers that overtook it); here only that the case happened.
    ledger["paused"] += len(paused)
    ledger["overtaken"] += sum(bool(overtaken(patch, ops)) for patch in paused)
    ledger["seeds"] += 1
    ledger["seconds"] += time.monotonic() - began
    collect_events(ledger["events"])
    assert not findings.problems, f"seed {seed}:\n" + "\n".join(findings.problems)


def test_every_fault_happened(ledger):
    """The checks above mean something only if the faults fired: a kill, a throttled 503, a lock holder
    overtaken while paused past its lease, and (in the fault seeds) a Redis fault."""
    if ledger["seeds"] < len(SEEDS):
        pytest.skip("only some seeds were selected")
    print(
        f"\nfaults: {ledger['kills']} killed at a failpoint, {ledger['throttled']} answered 503, "
        f"{ledger['paused']} PATCHes paused past the lock's lease ({ledger['overtaken']} overtaken by another "
        f"writer meanwhile), {len(ledger['faults'].redis_windows)} Redis faults"
    )
    assert ledger["kills"] > 0
    assert ledger["throttled"] > 0
    assert ledger["overtaken"] > 0
    assert ledger["faults"].redis_windows


def test_every_acknowledged_version_has_its_event(ledger, collect_events):
    """After the seeds: each acknowledged write's version reached `state-changes` (at least once)."""
    acknowledged = {(op.key, op.version) for op in ledger["ops"] if op.acknowledged}
    if not acknowledged:
        pytest.skip("no seed ran")
    events = ledger["events"]
    # The pipeline may lag a long run: wait while events keep arriving, give up after a stall.
    waited_from = time.monotonic()
    deadline = waited_from + EVENT_TIMEOUT
    while not acknowledged <= events and time.monotonic() < deadline:
        if collect_events(events):
            deadline = time.monotonic() + EVENT_TIMEOUT
        else:
            time.sleep(0.1)
    print(
        f"\nhistory: {ledger['seeds']} seeds, {len(ledger['ops'])} operations in {ledger['seconds']:.1f} s, "
        f"{len(acknowledged)} acknowledged writes, {ledger['kills']} killed at a failpoint, "
        f"{ledger['throttled']} answered 503, {ledger['overtaken']} PATCHes overtaken while paused past the "
        f"lock's lease, {ledger['excused']} stale reads within a Redis fault's grace (the last "
        f"{ledger['stale_after_fault']:.1f} s after the fault ended), "
        f"{ledger['init_timeouts']} local-stack init timeouts (the emulator's, not the logic's); "
        f"{len(acknowledged & events)} of their events arrived, the last {time.monotonic() - waited_from:.1f} s "
        "after the run"
    )
    missing = sorted(acknowledged - events)
    assert missing == []
