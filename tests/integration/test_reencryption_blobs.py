"""Re-encryption (scripts/reencrypt.py) of large values (blobs) and of change proposals, under a new KMS key, on the
moto server's DynamoDB and KMS and a real redis-server: new chunks under a new blob id, every item naming the old
blob switched only while it still names it, the old blob left to the collection; proposals re-sealed only while
their status and ciphertext hold. Writers, deletions and approvals racing the job win; a job that dies between its
new chunks and the switch leaves nothing unreadable, and a run that goes on from its checkpoint leaves no orphan
once collection has run."""

from __future__ import annotations

import base64
import json
import random
import threading
import uuid
from datetime import timedelta
from typing import Any

import boto3
import pytest

from state_core import failpoints
from state_core.cache.state_cache import entry_key
from state_core.domain.codec import SEALED_PREFIX, StoredValue
from state_core.domain.errors import CorruptStoredValue, DecryptionFailed
from state_core.domain.records import BlobRef
from state_core.security.policy import ApprovalRule
from state_core.service.history import HistoryReader
from state_core.storage.approvals import is_proposal_sort_key, proposal_sort_key
from state_core.storage.blobs import CHUNK_SORT_KEY, MARKER_PREFIX, SWEEP_LAG_SECONDS, WRITE_GRACE_SECONDS, BlobStore
from state_core.storage.history import HistoryStore
from state_core.storage.reencryption import Progress, reencrypt
from state_core.storage.state import record_of_item, value_of_item
from tests.doubles import utc_now
from tests.integration.test_sealed_proposals import SealedApprovals

pytestmark = pytest.mark.integration

WRITERS = 8
INLINE_KEYS = 16
LARGE_KEYS = 4
MAX_ROUNDS = 12
# Large keys are written every this many rounds: a few large writes overlap the job, and the test stays lean.
LARGE_EVERY = 4
RULE = ApprovalRule(approvals=1)


@pytest.fixture
def state_table(moto_server: str, state_template: Any) -> str:
    """A table of its own: the job and the checks scan the whole table."""
    name = f"state-reenc-blobs-{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb")
    ddb.create_table(**state_template.table_create_kwargs("StateTable", name))
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    return name


@pytest.fixture
def keys_arns(moto_server: str) -> tuple[str, str]:
    kms = boto3.client("kms")
    return (
        kms.create_key(Description="old values key")["KeyMetadata"]["Arn"],
        kms.create_key(Description="new values key")["KeyMetadata"]["Arn"],
    )


class Side(SealedApprovals):
    """One container's path under one values key, with the history the publisher would keep."""

    def __init__(self, table: str, key_id: str, redis_url: str) -> None:
        super().__init__(table, key_id, redis_url)
        self.history = HistoryStore(self.dynamodb, table, retention_seconds=86_400)
        self.reader = HistoryReader(self.store, self.history, clock=utc_now, cipher=self.cipher)
        self.blobs = BlobStore(self.dynamodb, table)

    def put(self, key: str, value: Any, actor: str = "seed") -> None:
        """A write and its history item, written (and its blob claimed) as the publisher does."""
        self.manager.put(key, value, actor=actor)
        self.record(key)

    def record(self, key: str) -> None:
        record = record_of_item(self.item(key))
        self.history.record([(record, "updated" if record.version > 1 else "created")])

    def version(self, key: str, version: int) -> Any:
        return json.loads(self.reader.version(key, version)[1])

    def current(self, key: str) -> Any:
        return json.loads(self.manager.get(key, consistent=True).canonical_value)

    def run(self, new_key: str, **kwargs: Any) -> Progress:
        return reencrypt(self.dynamodb, self.table, self.cipher, new_key_arn=new_key, rate=10_000, **kwargs)

    def collect(self) -> list[str]:
        """The existing collection as a day later: every blob nothing names, once past the write grace."""
        return self.blobs.sweep(utc_now() + timedelta(seconds=SWEEP_LAG_SECONDS + WRITE_GRACE_SECONDS + 1))


