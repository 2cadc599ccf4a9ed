"""Write capacity per operation, computed from the items the real handlers write (moto's ConsumedCapacity
cannot be used: it answers a constant 1.0 for any PutItem and nothing for UpdateItem or BatchWriteItem).

DynamoDB's rules (on-demand and provisioned alike): a write costs 1 WCU per started KB of the item; an
UpdateItem is charged for the larger of the item before and after; a DeleteItem for the item deleted;
BatchWriteItem per item; a transaction twice (the service uses none). Item size: attribute names in UTF-8
plus values (strings in UTF-8, binary as is, numbers ~1 byte per two significant digits + 1, booleans and
nulls 1 byte).

Per write the request path pays the state item (and, for a large value, its chunks and marker); the stream
pays the version's history item (and drops a large value's marker). Before history came from the stream
only, the request path also put the history item, and the stream put the same item again.
"""

from __future__ import annotations

import base64
import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

MERGE_PATCH = "application/merge-patch+json"
SIZES = {"100 B": 100, "4 KiB": 4096, "1 MiB": 1_048_576 - 64}


def attribute_size(value: Mapping[str, Any]) -> int:
    """The size DynamoDB counts for one low-level attribute value."""
    ((kind, data),) = value.items()
    if kind == "S":
        return len(data.encode("utf-8"))
    if kind == "B":
        return len(data)
    if kind == "N":
        digits = data.lstrip("-").replace(".", "").strip("0") or "0"
        return math.ceil(len(digits) / 2) + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(attribute_size(v) + 1 for v in data)
    if kind == "M":
        return 3 + sum(len(k.encode("utf-8")) + attribute_size(v) + 1 for k, v in data.items())
    if kind in ("SS", "BS", "NS"):
        return sum(attribute_size({kind[0]: v}) for v in data)
    raise ValueError(f"unknown attribute type {kind}")


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    return sum(len(name.encode("utf-8")) + attribute_size(value) for name, value in item.items())


def wcu(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def _value(size: int) -> dict[str, str]:
    """A JSON object of `size` canonical bytes that zlib barely compresses (random base64): the worst case."""
    overhead = len(json.dumps({"d": ""}, separators=(",", ":")))
    text = base64.b64encode(os.urandom(size)).decode()[: size - overhead]
    return {"d": text}


def run(
    call: Callable[[str, dict[str, Any]], dict[str, Any]], http_event: Callable[..., dict[str, Any]], table: str
) -> list[dict[str, Any]]:
    """WCU of PUT (create, replace), PATCH and DELETE for each value size, through the real handlers."""
    import boto3

    from state_core.domain.history import entry_of_record
    from state_core.storage.history import history_item, operation_of_state
    from state_core.storage.state import record_of_item

    ddb = boto3.client("dynamodb", region_name="us-east-1")

    def state_item(key: str) -> dict[str, Any]:
        return (
            ddb.get_item(TableName=table, Key={"pk": {"S": key}, "sk": {"S": "state"}}, ConsistentRead=True).get("Item")
            or {}
        )

    def blob_wcu(item: Mapping[str, Any]) -> tuple[int, int]:
        """(WCU of the chunks and marker a large value wrote, WCU of the stream dropping the marker)."""
        if "blob_id" not in item:
            return 0, 0
        write_id, total = item["blob_id"]["S"], 0
        for n in range(int(item["blob_chunks"]["N"])):
            chunk = ddb.get_item(
                TableName=table,
                Key={"pk": {"S": f"chunk#{write_id}#{n:04d}"}, "sk": {"S": "chunk"}},
                ConsistentRead=True,
            )["Item"]
            total += wcu(item_size(chunk))
        marker_key = {"pk": item["pk"], "sk": {"S": f"blob#{write_id}"}}
        marker = ddb.get_item(TableName=table, Key=marker_key, ConsistentRead=True).get("Item")
        marker_wcu = wcu(item_size(marker)) if marker else 1
        return total + marker_wcu, marker_wcu

    def history_wcu(item: Mapping[str, Any]) -> int:
        entry = entry_of_record(record_of_item(item), operation_of_state(item))
        return wcu(item_size(history_item(entry, 90 * 86_400)))

    def measure(operation: str, key: str, function: str, event: dict[str, Any]) -> dict[str, Any]:
        before = state_item(key)
        call(function, event)
        after = state_item(key)
        state = wcu(max(item_size(before), item_size(after))) if before else wcu(item_size(after))
        blob, claim = blob_wcu(after) if operation != "DELETE" else (0, 0)
        history = history_wcu(after)
        return {
            "operation": operation,
            "state_item_bytes": item_size(after),
            "request_path_wcu": state + blob,
            "stream_wcu": history + claim,
            "request_path_wcu_before": state + blob + history,
            "total_wcu_before": state + blob + 2 * history + claim,
        }

    results: list[dict[str, Any]] = []
    for label, size in SIZES.items():
        key = f"capacity:{uuid.uuid4().hex}"
        value = _value(size)
        patch_body = json.dumps({"n": 1})
        steps = [
            ("PUT create", "put_state", http_event("put", key, body={"value": value})),
            ("PUT replace", "put_state", http_event("put", key, body={"value": _value(size)})),
            ("PATCH", "patch_state", http_event("patch", key, body=patch_body, content_type=MERGE_PATCH)),
            ("DELETE", "delete_state", http_event("delete", key)),
        ]
        for operation, function, event in steps:
            results.append({"value": label, **measure(operation, key, function, event)})
    return results


def format_capacity(results: list[dict[str, Any]]) -> str:
    lines = [
        "| value | operation | state item bytes | request path WCU | stream WCU | request path WCU before "
        "| total WCU before |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['value']} | {r['operation']} | {r['state_item_bytes']:,} | {r['request_path_wcu']} | "
            f"{r['stream_wcu']} | {r['request_path_wcu_before']} | {r['total_wcu_before']} |"
        )
    return "\n".join(lines)
