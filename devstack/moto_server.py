"""An embedded moto server that serves one request at a time, the table's first.

Why serialize: moto keeps no per-request locks. Concurrent conditional writes can
both pass their condition, and a failing TransactWriteItems restores a stale copy
of the whole table over writes that other threads made meanwhile (acknowledged
writes vanish). DynamoDB itself gives neither anomaly, so the local stack wraps
moto's WSGI app in a lock held for the whole request, including producing and
closing the response body. Throughput is not the point of the emulator; behaving like DynamoDB is.

Why the table's requests go first: the emulator serves every service in one process, so a lock holder's
DynamoDB write queued behind the stream poller's GetRecords, EventBridge's PutEvents and Secrets Manager
reads, none of which DynamoDB itself would ever wait for; measured under 64 concurrent PATCHes, those held
the emulator for about half its busy time. Letting them run beside the table's requests instead (a lock
per service) made the write slower in a trial (median 28 ms against 18 ms queued and served): moto's
threads share one interpreter lock, so a write shared the CPU with them rather than waiting for one of
them to finish. So requests stay one at a time, and of those waiting, the table's go first.

moto's own server answers any web page's cross-origin request (it enables CORS for every origin), so a
page the developer opens could read or reset the local data: this one answers only this machine
(devstack/loopback.py) and sends no CORS headers.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from werkzeug.serving import BaseWSGIServer, make_server

from devstack.gc_pauses import freeze_survivors_of_full_collections
from devstack.loopback import LoopbackOnlyMiddleware

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# The table's own requests go first: of the requests waiting for the emulator, DynamoDB's are served
# before any of its stream's or another service's.
FIRST_TARGET_PREFIX = "DynamoDB_20120810."
TRACE_VARIABLE = "STATE_EMULATOR_TRACE"
PROFILE_VARIABLE = "STATE_EMULATOR_PROFILE"
LISTEN_BACKLOG = 4096


def goes_first(environ: Mapping[str, Any]) -> bool:
    """Whether a request is one of the table's own (`DynamoDB_20120810.PutItem`, not the stream's
    `DynamoDBStreams_20120810.GetRecords`)."""
    return str(environ.get("HTTP_X_AMZ_TARGET") or "").startswith(FIRST_TARGET_PREFIX)


class PriorityLock:
    """A lock whose urgent waiters are granted it before the others (in no order among themselves)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held = False
        self._urgent_waiting = 0
        self.waiting = 0

    def acquire(self, *, urgent: bool) -> None:
        with self._changed:
            self._urgent_waiting += urgent
            self.waiting += 1
            try:
                while self._held or (not urgent and self._urgent_waiting):
                    self._changed.wait()
            finally:
                self._urgent_waiting -= urgent
                self.waiting -= 1
            self._held = True

    def release(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    @property
    def held(self) -> bool:
        return self._held


class RequestTrace:
    """A JSON line per request, for finding where the emulator's time goes (`STATE_EMULATOR_TRACE=<file>`):
    `{"at": <epoch s at the end>, "target": "DynamoDB_20120810.UpdateItem", "queued_ms", "served_ms"}`, and for
    the table's requests its name and the head of its expression (`"table"`, `"expression"`: which of the
    service's writes or reads it is; placeholders only, never a value)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115  # open for the server's life
        self._lock = threading.Lock()

    @staticmethod
    def look_into(environ: dict[str, Any]) -> dict[str, str]:
        """The table and expression of a DynamoDB request; its body is read, and put back for moto to read."""
        if not goes_first(environ):
            return {}
        import io

        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            request = json.loads(body)
        except ValueError:
            return {}
        if not isinstance(request, dict):
            return {}
        expression = next(
            (str(request[name]) for name in ("UpdateExpression", "KeyConditionExpression") if name in request), ""
        )
        return {"table": str(request.get("TableName", "")), "expression": expression[:40]}

    def record(self, environ: Mapping[str, Any], arrived: float, entered: float, seen: dict[str, str]) -> None:
        done = time.perf_counter()
        line = json.dumps(
            {
                "at": round(time.time(), 4),
                "target": str(environ.get("HTTP_X_AMZ_TARGET") or environ.get("PATH_INFO") or ""),
                "queued_ms": round((entered - arrived) * 1000, 2),
                "served_ms": round((done - entered) * 1000, 2),
                **seen,
            }
        )
        with self._lock:
            self._file.write(line + "\n")


class RequestProfile:
    """Where the emulator's time goes, by function (`STATE_EMULATOR_PROFILE=<file>`): the stack of the request
    being served, sampled every few milliseconds, written when the server stops as collapsed stacks (one line
    per stack, `outer;...;inner <microseconds>`: what flamegraph.pl and speedscope read).

    A sampler rather than cProfile: since Python 3.12 cProfile counts every thread at once (sys.monitoring),
    so the hundreds of threads waiting for their turn drowned out the one request being served; this samples
    the one thread holding the lock. A sample is taken when the sampler gets the interpreter lock, which a
    request's thread gives up at once for a system call and only at the switch interval otherwise: so each
    sample counts the microseconds since the previous one, and the switch interval is made shorter than the
    sampler's, else the stacks that make system calls would be counted several times over."""

    INTERVAL_SECONDS = 0.004

    def __init__(self, path: str) -> None:
        from collections import Counter

        self._path = path
        self._serving: int | None = None
        self.samples: Counter[str] = Counter()
        self._stopped = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="emulator-profile", daemon=True)
        sys.setswitchinterval(self.INTERVAL_SECONDS / 4)
        self._sampler.start()

    def enable(self) -> None:
        self._serving = threading.get_ident()

    def disable(self) -> None:
        self._serving = None

    def _sample(self) -> None:
        previous = time.perf_counter()
        while not self._stopped.wait(self.INTERVAL_SECONDS):
            serving = self._serving
            frame = None if serving is None else sys._current_frames().get(serving)
            now = time.perf_counter()
            elapsed, previous = now - previous, now
            names: list[str] = []
            while frame is not None:
                code = frame.f_code
                names.append(f"{Path(code.co_filename).stem}.{code.co_qualname}")
                frame = frame.f_back
            if names:
                self.samples[";".join(reversed(names))] += round(elapsed * 1_000_000)

    def dump(self) -> None:
        self._stopped.set()
        self._sampler.join(timeout=5)
        with open(self._path, "w") as out:
            for stack, count in self.samples.most_common():
                out.write(f"{stack} {count}\n")