def large(key: str, n: int) -> dict[str, Any]:
    """About 500 KB of random base64: past the inline limit once compressed and sealed."""
    pad = base64.b64encode(random.Random(f"{key}/{n}").randbytes(375_000)).decode()
    return {"n": n, "key": key, "pad": pad}


def small(key: str, n: int) -> dict[str, Any]:
    return {"n": n, "key": key}


def scan(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        items += page["Items"]
    return items


def has_chunks(side: Side, blob_id: str) -> bool:
    chunk = {"pk": {"S": f"chunk#{blob_id}#0000"}, "sk": {"S": CHUNK_SORT_KEY}}
    return "Item" in side.dynamodb.get_item(TableName=side.table, Key=chunk, ConsistentRead=True)


def assert_nothing_under_the_old_key(side: Side, new_key: str) -> None:
    """The whole table: every sealed value, proposal and blob is under the new key and opens where it is; every
    chunk and marker belongs to a blob an item names (no orphan, no old blob)."""
    items = scan(side.dynamodb, side.table)
    named: dict[str, BlobRef] = {}
    for item in items:
        sort_key = item["sk"]["S"]
        if item.get("patch_encoding", {}).get("S", "").startswith(SEALED_PREFIX):
            patch = StoredValue(item["patch_encoding"]["S"], bytes(item["patch"]["B"]), int(item["patch_size"]["N"]))
            assert side.cipher.key_of(patch) == new_key, (item["pk"], sort_key)
        if not item.get("encoding", {}).get("S", "").startswith(SEALED_PREFIX):
            continue
        value, blob = value_of_item(item)
        if blob is not None:
            named[blob.write_id] = blob
            value = side.blobs.load(blob)
            assert value is not None, (item["pk"], sort_key)  # its chunks are all there
        assert value is not None
        assert side.cipher.key_of(value) == new_key, (item["pk"], sort_key)
        if is_proposal_sort_key(sort_key):
            side.cipher.open(item["pk"]["S"], f"proposal:{item['proposal_id']['S']}", value)
        else:
            side.cipher.open(item["pk"]["S"], item["write_id"]["S"], value)
    chunks = [item for item in items if item["sk"]["S"] == CHUNK_SORT_KEY]
    markers = [item for item in items if item["sk"]["S"].startswith(MARKER_PREFIX)]
    assert {item["pk"]["S"].split("#")[1] for item in chunks} <= set(named)  # no orphaned chunk
    assert len(chunks) == sum(blob.chunks for blob in named.values())
    assert {item["sk"]["S"][len(MARKER_PREFIX) :] for item in markers} <= set(named)
    for item in chunks:
        if item["pk"]["S"].endswith("#0000"):
            blob = named[item["pk"]["S"].split("#")[1]]
            assert side.cipher.key_of(StoredValue(blob.encoding, bytes(item["data"]["B"]), blob.size)) == new_key


class Keys:
    """The test's keys: small values, large ones (with an older large version only in the history), and a
    protected sensitive key with two open proposals; what was acknowledged of each."""

    def __init__(self) -> None:
        prefix = f"secret:reenc-{uuid.uuid4().hex[:8]}:"
        self.inline = [f"{prefix}i{n:03d}" for n in range(INLINE_KEYS)]
        self.large = [f"{prefix}L{n}" for n in range(LARGE_KEYS)]
        self.protected = f"{prefix}protected"
        self.acknowledged: dict[str, Any] = {}
        self.history: dict[tuple[str, int], Any] = {}
        self.proposals: list[str] = []

    def seed(self, before: Side) -> None:
        for key in self.inline:
            before.put(key, small(key, 0))
            self.acknowledged[key] = self.history[key, 1] = small(key, 0)
        for key in self.large:
            for n in (0, 1):
                before.put(key, large(key, n))
                self.history[key, n + 1] = large(key, n)
            self.acknowledged[key] = large(key, 1)
            assert "blob_id" in before.item(key)
        for key in self.inline + self.large:
            before.manager.get(key)  # the cache holds the old key's ciphertext
        before.put(self.protected, {"card": "v1"})
        self.proposals = [
            before.approvals.propose(
                self.protected, "put", rule=RULE, proposer="alice", value={"card": "v2"}
            ).proposal_id,
            before.approvals.propose(
                self.protected, "patch", rule=RULE, proposer="carol", patch={"pin": "1"}
            ).proposal_id,
        ]

    def writer(self, side: Side, number: int, stop: threading.Event, lock: threading.Lock) -> None:
        round_ = 0
        while not stop.is_set() and round_ < MAX_ROUNDS:
            round_ += 1
            writes = [(key, small(key, round_)) for key in self.inline[number::WRITERS]]
            if number < LARGE_KEYS and round_ % LARGE_EVERY == 0:
                writes.append((self.large[number], large(self.large[number], round_ + 1)))
            for key, value in writes:
                side.manager.put(key, value, actor=f"writer-{number}")
                with lock:
                    self.acknowledged[key] = value

    def check_reads(self, reader: Side) -> None:
        for (key, version), value in self.history.items():
            assert reader.version(key, version) == value, (key, version)
        for key in self.inline + self.large:
            assert reader.current(key) == self.acknowledged[key], key  # no acknowledged write lost
        assert reader.approvals.get(self.protected, self.proposals[0]).value is not None
        reviewed, _, _ = reader.approvals.review(self.protected, self.proposals[1])
        assert json.loads(reviewed.patch or b"") == {"pin": "1"}


def run_with_writers(keys: Keys, side: Side, job: Side, new_key: str, raw_redis: Any) -> Progress:
    lock, stop = threading.Lock(), threading.Event()
    failures: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            keys.writer(side, number, stop, lock)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        progress = job.run(new_key, page_size=50, evict=lambda key: raw_redis.delete(entry_key(key)))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    return progress


def test_reencryption_with_large_values_history_and_proposals_while_eight_writers_run(
    state_table, redis_server, raw_redis, keys_arns
):
    old_key, new_key = keys_arns
    keys = Keys()
    keys.seed(Side(state_table, old_key, redis_server.url))

    # The new key is deployed first: writers from now on seal under it.
    writers, job = Side(state_table, new_key, redis_server.url), Side(state_table, new_key, redis_server.url)
    progress = run_with_writers(keys, writers, job, new_key, raw_redis)
    assert progress.done
    assert progress.blobs_reencrypted >= LARGE_KEYS  # at least the older large versions, only in the history
    assert progress.proposals_reencrypted == 2
    assert progress.unreadable == progress.blobs_unreadable == progress.proposals_unreadable == 0

    # The cache first, before the reads below fill it again: no entry under the old key.
    for key in keys.inline + keys.large:
        cached = raw_redis.hget(entry_key(key), "d")
        if cached:
            meta = json.loads(raw_redis.hget(entry_key(key), "m"))
            assert job.cipher.key_of(StoredValue(meta["encoding"], cached, meta["size"])) == new_key, key

    reader = Side(state_table, new_key, redis_server.url)
    keys.check_reads(reader)
    # The old blobs wait for the collection (it runs as the stream sees the key change, or the sweep).
    reader.collect()
    assert_nothing_under_the_old_key(reader, new_key)
    keys.check_reads(reader)
    decided, applied = reader.approvals.approve(keys.protected, keys.proposals[0], "bob")
    assert applied, (decided.status, decided.base_version, decided.current_version, decided.applied_version)
    assert reader.current(keys.protected) == {"card": "v2"}


def test_a_job_dying_between_new_chunks_and_the_switch_leaves_all_readable_and_a_resumed_run_no_orphan(
    state_table, redis_server, keys_arns
):
    old_key, new_key = keys_arns
    before = Side(state_table, old_key, redis_server.url)
    keys = [f"secret:crash-{uuid.uuid4().hex[:8]}-{n}" for n in range(3)]
    for key in keys:
        before.put(key, large(key, 0))
        before.put(key, large(key, 1))
    job = Side(state_table, new_key, redis_server.url)
    orphans: list[str] = []

    def die_once(name: str, **context: Any) -> None:
        if name == "reencrypt_before_switch" and context["kind"] == "blob" and not orphans:
            orphans.append(context["blob"])
            raise RuntimeError("the job died")

    checkpoints: list[dict[str, Any] | None] = []
    failpoints.install(die_once)
    try:
        with pytest.raises(RuntimeError, match="the job died"):
            job.run(new_key, page_size=2, checkpoint=lambda progress: checkpoints.append(progress.resume_from))
    finally:
        failpoints.uninstall()
    assert len(orphans) == 1
    assert has_chunks(job, orphans[0])  # written, named by nothing
    for key in keys:  # nothing unreadable meanwhile
        assert job.current(key) == large(key, 1)
        assert job.version(key, 1) == large(key, 0)

    resumed = job.run(new_key, start_from=checkpoints[-1] if checkpoints else None)
    assert resumed.done
    assert resumed.blobs_unreadable == 0
    collected = job.collect()
    assert orphans[0] in collected  # the dead run's chunks, through the existing collection
    assert_nothing_under_the_old_key(job, new_key)
    for key in keys:
        assert job.current(key) == large(key, 1)
        assert job.version(key, 1) == large(key, 0)


@pytest.mark.parametrize("write", ["put", "patch", "delete", "put-without-history"])
def test_a_write_during_the_switch_wins_and_the_history_still_moves(state_table, redis_server, keys_arns, write):
    old_key, new_key = keys_arns
    key = f"secret:race-{uuid.uuid4().hex[:8]}"
    before = Side(state_table, old_key, redis_server.url)
    if write == "put-without-history":
        before.manager.put(key, large(key, 0), actor="seed")  # the stream has not recorded it yet
    else:
        before.put(key, large(key, 0))
    writer = Side(state_table, new_key, redis_server.url)
    new_blobs: list[str] = []

    def concurrent_write(name: str, **context: Any) -> None:
        if name == "reencrypt_before_switch" and context["kind"] == "blob" and not new_blobs:
            new_blobs.append(context["blob"])
            if write == "delete":
                writer.manager.delete(key, actor="bob")
            elif write == "patch":
                writer.manager.patch(key, {"n": 7}, actor="bob")
            else:
                writer.manager.put(key, large(key, 9), actor="bob")

    failpoints.install(concurrent_write)
    try:
        progress = writer.run(new_key)
    finally:
        failpoints.uninstall()
    assert progress.done
    state = writer.item(key)
    assert state["updated_by"] == {"S": "bob"}  # the write won
    if write == "put-without-history":
        assert progress.blobs_raced == 1
        assert not has_chunks(writer, new_blobs[0])  # nobody's: deleted at once
        assert writer.current(key) == large(key, 9)
    else:
        # The history item still named the old blob: it moved; the state item's switch was refused.
        assert progress.blobs_reencrypted == 1
        assert progress.blob_items_switched == 1
        assert writer.version(key, 1) == large(key, 0)
        if write == "delete":
            assert state["deleted"] == {"BOOL": True}
        else:
            assert writer.current(key) == ({**large(key, 0), "n": 7} if write == "patch" else large(key, 9))
    writer.collect()
    assert_nothing_under_the_old_key(writer, new_key)
    if write != "put-without-history":
        assert writer.version(key, 1) == large(key, 0)


@pytest.mark.parametrize("when", ["during", "after"])
def test_a_proposal_approved_concurrently_with_its_reencryption(state_table, redis_server, keys_arns, when):
    old_key, new_key = keys_arns
    key = f"secret:approve-{uuid.uuid4().hex[:8]}"
    before = Side(state_table, old_key, redis_server.url)
    before.put(key, {"card": "v1"})
    proposal = before.approvals.propose(key, "put", rule=RULE, proposer="alice", value={"card": "v2"})
    approver = Side(state_table, new_key, redis_server.url)

    def approve_meanwhile(name: str, **context: Any) -> None:
        if name == "reencrypt_before_switch" and context["kind"] == "proposal":
            assert approver.approvals.approve(key, proposal.proposal_id, "bob")[1]

    if when == "during":
        failpoints.install(approve_meanwhile)
    try:
        progress = approver.run(new_key)
    finally:
        failpoints.uninstall()
    if when == "during":
        # The approval won: the job's re-seal was refused, the applied value is the proposed one.
        assert (progress.proposals_reencrypted, progress.proposals_raced) == (0, 1)
    else:
        assert (progress.proposals_reencrypted, progress.proposals_raced) == (1, 0)
        assert approver.approvals.approve(key, proposal.proposal_id, "bob")[1]
    assert approver.current(key) == {"card": "v2"}
    decided = approver.approvals.get(key, proposal.proposal_id)
    assert decided.status == "applied"
    # A decided proposal keeps its value: the next run moves it too, as its status no longer changes.
    again = approver.run(new_key)
    assert again.proposals_raced == 0
    assert again.proposals_reencrypted == (1 if when == "during" else 0)
    item = approver.dynamodb.get_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": proposal_sort_key(proposal.proposal_id)}}
    )["Item"]
    value = StoredValue(item["encoding"]["S"], bytes(item["value"]["B"]), int(item["value_size"]["N"]))
    assert approver.cipher.key_of(value) == new_key


