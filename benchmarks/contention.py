"""64 concurrent PATCHes on one key through the local stack (`python -m devstack` as a subprocess): their
throughput against the serialized limit 1 / (read + write time), measured on the same moto server, with
lost updates (must be 0), retries and lock waits from the PATCH function's metrics."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Row, load_module, percentile

WRITERS = 64


def _metric_totals(log: Path, names: tuple[str, ...]) -> dict[str, int]:
    totals = dict.fromkeys(names, 0.0)
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("{") and '"_aws"' in line:
            record = json.loads(line)
            for name in names:
                value = record.get(name, 0)
                totals[name] += sum(value) if isinstance(value, list) else value
    return {name: int(total) for name, total in totals.items()}


def _serialized_limit_seconds(moto_url: str, table: str, runs: int = 100) -> tuple[float, float]:
    """Median and p99 of one consistent GetItem + one conditional PutItem on the stack's moto server: the
    least a read-merge-write needs, so 1 / this is the most PATCHes per second one key can take."""
    import boto3

    ddb = boto3.client(
        "dynamodb",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - the local emulator's dummy credentials
    )
    key = {"pk": {"S": f"bench-limit:{uuid.uuid4().hex}"}, "sk": {"S": "state"}}
    ddb.put_item(TableName=table, Item={**key, "version": {"N": "1"}, "value": {"B": b"x" * 120}})
    samples = []
    for i in range(runs + 10):
        started = time.perf_counter()
        item = ddb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        version = int(item["version"]["N"])
        ddb.put_item(
            TableName=table,
            Item={**key, "version": {"N": str(version + 1)}, "value": item["value"]},
            ConditionExpression="version = :v",
            ExpressionAttributeValues={":v": {"N": str(version)}},
        )
        if i >= 10:
            samples.append(time.perf_counter() - started)
    return statistics.median(samples), percentile(samples, 0.99)


def run(rounds: int) -> list[Row]:
    import requests

    fixtures = load_module("bench_fixtures", REPO_ROOT / "tests" / "conftest.py")
    stack = fixtures.start_devstack(Path(tempfile.mkdtemp(prefix="bench-devstack-")))
    try:
        headers = {"Authorization": f"Bearer {stack.token()}"}
        session = requests.Session()
        log = stack.log_dir / "PatchStateFunction.log"
        names = ("Conflicts", "Retries", "LockWaits", "LockTimeouts")
        throughputs, lost, refused, statuses_seen = [], 0, 0, set()
        before = _metric_totals(log, names)
        # A warm-up round starts the PATCH workers (cold starts are another row's business).
        for round_number in range(rounds + 1):
            url = f"{stack.base_url}/state/contended:{uuid.uuid4().hex}"
            created = session.put(url, json={"value": {}}, headers=headers, timeout=30)
            if created.status_code != 201:
                raise RuntimeError(
                    f"the local stack answered the benchmark's PUT {created.status_code}: {created.text}"
                )
            statuses: list[tuple[int, int]] = []
            gate = threading.Barrier(WRITERS + 1)

            def add_member(
                index: int, url: str = url, statuses: list[tuple[int, int]] = statuses, gate: Any = gate
            ) -> None:
                gate.wait()
                response = requests.patch(
                    url,
                    data=json.dumps({f"m{index}": index}),
                    headers={**headers, "Content-Type": "application/merge-patch+json"},
                    timeout=30,
                )
                statuses.append((index, response.status_code))

            threads = [threading.Thread(target=add_member, args=(i,)) for i in range(WRITERS)]
            for thread in threads:
                thread.start()
            gate.wait()
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            state = session.get(url, headers=headers, timeout=30).json()
            if round_number == 0:
                before = _metric_totals(log, names)
                continue
            statuses_seen.update(status for _, status in statuses)
            members = state.get("value") or {}
            # Lost: acknowledged (200) but not in the final value. A 503 was never acknowledged.
            acknowledged = [index for index, status in statuses if status == 200]
            lost += sum(1 for index in acknowledged if members.get(f"m{index}") != index)
            refused += WRITERS - len(acknowledged)
            throughputs.append(len(acknowledged) / elapsed)
            print(f"round {round_number}: {len(acknowledged)} acknowledged in {elapsed:.2f} s", file=sys.stderr)
        time.sleep(1.0)  # the workers' last EMF lines reach the log
        after = _metric_totals(log, names)
        limit_median, limit_p99 = _serialized_limit_seconds(stack.moto_url, stack.table_name)
    finally:
        stack.stop()
    counts = {name.lower(): after[name] - before[name] for name in names}
    return [
        Row(
            f"{WRITERS} concurrent PATCH (local stack)",
            "1 / (GetItem + cond. PutItem)",
            statistics.median(throughputs),
            min(throughputs),
            len(throughputs),
            1 / limit_median,
            1 / limit_p99,
            unit="op/s",
            higher_is_better=True,
            notes={
                "lost_updates": lost,
                "refused_503": refused,
                "statuses": sorted(statuses_seen),
                "patches": WRITERS * len(throughputs),
                **counts,
            },
        )
    ]
