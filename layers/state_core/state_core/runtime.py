"""Composition root: settings, clients, stores and services, each built once per container.

Nothing here runs at import: the first invocation builds what it needs, so tests (and the local stack)
can point the environment at their emulator before any client exists. Each builder is cached
(`functools.cache`), so every part is built once and shared: one botocore session, one DynamoDB client,
one StateStore (and its BlobStore), one HistoryStore for the history reader and the stream publisher
(its only writer) alike. What only some functions need (Redis, the history reader, the stream's parts) is
imported inside its builder, so a handler's cold start pays only for what it uses; their types are
imported for the checker alone.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import botocore.session
from botocore.config import Config

from state_core import deadline, failpoints
from state_core.config import AuthorizerSettings, PublisherSettings, ServiceSettings, WatchSettings
from state_core.observability import logger, metrics
from state_core.security.policy import DEFAULT_POLICY_FILE, RolePolicy, load_role_policy
from state_core.service.manager import PatchPolicy, StateManager
from state_core.storage.state import StateStore

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_secretsmanager.client import SecretsManagerClient
    from mypy_boto3_sqs.client import SQSClient

    from state_core.cache.link import RedisLink
    from state_core.cache.state_cache import RedisStateCache
    from state_core.domain.ports import ListIndex, ValueCipher
    from state_core.security.tokens import VerifiedToken
    from state_core.service.approvals import Approvals
    from state_core.service.history import HistoryReader
    from state_core.service.listing import KeyLister
    from state_core.service.schemas import SchemaRegistry
    from state_core.service.transactions import Transactions
    from state_core.service.waiting import ChangeWaiter
    from state_core.service.watch import WatchService
    from state_core.storage.blobs import BlobStore
    from state_core.storage.history import HistoryStore
    from state_core.stream.publisher import ChangePublisher
    from state_core.stream.repair import CacheRepairer

# botocore's default 60 s read timeout would turn a slow table into an API Gateway timeout (30 s):
# fail fast, let standard-mode retries (with their own backoff and retry quota) absorb blips, then 503.
# Reads and the idempotent puts (history, blobs) retry any transient failure; the state item's conditional
# write retries only failures that prove it was not applied (StateStore installs that hook on the client).
# `total_max_attempts` counts the first attempt; botocore reads a bare `max_attempts` as retries after it
# (3 meant 4 attempts and up to 3 s more of backoff; the throttling failpoint test pins this at 3).
DYNAMODB_CONFIG = Config(
    connect_timeout=1,
    read_timeout=2,
    retries={"mode": "standard", "total_max_attempts": 3},
    tcp_keepalive=True,
)
# What one more DynamoDB attempt may need of the invocation's time (deadline.guard): connect + read
# timeouts, the longest backoff before the attempt after it (standard mode: up to 2 s before the third),
# and a little to answer the client.
DYNAMODB_ATTEMPT_BUDGET_SECONDS = 1 + 2 + 2 + 0.3


# The publisher's calls: short timeouts, botocore's standard retries for throttling and 5xx; entries
# EventBridge refuses one by one are retried by the publisher itself (PublishPolicy).
EVENTS_CONFIG = Config(
    connect_timeout=2,
    read_timeout=5,
    retries={"mode": "standard", "total_max_attempts": 3},
    tcp_keepalive=True,
)


# KMS: GenerateDataKey and Decrypt only, at most once per data key per container (the envelope caches them).
KMS_CONFIG = Config(connect_timeout=1, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 3})


# @connections: the poster retries throttling itself (storage/connections.py); botocore's retries on top would
# multiply the attempts of a post that holds up the rest of its connection's changes.
CONNECTIONS_CONFIG = Config(connect_timeout=1, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 1})


def utc_now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------------ settings
@functools.cache
def service_settings() -> ServiceSettings:
    return ServiceSettings.from_environ(os.environ)


@functools.cache
def publisher_settings() -> PublisherSettings:
    return PublisherSettings.from_environ(os.environ)


@functools.cache
def role_policy() -> RolePolicy:
    """The role policy, loaded once per container. A broken file raises PolicyError on every call (a
    failure is not cached), so every request is refused with the reason logged: it fails closed."""
    return load_role_policy(service_settings().policy_file or DEFAULT_POLICY_FILE)


# ------------------------------------------------------------------------------------------------- clients
@functools.cache
def botocore_session() -> botocore.session.Session:
    """One botocore session per container: a second one would load its data files again (~35 ms of CPU
    for the Secrets Manager client at the first Redis call, against ~4 ms on this one)."""
    return botocore.session.get_session()


@functools.cache
def dynamodb_client() -> DynamoDBClient:
    # botocore directly: boto3 adds nothing a client needs and costs ~0.1 s of cold start (s3transfer).
    # The stubs type botocore's clients only by service name through boto3's overloads: cast to the stub.
    client = cast("DynamoDBClient", botocore_session().create_client("dynamodb", config=DYNAMODB_CONFIG))
    deadline.guard(client, needed_seconds=DYNAMODB_ATTEMPT_BUDGET_SECONDS)
    # Only ever in tests and the local stack: their handler attaches its DynamoDB faults to the client.
    if failpoints.ENABLED:
        failpoints.hit("new_dynamodb_client", client=client)
    return client


@functools.cache
def events_client() -> EventBridgeClient:
    return cast("EventBridgeClient", botocore_session().create_client("events", config=EVENTS_CONFIG))


@functools.cache
def sqs_client() -> SQSClient:
    return cast("SQSClient", botocore_session().create_client("sqs", config=EVENTS_CONFIG))


def secrets_client() -> SecretsManagerClient:
    """Secrets Manager, only ever created by the first Redis call of a container that has Redis."""
    from state_core.cache.credentials import SECRETS_CONFIG_OPTIONS

    return cast(
        "SecretsManagerClient",
        botocore_session().create_client("secretsmanager", config=Config(**SECRETS_CONFIG_OPTIONS)),
    )


@functools.cache
def redis_link() -> RedisLink | None:
    """The Redis link (client + breaker) when an endpoint is configured, else None. Imports redis only then.
    The link opens at its first call: the secrets are read then, not at import or when Redis is off."""
    settings = service_settings()
    if not settings.redis_url:
        return None
    from state_core.cache.breaker import CircuitBreaker
    from state_core.cache.credentials import read_credentials
    from state_core.cache.link import RedisLink, connect

    def open_link() -> tuple[redis.Redis, bytes]:
        credentials = read_credentials(
            secrets_client(),
            auth_secret_arn=settings.redis_auth_secret_arn,
            signing_secret_arn=settings.cache_signing_secret_arn,
        )
        client = connect(
            settings.redis_url,
            username=credentials.username,
            password=credentials.password,
            timeout_seconds=settings.redis_timeout_ms / 1000,
        )
        return client, credentials.signing_key

    def open_failed(error: Exception) -> None:
        # The message names the secret and botocore's error, never a secret's value.
        logger.error("Redis credentials unavailable; serving from DynamoDB only", extra={"reason": str(error)})
        metrics.add_metric(name="RedisCredentialErrors", unit="Count", value=1)

    return RedisLink(
        None,
        CircuitBreaker(open_seconds=settings.redis_breaker_seconds),
        on_error=lambda: metrics.add_metric(name="RedisErrors", unit="Count", value=1),
        opener=open_link,
        on_open_error=open_failed,
    )


# -------------------------------------------------------------------------------------------------- stores
@functools.cache
def kms_client() -> Any:
    """KMS, created at the first seal or open: a function that never meets a sensitive value never makes it."""
    return botocore_session().create_client("kms", config=KMS_CONFIG)


@functools.cache
def value_cipher() -> ValueCipher:
    """Envelope encryption of sensitive values. Cheap to build: which keys are sensitive is read from the policy
    file at a key's first write (a broken file refuses the request as it would anyway), and `cryptography` and
    the KMS client load only when a value is sealed or opened."""
    from state_core.security.envelope import KmsEnvelope

    settings = service_settings()

    def sensitive(key: str) -> bool:
        return settings.encrypt_all or _sensitive_matcher(role_policy().sensitive)(key)

    return KmsEnvelope(
        table_name=settings.table_name, key_id=settings.kms_key_id, sensitive=sensitive, kms=kms_client, metrics=metrics
    )


@functools.lru_cache(maxsize=4)
def _sensitive_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    from state_core.security.envelope import sensitive_matcher

    return sensitive_matcher(patterns, encrypt_all=False)


@functools.cache
def state_store() -> StateStore:
    return StateStore(dynamodb_client(), service_settings().table_name, cipher=value_cipher())


def blob_store() -> BlobStore:
    """The one BlobStore: the state store's own (it reads and writes the blobs of large values)."""
    return state_store().blobs