@pytest.mark.parametrize("tamper", ["chunk", "blob"])
def test_another_blobs_chunk_or_blob_in_place_fails_loudly_and_the_job_leaves_it(
    state_table, redis_server, keys_arns, tamper
):
    old_key, new_key = keys_arns
    before = Side(state_table, old_key, redis_server.url)
    victim, other = (f"secret:tamper-{uuid.uuid4().hex[:8]}-{n}" for n in range(2))
    before.manager.put(victim, large(victim, 0), actor="seed")
    before.manager.put(other, large(other, 0), actor="seed")
    victim_ref, other_ref = (value_of_item(before.item(key))[1] for key in (victim, other))
    assert victim_ref is not None
    assert other_ref is not None
    if tamper == "chunk":
        # The other blob's first chunk (a valid envelope header, under the same key) copied over the victim's.
        chunk = before.dynamodb.get_item(
            TableName=state_table, Key={"pk": {"S": f"chunk#{other_ref.write_id}#0000"}, "sk": {"S": "chunk"}}
        )["Item"]
        before.dynamodb.put_item(
            TableName=state_table, Item={**chunk, "pk": {"S": f"chunk#{victim_ref.write_id}#0000"}}
        )
        expected: type[Exception] = CorruptStoredValue
    else:
        # The other key's whole blob reference (id, chunk count, checksum): the checksum holds, the binding not.
        before.dynamodb.update_item(
            TableName=state_table,
            Key={"pk": {"S": victim}, "sk": {"S": "state"}},
            UpdateExpression="SET blob_id = :id, blob_chunks = :chunks, blob_sha256 = :sha",
            ExpressionAttributeValues={
                ":id": {"S": other_ref.write_id},
                ":chunks": {"N": str(other_ref.chunks)},
                ":sha": {"S": other_ref.sha256},
            },
        )
        expected = DecryptionFailed
    job = Side(state_table, new_key, redis_server.url)
    with pytest.raises(expected):
        job.current(victim)
    progress = job.run(new_key)
    assert progress.blobs_unreadable == 1
    with pytest.raises(expected):  # still loud, never another value
        job.current(victim)
    assert job.current(other) == large(other, 0)


