"""The capacity and cost model (scripts/cost_model.py): its unit rules, and docs/capacity.md holding exactly
the tables it generates, so the page's figures are computed, never typed in."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cost_model", REPO_ROOT / "scripts" / "cost_model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up by name while the class is built
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cost_model = _load()


def test_the_capacity_page_holds_the_tables_the_script_generates() -> None:
    doc = (REPO_ROOT / "docs" / "capacity.md").read_text(encoding="utf-8")
    assert cost_model.embedded(doc) == cost_model.tables(), "run: python scripts/cost_model.py --write"


def test_check_mode_agrees_with_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert cost_model.main(["--check"]) == 0
    assert capsys.readouterr().err == ""


def test_writing_replaces_only_what_lies_between_the_markers() -> None:
    doc = f"# Title\n\nbefore\n\n{cost_model.BEGIN}\nstale figures\n{cost_model.END}\n\nafter\n"
    written = cost_model.with_tables(doc)
    assert written.startswith(f"# Title\n\nbefore\n\n{cost_model.BEGIN}\n")
    assert written.endswith(f"{cost_model.END}\n\nafter\n")
    assert "stale figures" not in written
    assert cost_model.embedded(written) == cost_model.tables()


@pytest.mark.parametrize(
    ("item_bytes", "wru", "rru"),
    [(1, 1, 1), (318, 1, 1), (1024, 1, 1), (1025, 2, 1), (4096, 4, 1), (4097, 5, 2), (350_070, 342, 86)],
)
def test_request_units_round_up_per_kb_written_and_per_4_kb_read(item_bytes: int, wru: int, rru: int) -> None:
    assert cost_model.write_units(item_bytes) == wru
    assert cost_model.read_units(item_bytes) == rru


def test_a_1_mib_value_that_does_not_compress_costs_what_the_design_says() -> None:
    # design.md: ~1,025 WCU for the chunks; performance.md: ~257 RCU per consistent read.
    chunks = cost_model._chunks(1_048_576)
    assert len(chunks) == 3
    assert sum(cost_model.write_units(chunk) for chunk in chunks) == 1025
    assert sum(cost_model.read_units(chunk) for chunk in chunks) == 258


def test_lambda_time_is_cpu_at_the_memory_s_share_of_a_vcpu_plus_the_waits() -> None:
    op = cost_model.Operation("x", "f", cpu_ms=1.0, waits=(("ddb_write", 1), ("redis", 2)), memory_mb=1769)
    assert op.duration_ms == pytest.approx(1.0 + cost_model.WAIT_MS["ddb_write"] + 2 * cost_model.WAIT_MS["redis"])
    half = cost_model.Operation("x", "f", cpu_ms=1.0, memory_mb=1769 // 2)
    assert half.duration_ms == pytest.approx(1769 / (1769 // 2))


def test_billing_rounds_each_invocation_up_to_a_millisecond_shared_by_its_batch() -> None:
    alone = cost_model.Operation("x", "f", cpu_ms=0.1, memory_mb=1769)
    assert alone.billed_ms == 1
    batched = cost_model.Operation("x", "f", cpu_ms=0.1, batch=25, memory_mb=1769)
    assert batched.billed_ms == pytest.approx(3 / 25)
    assert batched.invocations == pytest.approx(1 / 25)


def test_dollars_per_operation_follow_the_price_table() -> None:
    prices = cost_model.Prices()
    op = cost_model.Operation(
        "x", "f", cpu_ms=0, waits=(("ddb_write", 1),), api_requests=1, read_units=2, write_units=3, events=1
    )
    cost = op.dollars(prices)
    gb_seconds = 512 / 1024 * 6 / 1000
    assert cost.lambda_ == pytest.approx(gb_seconds * prices.lambda_gb_second + prices.lambda_request)
    assert cost.api == pytest.approx(1e-6)
    assert cost.dynamodb == pytest.approx(2 * 0.125e-6 + 3 * 0.625e-6)
    assert cost.events == pytest.approx(1e-6)
    assert cost.total == pytest.approx(cost.lambda_ + cost.api + cost.dynamodb + cost.events + cost.logs)


def test_the_request_path_makes_one_dynamodb_write_per_write_request() -> None:
    ops = {op.name: op for op in cost_model.operations()}
    for name in ("PUT", "PATCH, uncontended (cached)", "DELETE"):
        # One write request: the state item's 1 WRU, and its ListIndex entry's 1 WRU that DynamoDB adds.
        assert ops[name].write_units == 1 + cost_model.LIST_INDEX_WRITE_UNITS, name
        assert ops[name].read_units == 0, name
    assert ops["GET, cache hit"].read_units == 0
    assert ops["GET, cache miss"].read_units == 1


def test_the_model_uses_the_template_s_memory_size_and_retention() -> None:
    template = (REPO_ROOT / "template.yaml").read_text(encoding="utf-8")
    assert f"MemorySize: {cost_model.MEMORY_MB}\n" in template
    assert template.count("MemorySize:") == 1, "a function overrides MemorySize: the model needs it per function"
    retention = re.search(r"HistoryRetentionDays:\n\s+Type: Number\n\s+Default: (\d+)", template)
    assert retention is not None
    assert int(retention.group(1)) == cost_model.HISTORY_RETENTION_DAYS


def test_the_model_bills_every_metric_the_template_s_alarms_watch() -> None:
    from devstack.template import load_yaml

    watched = 0
    for resource in load_yaml(REPO_ROOT / "template.yaml")["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        alarm = resource["Properties"]
        watched += 1 if "MetricName" in alarm else 0
        for query in alarm.get("Metrics", []):
            # A MetricStat is one metric; a Metrics Insights query at least one (math over them is free).
            watched += 1 if "MetricStat" in query or "SELECT" in query.get("Expression", "") else 0
    assert watched == cost_model.ALARM_METRICS


def test_the_model_uses_the_core_s_chunk_size_and_history_page() -> None:
    from state_core.api.history import DEFAULT_PAGE
    from state_core.storage.blobs import CHUNK_BYTES

    assert cost_model.CHUNK_BYTES == CHUNK_BYTES
    assert cost_model.HISTORY_PAGE == DEFAULT_PAGE
