"""A history checker over HTTP against the whole local stack, with faults: concurrency bugs show up only
in the order operations complete, which unit tests cannot see.

Concurrent clients run random mixes of GET, PUT, PATCH, DELETE and If-Match writes on a few keys, each
operation recorded with its invoke and completion time, status and version. Every key's history is then
checked against the contract:

- acknowledged write versions are unique, and increase in real-time order (a write that completed before
  another began has the smaller version); an If-Match write lands exactly on the next version;
- every read returns a version not older than the last write acknowledged before the read began, with one
  exception, for writes made while Redis was unreachable from their writer (`stale_read_excuse`);
- a member added by an acknowledged PATCH is never lost: any later version descending from the same PUT
  still holds it (each PUT stamps its value with its own id, PATCHes add members named by theirs);
- a write answered 503 (Retry-After required) or 4xx left nothing behind, unless the 503 says its outcome
  is unknown (indeterminate); a 500 is allowed only where a failpoint killed the function (the gateway
  logs Runtime.ExitError), and is indeterminate;
- every acknowledged version has its StateChanged event in `state-changes` (checked once, at the end).

Faults: the stack's workers are armed (STATE_FAILPOINTS_SPEC) to throttle a burst of DynamoDB requests in
each worker (botocore retries, then 503), to lose the answers of a few requests the table applied, to kill
the function at each failpoint of the request path now and then, and to pause a PATCH that holds the key's
lock and has read the item past the lock's lease, so that another writer takes the lock and writes first
(the workers log each firing with the request id, and a check at the end asserts that each of these
faults happened). Redis is owned by the test and, in the fault seeds, paused (SIGSTOP), made slower than
the 50 ms timeout (short pauses), stopped and started again with its data, restarted empty, or made to drop
every client's connection (`FAULT_KINDS`). The clients lean to writes during the fault and to reads, all at
once, right after it (`Phase`), so that readers whose containers never saw the fault meet what writers who
did see it left behind. Each stale read the exception excuses is counted with its lag behind Redis being
reachable again; the summary reports p50 and max of "Redis reachable again -> last stale read".

20 seeds in make test, 100 in make verify (STATE_VERIFY=1).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from devstack.event_tail import take_messages
from devstack.redis_server import RedisServer
from tests.event_schemas import assert_valid_event
from tests.stack import start_devstack

pytestmark = [pytest.mark.e2e, pytest.mark.verify]

VERIFY = os.environ.get("STATE_VERIFY") == "1"
SEEDS = range(100 if VERIFY else 20)
CLIENTS = 8
OPS_PER_CLIENT = 15 if VERIFY else 8
KEYS = 3
# Per worker process: its 41st-43rd DynamoDB requests are throttled (all of botocore's attempts of one
# call, so a client sees 503); the answers of two requests that reached the table are lost (a write is
# then settled by reading it back, or answered 503 write-outcome-unknown); and at every failpoint of the
# request path, 0.5% of the passes kill the function there (between DynamoDB and the cache, holding a
# lock, between a read and its fill...).
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
        "dynamodb_answer=return(lost)*2+25",
        *(f"{point}=kill%0.5" for point in KILL_POINTS),
        f"after_patch_read=delay({PAUSE_PAST_LEASE})%5",
    ]
)
# How long after Redis is reachable again a key written during the fault may still read stale.
STALE_BOUND = 1.0
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
    problem: str = ""  # a problem's type (tells a 503 that wrote nothing from one whose outcome is unknown)
    detail: str = ""
    request_id: str = ""

    @property
    def write(self) -> bool:
        return self.kind != "get"

    @property
    def acknowledged(self) -> bool:
        return self.write and 200 <= self.status < 300


@dataclass(eq=False)
class FaultWindow:
    """A Redis fault, from its start until Redis answers again (for a connection reset, the reset itself)."""

    kind: str  # pause | slow | stop | restart-empty | reset
    start: float
    end: float
    # Seconds from `end` to the start of the last stale read this fault excused (None: it excused none).
    last_stale: float | None = None


@dataclass
class Faults:
    redis_windows: list[FaultWindow] = field(default_factory=list)


# What the clients do, by phase of the seed's Redis fault: a mix before it; mostly writes during it (so that
# writers meet the fault); then, for `READ_BURST` seconds after Redis answers again, mostly reads from
# every client at once (more readers in flight than during the fault), with writes still going on.
MIX = {"before": [4, 3, 4, 1], "during": [1, 4, 4, 1], "after": [8, 2, 2, 0]}
READ_BURST = 2.0


@dataclass
class Phase:
    """The seed's fault, as the clients see it while they run."""

    began: float | None = None
    ended: float | None = None

    def weights(self, now: float) -> list[int]:
        if self.began is None or now < self.began:
            return MIX["before"]
        if self.ended is None:
            return MIX["during"]
        return MIX["after"] if now - self.ended < READ_BURST else MIX["before"]


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    excused_stale_reads: int = 0
    # Stale reads outside the rule: (versions behind, seconds after the latest Redis fault ended, its kind).
    unexcused: list[tuple[int, float | None, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def history_stack(tmp_path_factory):
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
    names = ("kills", "init_timeouts", "throttled", "unknown", "excused", "seeds", "paused", "overtaken")
    counts = dict.fromkeys(names, 0)
    return {"ops": [], "events": set(), "faults": Faults(), "seconds": 0.0, "unexcused": [], **counts}


@pytest.fixture(scope="module")
def collect_events(history_stack):
    """collect_events(events): take what `state-changes` holds now into `events` as (key, version); answers
    how many messages were taken.

    Called after every seed as well as at the end: the emulator's receive costs grow with the queue's
    length (about 1 s a call with 2,000 waiting), so a queue left to fill for 100 seeds took ten minutes
    to drain."""
    sqs = history_stack.client("sqs")
    url = sqs.get_queue_url(QueueName="state-service-local-state-changes")["QueueUrl"]

    def collect(events: set[tuple[str, int]]) -> int:
        taken = 0
        while messages := take_messages(sqs, url):
            for message in messages:
                assert_valid_event(message)
            events.update((message["detail"]["key"], message["detail"]["version"]) for message in messages)
            taken += len(messages)
        return taken

    return collect


def run_client(
    stack, number: int, seed: int, keys: list[str], ops: list[Op], start: threading.Barrier, phase: Phase
) -> None:
    rng = random.Random(f"{seed}-{number}")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.token()}"
    seen: dict[str, int] = {}
    start.wait()
    for index in range(OPS_PER_CLIENT):
        key = rng.choice(keys)
        kind = rng.choices(["get", "put", "patch", "delete"], weights=phase.weights(time.monotonic()))[0]
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
            document = response.json()
            op.problem, op.detail = document.get("type", "").rpartition("/")[2], document.get("detail", "")
        etag = response.headers.get("ETag")
        if etag and response.status_code < 300:
            op.version = int(etag.strip('"'))
            seen[key] = op.version
        if kind in ("get", "patch") and response.status_code == 200:
            op.value = response.json()["value"]
        ops.append(op)


FAULT_KINDS = ("pause", "slow", "stop", "restart-empty", "reset")


def fault_kind(seed: int) -> str | None:
    """make verify: five seeds in six have a Redis fault, each kind in turn; make test: the last ten seeds,
    each kind twice, so that the first ten run with Redis healthy throughout."""
    if VERIFY:
        return FAULT_KINDS[seed % 6 - 1] if seed % 6 else None
    return FAULT_KINDS[seed % 5] if seed >= 10 else None


def inject_redis_fault(stack, seed: int, faults: Faults, phase: Phase, stop: threading.Event) -> None:
    """The seed's Redis fault, once the clients are under way; they keep reading and writing after it."""
    kind = fault_kind(seed)
    if kind is None:
        return
    stop.wait(0.3)
    redis_server = stack.redis
    began = phase.began = time.monotonic()
    if kind == "pause":  # a hung Redis: connections stay open, nothing answers
        redis_server.pause()
        stop.wait(0.5)
        redis_server.resume()
    elif kind == "slow":  # answers slower than the 50 ms timeout, again and again
        for _ in range(6):
            redis_server.pause()
            time.sleep(0.08)
            redis_server.resume()
            time.sleep(0.02)
    elif kind == "stop":  # down (connections refused), then back with the entries it held
        redis_server.stop(keep_data=True)
        stop.wait(0.5)
        redis_server.start()
    elif kind == "restart-empty":
        redis_server.stop()
        redis_server.start()
    else:  # every client's connection reset under it
        redis_server.reset_connections()
    phase.ended = time.monotonic()
    faults.redis_windows.append(FaultWindow(kind, began, phase.ended))


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


def lost_answers(stack) -> int:
    """DynamoDB requests the table applied and whose answer the workers lost (each firing is logged)."""
    lost = 0
    for log in stack.log_dir.glob("*Function.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"failpoint fired"' in line and json.loads(line).get("failpoint") == "dynamodb_answer":
                lost += 1
    return lost


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


def stale_read_excuse(read: Op, newer: list[Op], windows: list[FaultWindow]) -> FaultWindow | None:
    """May `read` be stale? It missed `newer`: the acknowledged writes (the versions the checker knows of)
    above the version it returned, up to the newest acknowledged before it began.

    The contract: a read is never older than a write acknowledged before the read began. The one exception:
    a key written while Redis was unreachable from its writer may read stale until at most `STALE_BOUND`
    (1 s) after Redis is reachable again. Black-box, "unreachable from its writer" is a write request that
    overlapped a Redis fault window (from the fault's start until Redis answers again). So the read is
    excused only if every write in `newer` overlapped a fault window and the read began at most
    `STALE_BOUND` after the end of the latest window any of them overlapped; that window is the answer,
    None when the read breaks the contract.
    """
    latest: FaultWindow | None = None
    for write in newer:
        overlapped = [w for w in windows if write.invoked <= w.end and w.start <= write.completed]
        if not overlapped:
            return None
        last = max(overlapped, key=lambda w: w.end)
        if latest is None or last.end > latest.end:
            latest = last
    if latest is None or read.invoked > latest.end + STALE_BOUND:
        return None
    return latest


def check_key(ops: list[Op], killed: dict[str, str], faults: Faults, findings: Findings) -> None:  # noqa: C901, PLR0912, PLR0915  the checker's rules, one after another
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
        # A 503 write-outcome-unknown is indeterminate (the write was sent and its answer lost); any other
        # 503 (throttled, never sent, a lost PATCH) and every 4xx wrote nothing.
        if op.write and ((op.status == 503 and op.problem != "write-outcome-unknown") or 400 <= op.status < 500):
            failed_ids[op.op_id] = f"{op.status} {op.detail}"
        if op.status not in (200, 201, 204, 404, 412, 503) and op.request_id not in killed:
            problems.append(f"{op.key}: {op.op_id} unexpected status {op.status}")
    # Reads: never older than a write acknowledged before the read began, but for the one exception.
    for read in (op for op in ops if op.kind == "get" and op.status in (200, 404)):
        before = [w for w in writes if w.completed < read.invoked]
        if not before:
            continue
        last = max(before, key=lambda w: w.version)
        stale = False
        if read.status == 200:
            stale = read.version < last.version
            got = read.version
        elif last.kind != "delete":
            # 404 after a live version: only a delete at or above it (acknowledged or not) explains it.
            deletes = [
                op for op in ops if op.kind == "delete" and op.invoked < read.completed and op.status not in (404, 412)
            ]
            stale = not any(d.version is None or d.version > last.version for d in deletes)
            # The tombstone it may have read: the newest known delete below the acknowledged version.
            got = max((d.version for d in deletes if d.version is not None and d.version < last.version), default=0)
        if not stale:
            continue
        newer = [w for w in writes if got < w.version <= last.version]
        excuse = stale_read_excuse(read, newer, faults.redis_windows)
        if excuse is not None:
            findings.excused_stale_reads += 1
            lag = max(0.0, read.invoked - excuse.end)
            excuse.last_stale = max(lag, excuse.last_stale or 0.0)
            continue
        latest = max((w for w in faults.redis_windows if w.start <= read.invoked), key=lambda w: w.end, default=None)
        since = None if latest is None else read.invoked - latest.end
        findings.unexcused.append((len(newer), since, latest.kind if latest else "none"))
        when = "no Redis fault before it" if latest is None else f"{since:.2f} s after a {latest.kind} fault ended"
        shown = read.version if read.status == 200 else "404"
        missed = ", ".join(
            f"{w.op_id} {w.kind} v{w.version} {w.invoked - read.invoked:+.2f}..{w.completed - read.invoked:+.2f} s"
            f" [{w.request_id}]"
            for w in newer
        )
        problems.append(
            f"{read.key}: read {read.op_id} [{read.request_id}] got {shown} after v{last.version} was acknowledged "
            f"({len(newer)} acknowledged versions behind, {when}; missed {missed})"
        )
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
    phase = Phase()
    threads = [
        threading.Thread(target=run_client, args=(history_stack, n, seed, keys, ops, start, phase))
        for n in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    start.wait()
    fault = threading.Thread(target=inject_redis_fault, args=(history_stack, seed, ledger["faults"], phase, stop))
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
    ledger["unknown"] += sum(op.problem == "write-outcome-unknown" for op in ops)
    ledger["excused"] += findings.excused_stale_reads
    ledger["unexcused"].extend(findings.unexcused)
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


def stale_lag_summary(windows: list[FaultWindow]) -> str:
    """p50 and max over the faults, and by kind, of "Redis reachable again -> last stale read" (0 for a fault
    that no stale read followed)."""

    def figures(lags: list[float]) -> str:
        if not lags:
            return "none"
        return f"p50 {statistics.median(lags):.2f} s, max {max(lags):.2f} s"

    by_kind: dict[str, list[float]] = defaultdict(list)
    for window in windows:
        by_kind[window.kind].append(window.last_stale or 0.0)
    lags = [lag for kind_lags in by_kind.values() for lag in kind_lags]
    kinds = "; ".join(f"{kind} {figures(by_kind[kind])}" for kind in FAULT_KINDS if kind in by_kind)
    stale = sum(window.last_stale is not None for window in windows)
    return (
        f"{stale} of {len(windows)} faults followed by stale reads; Redis reachable again -> last stale read "
        f"(0 where none) {figures(lags)}; by kind: {kinds or 'none'}"
    )


def unexcused_summary(unexcused: list[tuple[int, float | None, str]]) -> str:
    """The stale reads the exception did not excuse: how many, how far behind, after which fault kind."""
    if not unexcused:
        return "0 stale reads outside the exception"
    behind = max(versions for versions, _, _ in unexcused)
    lags = [since for _, since, _ in unexcused if since is not None]
    kinds = Counter(kind for _, _, kind in unexcused)
    latest = f", the last {max(lags):.2f} s after its fault ended" if lags else ""
    return (
        f"{len(unexcused)} stale reads outside the exception (up to {behind} versions behind{latest}; after "
        + ", ".join(f"{kind} {n}" for kind, n in kinds.items())
        + ")"
    )


def test_every_fault_happened(ledger, history_stack):
    """The checks above mean something only if the faults fired: a kill, a throttled 503, a lost answer, a
    lock holder overtaken while paused past its lease, and (in the fault seeds) a Redis fault."""
    if ledger["seeds"] < len(SEEDS):
        pytest.skip("only some seeds were selected")
    lost = lost_answers(history_stack)
    print(
        f"\nfaults: {ledger['kills']} killed at a failpoint, {ledger['throttled']} answered 503 "
        f"({ledger['unknown']} write-outcome-unknown), {lost} DynamoDB answers lost, "
        f"{ledger['paused']} PATCHes paused past the lock's lease ({ledger['overtaken']} overtaken by another "
        f"writer meanwhile), {len(ledger['faults'].redis_windows)} Redis faults ("
        + ", ".join(f"{n} {kind}" for kind, n in Counter(w.kind for w in ledger["faults"].redis_windows).items())
        + ")"
    )
    assert ledger["kills"] > 0
    assert ledger["throttled"] > 0
    assert lost > 0
    assert ledger["overtaken"] > 0
    assert {w.kind for w in ledger["faults"].redis_windows} == set(FAULT_KINDS)


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
        f"lock's lease, {ledger['excused']} stale reads excused by a Redis fault "
        f"({stale_lag_summary(ledger['faults'].redis_windows)}), {unexcused_summary(ledger['unexcused'])}, "
        f"{ledger['init_timeouts']} local-stack init timeouts (the emulator's, not the logic's); "
        f"{len(acknowledged & events)} of their events arrived, the last {time.monotonic() - waited_from:.1f} s "
        "after the run"
    )
    missing = sorted(acknowledged - events)
    assert missing == []