def test_the_command_reports_each_kind_and_fails_while_something_is_left(
    state_table, redis_server, keys_arns, tmp_path, capsys
):
    from scripts.reencrypt import main

    old_key, new_key = keys_arns
    before = Side(state_table, old_key, redis_server.url)
    key, broken = f"secret:cli-{uuid.uuid4().hex[:8]}", f"secret:cli-broken-{uuid.uuid4().hex[:8]}"
    before.put(key, large(key, 0))
    before.approvals.propose(key, "put", rule=RULE, proposer="alice", value={"card": "v2"})
    before.manager.put(broken, small(broken, 0), actor="seed")
    before.set_value(broken, before.item(broken)["value"]["B"][:-1] + b"!")  # one byte of the tag changed
    arguments = ["--table", state_table, "--key-id", new_key, "--checkpoint", str(tmp_path / "checkpoint.json")]

    assert main([*arguments, "--rate", "1000"]) == 1
    printed = capsys.readouterr().out
    assert "large values: 1 re-encrypted (2 items switched)" in printed
    assert "proposals: 1 re-encrypted" in printed
    assert "1 unreadable (left as they are)" in printed
    assert "not moved" in printed
    assert not (tmp_path / "checkpoint.json").exists()

    before.manager.put(broken, small(broken, 1), actor="seed")  # rewritten (under the old key, as a lagging writer)
    assert main([*arguments, "--rate", "1000"]) == 0
    assert "every sealed value" in capsys.readouterr().out
    after = Side(state_table, new_key, redis_server.url)
    after.collect()
    assert_nothing_under_the_old_key(after, new_key)
    assert after.current(key) == large(key, 0)
    assert after.current(broken) == small(broken, 1)


