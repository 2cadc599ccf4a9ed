"""What every function's entry point (state_core.observability.lambda_entry) counts per invocation: one request, its
status class and its latency, for answers and for uncaught errors alike (API Gateway answers those 500), so the
requests by operation and status add up to what callers saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from state_core.observability import lambda_entry
from tests.doubles import LambdaContext

pytestmark = pytest.mark.unit

EVENT = json.loads((Path(__file__).resolve().parents[2] / "events" / "get_state.json").read_text())


def counted(out: str) -> dict[str, Any]:
    (record,) = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]
    names = [m["Name"] for m in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    return {name: record[name] for name in names} | {"operation": record["operation"]}


def test_an_answer_counts_one_request_of_its_status_class(capsys: pytest.CaptureFixture[str]) -> None:
    @lambda_entry("get")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 404, "body": "{}"}

    capsys.readouterr()
    assert handler(dict(EVENT), LambdaContext())["statusCode"] == 404
    got = counted(capsys.readouterr().out)
    assert {name: got[name] for name in ("operation", "Requests", "Status4xx")} == {
        "operation": "get",
        "Requests": [1.0],
        "Status4xx": [1.0],
    }
    assert "Latency" in got


def test_an_uncaught_error_counts_as_the_500_the_caller_gets(capsys: pytest.CaptureFixture[str]) -> None:
    @lambda_entry("put")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    capsys.readouterr()
    with pytest.raises(RuntimeError):
        handler(dict(EVENT), LambdaContext())
    got = counted(capsys.readouterr().out)
    assert {name: got[name] for name in ("operation", "Requests", "Status5xx")} == {
        "operation": "put",
        "Requests": [1.0],
        "Status5xx": [1.0],
    }
    assert "Latency" in got
    assert not {"Status2xx", "Status4xx"} & set(got)