@functools.cache
def history_store() -> HistoryStore:
    """One history store for its writer (the stream publisher) and its reader. The request path never
    writes history: each write is one DynamoDB item, and the stream records every version."""
    from state_core.storage.history import HistoryStore

    settings = service_settings()
    return HistoryStore(
        dynamodb_client(), settings.table_name, retention_seconds=settings.history_retention_days * 86_400
    )


@functools.cache
def state_cache() -> RedisStateCache | None:
    """The Redis read cache over the one link, when Redis is configured (else None)."""
    link = redis_link()
    if link is None:
        return None
    from state_core.cache.state_cache import CachePolicy, RedisStateCache

    return RedisStateCache(
        link, metrics, clock=utc_now, policy=CachePolicy(entry_ttl_seconds=service_settings().cache_ttl_seconds)
    )


# ------------------------------------------------------------------------------------------------ services
@functools.cache
def state_manager() -> StateManager:
    # Only the local stack's workers arm failpoints from STATE_FAILPOINTS_SPEC, before this runs; anywhere
    # else the spec would arm nothing, and a fault test that silently tests nothing is refused instead.
    if os.environ.get("STATE_FAILPOINTS_SPEC", "").strip() and not failpoints.ENABLED:
        raise RuntimeError("STATE_FAILPOINTS_SPEC is set but nothing armed it: failpoints run only in the local stack")
    settings = service_settings()
    link = redis_link()
    lock = None
    if link is not None:
        from state_core.cache.lock import LockPolicy, RedisKeyLock

        lock = RedisKeyLock(
            link,
            metrics,
            LockPolicy(lease_seconds=settings.lock_lease_ms / 1000, max_wait_seconds=settings.lock_wait_ms / 1000),
        )
    return StateManager(
        state_store(),
        clock=utc_now,
        metrics=metrics,
        cache=state_cache(),
        lock=lock,
        patch_policy=PatchPolicy(time_budget_seconds=settings.patch_time_budget_seconds),
        schemas=schema_registry(),
        cipher=value_cipher(),
    )


