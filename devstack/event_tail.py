"""``make events``: print StateChanged events as they arrive in the ``state-changes`` queue.

Polls the queue the template's example rule fills and prints one JSON line per event: the
EventBridge envelope's ``id`` and ``time`` plus the ``detail``. Messages are deleted once printed
unless ``--keep`` is given.

Local stack by default (``MOTO_PORT``, or ``AWS_ENDPOINT_URL``); for a deployed stack pass the
``StateChangesQueueUrl`` output and ``--endpoint-url ''`` to use your AWS credentials. Against AWS it
long-polls (20 s waits: one request per 20 s while idle). Against the local emulator it short-polls
every 0.2 s instead: the emulator serves one request at a time (moto is not safe under concurrent
requests), so a 20 s long poll would hold up every other call into it, the functions' included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, cast

from devstack.resources import DUMMY_CREDENTIALS
from devstack.template import REGION, STACK_NAME

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import DeleteMessageBatchRequestEntryTypeDef


def local_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or f"http://127.0.0.1:{os.environ.get('MOTO_PORT', '5000')}"


def sqs_client(endpoint_url: str) -> SQSClient:
    import boto3

    if endpoint_url:
        return cast(
            "SQSClient", boto3.client("sqs", endpoint_url=endpoint_url, region_name=REGION, **DUMMY_CREDENTIALS)
        )
    return cast("SQSClient", boto3.client("sqs"))


def take_messages(sqs: SQSClient, queue_url: str, *, wait: int = 0, keep: bool = False) -> list[Any]:
    """One receive of up to 10 messages, their JSON bodies, deleted in one batch unless `keep`.

    Two calls for ten messages instead of eleven: the emulator serves one request at a time, and every call
    into it holds up the functions' calls."""
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait).get("Messages", [])
    if messages and not keep:
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
        ]
        failed = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
        if failed:
            raise RuntimeError(f"could not delete {len(failed)} messages from {queue_url}: {failed[0]}")
    return [json.loads(message["Body"]) for message in messages]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-url", default=local_endpoint(), help="AWS emulator ('' for real AWS)")
    parser.add_argument("--queue-url", default="", help=f"default: the local {STACK_NAME}-state-changes queue")
    parser.add_argument("--keep", action="store_true", help="leave the messages in the queue")
    parser.add_argument("--once", action="store_true", help="stop after one empty poll")
    args = parser.parse_args(argv)
    sqs = sqs_client(args.endpoint_url)
    queue_url = args.queue_url or sqs.get_queue_url(QueueName=f"{STACK_NAME}-state-changes")["QueueUrl"]
    print(f"waiting for events on {queue_url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            wait = 0 if args.endpoint_url else 20
            events = take_messages(sqs, queue_url, wait=wait, keep=args.keep)
            for event in events:
                line = {"id": event.get("id"), "time": event.get("time"), **(event.get("detail") or {})}
                print(json.dumps(line, ensure_ascii=False), flush=True)
            if not events and args.once:
                return
            if not events and not wait:
                time.sleep(0.2)


if __name__ == "__main__":
    main()
