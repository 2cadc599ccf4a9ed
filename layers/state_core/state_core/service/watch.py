"""The WebSocket watch's rules: connecting, subscribing (with replay), delivering changes, the sweep.

Every version goes out through one protocol on its watermark (docs/watch.md, "Delivery"): claim it
(`delivered = v - 1`, no live lease), then post it; a deliverer that finds a gap takes the watermark's lease
and catches up from the history; one that finds a live lease records `pending` and leaves the version to the
holder, which releases only once nothing is pending. The subscribe handler's replay and the stream's
fan-out are the two deliverers, and they race only through those conditional writes.

The collaborators come in through ports (domain/watch.py, domain/ports.py); the principal is authorized
with security/principal.py against the stored scopes and roles at subscription and again at delivery.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from state_core import deadline, failpoints
from state_core.domain.codec import SEALED_PREFIX
from state_core.domain.errors import BadRequest, Forbidden, ServiceUnavailable
from state_core.domain.watch import (
    CLOCK_MARGIN_SECONDS,
    MAX_JOURNAL_READ,
    MAX_RESUME_KEYS,
    PREFIX_TARGET,
    RESUME_RETENTION_SECONDS,
    ChangeNote,
    Connection,
    ConnectionGone,
    ConnectionPoster,
    GiveBackFailed,
    LeaseLost,
    PostThrottled,
    Subscription,
    SubscriptionExists,
    SubscriptionGone,
    WatchStore,
    decode_cursor,
    decode_prefix_cursor,
    encode_cursor,
    encode_prefix_cursor,
    message,
    targets_of,
    value_for_message,
)
from state_core.security.principal import READ, Principal

if TYPE_CHECKING:
    from state_core.domain.codec import StoredValue
    from state_core.domain.history import HistoryEntry
    from state_core.domain.ports import HistoryReads, Log, MetricsSink, StateReads
    from state_core.domain.records import StateRecord
    from state_core.domain.watch_messages import Subscribe
    from state_core.security.policy import RolePolicy

LEASE_SECONDS = 15.0
# The longest a post can take, well inside the lease: the poster's attempts (storage/connections.py) of at most
# connect + read timeout each (runtime.CONNECTIONS_CONFIG), with their backoff.
POST_SECONDS = 10.0
# How long a replay waits for versions the stream has not recorded in the history yet (its lag).
HISTORY_WAIT_SECONDS = 3.0
# Polled with a doubling pause: each poll is three reads, and a lagging history usually means a busy table,
# which a steady 0.2 s poll (45 reads in 3 s per waiting replay) made busier still.
HISTORY_POLL_SECONDS = 0.1
EXPIRY_NOTICE_SECONDS = 300
FANOUT_THREADS = 32
# A subscription replays at most this many versions (each a history read and a post, within the socket
# function's 10 s); a cursor further behind gets resync.
MAX_REPLAY_VERSIONS = 200


class HistoryBehind(ServiceUnavailable):
    """A version to replay is not in the history yet (the stream lags): retry shortly."""


class CursorTooOld(Exception):
    """A version to replay has left the history's retention: the subscription must resync."""


