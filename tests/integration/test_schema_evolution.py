"""Evolving a value schema against the values already stored, through the real handlers against the moto
server: a checked version over stored values is pending until its check (a job) ends, refused with the
offending keys listed in pages, or published; `?mode=forward` skips the check; writes racing the check; a
check of 5,000 keys reports progress and holds up no write; RBAC and bad input for the check's route.

The check's steps are the asynchronous invocations Lambda would make: here the test invokes the registry's
handler with the same event, `{"schema_check": {"name", "id"}}`."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any

import pytest

from state_core import runtime
from tests.doubles import LambdaContext
from tests.integration import test_schemas as base
from tests.integration.test_schemas import get, put, schema_event

# The registry's fixtures: a fresh schema name and key prefix per test, the handlers' call and publish.
call, publish, name, prefix = base.call, base.publish, base.name, base.prefix

pytestmark = pytest.mark.integration

SETTLE_SECONDS = 0.3
LOOSE = {"type": "object"}
COUNTED = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


class StepContext(LambdaContext):
    """An invocation whose time runs out `seconds` after it starts, as Lambda's does."""

    def __init__(self, seconds: float) -> None:
        super().__init__("state-service-SchemasFunction")
        self._deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _rebuild_runtime() -> None:
    for builder in (runtime.service_settings, runtime.schema_registry, runtime.state_manager, runtime.transactions):
        builder.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def short_settle(handler_environment):
    """A settle of a fraction of a second: the registry's function and the write functions share one
    registry in this process, so nothing here checks a write against a registry read before a publish
    unless a test builds such a container itself (the race below)."""
    import os

    os.environ["STATE_SCHEMA_CHECK_SETTLE_SECONDS"] = str(SETTLE_SECONDS)
    _rebuild_runtime()
    yield
    del os.environ["STATE_SCHEMA_CHECK_SETTLE_SECONDS"]
    _rebuild_runtime()


