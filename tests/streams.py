"""The table's stream, read by hand: what the local event source mapping would deliver, so a test decides
when the stream catches up (the history has no other writer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3

from devstack.stream_poller import lambda_record

if TYPE_CHECKING:
    from state_core.stream.lifecycle import StreamLifecycle

REGION = "us-east-1"


def stream_records(state_table: str, keys: set[str]) -> list[dict[str, Any]]:
    """Every stream record of `keys` so far, in Lambda's format and in stream order."""
    ddb = boto3.client("dynamodb", region_name=REGION)
    streams = boto3.client("dynamodbstreams", region_name=REGION)
    arn = ddb.describe_table(TableName=state_table)["Table"]["LatestStreamArn"]
    records: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = streams.get_records(ShardIterator=iterator, Limit=1000)
            records += response["Records"]
            if not response["Records"]:
                break
            iterator = response.get("NextShardIterator")
    return [lambda_record(r, arn) for r in records if r["dynamodb"]["Keys"]["pk"]["S"] in keys]


def up_to(records: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
    """The records of one key until its `version`: a batch of a stream that lags behind the table."""
    batch = []
    for record in records:
        new = record["dynamodb"].get("NewImage") or {}
        if "version" in new and int(new["version"]["N"]) > version:
            break
        batch.append(record)
    return batch


def record_history(lifecycle: StreamLifecycle, records: list[dict[str, Any]]) -> None:
    """The publisher's history step (record_versions, then removals) for `records`, without the events."""
    from state_core.stream.events import build_change

    changes = [
        change
        for position, record in enumerate(records)
        if (change := build_change(record, position=position, bus_name="unused")) is not None
    ]
    lifecycle.record_versions(changes)
    lifecycle.on_removals(records)
