"""1 MiB values (the largest the contract allows) over real HTTP, through the cache and with consistent=true."""

import base64
import json
import random
import time
import uuid

import pytest

from tests.doubles import ApiClient

pytestmark = pytest.mark.e2e

ONE_MIB = 1_048_576


def canonical(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def random_base64_text(rng):
    return base64.b64encode(rng.randbytes(ONE_MIB)).decode()[: ONE_MIB - 2]


def random_unicode_text(rng):
    """Multi-byte characters (2, 3 and 4 bytes in UTF-8, the last outside the BMP), exactly 1 MiB."""
    pools = [(0x00A0, 0x07FF), (0x0800, 0xD7FF), (0xE000, 0xFFFD), (0x1F300, 0x1FAFF), (0x10000, 0x1F2FF)]
    chars, size = [], 2
    while True:
        low, high = rng.choice(pools)
        char = chr(rng.randint(low, high))
        width = len(char.encode())
        if size + width > ONE_MIB:
            break
        chars.append(char)
        size += width
    chars.append("a" * (ONE_MIB - size))
    return "".join(chars)


def deep_object(rng):
    """64 levels deep (the most allowed), with a few hundred kB at the bottom and on the way down."""
    value = {"leaf": base64.b64encode(rng.randbytes(200_000)).decode()}
    for level in range(63):
        value = {"level": level, "child": value, "noise": rng.random()}
    return value


def number_array(rng):
    numbers, size = [], 2
    while True:
        number = rng.choice([rng.randint(-(10**12), 10**12), rng.random() * 1e6, -rng.random()])
        width = len(json.dumps(number)) + (1 if numbers else 0)
        if size + width > ONE_MIB:
            break
        numbers.append(number)
        size += width
    return numbers


@pytest.fixture(scope="module")
def client(devstack):
    return ApiClient(devstack)


@pytest.mark.parametrize("make", [random_base64_text, random_unicode_text, deep_object, number_array])
def test_1_mib_value_round_trips_exactly(client, make):
    value = make(random.Random(make.__name__))
    assert len(canonical(value)) <= ONE_MIB
    key = f"large:{uuid.uuid4().hex}"

    # UTF-8 as is: \uXXXX escapes would triple the body past the 1 MiB + 64 KiB limit.
    body = json.dumps({"value": value}, ensure_ascii=False).encode()
    put = client.put(key, body=body)
    assert put.status_code == 201, put.text
    for params in ({}, {}, {"consistent": "true"}):  # a fill, a cache hit, then straight from DynamoDB
        read = client.get(key, **params)
        assert read.status_code == 200
        assert canonical(read.json()["value"]) == canonical(value)


def test_one_byte_over_1_mib_is_413_and_nothing_is_written(client):
    key = f"large:{uuid.uuid4().hex}"
    value = random_base64_text(random.Random(1)) + "x"
    response = client.put(key, value)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/problem+json"
    assert client.get(key, consistent="true").status_code == 404


def chunk_items(devstack, key):
    client = devstack.client("dynamodb")
    pages = client.get_paginator("scan").paginate(
        TableName=devstack.table_name,
        FilterExpression="#owner = :k",
        ExpressionAttributeNames={"#owner": "owner"},
        ExpressionAttributeValues={":k": {"S": key}},
        ProjectionExpression="pk",
    )
    return [item for page in pages for item in page["Items"]]


def test_a_replaced_value_s_blob_stays_for_its_history_item(devstack, client):
    # The history item of version 1 refers to the blob, so replacing the value keeps it; it goes
    # when that history item leaves retention (tests/e2e/test_version_history_and_ttl.py).
    key = f"large:{uuid.uuid4().hex}"
    value = random_base64_text(random.Random(7))
    assert client.put(key, value).ok
    chunks = sorted(item["pk"]["S"] for item in chunk_items(devstack, key))
    assert len(chunks) >= 2

    assert client.put(key, "tiny").status_code == 200
    time.sleep(1.0)  # the stream has processed both versions by now

    assert sorted(item["pk"]["S"] for item in chunk_items(devstack, key)) == chunks
    assert client.get(key).json()["value"] == "tiny"
    assert client.get(key, version="1").json()["value"] == value