def check_event(name: str, check_id: str, query: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    event = schema_event("GET", name, query=query, **kwargs)
    event["routeKey"] = event["requestContext"]["routeKey"] = "GET /schemas/{name}/checks/{check_id}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/schemas/{name}/checks/{check_id}"
    event["pathParameters"] = {"name": name, "check_id": check_id}
    return event


def run_check(invoke, name: str, check_id: str, *, step_seconds: float = 10.0, steps: int = 100) -> dict[str, Any]:
    """The check's invocations, one after another, until it ends."""
    for _ in range(steps):
        answer = invoke("schemas", {"schema_check": {"name": name, "id": check_id}}, StepContext(step_seconds))
        if answer["state"] in ("passed", "refused"):
            return answer
    raise AssertionError(f"check {check_id} did not end in {steps} steps")


def start_check(publish, name: str, schema: Any, patterns: list[str]) -> dict[str, Any]:
    status, started = publish(name, schema, patterns)
    assert status == 202, started
    return started


def all_pages(call, name: str, check_id: str, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        query = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        status, page = call(check_event(name, check_id, query))
        assert status == 200, page
        pages.append([entry["key"] for entry in page["offending_keys"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


# --------------------------------------------------------------------------------------- refuse, accept


def test_a_version_stored_values_do_not_satisfy_is_refused_with_the_offending_keys_in_pages(
    call, invoke, publish, name, prefix
):
    assert publish(name, LOOSE, [f"{prefix}*"])[0] == 201
    good = [f"{prefix}good{i}" for i in range(3)]
    bad = [f"{prefix}bad{i}" for i in range(5)]
    for key in good:
        assert put(call, key, {"n": 1})[0] == 201
    for key in bad:
        assert put(call, key, {"n": "one"})[0] == 201

    started = start_check(publish, name, COUNTED, [f"{prefix}*"])
    assert (started["name"], started["version"], started["state"]) == (name, 2, "settling")
    # Not published while it is checked: readers still see version 1.
    assert call(schema_event("GET", name))[1]["version"] == 1

    ended = run_check(invoke, name, started["id"])
    assert ended["state"] == "refused"
    status, page = call(check_event(name, started["id"], {"limit": "2"}))
    assert status == 200
    assert (page["keys_checked"], page["offending_key_count"], page["state"]) == (8, 5, "refused")
    assert page["finished_at"] is not None
    assert page["offending_keys"][0] == {
        "key": bad[0],
        "violation_count": 1,
        "violations": [{"pointer": "/n", "message": '(value) is not of type "integer"'}],
    }
    assert all_pages(call, name, started["id"], limit=2) == [bad[0:2], bad[2:4], bad[4:5]]

    # Refused: version 1 stays current, there is no version 2, and the name can be published again.
    assert call(schema_event("GET", name))[1]["version"] == 1
    assert call(schema_event("GET", name, query={"version": "2"}))[0] == 404
    assert put(call, f"{prefix}bad0", {"n": "still a string"})[0] == 200


def test_mode_forward_publishes_over_offending_values_and_says_so(call, publish, name, prefix):
    assert publish(name, LOOSE, [f"{prefix}*"])[0] == 201
    assert put(call, f"{prefix}old", {"n": "one"})[0] == 201

    status, published = publish(name, COUNTED, [f"{prefix}*"], query={"mode": "forward"})
    assert (status, published["version"], published["mode"]) == (200, 2, "forward")
    assert call(schema_event("GET", name))[1]["mode"] == "forward"
    assert call(schema_event("GET", name, query={"version": "2"}))[1]["mode"] == "forward"
    # The stored value stays as it was; the next write of it must satisfy version 2.
    assert get(call, f"{prefix}old")[1]["value"] == {"n": "one"}
    assert put(call, f"{prefix}old", {"n": "two"})[0] == 422


def test_a_check_every_value_passes_publishes_the_version_as_checked(call, invoke, publish, name, prefix):
    assert publish(name, LOOSE, [f"{prefix}*"])[0] == 201
    for i in range(4):
        assert put(call, f"{prefix}k{i}", {"n": i})[0] == 201

    started = start_check(publish, name, COUNTED, [f"{prefix}*"])
    ended = run_check(invoke, name, started["id"])

    assert (ended["state"], ended["keys_checked"], ended["offending_key_count"]) == ("passed", 4, 0)
    current = call(schema_event("GET", name))[1]
    assert (current["version"], current["mode"], current["schema"]) == (2, "checked", COUNTED)
    assert call(schema_event("GET", name, query={"version": "1"}))[1]["schema"] == LOOSE


def test_a_first_version_over_stored_values_is_checked_too(call, invoke, publish, name, prefix):
    assert put(call, f"{prefix}a", {"n": "x"})[0] == 201
    started = start_check(publish, name, COUNTED, [f"{prefix}*"])
    assert started["version"] == 1

    assert run_check(invoke, name, started["id"])["state"] == "refused"
    assert call(schema_event("GET", name))[0] == 404


# ------------------------------------------------------------------------------------ racing writes


def test_while_a_version_is_checked_writes_must_satisfy_it_and_the_current_one(call, invoke, publish, name, prefix):
    strict_current = {"type": "object", "properties": {"tag": {"type": "string"}}}
    assert publish(name, strict_current, [f"{prefix}*"])[0] == 201
    assert put(call, f"{prefix}k", {"n": 1})[0] == 201
    started = start_check(publish, name, COUNTED, [f"{prefix}*", f"{prefix[:-1]}-extra"])

    # Fits version 1, not the pending version 2: refused, naming version 2.
    status, problem = put(call, f"{prefix}k", {"n": "one"})
    assert (status, problem["schema"]) == (422, {"name": name, "version": 2})
    # Fits version 2, not version 1: refused, naming version 1 (a refused check must leave version 1 true).
    status, problem = put(call, f"{prefix}k", {"n": 2, "tag": 3})
    assert (status, problem["schema"]) == (422, {"name": name, "version": 1})
    # A key only the pending version governs is held to it too.
    assert put(call, f"{prefix[:-1]}-extra", {"n": "one"})[0] == 422
    assert put(call, f"{prefix}k", {"n": 2, "tag": "t"})[0] == 200

    assert run_check(invoke, name, started["id"])["state"] == "passed"


def test_a_write_checked_against_the_old_version_during_the_settle_does_not_slip_through(
    call, invoke, publish, name, prefix, store
):
    """A container whose registry was read before the publish checks a write against version 1 only, and
    the write lands after the check began. The check reads no value before the settle has passed, so it
    reads that write and refuses the version."""
    from state_core.runtime import utc_now
    from state_core.service.manager import StateManager
    from state_core.service.schemas import SchemaRegistry
    from state_core.storage.schemas import SchemaStore
    from tests.doubles import NoMetrics

    assert publish(name, LOOSE, [f"{prefix}*"])[0] == 201
    assert put(call, f"{prefix}k", {"n": 1})[0] == 201
    stale = SchemaRegistry(SchemaStore(store._client, store._table), clock=utc_now, cache_seconds=3600)
    stale.current()  # read now, before the publish: this container will not see version 2 for an hour
    stale_writer = StateManager(store, clock=utc_now, metrics=NoMetrics(), schemas=stale)

    started = start_check(publish, name, COUNTED, [f"{prefix}*"])
    # A step with too little time to wait out the settle reads nothing. (On a loaded machine the settle may
    # have passed before this step ran: it then starts running, but its budget ends before it reads a key.)
    step = invoke("schemas", {"schema_check": {"name": name, "id": started["id"]}}, StepContext(6.1))
    assert step["state"] in ("settling", "running")
    assert step["keys_checked"] == 0
    stale_writer.put(f"{prefix}k", {"n": "written under version 1"}, actor="stale")

    ended = run_check(invoke, name, started["id"])
    assert (ended["state"], ended["offending_key_count"]) == ("refused", 1)
    assert all_pages(call, name, started["id"], limit=10) == [[f"{prefix}k"]]


def test_a_second_runner_of_the_same_check_does_not_count_twice(call, invoke, publish, name, prefix):
    assert publish(name, LOOSE, [f"{prefix}*"])[0] == 201
    for i in range(30):
        assert put(call, f"{prefix}k{i:02d}", {"n": "x" if i % 3 == 0 else i})[0] == 201
    started = start_check(publish, name, COUNTED, [f"{prefix}*"])
    time.sleep(SETTLE_SECONDS)

    answers: list[dict[str, Any]] = []
    runners = [
        threading.Thread(target=lambda: answers.append(run_check(invoke, name, started["id"]))) for _ in range(3)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()

    page = call(check_event(name, started["id"], {"limit": "100"}))[1]
    assert (page["state"], page["keys_checked"], page["offending_key_count"]) == ("refused", 30, 10)
    assert len(page["offending_keys"]) == 10


def test_a_publish_of_the_name_or_an_overlapping_one_waits_for_the_check(call, invoke, publish, name, prefix):
    assert publish(name, LOOSE, [f"{prefix}*"])[0] == 201
    assert put(call, f"{prefix}k", {"n": 1})[0] == 201
    started = start_check(publish, name, COUNTED, [f"{prefix}*", f"{prefix[:-1]}-new*"])

    status, problem = publish(name, LOOSE, [f"{prefix}*"], query={"mode": "forward"})
    assert status == 409
    assert "still being checked" in problem["detail"]
    other = f"other-{uuid.uuid4().hex[:8]}"
    assert publish(other, LOOSE, [f"{prefix[:-1]}-new:x"])[0] == 409

    assert run_check(invoke, name, started["id"])["state"] == "passed"
    assert publish(name, LOOSE, [f"{prefix}*"], query={"mode": "forward"})[0] == 200


# ------------------------------------------------------------------------------------- 5,000 keys


def seed(client, table: str, store, prefix: str, count: int, value: Any) -> list[dict[str, Any]]:
    """`count` live keys, written straight to the table (BatchWriteItem) as copies of one the store wrote; their
    item keys, to delete them afterwards (the session's table is shared, and moto's transactions copy it)."""
    from state_core.domain.codec import StoredValue, canonical_json
    from state_core.domain.listing import list_shard
    from state_core.domain.writes import Precondition
    from state_core.runtime import utc_now
    from state_core.storage.batches import write_all

    template_key = f"{prefix}template"
    store.write(
        template_key,
        StoredValue.encode(canonical_json(value)),
        actor="seed",
        now=utc_now(),
        precondition=Precondition.NOT_EXPIRED,
        version=None,
    )
    item = client.get_item(TableName=table, Key={"pk": {"S": template_key}, "sk": {"S": "state"}})["Item"]
    requests = []
    for i in range(count):
        key = f"{prefix}{i:05d}"
        requests.append({"PutRequest": {"Item": {**item, "pk": {"S": key}, "list_shard": {"S": list_shard(key)}}}})
    write_all(client, table, requests)
    return [{"pk": request["PutRequest"]["Item"]["pk"], "sk": {"S": "state"}} for request in requests]


@pytest.fixture
def patient_registry(moto_server, state_table, handler_environment):
    """The registry as the schemas function builds it, over a client that waits as long as the emulator needs:
    moto copies the whole table for every TransactWriteItems (a publish, a check's end), which takes seconds
    once it holds 5,000 more items, where DynamoDB takes milliseconds."""
    import botocore.session
    from botocore.config import Config

    from state_core.runtime import utc_now
    from state_core.service.schemas import SchemaRegistry
    from state_core.storage.listing import ListIndexStore
    from state_core.storage.schemas import SchemaStore
    from state_core.storage.state import StateStore

    client = botocore.session.get_session().create_client(
        "dynamodb", endpoint_url=moto_server, config=Config(read_timeout=120, retries={"total_max_attempts": 1})
    )
    return SchemaRegistry(
        SchemaStore(client, state_table),
        clock=utc_now,
        index=lambda: ListIndexStore(client, state_table),
        load=StateStore(client, state_table).get,
        settle_seconds=SETTLE_SECONDS,
    )


def test_a_check_of_5000_keys_reports_progress_and_holds_up_no_write(
    call, publish, name, prefix, client, state_table, store, patient_registry
):
    from state_core.storage.batches import write_all

    assert publish(name, LOOSE, [f"{prefix}*"])[0] == 201
    seeded = seed(client, state_table, store, prefix, 5000, {"n": 1})
    writes = [f"{prefix}w{i}" for i in range(10)]
    try:

        def write_latencies(count: int) -> list[float]:
            found = []
            for i in range(count):
                began = time.perf_counter()
                assert put(call, writes[i % len(writes)], {"n": i})[0] in (200, 201)
                found.append(time.perf_counter() - began)
            return found

        before = write_latencies(30)
        _, _, check = patient_registry.publish(
            name, {"schema": COUNTED, "patterns": [f"{prefix}*"]}, actor="alice", mode="checked"
        )
        assert check is not None
        outcome: list[Any] = []

        def run() -> None:
            # Steps of 0.8 s of work (6.8 s invocations, stopping 6 s short), handing over as Lambda's do.
            for _ in range(1000):
                deadline = time.monotonic() + 6.8
                ended = patient_registry.run_check(
                    name, check.id, seconds_left=lambda end=deadline: end - time.monotonic()
                )
                if ended.finished:
                    outcome.append(ended)
                    return

        runner = threading.Thread(target=run)
        runner.start()
        during: list[float] = []
        progress: list[int] = []
        while runner.is_alive():
            during += write_latencies(5)
            progress.append(call(check_event(name, check.id, {"limit": "1"}))[1]["keys_checked"])
        runner.join()
    finally:
        write_all(client, state_table, [{"DeleteRequest": {"Key": key}} for key in seeded])

    assert outcome[0].state == "passed"
    assert outcome[0].progress.checked >= 5001  # the seeded keys, the template and the writes' keys
    assert any(0 < seen < 5000 for seen in progress), progress  # progress shows while it runs
    assert progress == sorted(progress)
    median_before, median_during = statistics.median(before), statistics.median(during)
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[:3]
    print(
        f"\nPUT latency median before {median_before * 1000:.1f} ms, during the check {median_during * 1000:.1f} ms"
        f" ({len(during)} writes during it, {len(progress)} progress reads); load average {load}"
    )
    # Nothing waits for the check: writes only share the emulator (one request at a time) with its reads.
    assert median_during < 1.0


# ------------------------------------------------------------------------------------ RBAC, bad input


@pytest.fixture
def refused_check(call, invoke, publish, name, prefix) -> dict[str, Any]:
    assert publish(name, LOOSE, [f"{prefix}*"])[0] == 201
    assert put(call, f"{prefix}k", {"n": "x"})[0] == 201
    started = start_check(publish, name, COUNTED, [f"{prefix}*"])
    run_check(invoke, name, started["id"])
    return started


def test_reading_a_check_needs_state_schema_on_every_key_of_its_patterns(call, refused_check, name, prefix):
    check_id = refused_check["id"]
    assert call(check_event(name, check_id))[0] == 200
    assert call(check_event(name, check_id, scopes=f"state:schema:{prefix}*"))[0] == 200
    # Readers of the keys, a narrower schema grant, nothing: as absent as a check that does not exist.
    for scopes in ("state:read state:write", f"state:schema:{prefix}k", f"state:read:{prefix}*", ""):
        status, problem = call(check_event(name, check_id, scopes=scopes))
        assert status == 404, scopes
        assert f"{prefix}k" not in str(problem)


def test_publishing_over_stored_values_needs_the_same_grant_as_any_publish(call, publish, name, prefix):
    assert put(call, f"{prefix}k", {"n": "x"})[0] == 201
    assert publish(name, COUNTED, [f"{prefix}*"], scopes="state:read state:write")[0] == 403
    assert publish(name, COUNTED, [f"{prefix}*"], scopes=f"state:schema:{prefix}k")[0] == 403
    assert call(schema_event("GET", name))[0] == 404


@pytest.mark.parametrize(
    ("check_id", "query"),
    [
        ("not-a-check", None),
        ("0" * 31, None),
        ("A" * 32, None),
        ("0" * 33, None),
        (None, {"limit": "0"}),
        (None, {"limit": "1001"}),
        (None, {"limit": "x"}),
        (None, {"cursor": "bad key with spaces"}),
        (None, {"cursor": "a,b"}),
    ],
)
def test_a_bad_check_id_limit_or_cursor_is_400(call, refused_check, name, check_id, query):
    status, problem = call(check_event(name, check_id or refused_check["id"], query))
    assert status == 400, problem


def test_an_unknown_check_or_another_schemas_check_is_404(call, refused_check, publish, name, prefix):
    assert call(check_event(name, uuid.uuid4().hex))[0] == 404
    other = f"other-{uuid.uuid4().hex[:8]}"
    assert publish(other, LOOSE, [f"{prefix[:-1]}-elsewhere"])[0] == 201
    status, problem = call(check_event(other, refused_check["id"]))
    assert status == 404
    assert refused_check["id"] in problem["detail"]


def test_mode_must_be_forward_or_absent(publish, name, prefix):
    for mode in ("bogus", "checked,forward", "FORWARD", "forward "):
        assert publish(name, LOOSE, [f"{prefix}*"], query={"mode": mode})[0] == 400, mode


def test_a_check_step_with_a_bad_event_does_nothing(invoke, name):
    from state_core.domain.errors import BadRequest

    for request in ({"name": name}, {"name": name, "id": "nope"}, {"name": "Bad Name", "id": "0" * 32}, "x"):
        with pytest.raises(BadRequest):
            invoke("schemas", {"schema_check": request})
