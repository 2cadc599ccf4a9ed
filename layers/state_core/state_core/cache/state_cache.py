"""Versioned read cache in Redis: an entry is replaced only by a newer version, so a late write never
brings an old value back.

An entry is a Redis hash `{v: version, m: metadata JSON, d: stored value bytes, s: MAC}` under `st:{<key>}`;
a tombstone (deleted, or absent as version 0) has no `d`. `s` is an HMAC-SHA256 of the entry's key, version,
metadata and value under a key that never reaches Redis: whoever can write Redis cannot make up an entry,
alter one or move one to another key. An entry whose MAC is missing or wrong, that is larger than any entry
this service writes, or whose value does not decode within the size limit is a miss (CacheIntegrityFailures),
never a value and never an error. What the MAC cannot stop: putting back an older entry of the same key
that this service once signed (a rollback; see docs/design.md, "Partitions and failovers").

Every cache write (fill after a miss, write-through after a write, tombstone after a delete, repair from
the stream) goes through one Lua step that stores the entry only if its version is newer than the cached
one, so a slow writer can never put an older version over a newer one. Two more rules cover entries that
are gone (a restart, an eviction, a flush, their expiry), where there is nothing to compare with: a fill
lands only while the fill lease its miss took is intact (any other cache write deletes it), and a
write-through stores its value only over an entry that holds one, else its version as a fence.

Redis trouble never fails a request: every error or timeout is counted, opens the breaker and reads as a
miss. Reads and fills skip Redis while the breaker is open; write-throughs do not (each costs at most one
timeout while Redis is down), so a write whose write-through was skipped is one made while Redis was
really unreachable. A cache write that failed is kept in memory and replayed, as a fence (its version
without its value, CacheEntry.fence), before anything else on the container's next Redis call; across
containers the stream's repair (repair.py) fences every version, retrying until Redis accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from state_core.cache.breaker import RedisUnavailable
from state_core.domain.cached import CacheEntry
from state_core.domain.codec import ENCODING_IDENTITY, StoredValue
from state_core.domain.ports import MetricsSink
from state_core.domain.records import SchemaStamp, StateRecord

if TYPE_CHECKING:
    from state_core.cache.link import RedisLink

# What a hash entry holds: 'value', 'tombstone' (no value, metadata says deleted) or 'fence' (no value
# otherwise: a version readers take as a miss). Metadata that does not decode counts as a fence.
_HOLDS = """
local function holds(key)
  if redis.call('HEXISTS', key, 'd') == 1 then
    return 'value'
  end
  local ok, meta = pcall(cjson.decode, redis.call('HGET', key, 'm') or '')
  if ok and type(meta) == 'table' and meta['deleted'] == true then
    return 'tombstone'
  end
  return 'fence'
end
"""

# KEYS[1] the entry, KEYS[2] its fill lease. ARGV: version, metadata, value bytes, lifetime (ms), MAC, mode,
# lease token, the fence's metadata and MAC, the key's change channel.
#
# Mode 'fill' (a read's fill after its miss): only while the lease that miss took is still there, i.e. no
# other cache write, restart, eviction or flush happened since; a slow fill that read an older version is
# dropped instead of landing over a newer entry or, worse, where that entry was wiped. Any other mode
# ('through': a write-through, a tombstone, a fence) deletes the lease, so fills that read before it drop.
# Mode 'claim' (the write-through of a PATCH whose own cache read missed and took the lease): a fill while
# that lease is intact, since the version it wrote was committed after the miss, as a fill's read was;
# else a plain write-through. Without it a key whose entry is a fence (its first write, an eviction) would
# stay one for as long as only PATCHes write it, each reading DynamoDB inside the lock.
#
# Then write-if-newer: stored only if the version is newer than the cached one. Equal versions are a no-op,
# except that the same version with its value may fill a valueless fence. A value (or tombstone) is stored
# only over an entry that holds one; over nothing or a fence, a write-through stores the version as a fence:
# a write that stalled between DynamoDB and Redis may land after newer versions' entries were wiped, and
# with its value it would be served as current. Fills are the exception, the lease proves they are current.
# Whatever was stored is announced on the key's change channel (its version, nothing else), in the same step,
# so a long-poll waiting on that channel hears of a version as soon as the cache holds it.
# Something that is not one of our hashes (another type, a version that is not a number) is replaced rather
# than raising: a script error would open the breaker and cost the container its cache for a window.
_WRITE_IF_NEWER = (
    _HOLDS
    + """
