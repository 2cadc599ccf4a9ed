"""The local stack's long-lived processes freeze what survives a full collection, so the next one walks only
what was allocated since (devstack/gc_pauses.py). Run in a child interpreter: freezing is process-wide."""

import json
import subprocess
import sys

from devstack.template import REPO_ROOT

CHILD = """
import gc, json
from devstack.gc_pauses import freeze_survivors_of_full_collections

startup = [[i] for i in range(200_000)]  # what a process holds after start-up: moto's modules, its tables
freeze_survivors_of_full_collections()
freeze_survivors_of_full_collections()  # idempotent: one callback
frozen_at_start = gc.get_freeze_count()
items = [[i] for i in range(100_000)]  # what it stores while it serves
gc.collect()  # a full collection, then its survivors are frozen
print(json.dumps({
    "frozen_at_start": frozen_at_start,
    "frozen_after_full_collection": gc.get_freeze_count(),
    "left_for_the_next_full_collection": len(gc.get_objects(generation=2)),
    "callbacks": sum(1 for c in gc.callbacks if c.__name__ == "_freeze_after_full_collection"),
}))
"""


def test_survivors_of_a_full_collection_are_frozen_and_the_next_one_walks_only_new_objects():
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(done.stdout)
    assert found["callbacks"] == 1
    assert found["frozen_at_start"] >= 200_000
    assert found["frozen_after_full_collection"] >= found["frozen_at_start"] + 100_000
    assert found["left_for_the_next_full_collection"] < 1_000
