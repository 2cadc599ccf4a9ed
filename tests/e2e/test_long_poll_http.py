"""The long-poll over real HTTP: the local gateway, the authorizer, the GET function's workers and a real
redis-server the test can look into (who is subscribed) and disturb (kill the subscriptions)."""

import statistics
import threading
import time
import uuid

import pytest
import redis

from state_core.cache.state_cache import change_channel
from tests.doubles import ApiClient
from tests.stack import start_devstack

pytestmark = pytest.mark.e2e

NOTIFIED_WITHIN_SECONDS = 0.1
POLL_SECONDS = 0.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server):
    stack = start_devstack(tmp_path_factory.mktemp("devstack-long-poll"), extra_env={"REDIS_URL": redis_server.url})
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(stack):
    return ApiClient(stack)


@pytest.fixture
def watcher(redis_server):
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def key():
    return f"e2e:poll:{uuid.uuid4().hex}"


class LongPoll:
    """One long-poll in a thread: its response and when it came."""

    def __init__(self, client, key, etag, wait=25, **headers):
        self.response = None
        self.answered_at = None
        self.started_at = time.monotonic()

        def run():
            self.response = client.get(key, headers={"If-None-Match": etag, "Prefer": f"wait={wait}", **headers})
            self.answered_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout=40):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the long-poll never answered"
        return self.response


def subscribed(watcher, key, count=1, timeout=30.0):
    """Wait until `count` long-polls of `key` listen on its channel (the workers may have to start first)."""
    deadline = time.monotonic() + timeout
    while watcher.pubsub_numsub(change_channel(key))[0][1] < count:
        assert time.monotonic() < deadline, f"fewer than {count} long-polls subscribed"
        time.sleep(0.01)


def test_a_long_poll_gets_the_new_version_within_100_ms_of_the_writers_acknowledgement(client, watcher, key):
    client.put(key, {"n": 0})
    delays = []
    for n in range(1, 6):
        poll = LongPoll(client, key, f'"{n}"')
        subscribed(watcher, key)
        written = client.put(key, {"n": n})
        acknowledged = time.monotonic()
        response = poll.join()
        assert (response.status_code, response.headers["ETag"]) == (200, f'"{n + 1}"')
        assert response.json()["value"] == {"n": n}
        assert response.headers["Preference-Applied"] == "wait=25"
        assert written.headers["ETag"] == f'"{n + 1}"'
        delays.append(poll.answered_at - acknowledged)
    print(f"writer's acknowledgement to the long-poll's answer, ms: {sorted(round(d * 1000, 1) for d in delays)}")
    # The median of five: one request delayed by a loaded machine does not make the change late.
    assert statistics.median(delays) < NOTIFIED_WITHIN_SECONDS, delays


def test_the_304_comes_at_the_requested_wait(client, key):
    client.put(key, 1)
    poll = LongPoll(client, key, '"1"', wait=2)
    response = poll.join()
    assert (response.status_code, response.headers["ETag"], response.headers["Preference-Applied"]) == (
        304,
        '"1"',
        "wait=2",
    )
    assert 2 <= poll.answered_at - poll.started_at < 2.5


def test_a_deleted_key_answers_404(client, watcher, key):
    client.put(key, 1)
    poll = LongPoll(client, key, '"1"')
    subscribed(watcher, key)
    client.delete(key)
    response = poll.join()
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Preference-Applied"] == "wait=25"


def test_a_caller_without_read_is_refused_before_any_wait(stack, key):
    client = ApiClient(stack, scope="state:write")
    client.put(key, 1)
    started = time.monotonic()
    response = client.get(key, headers={"If-None-Match": '"1"', "Prefer": "wait=20"})
    assert response.status_code == 403
    assert time.monotonic() - started < 1


def test_fifty_concurrent_long_polls_of_one_key_all_wake(client, watcher, key):
    client.put(key, "before")
    # Fifty workers started first, ten more a wave (each wave's requests side by side: the warm workers take
    # some, ten start): fifty cold starts at once on two loaded cores outlast the stack's init timeout, and
    # this test is about waking waiters, not about starting them.
    for wave in range(10, 51, 10):
        warming = [LongPoll(client, key, '"1"', wait=1) for _ in range(wave)]
        assert {poll.join(timeout=60).status_code for poll in warming} == {304}
    polls = [LongPoll(client, key, '"1"') for _ in range(50)]
    subscribed(watcher, key, count=50, timeout=60)

    client.put(key, "after")
    acknowledged = time.monotonic()

    responses = [poll.join() for poll in polls]
    assert [(r.status_code, r.headers["ETag"]) for r in responses] == [(200, '"2"')] * 50
    assert max(poll.answered_at for poll in polls) - acknowledged < 2.0


def test_a_subscription_killed_mid_wait_still_answers_by_polling(client, watcher, key, stack):
    client.put(key, 1)
    poll = LongPoll(client, key, '"1"')
    subscribed(watcher, key)

    assert watcher.client_kill_filter(_type="pubsub") >= 1
    assert watcher.pubsub_numsub(change_channel(key))[0][1] == 0
    time.sleep(0.2)
    client.put(key, 2)
    acknowledged = time.monotonic()

    response = poll.join()
    assert (response.status_code, response.headers["ETag"]) == (200, '"2"')
    assert poll.answered_at - acknowledged < POLL_SECONDS + 0.4
    assert stack.server_errors() == []
