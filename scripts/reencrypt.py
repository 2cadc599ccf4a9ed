"""Re-encrypt every sensitive value under a new KMS key, online: inline values, large values (blobs) and change
proposals (state_core/storage/reencryption.py says how each stays safe against concurrent writes).

    python scripts/reencrypt.py --table <name> --key-id <new key ARN> [--endpoint-url URL]
        [--redis-url URL] [--checkpoint FILE] [--rate 100]

Deploy the new key as STATE_KMS_KEY_ID first, so new writes use it. With `--redis-url`, each re-encrypted key's
cache entry is deleted (an eviction, which the cache's protocol tolerates), so no entry under the old key
outlives the job. Prints its progress after each Scan page and keeps the Scan's position in the checkpoint
file, so a run that stopped goes on from there when started again; the file is removed at the end. Exits 1
when some sealed items were not moved (replaced or decided meanwhile, or unreadable): run it again; a run that
exits 0 is what docs/security.md ("Rotation and re-encryption") asks for before the old key goes. The old
large values' chunks go through the blob collection afterwards (`make sweep-blobs`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers" / "state_core"))


def main(argv: list[str] | None = None) -> int:
    import boto3

    from state_core.runtime import DYNAMODB_CONFIG
    from state_core.security.envelope import KmsEnvelope
    from state_core.storage.reencryption import Progress, reencrypt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--key-id", required=True, help="ARN of the KMS key to re-encrypt under")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--redis-url", help="delete each re-encrypted key's cache entry in this Redis")
    parser.add_argument("--rate", type=float, default=100.0, help="at most this many sealed items a second")
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
            f"page {progress.pages}: {progress.sealed_seen} sealed items read, {progress.already_new} already under"
            f" the new key; values: {progress.reencrypted} re-encrypted, {progress.raced} replaced meanwhile,"
            f" {progress.unreadable} unreadable (left as they are); large values: {progress.blobs_reencrypted}"
            f" re-encrypted ({progress.blob_items_switched} items switched), {progress.blobs_raced} replaced"
            f" meanwhile, {progress.blobs_unreadable} unreadable; proposals: {progress.proposals_reencrypted}"
            f" re-encrypted, {progress.proposals_raced} decided meanwhile, {progress.proposals_unreadable} unreadable",
            flush=True,
        )

    client = boto3.client("dynamodb", endpoint_url=args.endpoint_url, config=DYNAMODB_CONFIG)
    progress = reencrypt(
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
    if progress.left():
        # Replaced or decided meanwhile is normal while writers run; a run with nothing left says the old key
        # may go (docs/security.md).
        print(f"done; {progress.left()} sealed items not moved: run again once writes before the new key settled")
        return 1
    print("done: every sealed value, large value and proposal read is under the new key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