def principal_of(connection: Connection) -> Principal:
    return Principal(subject=connection.subject, scopes=frozenset(connection.scopes), roles=connection.roles)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One change for one subscription, with the token its claim is made with (the stream record's
    sequence number, the same on a retried batch)."""

    subscription: Subscription
    note: ChangeNote
    token: str


class WatchService:
    def __init__(  # noqa: PLR0913  one collaborator each, keyword-only
        self,
        store: WatchStore,
        poster: ConnectionPoster,
        *,
        states: StateReads,
        history: HistoryReads,
        policy: Callable[[], RolePolicy | None],
        clock: Callable[[], datetime],
        metrics: MetricsSink,
        log: Log,
        sleep: Callable[[float], None] = time.sleep,
        threads: int = FANOUT_THREADS,
    ) -> None:
        self.store = store
        self.poster = poster
        self._states = states
        self._history = history
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self._sleep = sleep
        self._threads = threads

    def now(self) -> float:
        return self._clock().timestamp()

    # ----------------------------------------------------------------------------------- the socket side
    def connect(self, connection: Connection) -> None:
        self.store.put_connection(connection)

    def disconnect(self, connection_id: str) -> None:
        self.store.forget_connection(connection_id)

    def refresh(self, connection: Connection, fresh: Connection) -> None:
        """Replace the stored principal by a fresh token's, only for the same subject."""
        if fresh.subject != connection.subject or not self.store.replace_principal(fresh):
            raise Forbidden("refresh needs a token of the connection's own subject")

    def authorize(self, connection: Connection, request: Subscribe) -> None:
        principal = principal_of(connection)
        policy = self._policy()
        if request.key is not None:
            if not principal.allows(READ, request.key, policy):
                raise Forbidden(f"{READ} is not granted on key {request.key}")
        elif not principal.allows_every_key_under(READ, str(request.prefix), policy):
            raise Forbidden(f"{READ} is not granted on every key under prefix {request.prefix}")

    def subscribe(self, connection: Connection, request: Subscribe) -> None:
        """Authorize, store, answer `subscribed`, and replay after `since`: all under the watermark's lease
        for a key, so the fan-out's live changes wait for the replay (as `pending`) and follow it."""
        self.authorize(connection, request)
        if request.key is None:
            self._subscribe_prefix(connection, request)
            return
        since = None if request.since is None else decode_cursor(request.key, request.since)
        subscription = Subscription(connection.connection_id, request.id, request.key, None)
        key = request.key
        token = f"r{uuid.uuid4().hex}"
        current_version = 0
        # The lease before the index entry: from the moment the fan-out can see the subscription, it finds
        # the lease and leaves what it has to the replay.
        if self.store.subscription(connection.connection_id, request.id) is not None:
            raise SubscriptionExists(f"subscription {request.id} already exists on this connection")
        if self.store.take_lease(subscription, key, token, self.now() + LEASE_SECONDS, self.now()) is None:
            raise SubscriptionExists(f"subscription {request.id} already exists on this connection")
        self._add(subscription, connection, key=key, token=token)
        try:
            current = self._states.get(key)
            current_version = 0 if current is None else current.version
            if since is not None and since > current_version:
                raise BadRequest("since is a cursor of a version this key does not have")
            start = current_version if since is None else since
            too_far = current_version - start > MAX_REPLAY_VERSIONS
            if too_far:
                # A replay that long would outlast the function: like a cursor past retention, resync.
                start = current_version
            self.store.start_at(subscription, key, start, token)
            self.poster.post(
                connection.connection_id,
                message(
                    {
                        "type": "subscribed",
                        "id": request.id,
                        "key": key,
                        "version": start,
                        # Resuming from here misses nothing even when no change arrives before a disconnect.
                        "cursor": encode_cursor(key, start),
                    }
                ),
            )
            if too_far:
                self._resync(connection, subscription, key, f"more than {MAX_REPLAY_VERSIONS} versions to replay")
            self._deliver_under_lease(connection, subscription, key, token=token, upto=current_version, known={})
        except LeaseLost:
            # The replay outlasted its lease and a live change took the key over, in order from where the replay
            # stopped: the subscription stands; what is left is the sweep's, or the key's next change's.
            self.store.mark_behind(subscription, key, current_version)
        except BaseException:
            self._abandon(subscription, key, token)
            raise

    def _subscribe_prefix(self, connection: Connection, request: Subscribe) -> None:
        """A prefix: answered `subscribed` with the watch's cursor, then (with `since`) every version the
        client has not processed of every key the prefix's journal shows changed since the watch began, each
        key under its watermark's lease as a key subscription's replay; then live."""
        prefix = str(request.prefix)
        if self.store.subscription(connection.connection_id, request.id) is not None:
            raise SubscriptionExists(f"subscription {request.id} already exists on this connection")
        known = dict(request.versions or {})
        if request.since is None and known:
            raise BadRequest("versions come with since: the cursor of the watch they were received on")
        started = None if request.since is None else decode_prefix_cursor(prefix, request.since)
        outside = sorted(k for k in known if not k.startswith(prefix))
        if outside:
            raise BadRequest(f"versions names {len(outside)} key(s) not under prefix {prefix}")
        # In whole milliseconds, as the cursor holds it: the journal's start compares with the cursor's.
        now = int(self.now() * 1000) / 1000
        # Open (or extend) the journal before the index entry: every change the subscription can receive is
        # journaled, so a later resume finds it. It is kept as long as this watch's cursor can be resumed.
        journal = self.store.open_journal(prefix, connection.expires_at + RESUME_RETENTION_SECONDS, now)
        resync = None
        if started is not None:
            resync = self._why_not_resume(prefix, started, journal.since, known, now)
        subscription = Subscription(connection.connection_id, request.id, None, prefix)
        if started is None or resync is not None:
            # A new watch: the cursor names its start; no change of the prefix comes before `subscribed`.
            cursor = encode_prefix_cursor(prefix, now)
            self.poster.post(
                connection.connection_id,
                message({"type": "subscribed", "id": request.id, "prefix": prefix, "cursor": cursor}),
            )
            if resync is not None:
                self._resync(connection, subscription, None, resync, prefix=prefix)
            self._add(subscription, connection, key=None, token=None)
            return
        assert started is not None
        subscription = Subscription(
            connection.connection_id, request.id, None, prefix, resumed_from=started - CLOCK_MARGIN_SECONDS
        )
        self.poster.post(
            connection.connection_id,
            message(
                {
                    "type": "subscribed",
                    "id": request.id,
                    "prefix": prefix,
                    "cursor": encode_prefix_cursor(prefix, started),
                }
            ),
        )
        self._add(subscription, connection, key=None, token=None, known=known)
        try:
            # Read after the index entry: a change journaled before it is found here, one after it reaches the
            # subscription live; both deliverers go through the key's watermark, so the seam holds.
            changed = dict.fromkeys(
                k for k, _ in self.store.journal(prefix, started - CLOCK_MARGIN_SECONDS, MAX_JOURNAL_READ)
            )
            for key in changed:
                token = f"r{uuid.uuid4().hex}"
                if self.store.take_lease(subscription, key, token, self.now() + LEASE_SECONDS, self.now()) is None:
                    continue  # the fan-out is catching this key up itself
                current = self._states.get(key)
                upto = 0 if current is None else current.version
                try:
                    self._deliver_under_lease(connection, subscription, key, token=token, upto=upto, known={})
                except LeaseLost:
                    self.store.mark_behind(subscription, key, upto)  # taken over, as a key's replay can be
        except SubscriptionGone:
            return  # unsubscribed while replaying: nothing more to send
        except BaseException:
            self._abandon(subscription, "", "")
            raise

    def _why_not_resume(
        self, prefix: str, started: float, journal_since: float, known: dict[str, int], now: float
    ) -> str | None:
        """Why a prefix cursor cannot be resumed (then resync), or None. What a resume costs is bounded: the
        journal read, the versions named, the versions to replay."""
        if now - started > RESUME_RETENTION_SECONDS - CLOCK_MARGIN_SECONDS:
            return "the cursor is older than the prefix journal's retention"
        # The journal was opened before the watch's index entry was written (the same handler's clock), so a
        # journal kept since then holds every change the watch could have received.
        if journal_since > started:
            return "the prefix's changes since the cursor were not all journaled"
        if len(known) > MAX_RESUME_KEYS:
            return f"versions names more than {MAX_RESUME_KEYS} keys"
        entries = self.store.journal(prefix, started - CLOCK_MARGIN_SECONDS, MAX_JOURNAL_READ + 1)
        if len(entries) > MAX_JOURNAL_READ:
            return f"more than {MAX_JOURNAL_READ} changes under the prefix since the cursor"
        to_replay = sum(1 for key, version in entries if version > known.get(key, -1))
        if to_replay > MAX_REPLAY_VERSIONS:
            return f"more than {MAX_REPLAY_VERSIONS} versions to replay"
        return None

    def _start_of(self, subscription: Subscription, key: str, known: dict[str, int] | None) -> int | None:
        """Where a resumed prefix subscription starts `key`: after the version the client named, else after
        the newest version written before the watch began (the client received none of the key since, so
        nothing sent from there is a duplicate). None: more than a replay's worth of versions."""
        if known is None:
            if failpoints.ENABLED:
                failpoints.hit("watch_resume_start", key=key)
            known = self.store.known_versions(subscription)
        if known is None:
            # Removed meanwhile: without the client's versions, any start could send it what it has.
            raise SubscriptionGone(subscription.subscription_id)
        if key in known:
            return known[key]
        cutoff = float(subscription.resumed_from or 0)
        before = None
        scanned = 0
        while scanned <= MAX_REPLAY_VERSIONS:
            entries, more = self._history.page(key, limit=50, before=before)
            for entry in entries:
                if datetime.fromisoformat(entry.occurred_at).timestamp() < cutoff:
                    return entry.version
            scanned += len(entries)
            if not more or not entries:
                return 0
            before = entries[-1].version
        return None

    def _add(
        self,
        subscription: Subscription,
        connection: Connection,
        *,
        key: str | None,
        token: str | None,
        known: dict[str, int] | None = None,
    ) -> None:
        """Write the subscription; a write that failed halfway is undone, so the client can subscribe again."""
        try:
            added = self.store.add_subscription(subscription, connection.expires_at, known)
        except BaseException:
            self._abandon(subscription, key or "", token or "")
            raise
        if not added:
            if key is not None and token is not None:
                self.store.release(subscription, key, token)
            raise SubscriptionExists(f"subscription {subscription.subscription_id} already exists on this connection")

    def _abandon(self, subscription: Subscription, key: str, token: str) -> None:
        """A replay that failed: the subscription goes (the client is told and subscribes again)."""
        try:
            self.store.remove_subscription(subscription)
        except Exception:
            self._log.warning("could not remove a failed subscription", extra={"key": key})

    def unsubscribe(self, connection: Connection, subscription_id: str) -> None:
        subscription = self.store.subscription(connection.connection_id, subscription_id)
        if subscription is not None:
            self.store.remove_subscription(subscription)
        self.poster.post(connection.connection_id, message({"type": "unsubscribed", "id": subscription_id}))

    # ------------------------------------------------------------------------------------ the catch-up
    def _deliver_under_lease(
        self,
        connection: Connection,
        subscription: Subscription,
        key: str,
        *,
        token: str,
        upto: int,
        known: dict[int, ChangeNote],
    ) -> None:
        """Holding the lease: send every version after the delivered one up to `upto`, then up to whatever
        became pending meanwhile, then release."""
        mark = self.store.take_lease(subscription, key, token, self.now() + LEASE_SECONDS, self.now())
        if mark is None:
            raise LeaseLost(f"the lease of {key} was taken over")
        target = max(upto, mark.pending or 0)
        if mark.delivered is not None:
            delivered = mark.delivered
        elif subscription.resumed_from is None:
            delivered = upto - 1
        else:
            try:
                start = self._start_of(subscription, key, None)
            except SubscriptionGone:
                # The lease made a watermark of a subscription that is gone: it must not hold up a new one.
                self.store.clear_watermark(subscription, key, token)
                raise
            if start is None:
                self._resync(connection, subscription, key, f"more than {MAX_REPLAY_VERSIONS} versions to replay")
                current = self._states.get(key)
                start = max(target, 0 if current is None else current.version)
            # The start, even above `target`: a fan-out behind the client (which a replay, reading the history,
            # can put ahead of the stream) hands in an older version, and a watermark left there had the versions
            # up to the start claimed and sent again.
            delivered = start
            self.store.advance(subscription, key, delivered, token)
        principal = principal_of(connection)
        while True:
            version = delivered + 1
            while version <= target:
                try:
                    note = known.get(version) or self._note_of(key, version)
                except CursorTooOld:
                    self._resync(connection, subscription, key, f"version {version} has left the history's retention")
                    current = self._states.get(key)
                    version = max(version, 0 if current is None else current.version)
                    self.store.advance(subscription, key, version, token)
                    delivered, version = version, version + 1
                    target = max(target, delivered)
                    continue
                if principal.allows(READ, key, self._policy()):
                    if failpoints.ENABLED:
                        failpoints.hit("watch_replay_before_post", key=key, version=version)
                    # Reading the history under a slow table can outlast the lease; once it has run out, the
                    # fan-out may claim and send this very version. Renewed only while the watermark is where
                    # this holder left it, the lease then covers the post (at most POST_SECONDS).
                    self.store.renew(subscription, key, token, delivered, self.now() + LEASE_SECONDS)
                    self.poster.post(connection.connection_id, note.to_subscription(subscription.subscription_id))
                    # Sent: its record is attempted whatever is left of the invocation's time. Refused for want
                    # of it, the watermark stayed a version behind what the client had, and the subscription's
                    # next catch-up sent that version again. Killed by the timeout instead, the answer is the
                    # same failed subscribe, and the duplicate the same as a crash's (docs/watch.md).
                    with deadline.budget(None):
                        self.store.advance(subscription, key, version, token)
                else:
                    self.store.advance(subscription, key, version, token)
                delivered, version = version, version + 1
            pending = self.store.release(subscription, key, token)
            if pending is None:
                return
            if pending <= delivered:
                # Refused only for want of a recorded `delivered` (a watermark nothing was sent on yet).
                self.store.advance(subscription, key, delivered, token)
            target = max(target, pending)

    def _resync(
        self,
        connection: Connection,
        subscription: Subscription,
        key: str | None,
        reason: str,
        prefix: str | None = None,
    ) -> None:
        """Kubernetes' 410: the client reads the key (lists the prefix) and watches on from what it read."""
        self.poster.post(
            connection.connection_id,
            message(
                {
                    "type": "resync",
                    "subscription": subscription.subscription_id,
                    "key": key,
                    "prefix": prefix,
                    "reason": reason,
                }
            ),
        )

    def _note_of(self, key: str, version: int) -> ChangeNote:
        """Version `version` of `key` from the history (the current one from the state item), waiting a
        little for versions the stream has not recorded yet."""
        waited, pause = 0.0, HISTORY_POLL_SECONDS
        while True:
            entry = self._history.get(key, version)
            if entry is not None:
                return self._note_of_entry(entry)
            current = self._states.get(key)
            if current is not None and current.version == version:
                return self._note_of_record(current)
            if failpoints.ENABLED:
                failpoints.hit("watch_history_between_reads", key=key, version=version)
            # The stream records a key's versions in order: a later version recorded means this one has left
            # retention; none recorded means the stream has not got here yet, however long it lags. The
            # version is read once more after the later one is seen: both may have landed since the first
            # read, and a version that is there must never be taken for gone.
            newest, _ = self._history.page(key, limit=1, before=None)
            if newest and newest[0].version > version:
                entry = self._history.get(key, version)
                if entry is not None:
                    return self._note_of_entry(entry)
                raise CursorTooOld(key)
            if waited >= HISTORY_WAIT_SECONDS:
                raise HistoryBehind(f"version {version} of key {key} is not in the history yet; retry shortly")
            pause = min(pause, HISTORY_WAIT_SECONDS - waited)
            self._sleep(pause)
            waited += pause
            pause *= 2

    def _note_of_entry(self, entry: HistoryEntry) -> ChangeNote:
        value = entry.value
        sealed = _sealed(value) or (entry.blob is not None and entry.blob.encoding.startswith(SEALED_PREFIX))
        value_json, omitted = value_for_message(
            value.canonical() if value is not None and not sealed else None,
            entry.size if entry.has_value else None,
            sensitive=sealed,
        )
        return ChangeNote(entry.key, entry.version, entry.operation, entry.occurred_at, value_json, omitted)

    def _note_of_record(self, record: StateRecord) -> ChangeNote:
        head = self._history.current(record.key)
        operation = head.operation if head is not None and head.version == record.version else "updated"
        value = None if record.deleted or record.value is None else record.value
        sealed = _sealed(value)
        value_json, omitted = value_for_message(
            value.canonical() if value is not None and not sealed else None, None, sensitive=sealed
        )
        return ChangeNote(record.key, record.version, operation, record.updated_at, value_json, omitted)

    # ------------------------------------------------------------------------------------- the fan-out
    def fan_out(self, changes: Iterable[tuple[ChangeNote, str]]) -> None:
        """Send each change (with its claim token) to every subscription of its key and of its segment
        prefixes: the targets' indexes read in parallel, then connections in parallel, each connection's
        changes one after the other, in order."""
        per_connection: dict[str, list[Delivery]] = defaultdict(list)
        batch = list(changes)
        by_target: dict[str, list[ChangeNote]] = defaultdict(list)
        for note, _ in batch:
            for target in targets_of(note.key):
                by_target[target].append(note)

        def subscribers_of(target: str) -> list[Subscription]:
            # A prefix's changes are journaled before its index is read: a resume whose index entry this read
            # misses reads the journal after writing that entry, so it finds these changes.
            prefix = target[len(PREFIX_TARGET) :] if target.startswith(PREFIX_TARGET) else None
            if prefix is not None and not self.store.journal_if_kept(prefix, by_target[target], self.now()):
                return []
            return self.store.subscribers(target)

        # A batch names tens of targets, each a round trip or two: one after the other, they were most of a
        # small batch's time.
        with ThreadPoolExecutor(max_workers=min(self._threads, len(by_target) or 1)) as pool:
            subscribers = dict(zip(by_target, pool.map(subscribers_of, by_target), strict=True))
        for note, token in batch:
            for target in targets_of(note.key):
                for subscription in subscribers[target]:
                    per_connection[subscription.connection_id].append(Delivery(subscription, note, token))
        if not per_connection:
            return
        connections = self.store.connections(per_connection)
        with ThreadPoolExecutor(max_workers=min(self._threads, len(per_connection))) as pool:
            for result in pool.map(
                lambda cid: self._deliver_to(cid, connections.get(cid), per_connection[cid]), per_connection
            ):
                self._metrics.add_metric(name="WatchMessages", unit="Count", value=result)

    def _deliver_to(self, connection_id: str, connection: Connection | None, deliveries: list[Delivery]) -> int:
        """A connection's changes in order; the number of messages sent."""
        if connection is None:
            # An index entry whose connection went (a $disconnect halfway): nothing to send to.
            return 0
        if connection.expires_at <= self.now():
            self.close(connection_id, "token-expired")
            return 0
        sent = 0
        for position, delivery in enumerate(deliveries):
            try:
                sent += self._deliver(connection, delivery, deliveries)
            except ConnectionGone:
                self.store.forget_connection(connection_id)
                self._metrics.add_metric(name="WatchConnectionsGone", unit="Count", value=1)
                return sent
            except GiveBackFailed:
                # Failing the batch sends some watchers a version twice (documented); the alternative is a gap.
                raise
            except Exception as error:  # one connection's trouble must not fail everyone's batch
                # A retried batch would send again what the others already have; instead this connection's
                # remaining versions are marked behind, and the sweep (or the key's next change) catches up.
                # The failing one first goes back if it was claimed: a post that timed out, or a claim the table
                # applied though its answer was lost. Left claimed, it would never be sent.
                self._log.warning("watch delivery failed; left to catch up", extra={"reason": type(error).__name__})
                self._give_back(delivery)
                self._metrics.add_metric(name="WatchDeliveriesDeferred", unit="Count", value=1)
                highest: dict[tuple[Subscription, str], int] = {}
                for later in deliveries[position:]:
                    slot = (later.subscription, later.note.key)
                    highest[slot] = max(highest.get(slot, 0), later.note.version)
                for (subscription, key), version in highest.items():
                    self.store.mark_behind(subscription, key, version)
                return sent
        return sent

    def _deliver(self, connection: Connection, delivery: Delivery, batch: list[Delivery]) -> int:
        subscription, note, token = delivery.subscription, delivery.note, delivery.token
        key, version = note.key, note.version
        for _ in range(3):
            refused = self.store.claim(subscription, key, version, token, self.now())
            if failpoints.ENABLED:
                failpoints.hit("watch_after_claim", key=key, version=version, claimed=refused is None)
            if refused is None:
                return self._post_claimed(connection, delivery)
            if refused.delivered is not None and refused.delivered >= version:
                return 0  # sent already (by the replay, or before a retried batch)
            if refused.delivered is None and subscription.key is not None and not refused.leased(self.now()):
                return 0  # a key subscription whose subscribe died before it started: the client retries it
            if refused.leased(self.now()):
                if self.store.note_pending(subscription, key, version, self.now()):
                    return 0  # the lease holder sends it
                continue  # the lease went meanwhile: claim again
            # A gap (a throttled post given back, or a replay that died): catch up under the lease.
            known = {d.note.version: d.note for d in batch if d.note.key == key and d.subscription == subscription}
            catch_up = f"c{uuid.uuid4().hex}"
            try:
                self._deliver_under_lease(connection, subscription, key, token=catch_up, upto=version, known=known)
            except SubscriptionGone:
                return 0
            except (LeaseLost, HistoryBehind):
                self.store.note_pending(subscription, key, version, self.now())
                return 0
            return 1
        return 0

    # ------------------------------------------------------------------------------------------- expiry
    def close(self, connection_id: str, reason: str) -> None:
        try:
            self.poster.post(connection_id, message({"type": "closing", "reason": reason}))
            self.poster.close(connection_id)
        except ConnectionGone:
            pass
        self.store.forget_connection(connection_id)
        self._metrics.add_metric(name="WatchConnectionsClosed", unit="Count", value=1)

    def sweep(self) -> None:
        """Warn connections whose token expires within 5 minutes; close those whose token has expired; send
        what deliveries left behind (a failed or throttled post, a lease holder that died)."""
        self.catch_up_behind()
        now = self.now()
        for connection in self.store.expiring(now + EXPIRY_NOTICE_SECONDS):
            if connection.expires_at <= now:
                self.close(connection.connection_id, "token-expired")
            elif not connection.warned:
                try:
                    self.poster.post(
                        connection.connection_id,
                        message(
                            {
                                "type": "expiring",
                                "expires_at": connection.expires_at,
                                "detail": "the token expires soon: send refresh with a new token",
                            }
                        ),
                    )
                except ConnectionGone:
                    self.store.forget_connection(connection.connection_id)
                    continue
                self.store.mark_warned(connection.connection_id)

    def catch_up_behind(self) -> None:
        for subscription, key in self.store.behind(self.now()):
            connection = self.store.connection(subscription.connection_id)
            if connection is None or connection.expires_at <= self.now():
                continue  # the expiry pass closes it
            mark = self.store.take_lease(
                subscription, key, token := f"c{uuid.uuid4().hex}", self.now() + LEASE_SECONDS, self.now()
            )
            if mark is None:
                continue  # someone is delivering: they will see the pending version
            try:
                self._deliver_under_lease(
                    connection,
                    subscription,
                    key,
                    token=token,
                    upto=max(mark.pending or 0, mark.delivered or 0),
                    known={},
                )
            except ConnectionGone:
                self.store.forget_connection(subscription.connection_id)
            except SubscriptionGone:
                continue
            except (LeaseLost, HistoryBehind):
                self.store.mark_behind(subscription, key, mark.pending or 0)

    def _post_claimed(self, connection: Connection, delivery: Delivery) -> int:
        """Post a claimed version (1 if sent); one that cannot be posted is given back."""
        subscription, note = delivery.subscription, delivery.note
        if not principal_of(connection).allows(READ, note.key, self._policy()):
            return 0  # its version is consumed: a watcher never receives a key it may not read
        try:
            self.poster.post(connection.connection_id, note.to_subscription(subscription.subscription_id))
        except PostThrottled:
            self._give_back(delivery)
            self._metrics.add_metric(name="WatchPostsThrottled", unit="Count", value=1)
            return 0
        return 1

    def _give_back(self, delivery: Delivery) -> None:
        """Undo this delivery's claim, if it holds one (a claim is conditional on its token): `delivered` back to
        the version before, the version pending. Its next change, or the sweep, then sends it."""
        try:
            if failpoints.ENABLED:
                failpoints.hit("watch_give_back", key=delivery.note.key, version=delivery.note.version)
            self.store.unclaim(delivery.subscription, delivery.note.key, delivery.note.version, delivery.token)
        except Exception as error:
            # Left claimed, the next version's claim would go through and this one would never be sent.
            raise GiveBackFailed(delivery.note.key) from error


def _sealed(value: StoredValue | None) -> bool:
    return value is not None and value.sealed
