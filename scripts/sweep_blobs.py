"""Collect value blobs that nothing refers to (the backstop of the blob lifecycle, for blobs the stream's
cleanup missed).

    python scripts/sweep_blobs.py --table <name> [--endpoint-url URL]

Normally the stream publisher collects a key's old blobs when its state changes; this sweep also finds
blobs of writes that died between their chunks and their state item on keys never written again, once
they are a day old (the stream's retention: by then the publisher has recorded every write that landed).
It Scans the whole table, so run it rarely (make sweep-blobs against the local stack).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers" / "state_core"))


def main() -> int:
    import boto3

    from state_core.runtime import DYNAMODB_CONFIG
    from state_core.storage.blobs import BlobStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--endpoint-url")
    args = parser.parse_args()
    client = boto3.client("dynamodb", endpoint_url=args.endpoint_url, config=DYNAMODB_CONFIG)
    collected = BlobStore(client, args.table).sweep(datetime.now(UTC))
    print(f"collected {len(collected)} blob(s): {' '.join(collected)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