@functools.cache
def schema_registry() -> SchemaRegistry:
    """The value schemas, in the state table: the write paths check values against them."""
    from state_core.service.schemas import SchemaRegistry
    from state_core.storage.schemas import SchemaStore

    def index() -> ListIndex:
        # Only a check enumerates keys: the write functions never import the listing's storage.
        from state_core.storage.listing import ListIndexStore

        return ListIndexStore(dynamodb_client(), service_settings().table_name)

    return SchemaRegistry(
        SchemaStore(dynamodb_client(), service_settings().table_name),
        clock=utc_now,
        metrics=metrics,
        index=index,
        load=lambda key: state_store().get(key),
        settle_seconds=service_settings().schema_check_settle_seconds,
        cipher=value_cipher(),
    )


# Handing a check to the next invocation: queued by Lambda, so a short timeout and one retry are enough.
LAMBDA_CONFIG = Config(connect_timeout=1, read_timeout=3, retries={"mode": "standard", "total_max_attempts": 2})


@functools.cache
def schema_check_launcher() -> Callable[[str, str], None] | None:
    """How the registry's function runs a check in the background where Lambda runs it: it invokes itself
    asynchronously with the check's name and id, one step per invocation, each handing over to the next.
    None outside Lambda (no AWS_LAMBDA_FUNCTION_NAME: the tests run the steps themselves)."""
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
    if not function:
        return None
    import json

    client: Any = botocore_session().create_client("lambda", config=LAMBDA_CONFIG)

    def launch(name: str, check_id: str) -> None:
        payload = json.dumps({"schema_check": {"name": name, "id": check_id}}).encode("utf-8")
        client.invoke(FunctionName=function, InvocationType="Event", Payload=payload)

    return launch