local leased = ARGV[6] ~= 'through' and redis.call('GET', KEYS[2]) == ARGV[7]
if ARGV[6] == 'fill' and not leased then
  return 0
end
redis.call('DEL', KEYS[2])
local metadata, data, mac = ARGV[2], ARGV[3], ARGV[5]
local backed = false
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  local cached = tonumber(redis.call('HGET', KEYS[1], 'v'))
  local held = holds(KEYS[1])
  if cached and cached >= tonumber(ARGV[1]) then
    if cached > tonumber(ARGV[1]) or data == '' or held ~= 'fence' then
      return 0
    end
    backed = true
  end
  if cached and held ~= 'fence' then
    backed = true
  end
end
if not leased and not backed then
  metadata, data, mac = ARGV[8], '', ARGV[9]
end
redis.call('DEL', KEYS[1])
if data == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'm', metadata, 's', mac)
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'm', metadata, 'd', data, 's', mac)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[10], ARGV[1])
return 1
"""
)

# The entry's fields and, for a reader that will fill it (a miss), its fill lease; unless the key holds
# something this service never writes: a field larger than any entry it writes (1, unusable, no lease):
# those bytes never reach the function. A miss (nothing, another type, a fence) joins the lease already
# there or takes a new one (ARGV[3], for ARGV[4] ms): any cache write in between deletes it, so every fill
# that read before that write is dropped. Reply: version, metadata, value, MAC, lease (nil on a hit).
_READ = (
    _HOLDS
    + """
local function leased()
  local token = redis.call('GET', KEYS[2])
  if not token then
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
    token = ARGV[3]
  end
  return token
end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
  return {false, false, false, false, leased()}
end
if redis.call('HSTRLEN', KEYS[1], 'd') > tonumber(ARGV[1]) then
  return 1
end
for _, name in ipairs({'v', 'm', 's'}) do
  if redis.call('HSTRLEN', KEYS[1], name) > tonumber(ARGV[2]) then
    return 1
  end
end
local reply = redis.call('HMGET', KEYS[1], 'v', 'm', 'd', 's')
if holds(KEYS[1]) == 'fence' then
  reply[5] = leased()
end
return reply
"""
)

# A write-through that timed out is tried again, this many attempts in all, before it is left to the
# replay and the stream's repair: a Redis that just came back (a backlog after a pause) may miss one 50 ms
# timeout, and a write whose write-through is skipped is read stale elsewhere until the repair lands. While
# Redis is hung, each write pays this many timeouts; other failures (refused, credentials) are not retried.
WRITE_THROUGH_ATTEMPTS = 2

# Versions, metadata and MACs are tens to hundreds of bytes; the subject in `updated_by` is the longest part.
_MAX_SMALL_FIELD_BYTES = 65_536
_MAC_CONTEXT = b"state-cache-entry/1"


def entry_mac(signing_key: bytes, key: str, version: bytes, metadata: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 over the entry key, version, metadata and value bytes exactly as stored, each
    length-prefixed so no two different entries share an input."""
    mac = hmac.new(signing_key, digestmod=hashlib.sha256)
    for part in (_MAC_CONTEXT, entry_key(key).encode("utf-8"), version, metadata, data):
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.digest()


def entry_key(key: str) -> str:
    # The hash tag keeps a key's entry, lock and fill lease in one slot if Redis is ever a cluster.
    return f"st:{{{key}}}"


def lease_key(key: str) -> str:
    return f"ls:{{{key}}}"


def change_channel(key: str) -> str:
    """The pub/sub channel a key's new versions are announced on. A channel is no key, but the hash tag
    puts it in the key's slot, ready for sharded pub/sub (SPUBLISH, Redis 7) if Redis is ever a cluster."""
    return f"ch:{{{key}}}"


def entry_fields(entry: CacheEntry) -> tuple[str, bytes]:
    """The entry's hash fields `m` (metadata JSON) and `d` (value bytes, empty for none)."""
    record = entry.record
    metadata: dict[str, object] = {
        "deleted": record.deleted,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "updated_by": record.updated_by,
        "expires_at": record.expires_at,
    }
    if record.schema is not None:
        metadata["schema"] = [record.schema.name, record.schema.version]
    data = b""
    if record.value is not None:
        metadata["encoding"] = record.value.encoding
        metadata["size"] = record.value.size
        if record.value.sealed:
            # What the sealed value is bound to: the reader opens it with this, never with the envelope's word.
            metadata["write_id"] = record.write_id
        data = record.value.data
    return json.dumps(metadata, separators=(",", ":")), data