def history_value(side: Side, key: str, version: int) -> Any:
    """A history item's value as the read path opens it (also for the version that is current)."""
    entry = side.history.get(key, version)
    assert entry is not None
    assert entry.blob is not None
    value = side.store.load_blob(entry.blob)
    assert value is not None
    return json.loads(side.cipher.open(key, entry.write_id, value).canonical())


@pytest.mark.parametrize("state_moves", [False, True])
def test_a_history_item_written_again_from_the_stream_keeps_its_old_blob_until_a_run_moves_it(
    state_table, redis_server, keys_arns, state_moves
):
    old_key, new_key = keys_arns
    key = f"secret:again-{uuid.uuid4().hex[:8]}"
    before = Side(state_table, old_key, redis_server.url)
    before.put(key, large(key, 0))
    as_recorded = before.dynamodb.get_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "v#000000000001"}}, ConsistentRead=True
    )["Item"]
    job = Side(state_table, new_key, redis_server.url)
    assert job.run(new_key).blob_items_switched == 2
    # A retried publisher batch writes the version's history item again, as the stream record holds it: the
    # old blob, which the job left to the collection rather than deleting, so it still reads.
    job.dynamodb.put_item(TableName=state_table, Item=as_recorded)
    assert history_value(job, key, 1) == large(key, 0)

    def moves_meanwhile(name: str, **context: Any) -> None:
        if name == "reencrypt_before_switch" and context["kind"] == "blob":
            failpoints.uninstall()
            job.manager.put(key, small(key, 1), actor="bob")

    if state_moves:
        failpoints.install(moves_meanwhile)
    try:
        progress = job.run(new_key)
    finally:
        failpoints.uninstall()
    state_blob = job.item(key).get("blob_id", {}).get("S")
    history_blob = job.dynamodb.get_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "v#000000000001"}}, ConsistentRead=True
    )["Item"]["blob_id"]["S"]
    if state_moves:
        # The state took another value as the history item was to take its blob: refused, left for a run.
        assert (progress.blobs_reencrypted, progress.blobs_raced) == (0, 1)
        assert history_blob == as_recorded["blob_id"]["S"]
        again = job.run(new_key)  # now an ordinary move to a new blob
        assert (again.blobs_reencrypted, again.blob_items_switched) == (1, 1)
    else:
        # It takes the blob the state item already names for that write: one blob a version.
        assert (progress.blobs_reencrypted, progress.blob_items_switched) == (1, 1)
        assert history_blob == state_blob
    job.collect()
    assert_nothing_under_the_old_key(job, new_key)
    assert history_value(job, key, 1) == large(key, 0)
