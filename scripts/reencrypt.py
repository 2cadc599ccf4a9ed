"""Re-encrypt every sensitive value under a new KMS key, online: after a key is suspected compromised, or to
move to another key. KMS's own yearly rotation needs none of this (old key material stays usable).

    python scripts/reencrypt.py --table <name> --key-id <new key ARN> [--endpoint-url URL]
        [--redis-url URL] [--checkpoint FILE] [--rate 100]

Scans the table for sealed inline values (state and history items) whose data key is not under `--key-id`,
opens each and seals it again under the new key, bound to the same table, key and write id, and writes it
back with a conditional UpdateItem that holds only while the item still holds the ciphertext the Scan read
(and, for a state item, the same version and write id). A concurrent write therefore always wins: it is
already sealed under whatever key its writer has (deploy STATE_KMS_KEY_ID = the new key first, so new writes
use it), and the job skips the item it replaced. The item's version does not change, so the stream
consumers take the record for no change of state (stream/events.py, `new_state_image`): no event, no history.

With `--redis-url`, each re-encrypted key's cache entry is deleted (an eviction, which the cache's protocol
tolerates), so no entry under the old key outlives the job. Resumable: the Scan's position is kept in the
checkpoint file after each page, and a run started again goes on from there; the file is removed at the end.
Large values (blobs) are immutable and not re-encrypted by this job: they are counted and reported (a PUT of
the same value re-seals one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers" / "state_core"))

from state_core.domain.codec import SEALED_PREFIX, StoredValue
from state_core.domain.errors import DecryptionFailed


@dataclass(slots=True)
class Progress:
    pages: int = 0
    sealed_seen: int = 0
    reencrypted: int = 0
    already_new: int = 0
    raced: int = 0
    # Sealed values that do not open (tampered, or under a key the job may not use): left as they are, and
    # counted, so one bad item does not stop the job; the read path reports each one (DecryptionFailures).
    unreadable: int = 0
    blobs_left: int = 0
    resume_from: dict[str, Any] | None = None
    done: bool = False


def reencrypt(  # noqa: PLR0913  one knob each, keyword-only
    client: Any,
    table: str,
    cipher: Any,
    *,
    new_key_arn: str,
    start_from: dict[str, Any] | None = None,
    page_size: int = 100,
    rate: float = 100.0,
    evict: Callable[[str], None] | None = None,
    checkpoint: Callable[[Progress], None] | None = None,
) -> Progress:
    """Re-seal every sealed inline value not under `new_key_arn` (`cipher` seals under it)."""
    progress = Progress(resume_from=start_from)
    request: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": "begins_with(#encoding, :sealed)",
        # What re-sealing needs, never a blob chunk's bytes (chunks carry no encoding and are filtered out anyway).
        "ProjectionExpression": "pk, sk, #encoding, #value, value_size, write_id, version, blob_id",
        "ExpressionAttributeNames": {"#encoding": "encoding", "#value": "value"},
        "ExpressionAttributeValues": {":sealed": {"S": SEALED_PREFIX}},
        "Limit": page_size,
    }
    started, sent = time.monotonic(), 0
    while True:
        if progress.resume_from is not None:
            request["ExclusiveStartKey"] = progress.resume_from
        page = client.scan(**request)
        for item in page.get("Items", []):
            progress.sealed_seen += 1
            if "value" not in item:
                progress.blobs_left += 1
                continue
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sent += 1
            try:
                outcome = _reseal(client, table, cipher, item, new_key_arn)
            except DecryptionFailed:
                progress.unreadable += 1
                continue
            if outcome == "done":
                progress.reencrypted += 1
                if evict is not None and item["sk"]["S"] == "state":
                    evict(item["pk"]["S"])
            elif outcome == "new":
                progress.already_new += 1
            else:
                progress.raced += 1
        progress.pages += 1
        progress.resume_from = page.get("LastEvaluatedKey")
        progress.done = progress.resume_from is None
        if checkpoint is not None:
            checkpoint(progress)
        if progress.done:
            return progress


def _reseal(client: Any, table: str, cipher: Any, item: dict[str, Any], new_key_arn: str) -> str:
    from botocore.exceptions import ClientError

    key, write_id = item["pk"]["S"], item.get("write_id", {}).get("S")
    old = StoredValue(item["encoding"]["S"], bytes(item["value"]["B"]), int(item["value_size"]["N"]))
    if cipher.key_of(old) == new_key_arn:
        return "new"
    if write_id is None:
        return "raced"  # nothing binds it: it cannot be opened either, and the read path reports it
    fresh = cipher.seal(key, write_id, cipher.open(key, write_id, old))
    condition = "#value = :old AND #write_id = :write_id"
    values: dict[str, Any] = {
        ":old": {"B": old.data},
        ":new": {"B": fresh.data},
        ":write_id": {"S": write_id},
        ":encoding": {"S": fresh.encoding},
    }
    if "version" in item:
        condition += " AND #version = :version"
        values[":version"] = {"N": item["version"]["N"]}
    try:
        client.update_item(
            TableName=table,
            Key={"pk": item["pk"], "sk": item["sk"]},
            UpdateExpression="SET #value = :new, #encoding = :encoding",
            ConditionExpression=condition,
            ExpressionAttributeNames={
                "#value": "value",
                "#encoding": "encoding",
                "#write_id": "write_id",
                **({"#version": "version"} if "version" in item else {}),
            },
            ExpressionAttributeValues=values,
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return "raced"  # a newer write replaced it, sealed by its own writer
        raise
    return "done"


def main(argv: list[str] | None = None) -> int:
    import boto3

    from state_core.runtime import DYNAMODB_CONFIG
    from state_core.security.envelope import KmsEnvelope

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--key-id", required=True, help="ARN of the KMS key to re-encrypt under")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--redis-url", help="delete each re-encrypted key's cache entry in this Redis")
    parser.add_argument("--rate", type=float, default=100.0, help="at most this many updates a second")
    parser.add_argument("--checkpoint", type=Path, default=Path(".reencrypt.json"))
    args = parser.parse_args(argv)
    start_from = json.loads(args.checkpoint.read_text()) if args.checkpoint.exists() else None
    if start_from is not None:
        print(f"going on from {args.checkpoint}")
    kms = boto3.client("kms", endpoint_url=args.endpoint_url)
    arn = kms.describe_key(KeyId=args.key_id)["KeyMetadata"]["Arn"]
    cipher = KmsEnvelope(table_name=args.table, key_id=arn, sensitive=lambda _: True, kms=lambda: kms)
    evict = None
    if args.redis_url:
        import redis

        cache = redis.Redis.from_url(args.redis_url)

        def evict(key: str) -> None:
            cache.delete(f"st:{{{key}}}")

    def checkpoint(progress: Progress) -> None:
        if progress.resume_from is not None:
            args.checkpoint.write_text(json.dumps(progress.resume_from))
        print(
            f"page {progress.pages}: {progress.sealed_seen} sealed items read, {progress.reencrypted} re-encrypted,"
            f" {progress.already_new} already under the new key, {progress.raced} replaced meanwhile,"
            f" {progress.unreadable} unreadable (left as they are), {progress.blobs_left} large values left",
            flush=True,
        )

    client = boto3.client("dynamodb", endpoint_url=args.endpoint_url, config=DYNAMODB_CONFIG)
    reencrypt(
        client,
        args.table,
        cipher,
        new_key_arn=arn,
        start_from=start_from,
        rate=args.rate,
        evict=evict,
        checkpoint=checkpoint,
    )
    args.checkpoint.unlink(missing_ok=True)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