def parse_entry(key: str, version: Any, metadata: Any, data: Any) -> CacheEntry:
    """The entry of `key` from its hash fields as read (`data` None when there is no value)."""
    meta = json.loads(metadata)
    value = None
    if data is not None and "encoding" in meta:
        value = StoredValue(encoding=meta["encoding"], data=data, size=meta["size"])
    return CacheEntry(
        StateRecord(
            key=key,
            version=int(version),
            deleted=bool(meta["deleted"]),
            value=value,
            created_at=meta["created_at"],
            updated_at=meta["updated_at"],
            updated_by=meta["updated_by"],
            expires_at=meta["expires_at"],
            schema=SchemaStamp(*meta["schema"]) if "schema" in meta else None,
            write_id=meta.get("write_id"),
        )
    )


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Entry and fill-lease lifetimes. An entry's lifetime bounds nothing about correctness (the fill lease
    and the fences over nothing cover entries that are gone); it bounds memory, and how long an entry a
    failover rolled back can be served."""

    entry_ttl_seconds: float = 300.0
    longest_run_seconds: float = 30.0
    # A fill lease outlives the longest run, so a fill is dropped only when something wrote in between.
    fill_lease_seconds: float = 30.0
    # Every legal value fits (1 MiB of incompressible JSON stays ~1 MiB compressed), so Redis memory per
    # entry is bounded by this; a larger stored form would be fenced but not cached.
    max_entry_bytes: int = 1_100_000

    def lifetime_ms(self, record: StateRecord, now: datetime) -> int:
        """Never much beyond the state's own expiry: kept `longest_run_seconds` past it (readers check the
        expiry themselves)."""
        lifetime = self.entry_ttl_seconds
        if record.expires_at is not None:
            lifetime = min(lifetime, record.expires_at - now.timestamp() + self.longest_run_seconds)
        return max(1, int(lifetime * 1000))


class RedisStateCache:
    """The cache adapter. Methods never raise for Redis trouble: reads miss, writes are queued for replay."""

    def __init__(
        self,
        link: RedisLink,
        metrics: MetricsSink,
        clock: Callable[[], datetime],
        policy: CachePolicy | None = None,
    ) -> None:
        self._link = link
        self._metrics = metrics
        self._clock = clock
        self._policy = policy or CachePolicy()
        self._write_if_newer = link.script(_WRITE_IF_NEWER)
        self._read = link.script(_READ)
        self._pending: dict[str, CacheEntry] = {}
        self._pending_lock = threading.Lock()
        # The fill lease each thread's last miss took, per key, for its `fill`.
        self._leases = threading.local()

    def get(self, key: str) -> CacheEntry | None:
        """The cached entry, or None on a miss or any Redis trouble. A miss takes the key's fill lease for
        this thread's `fill` (same round trip)."""
        self._lease_tokens().pop(key, None)  # a lease is good only for the fill after its own miss
        try:
            self._replay_pending()
            reply = self._link.run(
                lambda client: self._read(keys=self._read_keys(key), args=self._read_arguments(), client=client)
            )
        except RedisUnavailable:
            self.read_failed()
            return None
        return self.entry_from(key, reply)

    def get_many(self, keys: list[str]) -> list[CacheEntry | None]:
        """`get` of each key, all in one round trip (one pipeline of the same read script): each miss takes
        its key's fill lease exactly as `get` would. Any Redis trouble is a miss for every key."""
        tokens = self._lease_tokens()
        for key in keys:
            tokens.pop(key, None)

        def queue(pipe: Any) -> None:
            for key in keys:
                self.queue_get(pipe, key)

        try:
            self._replay_pending()
            replies = self._link.pipeline(queue, scripts=self.scripts)
        except RedisUnavailable:
            self.read_failed()
            return [None] * len(keys)
        return [self.entry_from(key, reply) for key, reply in zip(keys, replies, strict=True)]

    def fill(self, entry: CacheEntry) -> bool:
        """Store what a read after this thread's miss found in DynamoDB, only if no other cache write (nor a
        restart, an eviction or a flush) happened since that miss; without a lease (no miss came first, or
        the miss found an unusable entry), as a write-through. False if dropped, refused or failed."""
        tokens = self._lease_tokens()
        token = tokens.pop(entry.record.key, None)
        # Through the breaker: a fill is only an optimization, and the reader already has its answer.
        return self._write(entry, "through" if token is None else "fill", token or "")

    # The pipelined halves of get and write_if_newer, for callers that send them along with other commands
    # in one round trip (the PATCH lock: acquire + read, then write-through + release).

    def queue_get(self, pipe: Any, key: str) -> None:
        """Put the read of `key` on `pipe` (raw EVALSHA, so send `scripts` along); its reply goes to
        `entry_from`."""
        pipe.evalsha(self._read.sha, 2, *self._read_keys(key), *self._read_arguments())

    def entry_from(self, key: str, reply: Any) -> CacheEntry | None:
        """The entry a queued read answered, or None on a miss (an entry that fails its checks included).
        Never raises: every check failure is a miss."""
        tokens = self._lease_tokens()
        tokens.pop(key, None)
        if isinstance(reply, list) and len(reply) == 5:
            lease = reply.pop()
            if lease is not None:
                tokens[key] = lease.decode("ascii") if isinstance(lease, bytes) else str(lease)
        if reply is None or (isinstance(reply, list) and (reply[0] is None or reply[1] is None)):
            self._metrics.add_metric(name="CacheMisses", unit="Count", value=1)
            return None
        entry = self._verified(key, reply)
        if entry is None:
            self._metrics.add_metric(name="CacheIntegrityFailures", unit="Count", value=1)
            self._metrics.add_metric(name="CacheMisses", unit="Count", value=1)
            return None
        # A fence (or a value too large to cache) is a miss to the reader, which fills it.
        self._metrics.add_metric(name="CacheHits" if entry.is_usable() else "CacheMisses", unit="Count", value=1)
        return entry

    def _verified(self, key: str, reply: Any) -> CacheEntry | None:
        if not isinstance(reply, list) or len(reply) != 4:
            return None  # oversized (the read script's 1) or a shape this service never writes
        version, metadata, data, mac = reply
        data = data or b""
        if not isinstance(mac, bytes) or not hmac.compare_digest(
            mac, entry_mac(self._link.signing_key, key, version, metadata, data)
        ):
            return None
        try:
            entry = parse_entry(key, version, metadata, data or None)
            value = entry.record.value
            if value is None or value.sealed:
                # A sealed value stays sealed in memory too: only the service's read path opens it.
                return entry
            # Decoded once here, within the size limit: a hit is then served without decompressing again,
            # and a value that does not decode is a miss like any other bad entry.
            decoded = StoredValue(ENCODING_IDENTITY, value.canonical(), value.size)
            return CacheEntry(replace(entry.record, value=decoded))
        except (ValueError, KeyError, TypeError):  # CorruptStoredValue is a ValueError
            return None

    def read_failed(self) -> None:
        self._metrics.add_metric(name="CacheErrors", unit="Count", value=1)

    def queue_write(self, pipe: Any, entry: CacheEntry, *, after_read: bool = False) -> None:
        """Put the write-if-newer of `entry` on `pipe` (raw EVALSHA: see RedisLink.pipeline); `after_read`
        as in `write_if_newer`."""
        keys, args = self._write_arguments(self._cacheable(entry), *self._write_mode(entry, after_read))
        pipe.evalsha(self._write_if_newer.sha, len(keys), *keys, *args)

    @property
    def scripts(self) -> tuple[Any, ...]:
        return (self._write_if_newer, self._read)

    def replay_pending(self, *, bypass_breaker: bool = False) -> None:
        """Replay failed writes first (see _replay_pending); raises RedisUnavailable if Redis is still down."""
        self._replay_pending(bypass_breaker=bypass_breaker)

    def write_if_newer(
        self, entry: CacheEntry, *, after_read: bool = False, attempts: int = WRITE_THROUGH_ATTEMPTS
    ) -> bool:
        """The write-through of `entry`: stored unless the cache holds the same or a newer version, with its
        value only over an entry that holds a value or tombstone (else as a fence). `after_read`: the write
        read the key from this cache first, in this thread (a PATCH); if that read missed and no cache write
        came since, the value is stored over a fence or nothing too, as the miss's fill would be. False if
        refused or failed; a failed write is kept and replayed once Redis answers again."""
        return self._write(entry, *self._write_mode(entry, after_read), bypass_breaker=True, attempts=attempts)

    def _write_mode(self, entry: CacheEntry, after_read: bool) -> tuple[str, str]:
        """'claim' with the lease this thread's last read of the key took (a miss), else 'through'."""
        # Read, not taken: a resend (after NOSCRIPT or a timeout) claims the same lease, and the next read of
        # the key replaces it.
        token = self._lease_tokens().get(entry.record.key) if after_read else None
        return ("claim", token) if token is not None else ("through", "")

    def repair(self, entry: CacheEntry) -> bool:
        """The stream's repair: `entry`'s version as a fence, sent even while the breaker is open (this is
        what closes the window other containers' open breakers leave). Raises RedisUnavailable on trouble,
        for the caller to retry; nothing is kept for replay."""
        fence = entry.fence()

        def write(client: Any) -> Any:
            keys, args = self._write_arguments(fence, "through", "")
            return self._write_if_newer(keys=keys, args=args, client=client)

        return bool(self._link.run(write, bypass_breaker=True))

    def _write(
        self, entry: CacheEntry, mode: str, token: str, *, bypass_breaker: bool = False, attempts: int = 1
    ) -> bool:
        entry = self._cacheable(entry)
        for attempt in range(1, attempts + 1):
            try:
                self._replay_pending(bypass_breaker=bypass_breaker)
                return self._store(entry, mode, token, bypass_breaker=bypass_breaker)
            except RedisUnavailable as trouble:
                self._metrics.add_metric(name="CacheErrors", unit="Count", value=1)
                if attempt == attempts or not trouble.timed_out:
                    self._remember(entry)
                    break
        return False

    def _lease_tokens(self) -> dict[str, str]:
        tokens: dict[str, str] | None = getattr(self._leases, "tokens", None)
        if tokens is None:
            tokens = self._leases.tokens = {}
        return tokens

    def _cacheable(self, entry: CacheEntry) -> CacheEntry:
        record = entry.record
        if record.value is not None and len(record.value.data) > self._policy.max_entry_bytes:
            # Too large to cache, but older versions must still be fenced out: a valueless live entry
            # at this version, which readers take as a miss.
            return CacheEntry(replace(record, value=None))
        return entry

    def _read_keys(self, key: str) -> list[str]:
        return [entry_key(key), lease_key(key)]

    def _read_arguments(self) -> list[Any]:
        lease_ms = max(1, int(self._policy.fill_lease_seconds * 1000))
        return [self._policy.max_entry_bytes, _MAX_SMALL_FIELD_BYTES, secrets.token_hex(8), lease_ms]

    def _write_arguments(self, entry: CacheEntry, mode: str, token: str) -> tuple[list[str], list[Any]]:
        """Only inside `run`/`pipeline`: signing needs the open link's key."""
        key = entry.record.key
        version = str(entry.version).encode("ascii")
        signing_key = self._link.signing_key
        metadata, data = entry_fields(entry)
        encoded_metadata = metadata.encode("utf-8")
        mac = entry_mac(signing_key, key, version, encoded_metadata, data)
        fence_metadata = entry_fields(entry.fence())[0].encode("utf-8")
        fence_mac = entry_mac(signing_key, key, version, fence_metadata, b"")
        lifetime = self._policy.lifetime_ms(entry.record, self._clock())
        arguments = [
            version,
            encoded_metadata,
            data,
            lifetime,
            mac,
            mode,
            token,
            fence_metadata,
            fence_mac,
            change_channel(key),
        ]
        return [entry_key(key), lease_key(key)], arguments

    def _store(
        self, entry: CacheEntry, mode: str = "through", token: str = "", *, bypass_breaker: bool = False
    ) -> bool:
        def write(client: Any) -> Any:
            keys, args = self._write_arguments(entry, mode, token)
            return self._write_if_newer(keys=keys, args=args, client=client)

        return bool(self._link.run(write, bypass_breaker=bypass_breaker))

    def _replay_pending(self, *, bypass_breaker: bool = False) -> None:
        """Replay cache writes that failed, before anything else is read or written, so a recovered Redis
        never serves an entry older than a write this container acknowledged."""
        if not self._pending:
            return
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for position, entry in enumerate(pending.values()):
            try:
                self._store(entry.fence(), bypass_breaker=bypass_breaker)
            except Exception:
                for unsent in list(pending.values())[position:]:
                    self._remember(unsent)
                raise

    def remember(self, entry: CacheEntry) -> None:
        """A write-through that did not reach Redis: replayed as a fence before this container's next call."""
        self._remember(self._cacheable(entry))

    def _remember(self, entry: CacheEntry) -> None:
        with self._pending_lock:
            known = self._pending.get(entry.record.key)
            if known is None or known.version < entry.version:
                self._pending[entry.record.key] = entry