class SerializingMiddleware:
    """WSGI middleware that lets one request at a time into the wrapped app, the table's first."""

    def __init__(self, app: WSGIApp, trace: RequestTrace | None = None, profile: RequestProfile | None = None) -> None:
        self._app = app
        self._trace = trace
        self.profile = profile
        self.lock = PriorityLock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        arrived = time.perf_counter()
        seen = RequestTrace.look_into(environ) if self._trace is not None else {}
        self.lock.acquire(urgent=goes_first(environ))
        entered = time.perf_counter()
        if self.profile is not None:
            self.profile.enable()
        try:
            # The whole body is produced, and closed, inside the lock; the lock goes before it is sent. Held until
            # the server closed the body, it waited for the client to read it, and it leaked when werkzeug skipped
            # the close: a client that reset its connection (a botocore read timeout under load) made werkzeug's
            # draining of the request raise first, and every later request waited for ever.
            result = self._app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            if self.profile is not None:
                self.profile.disable()
            self.lock.release()
        if self._trace is not None:
            self._trace.record(environ, arrived, entered, seen)
        return [body]


def build_app() -> SerializingMiddleware:
    # Imported here: moto's server modules are heavy and only the emulator needs them.
    from moto.dynamodb import responses as dynamodb_responses
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    # DynamoDB takes up to 100 items in a transaction; moto still refuses more than the 25 AWS allowed once.
    dynamodb_responses.TRANSACTION_MAX_ITEMS = 100
    answer_get_records_as_json()
    answer_item_operations_as_json()
    copy_each_table_once_per_transaction()
    parse_each_event_path_once()
    list_moto_modules_once()
    query_one_partition()
    send_to_a_queue_without_counting_it()
    parse_each_expression_once()
    copy_expressions_without_pickling()
    trace_path = os.environ.get(TRACE_VARIABLE)
    trace = RequestTrace(trace_path) if trace_path else None
    profile_path = os.environ.get(PROFILE_VARIABLE)
    profile = RequestProfile(profile_path) if profile_path else None
    return SerializingMiddleware(DomainDispatcherApplication(create_backend_app), trace, profile)


