"""Give the listing index the live keys written before it existed: set `list_shard` on every live state item
missing it, once (docs/listing.md, "Backfill").

    python scripts/backfill_listing.py --table <name> [--endpoint-url URL] [--rate 100] [--checkpoint FILE]

Scans the whole table at most `--rate` updates a second, each a conditional UpdateItem that never touches an
item a newer write changed. Prints its progress after every Scan page and keeps where it is in the
checkpoint file, so a run that stopped (Ctrl-C, a crash, throttling) goes on from there when started again
with the same file; the file is removed when the backfill is done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers" / "state_core"))


def main(argv: list[str] | None = None) -> int:
    import boto3

    from state_core.runtime import DYNAMODB_CONFIG
    from state_core.storage.listing_backfill import BackfillProgress, backfill_listing

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--endpoint-url")
    parser.add_argument("--rate", type=float, default=100.0, help="at most this many updates a second")
    parser.add_argument("--page-size", type=int, default=100, help="items the Scan reads a page")
    parser.add_argument("--checkpoint", type=Path, default=Path(".backfill-listing.json"))
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.page_size <= 0:
        parser.error("--rate and --page-size must be positive")
    start_from = json.loads(args.checkpoint.read_text()) if args.checkpoint.exists() else None
    if start_from is not None:
        print(f"going on from {args.checkpoint}")
    began = time.monotonic()

    def checkpoint(progress: BackfillProgress) -> None:
        if progress.resume_from is not None:
            args.checkpoint.write_text(json.dumps(progress.resume_from))
        print(
            f"page {progress.pages}: {progress.scanned} items without a shard read, {progress.updated} given one,"
            f" {progress.raced} changed meanwhile (left to their newer write); {time.monotonic() - began:.0f} s",
            flush=True,
        )

    client = boto3.client("dynamodb", endpoint_url=args.endpoint_url, config=DYNAMODB_CONFIG)
    progress = backfill_listing(
        client, args.table, start_from=start_from, rate=args.rate, page_size=args.page_size, checkpoint=checkpoint
    )
    args.checkpoint.unlink(missing_ok=True)
    print(f"done: {progress.updated} keys added to the listing index")
    return 0


if __name__ == "__main__":
    sys.exit(main())