@functools.cache
def transactions() -> Transactions:
    """`POST /state:transact`, over the state manager's store, cache and time budget."""
    from state_core.service.transactions import Transactions
    from state_core.storage.transactions import TransactionStore

    return Transactions(
        TransactionStore(dynamodb_client(), service_settings().table_name, state_store()),
        state_manager(),
        clock=utc_now,
        metrics=metrics,
        policy=PatchPolicy(time_budget_seconds=service_settings().patch_time_budget_seconds),
    )


@functools.cache
def approvals() -> Approvals:
    """Proposals of protected keys (approvals.md), in the state table beside their keys' items."""
    from state_core.service.approvals import Approvals
    from state_core.storage.approvals import ProposalStore
    from state_core.storage.transactions import TransactionStore

    settings = service_settings()
    store = TransactionStore(dynamodb_client(), settings.table_name, state_store())
    return Approvals(
        ProposalStore(dynamodb_client(), settings.table_name, store, cipher=value_cipher()),
        state_store(),
        state_manager(),
        clock=utc_now,
        metrics=metrics,
        policy=PatchPolicy(time_budget_seconds=settings.patch_time_budget_seconds),
    )


@functools.cache
def history_reader() -> HistoryReader:
    """`GET /state/{key}?version=N` and `GET /state/{key}/history`."""
    from state_core.service.history import HistoryReader

    return HistoryReader(state_store(), history_store(), clock=utc_now, cipher=value_cipher())


@functools.cache
def key_lister() -> KeyLister:
    """`GET /state?prefix=`: the listing index, and cursors signed with the key named by
    STATE_LIST_CURSOR_SECRET_ARN, read once per container at the first listing. Without the key nothing
    is listed (a cursor could not be checked): the error names the secret, never its value."""
    from concurrent.futures import ThreadPoolExecutor

    from state_core.cache.credentials import CredentialsError, read_secret
    from state_core.domain.errors import ServiceUnavailable
    from state_core.domain.listing import LIST_SHARDS
    from state_core.security.list_cursor import ListCursors
    from state_core.service.listing import KeyLister
    from state_core.storage.listing import ListIndexStore

    settings = service_settings()
    if not settings.list_cursor_secret_arn:
        raise RuntimeError("STATE_LIST_CURSOR_SECRET_ARN is not set: listing cursors cannot be signed")
    try:
        signing_key = read_secret(secrets_client(), settings.list_cursor_secret_arn).encode("utf-8")
    except CredentialsError as exc:
        # Not cached (functools.cache keeps no exception): the next listing tries again.
        logger.error("listing cursor key unavailable", extra={"reason": str(exc)})
        raise ServiceUnavailable("listing is unavailable for a moment; retry shortly") from exc
    return KeyLister(
        ListIndexStore(dynamodb_client(), settings.table_name),
        ListCursors(signing_key),
        clock=utc_now,
        log=logger,
        metrics=metrics,
        cipher=value_cipher(),
        # One query per shard at once; botocore's clients are safe to share between threads.
        executor=ThreadPoolExecutor(max_workers=LIST_SHARDS, thread_name_prefix="list-shard"),
    )