def answer_get_records_as_json() -> None:
    """Make moto answer the stream's GetRecords with the records' JSON as they are stored.

    moto keeps each stream record as the JSON it answers with, then walks it member by member through its
    generic, model-driven serializer: about 1.3 ms of CPU per record, so one poll of 100 records kept the
    emulator (and every DynamoDB request queued behind it) busy for over 100 ms. Its DynamoDB handler
    answers with `json.dumps` of the same kind of data; this answers GetRecords the same way, with the same
    JSON (tests/devstack/test_emulator.py compares the two)."""
    from moto.core.utils import get_service_model
    from moto.dynamodb.models.utilities import dynamo_json_dump
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    # With the answer's Content-Type, as moto's serializer sends it (a bare string body would go as text/html).
    model = get_service_model("dynamodbstreams")
    headers = {"Content-Type": f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.0')}"}

    def get_records(self: DynamoDBStreamsHandler) -> tuple[int, dict[str, str], str]:
        limit = self._get_param("Limit")
        result = self.backend.get_records(self._get_param("ShardIterator"), 1000 if limit is None else limit)
        return 200, dict(headers), dynamo_json_dump(result)

    DynamoDBStreamsHandler.get_records = get_records  # type: ignore[assignment,method-assign]


# What moto answers through its model-driven serializer, among the table's reads and writes: their answers
# are plain JSON-shaped data already.
ITEM_OPERATIONS = (
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Query",
    "Scan",
    "BatchGetItem",
    "BatchWriteItem",
    "TransactWriteItems",
    "TransactGetItems",
)


def _as_is(value: Any) -> Any:
    return value


def _capacity(value: Any) -> Any:
    """A ConsumedCapacity as the serializer writes it: every number of one is a double in the model, and moto
    counts some as integers (BatchGetItem's)."""
    if isinstance(value, dict):
        return {key: _capacity(inner) for key, inner in value.items() if inner is not None}
    if isinstance(value, list):
        return [_capacity(inner) for inner in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _no_metrics(value: Any) -> Any:
    # moto's writes answer with no item collection metrics; others would need the model's doubles.
    if value != {}:
        raise LookupError("item collection metrics")
    return value


# How the serializer writes each member of the item operations' answers that moto fills.
ITEM_ANSWER_MEMBERS: dict[str, Callable[[Any], Any]] = {
    # Attribute values, or what holds only them and strings: what the serializer writes is the data itself.
    "Item": _as_is,
    "Attributes": _as_is,
    "Items": _as_is,
    "LastEvaluatedKey": _as_is,
    "Responses": _as_is,
    "UnprocessedKeys": _as_is,
    "UnprocessedItems": _as_is,
    "Count": int,
    "ScannedCount": int,
    "ConsumedCapacity": _capacity,
    "ItemCollectionMetrics": _no_metrics,
}


def _blob(value: Any) -> str:
    if not isinstance(value, bytes):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return base64.b64encode(value).decode("ascii")


def answer_item_operations_as_json() -> None:
    """Make moto answer DynamoDB's item operations (`ITEM_OPERATIONS`) with `json.dumps` of their result.

    moto walks every answer member by member through its generic, model-driven serializer (for each member of the
    output shape, a search of the result under several aliases), down to each attribute of each item: about 18% of
    the emulator's time under the watch's load. Served with `json.dumps`, a GetItem of a 20-attribute item took a
    median 0.6-1.0 ms instead of 2.2-2.3, a Query of ten items 1.5 ms instead of 8.6-9.4 (a conditional UpdateItem,
    which answers with little, 1.6-2.1 ms instead of 2.1-2.2). The result of an item operation is already the
    JSON-shaped data the serializer ends with: attribute values as `{type: value}` (numbers as strings, blobs as
    bytes), counts as integers. What the serializer does to it, this does (`ITEM_ANSWER_MEMBERS`): it keeps the
    members of the operation's output shape alone (DeleteItem's result has one that is not), base64-encodes blobs,
    makes capacities doubles, answers with the operation's status and Content-Type. A result with a member this does
    not know, and every error, goes through moto's serializer as before (tests/devstack/test_emulator.py compares
    the answers with moto's own)."""
    from moto import settings
    from moto.core.utils import get_service_model
    from moto.dynamodb.responses import DynamoHandler

    if getattr(DynamoHandler.serialized, "answers_as_json", False):
        return
    serialized = DynamoHandler.serialized
    model = get_service_model("dynamodb")
    content_type = f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.0')}"
    answered: dict[str, tuple[int, frozenset[str]]] = {}
    for name in ITEM_OPERATIONS:
        operation = model.operation_model(name)
        output: Any = operation.output_shape
        answered[name] = (int(operation.http.get("responseCode", 200)), frozenset(output.members))

    def as_json(self: DynamoHandler, action_result: Any) -> Any:
        answer = answered.get(self._get_action())
        result = action_result.result
        if answer is None or not isinstance(result, dict):
            return serialized(self, action_result)
        status, shape_members = answer
        try:
            kept = {
                name: ITEM_ANSWER_MEMBERS[name](value)
                for name, value in result.items()
                if value is not None and name in shape_members
            }
        except LookupError:  # a member, or a value of one, that only moto's serializer knows how to write
            return serialized(self, action_result)
        body = json.dumps(kept, default=_blob, indent=4 if settings.PRETTIFY_RESPONSES else None)
        headers = {"Content-Type": content_type}
        headers.update(self.response_headers)
        return status, headers, body

    as_json.answers_as_json = True  # type: ignore[attr-defined]
    DynamoHandler.serialized = as_json  # type: ignore[method-assign,assignment]


def copy_each_table_once_per_transaction() -> None:
    """Make moto back up each table a transaction writes once, not once per item.

    Before applying a TransactWriteItems, moto deep-copies the table of every one of its items, to put back if
    one fails; the copies of one table are the same snapshot, and only the last is kept. A 25-item transaction
    copied the table 25 times: over a table the test suite had filled, long enough for the service's DynamoDB
    timeout. Each table is now copied once per transaction, which restores exactly what it restored before
    (tests/devstack/test_emulator.py fails transactions over concurrent writes), and its stream's records,
    which never change, are shared rather than copied."""
    import copy

    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    if getattr(models.DynamoDBBackend.transact_write_items, "copies_each_table_once", False):
        return
    transact_write_items = models.DynamoDBBackend.transact_write_items

    class OncePerTable:
        """`copy` as moto's module sees it during one transaction."""

        def __init__(self) -> None:
            self.copies: dict[int, Table] = {}

        def deepcopy(self, value: Any, memo: dict[int, Any] | None = None) -> Any:
            if not isinstance(value, Table):
                return copy.deepcopy(value, memo)
            if id(value) not in self.copies:
                # The stream's records are snapshots taken when written and never change: the backup shares
                # them (a list of its own, so a rollback still drops what the failed transaction appended).
                # Deep-copied, every record the session's tests ever wrote made each transaction slower.
                shard = getattr(value, "stream_shard", None)
                shared = {} if shard is None else {id(shard.items): list(shard.items)}
                self.copies[id(value)] = copy.deepcopy(value, shared)
            return self.copies[id(value)]

    def copying_once(self: models.DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        # One transaction at a time: the emulator serves one request at a time.
        models.copy = OncePerTable()  # type: ignore[attr-defined,assignment]
        try:
            transact_write_items(self, transact_items)
        finally:
            models.copy = copy  # type: ignore[attr-defined]

    copying_once.copies_each_table_once = True  # type: ignore[attr-defined]
    models.DynamoDBBackend.transact_write_items = copying_once  # type: ignore[method-assign]


def parse_each_event_path_once() -> None:
    """Make moto compile each JSONPath of an EventBridge target's input once, not once per event and path.

    Before sending an event to a rule's target, moto builds it from a template of eight JSONPaths, and it
    compiled each with a new jsonpath-ng parser, which generates its grammar's tables every time: about 30 ms of
    CPU per event, so a PutEvents of 10 held the emulator (and the table's requests waiting) for 300 ms. The
    compiled paths are kept; what they find is the same (tests/devstack/test_emulator.py compares the messages
    with moto's own)."""
    import functools

    from jsonpath_ng import ext

    # moto imports `parse` from this module at each call, so the cached one is what it gets. (Through the
    # module's namespace: the package does not re-export `parse` as far as its types say.)
    namespace = vars(ext)
    if not hasattr(namespace["parse"], "cache_info"):
        namespace["parse"] = functools.lru_cache(maxsize=256)(namespace["parse"])


def list_moto_modules_once() -> None:
    """Make moto list its own service packages once, not at every request, and the handlers' methods once per
    class.

    To tell whether a request's host names a service, moto lists its package's folder and stats each of its
    ~270 entries, at every request: about a fifth of the emulator's time under the watch's load, spent in
    system calls. It also lists a handler class's methods (inspect.getmembers) at every request. Neither
    changes while the server runs; the answers are the same lists."""
    import functools

    from moto import backends
    from moto.core import responses

    if hasattr(backends.list_of_moto_modules, "cache_info"):
        return
    listing = backends.list_of_moto_modules

    @functools.lru_cache(maxsize=1)
    def listed() -> tuple[str, ...]:
        return tuple(listing())

    backends.list_of_moto_modules = listed
    # Through the module's namespace: moto's responses module imports the function without re-exporting it.
    namespace = vars(responses)
    namespace["method_names_from_class"] = functools.lru_cache(maxsize=None)(namespace["method_names_from_class"])


def query_one_partition() -> None:
    """Make moto's Query of a table (not of an index) read the one partition it names.

    moto gathers every item of the table, sorts them all by hash and range key, then keeps those of the
    partition: a Query cost what the whole table holds, compared DynamoType by DynamoType (each comparison
    makes Decimal or set values anew). Under the watch's load, where every fan-out reads a few index partitions
    and every replay a key's history, the tables grew to thousands of items and every Query with them. For a
    Query of the table itself, the gathering now yields the partition alone (already in range key order, which
    is the order moto then sorts it in); the rest of moto's Query (key condition, paging, filter, projection,
    limits) runs as it did, on the same items in the same order (tests/devstack/test_emulator.py compares the
    answers with moto's own)."""
    from moto.dynamodb.models.table import Table

    if getattr(Table.query, "reads_one_partition", False):
        return
    query = Table.query

    def one_partition(self: Table, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
        if index_name or hash_key is None:
            return query(self, hash_key, *args, **kwargs)
        # DynamoType hashes and compares by type and value, so the partition's dict finds the items whose hash
        # key equals `hash_key`: those moto's filter keeps.
        found = self.items.get(hash_key)
        if found is None:
            items = []
        elif self.range_key_attr:
            items = sorted(found.values(), key=lambda item: item.range_key.cast_value)
        else:
            items = [found]
        self.all_items = lambda: items  # type: ignore[method-assign]  # for this call only: one at a time
        try:
            return query(self, hash_key, *args, **kwargs)
        finally:
            del self.all_items

    one_partition.reads_one_partition = True  # type: ignore[attr-defined]
    Table.query = one_partition  # type: ignore[method-assign]


def send_to_a_queue_without_counting_it() -> None:
    """Make moto's SendMessage (EventBridge's delivery to a rule's queue among them) stop counting the queue's
    messages.

    To read one attribute of the queue (ContentBasedDeduplication), moto's SendMessage builds all of them,
    among them three message counts, each a pass over every message in the queue with two clock reads per
    message. Nothing consumes the state-changes queue of the local stack unless a test does, so every event
    the service published made the next one slower: under the full-size watch load a PutEvents of ten took
    75-160 ms. While a message is sent, the counts are 0: what SendMessage reads of the attributes is the
    same (tests/devstack/test_emulator.py compares the queue's messages and attributes with moto's own)."""
    from moto.sqs import models

    if getattr(models.SQSBackend.send_message, "counts_no_messages", False):
        return
    sending = threading.local()
    send_message = models.SQSBackend.send_message

    def without_counting(self: models.SQSBackend, *args: Any, **kwargs: Any) -> Any:
        sending.active = True
        try:
            return send_message(self, *args, **kwargs)
        finally:
            sending.active = False

    for name in (
        "approximate_number_of_messages",
        "approximate_number_of_messages_delayed",
        "approximate_number_of_messages_not_visible",
    ):
        counted = getattr(models.Queue, name)

        def count(queue: models.Queue, counted: property = counted) -> int:
            return 0 if getattr(sending, "active", False) else int(counted.fget(queue))  # type: ignore[misc]

        setattr(models.Queue, name, property(count))
    without_counting.counts_no_messages = True  # type: ignore[attr-defined]
    models.SQSBackend.send_message = without_counting  # type: ignore[method-assign]


def parse_each_expression_once() -> None:
    """Make moto parse each update expression, and split each condition expression into tokens, once.

    An UpdateItem parsed its update expression twice and its condition expression twice, each time from the
    text: about a third of moto's CPU for the watch fan-out's claims, and over 2 ms for a state write's
    twenty-clause expression. The parsed update expression is only read (moto validates and applies a deep
    copy of it), and the tokens of a condition are immutable; both depend on the text alone, so they are kept
    per text. What moto then does with them (placeholders, values, the item) is as before; an expression it
    refuses is refused again every time (tests/devstack/test_emulator.py compares the answers with moto's own).
    """
    import functools
    import importlib
    from collections import deque

    from moto.dynamodb.comparisons import ConditionExpressionParser

    # Through the module: it is not typed as exporting its parsers.
    UpdateExpressionParser: Any = vars(importlib.import_module("moto.dynamodb.parsing.expressions"))[
        "UpdateExpressionParser"
    ]
    if getattr(ConditionExpressionParser._lex_condition_expression, "parses_once", False):
        return
    make = vars(UpdateExpressionParser)["make"].__func__
    parsed = functools.lru_cache(maxsize=1024)(lambda text: make(UpdateExpressionParser, text))

    def make_once(cls: type, text: str) -> Any:
        return parsed(text) if cls is UpdateExpressionParser else make(cls, text)

    UpdateExpressionParser.make = classmethod(make_once)

    lex = ConditionExpressionParser._lex_condition_expression
    tokens: dict[str, tuple[Any, ...]] = {}

    def lex_once(self: ConditionExpressionParser) -> deque[Any]:
        text = self.condition_expression or ""
        if text not in tokens:
            if len(tokens) >= 1024:
                tokens.clear()
            tokens[text] = tuple(lex(self))
        return deque(tokens[text])

    lex_once.parses_once = True  # type: ignore[attr-defined]
    ConditionExpressionParser._lex_condition_expression = lex_once  # type: ignore[method-assign]


def copy_expressions_without_pickling() -> None:
    """Make moto deep-copy a parsed update expression attribute by attribute, as it does its items.

    moto validates a deep copy of the expression at every UpdateItem (it rewrites the copy as it resolves it);
    through copy's generic protocol (`__reduce_ex__`, then rebuilding each node), copying a state write's
    expression took longer than parsing it. The nodes are plain objects: a new one of the same class with
    each attribute deep-copied is what the protocol builds, without its detours."""
    import copy
    import importlib

    node: Any = vars(importlib.import_module("moto.dynamodb.parsing.ast_nodes"))["Node"]
    if "__deepcopy__" in vars(node):
        return

    def deepcopy(self: Any, memo: dict[int, Any]) -> Any:
        kind: Any = type(self)
        new = kind.__new__(kind)
        memo[id(self)] = new
        new.__dict__.update({name: copy.deepcopy(value, memo) for name, value in vars(self).items()})
        return new

    node.__deepcopy__ = deepcopy
    # And each of its validation passes, at every node of the expression, built the map of what it processes
    # to ask which kinds of node those are: always the same kinds for the same pass.
    traverser: Any = vars(importlib.import_module("moto.dynamodb.parsing.ast_nodes"))["DepthFirstTraverser"]
    kinds_of = traverser.nodes_to_be_processed
    kinds: dict[type, tuple[type, ...]] = {}

    def nodes_to_be_processed(self: Any) -> tuple[type, ...]:
        found = kinds.get(type(self))
        if found is None:
            found = kinds[type(self)] = kinds_of(self)
        return found

    traverser.nodes_to_be_processed = nodes_to_be_processed
    answer_kinds_by_type(traverser, node)
    search_clauses_by_type(node)


def answer_kinds_by_type(traverser: Any, node: Any) -> None:
    """Make moto's validation passes decide what a node is once per kind of node, not once per node.

    Each pass asked of every node of the expression whether it is a node, and whether it is one of the kinds
    the pass processes: `isinstance` against moto's abstract node classes, which goes through `ABCMeta`'s
    hook every time: with the pass below, a quarter of the emulator's time for the watch's claims and the
    state writes. The answer depends on the node's class and the pass's class alone, so it is kept per pair; the walk
    (children first, then the node, the processed node put back in its parent) is moto's own."""
    is_node: dict[type, bool] = {}
    processed: dict[tuple[type, type], type | None] = {}

    def processor_kind(self: Any, kind: type) -> type | None:
        pair = (type(self), kind)
        if pair not in processed:
            # The first kind of the pass's map that this one is, as moto's `process` picks it.
            processed[pair] = next((k for k in self._processing_map() if issubclass(kind, k)), None)
        return processed[pair]

    def traverse_node_recursively(self: Any, node_: Any, child_id: int = -1) -> Any:
        kind = type(node_)
        if kind not in is_node:
            is_node[kind] = issubclass(kind, node)
        if not is_node[kind]:
            return node_
        parent_node = node_.parent
        if node_.children is not None:
            for i, child_node in enumerate(node_.children):
                self.pre_processing_of_child(node_, i)
                self.traverse_node_recursively(child_node, i)
        handled = processor_kind(self, kind)
        if handled is not None:
            node_ = self._processing_map()[handled](node_)
            node_.parent = parent_node
            if parent_node:
                parent_node.children[child_id] = node_
        return node_

    traverser.traverse_node_recursively = traverse_node_recursively


def search_clauses_by_type(node: Any) -> None:
    """The same for the pass counting the SET, REMOVE and ADD clauses of an expression, which asks every
    node of it for its clauses three times: the search asked each node it passed whether it is an expression
    or a function, through `ABCMeta`'s hook. Decided once per kind of node; the search is moto's own."""
    import importlib

    ast_nodes = importlib.import_module("moto.dynamodb.parsing.ast_nodes")
    searched = (vars(ast_nodes)["Expression"], vars(ast_nodes)["UpdateExpressionFunction"])
    descends: dict[type, bool] = {}

    def find_clauses(self: Any, clause_types: Any) -> list[Any]:
        clauses: list[Any] = []
        for child in self.children or []:
            kind = type(child)
            if kind in clause_types:
                clauses.append(child)
                continue
            if kind not in descends:
                descends[kind] = issubclass(kind, searched)
            if descends[kind]:
                clauses.extend(child.find_clauses(clause_types))
        return clauses

    node.find_clauses = find_clauses


class SerializedMotoServer:
    """moto in a background thread on 127.0.0.1, one request at a time."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._app: SerializingMiddleware | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("call start() first")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> SerializedMotoServer:
        import logging

        from moto.moto_server.werkzeug_app import MotoRequestHandler

        # werkzeug logs every emulator request at INFO: noise next to the functions' logs.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

        self._app = build_app()
        app = LoopbackOnlyMiddleware(self._app, port=lambda: self.port)
        self._server = make_server(self._host, self._port, app, threaded=True, request_handler=MotoRequestHandler)
        # werkzeug listens with a backlog of 128 and closes every connection after its answer, so each request
        # is a new connection; under the watch's load (the fan-out's 32 threads, eight workers per function)
        # connections arrived faster than the server's one accepting thread took them, and clients were
        # refused. Within the system's own limit, they now wait to be accepted.
        self._server.socket.listen(LISTEN_BACKLOG)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._app is not None and self._app.profile is not None:
            self._app.profile.dump()
        self._server = None
        self._thread = None

    def __enter__(self) -> SerializedMotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoProcess:
    """The serialized moto server in a process of its own (`python -m devstack.moto_server`).

    The local stack's gateway, stream poller and TTL sweeper are Python threads of one process; moto beside
    them would share their interpreter lock, and every emulated DynamoDB call (a lock holder's write among
    them) would wait for the gateway's work on dozens of open requests. As a process of its own it runs on
    its own, as DynamoDB does apart from API Gateway. It exits with its parent, even a killed one.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self._host = host
        self._port = port
        self._log_path = log_path
        self._process: subprocess.Popen[str] | None = None
        self._endpoint_url = ""

    @property
    def endpoint_url(self) -> str:
        if not self._endpoint_url:
            raise RuntimeError("call start() first")
        return self._endpoint_url

    def start(self, timeout: float = 60.0) -> MotoProcess:
        log: IO[str] | int = open(self._log_path, "a") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        command = [sys.executable, "-m", "devstack.moto_server", "--port", str(self._port), "--host", self._host]
        self._process = subprocess.Popen(
            [*command, "--exit-with-parent"],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            # A session of its own: Ctrl-C in `make dev`'s terminal, or a stop signal to the stack's process
            # group, would stop it at once, before the stack's own stop ran the WebSocket connections'
            # $disconnect, which then found no emulator. It stops when told, or when its parent is gone.
            start_new_session=True,
        )
        if not isinstance(log, int):
            log.close()  # the child has its own copy
        banner = self._process.stdout
        assert banner is not None
        ready = threading.Event()
        lines: list[str] = []

        def read_banner() -> None:
            for line in banner:  # drained to the end, so the child never blocks on a full pipe
                if not ready.is_set():
                    lines.append(line)
                    ready.set()

        threading.Thread(target=read_banner, name="moto-banner", daemon=True).start()
        if not ready.wait(timeout) or not lines or " on http://" not in lines[0]:
            self.stop()
            raise RuntimeError(f"moto did not start (see {self._log_path or 'its stderr'})")
        self._endpoint_url = lines[0].rsplit(" on ", 1)[1].strip()
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None


def _exit_with(parent: int, stopped: threading.Event) -> None:
    """Stop once `parent` is gone (re-parented children see another parent id)."""
    while not stopped.wait(0.5):
        if os.getppid() != parent:
            stopped.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto server that serves one request at a time")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process is gone")
    args = parser.parse_args(argv)
    parent = os.getppid()
    server = SerializedMotoServer(port=args.port, host=args.host).start()
    freeze_survivors_of_full_collections()  # after moto's imports: they are never walked again
    print(f"moto (serialized) listening on {server.endpoint_url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    if args.exit_with_parent:
        threading.Thread(target=_exit_with, args=(parent, stopped), daemon=True).start()
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