@functools.cache
def change_waiter() -> ChangeWaiter:
    """The long-poll of `GET /state/{key}`: notified through Redis's change channels when Redis is
    configured, polling DynamoDB otherwise (and whenever the subscription is unavailable)."""
    from state_core.service.waiting import ChangeWaiter, WaitPolicy

    link = redis_link()
    feed = None
    if link is not None:
        import time

        from state_core.cache.watch import RedisChangeFeed

        feed = RedisChangeFeed(link, metrics, monotonic=time.monotonic)
    # The wait ends early enough for one more DynamoDB read (its attempts' budget) and the answer.
    policy = WaitPolicy(answer_margin_seconds=DYNAMODB_ATTEMPT_BUDGET_SECONDS + 0.2)
    return ChangeWaiter(state_manager(), feed, clock=utc_now, metrics=metrics, policy=policy)


@functools.cache
def change_publisher() -> ChangePublisher:
    """The stream's publisher: history upkeep and blob collection, then EventBridge and its dead-letter queue."""
    from state_core.stream.blob_collection import BlobCollection
    from state_core.stream.lifecycle import StreamLifecycle
    from state_core.stream.publisher import ChangePublisher
    from state_core.stream.sender import EventSender

    settings = publisher_settings()
    lifecycle = StreamLifecycle(
        dynamodb_client(),
        service_settings().table_name,
        history=history_store(),
        states=state_store(),
        blobs=blob_store(),
        clock=utc_now,
    )
    sender = EventSender(
        events_client(),
        dead_letters=sqs_client(),
        dead_letter_queue_url=settings.dead_letter_queue_url,
        metrics=metrics,
        log=logger,
    )
    return ChangePublisher(
        sender,
        bus_name=settings.event_bus_name,
        log=logger,
        lifecycle=lifecycle,
        blobs=BlobCollection(blob_store(), lifecycle=lifecycle, metrics=metrics, log=logger, clock=utc_now),
        source=settings.event_source,
        max_detail_bytes=settings.max_detail_bytes,
    )


@functools.cache
def cache_repairer() -> CacheRepairer | None:
    """The stream's cache repair (repair.py), over the same Redis link and signing key as the state functions;
    None without Redis (nothing to repair)."""
    cache = state_cache()
    if cache is None:
        return None
    from state_core.stream.repair import CacheRepairer

    return CacheRepairer(cache, metrics=metrics, log=logger)


# ------------------------------------------------------------------------------------------------- watch
@functools.cache
def watch_settings() -> WatchSettings:
    return WatchSettings.from_environ(os.environ)


@functools.cache
def _token_issuer() -> Any:
    from state_core.security.tokens import DiscoveredVerifier

    def fetch_failed(reason: str) -> None:
        logger.warning("JWKS fetch failed; keeping the last good key set", extra={"reason": reason})

    return DiscoveredVerifier(AuthorizerSettings.from_environ(os.environ), on_fetch_error=fetch_failed)


def verify_token(token: str) -> VerifiedToken:
    """The HTTP authorizer's verification (security/tokens.py), for the WebSocket's $connect and refresh."""
    result: VerifiedToken = _token_issuer().verifier().verify(token)
    return result


@functools.cache
def watch_service() -> WatchService:
    """Connections, subscriptions and delivery (service/watch.py) over the watch table and @connections."""
    from state_core.service.watch import WatchService
    from state_core.storage.connections import ApiGatewayPoster
    from state_core.storage.watch import WatchStore

    settings = watch_settings()
    management = botocore_session().create_client(
        "apigatewaymanagementapi", endpoint_url=settings.endpoint, config=CONNECTIONS_CONFIG
    )

    def policy() -> RolePolicy:
        return role_policy()

    return WatchService(
        WatchStore(dynamodb_client(), settings.watch_table_name),
        ApiGatewayPoster(management),
        states=state_store(),
        history=history_store(),
        policy=policy,
        clock=utc_now,
        metrics=metrics,
        log=logger,
    )
