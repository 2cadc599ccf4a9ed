"""The alarms and the dashboard of template.yaml: every alarm has a threshold parameter and notifies the alarm
topic, and the dashboard (and the alarms) name only metrics the code emits, found by reading the code: renaming a
metric, or an operation, in the code breaks these tests until the template follows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from devstack.template import load_yaml

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_yaml(REPO_ROOT / "template.yaml")
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
PARAMETERS: dict[str, dict[str, Any]] = TEMPLATE["Parameters"]
GLOBAL_ENVIRONMENT: dict[str, Any] = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
NAMESPACE = GLOBAL_ENVIRONMENT["POWERTOOLS_METRICS_NAMESPACE"]
SOURCES = sorted((REPO_ROOT / "layers" / "state_core" / "state_core").rglob("*.py")) + sorted(
    (REPO_ROOT / "functions").glob("*/app.py")
)
ALARMS = {lid: res["Properties"] for lid, res in RESOURCES.items() if res["Type"] == "AWS::CloudWatch::Alarm"}
TOPIC = {"Fn::If": ["HasAlarmTopic", {"Ref": "AlarmTopicArn"}, {"Ref": "AlarmTopic"}]}


def _code() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in SOURCES)


def emitted_metrics() -> set[str]:
    """Every metric name the code passes to add_metric as a literal (the status-class counters are built from the
    status, so they are spelled out from the one place that builds them)."""
    code = _code()
    names = set(re.findall(r'add_metric\(\s*name="(\w+)"', code))
    if 'name=f"Status{status // 100}xx"' in code:
        names |= {f"Status{digit}xx" for digit in "2345"}
    return names


def emitted_operations() -> set[str]:
    """The values of the `operation` dimension: each API handler's lambda_entry and each other handler's own."""
    code = _code()
    return set(re.findall(r'lambda_entry\("(\w+)"\)', code)) | set(
        re.findall(r'add_dimension\(name="operation", value="(\w+)"\)', code)
    )


def dashboard_body() -> dict[str, Any]:
    (dashboard,) = [res for res in RESOURCES.values() if res["Type"] == "AWS::CloudWatch::Dashboard"]
    body, variables = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    # Placeholders stay in as text: they are strings inside the JSON, never structure.
    assert set(re.findall(r"\$\{([^}]+)\}", body)) <= {"AWS::Region", *RESOURCES, *variables} | {
        f"{lid}.QueueName" for lid in RESOURCES
    }
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def insights_metrics(expression: str) -> list[tuple[str, str, dict[str, str]]]:
    """The metrics a Metrics Insights query reads (`SELECT SUM(Name) FROM SCHEMA(Namespace, dim, ...)`), any
    dimension value."""
    found = []
    for name, namespace, dimensions in re.findall(
        r"SELECT\s+\w+\((\w+)\)\s+FROM\s+SCHEMA\(\s*\"?([\w/]+)\"?((?:\s*,\s*\w+)*)\s*\)", expression
    ):
        found.append((namespace, name, dict.fromkeys(re.findall(r"\w+", dimensions), "*")))
    return found


def dashboard_metrics() -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, metric name, dimensions) of every metric the dashboard draws, its SEARCH expressions and Metrics
    Insights queries included (their dimension values are any)."""
    found: list[tuple[str, str, dict[str, str]]] = []
    for widget in dashboard_body()["widgets"]:
        for row in widget["properties"]["metrics"]:
            if isinstance(row[0], dict):
                expression = row[0]["expression"]
                for schema, name in re.findall(r"SEARCH\('\{([^}]*)\} MetricName=\"(\w+)\"", expression):
                    namespace, *dimensions = schema.split(",")
                    found.append((namespace, name, dict.fromkeys(dimensions, "*")))
                found += insights_metrics(expression)
                continue
            plain = [part for part in row if not isinstance(part, dict)]
            namespace, name, *pairs = plain
            found.append((namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return found


def alarm_metrics() -> list[tuple[str, str, dict[str, str]]]:
    found: list[tuple[str, str, dict[str, str]]] = []
    for alarm in ALARMS.values():
        stats = [query["MetricStat"]["Metric"] for query in alarm.get("Metrics", []) if "MetricStat" in query]
        if "MetricName" in alarm:
            stats.append(alarm)
        for query in alarm.get("Metrics", []):
            found += insights_metrics(query.get("Expression", ""))
        for metric in stats:
            dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            found.append((metric["Namespace"], metric["MetricName"], dimensions))
    return found


def test_every_alarm_has_a_threshold_parameter_and_notifies_the_alarm_topic():
    assert len(ALARMS) >= 8
    for logical_id, alarm in ALARMS.items():
        threshold = alarm["Threshold"]
        assert isinstance(threshold, dict), logical_id
        assert set(threshold) == {"Ref"}, logical_id
        assert threshold["Ref"] in PARAMETERS, logical_id
        assert PARAMETERS[threshold["Ref"]]["Type"] == "Number", logical_id
        assert alarm["AlarmActions"] == [TOPIC], logical_id
        assert alarm["OKActions"] == [TOPIC], logical_id


def test_each_threshold_parameter_belongs_to_one_alarm():
    thresholds = [alarm["Threshold"]["Ref"] for alarm in ALARMS.values()]
    assert len(thresholds) == len(set(thresholds))
    assert {name for name in PARAMETERS if name.endswith("AlarmThreshold")} == set(thresholds)


def test_the_stack_has_a_topic_of_its_own_only_when_none_is_given():
    topic = RESOURCES["AlarmTopic"]
    assert topic["Type"] == "AWS::SNS::Topic"
    assert topic["Condition"] == "CreatesAlarmTopic"
    assert TEMPLATE["Conditions"]["CreatesAlarmTopic"] == {"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}


def test_the_alarms_cover_what_the_service_promises_to_page_for():
    watched = {(namespace, name) for namespace, name, _ in alarm_metrics()}
    assert {
        ("AWS/ApiGateway", "5xx"),
        ("AWS/ApiGateway", "Latency"),
        ("AWS/Lambda", "IteratorAge"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/DynamoDB", "ReadThrottleEvents"),
        ("AWS/DynamoDB", "WriteThrottleEvents"),
        (NAMESPACE, "RedisCredentialErrors"),
        (NAMESPACE, "CorruptStoredValues"),
        # Encryption: a value that does not decrypt, and KMS refusing the key or unavailable (writes fail first).
        (NAMESPACE, "DecryptionFailures"),
        (NAMESPACE, "KmsErrors"),
    } <= watched


def test_the_p99_alarm_reads_a_percentile():
    assert ALARMS["ApiLatencyP99Alarm"]["ExtendedStatistic"] == "p99"


@pytest.mark.parametrize("source", ["dashboard", "alarms"])
def test_the_service_metrics_used_are_the_ones_the_code_emits(source: str):
    used = dashboard_metrics() if source == "dashboard" else alarm_metrics()
    ours = [(name, dimensions) for namespace, name, dimensions in used if namespace == NAMESPACE]
    assert ours, "no metric of the service's own namespace is used"
    emitted, operations = emitted_metrics(), emitted_operations()
    assert not {name for name, _ in ours} - emitted
    for name, dimensions in ours:
        # The powertools EMF dimension set: the operation, and the service (POWERTOOLS_SERVICE_NAME).
        assert set(dimensions) == {"operation", "service"}, name
        assert dimensions["service"] in ("*", GLOBAL_ENVIRONMENT["POWERTOOLS_SERVICE_NAME"]), name
        assert dimensions["operation"] == "*" or dimensions["operation"] in operations, name


def test_the_dashboard_has_the_promised_panels():
    titles = " / ".join(widget["properties"]["title"] for widget in dashboard_body()["widgets"]).lower()
    for panel in (
        "latency p50 per route",
        "latency p99 per route",
        "4xx and 5xx rate",
        "throttles",
        "lambda errors",
        "lambda concurrency",
        "consumed capacity",
        "cache hit ratio",
        "lock waits and timeouts",
        "iterator age",
        "dead-letter depth",
        "authorizer denials",
    ):
        assert panel in titles
    drawn = {(namespace, name) for namespace, name, _ in dashboard_metrics()}
    assert {("AWS/DynamoDB", "ReadThrottleEvents"), ("AWS/Lambda", "ConcurrentExecutions")} <= drawn
    assert {(NAMESPACE, name) for name in ("CacheHits", "CacheMisses", "LockTimeouts", "AuthorizationDenials")} <= drawn


def test_the_metric_scan_sees_a_renamed_metric():
    """The scan reads the code, not a list: a metric the code no longer names is reported missing."""
    assert "LockTimeouts" in emitted_metrics()
    assert "LockTimeout" not in emitted_metrics()
    assert {"get", "put", "authorize", "publish"} <= emitted_operations()


def test_metrics_insights_queries_are_read_for_their_metric():
    """A metric named only in a Metrics Insights query (the decryption failures' alarm and panel) is checked
    against the code like any other."""
    assert (NAMESPACE, "DecryptionFailures", {"operation": "*", "service": "*"}) in alarm_metrics()
    assert (NAMESPACE, "DecryptionFailures", {"operation": "*", "service": "*"}) in dashboard_metrics()
    assert insights_metrics("SELECT SUM(Renamed) FROM SCHEMA(StateService, operation, service)") == [
        ("StateService", "Renamed", {"operation": "*", "service": "*"})
    ]


@pytest.mark.parametrize("metric", ["Errors", "ConcurrentExecutions", "Throttles"])
def test_the_lambda_panels_draw_every_function(metric: str):
    """A function added to the template without its line on these panels would fail unseen."""
    variables = RESOURCES["ServiceDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][1]
    drawn = set()
    for namespace, name, dimensions in dashboard_metrics():
        if (namespace, name) == ("AWS/Lambda", metric) and "FunctionName" in dimensions:
            placeholder = dimensions["FunctionName"].removeprefix("${").removesuffix("}")
            resolved = variables.get(placeholder, {"Ref": placeholder})
            refs = re.findall(r"'Ref': '(\w+)'", str(resolved))
            drawn |= set(refs)
    functions = {lid for lid, res in RESOURCES.items() if res["Type"] == "AWS::Serverless::Function"}
    assert functions - drawn == set()


def test_operations_doc_explains_every_alarm_and_dashboard_panel():
    doc = (REPO_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    alarms_section = doc.split("### Alarms", 1)[1].split("### The CloudWatch dashboard", 1)[0]
    for logical_id in ALARMS:
        assert f"`{logical_id}`" in alarms_section, f"docs/operations.md has no row for the alarm {logical_id}"
    panels_section = doc.split("### The CloudWatch dashboard", 1)[1].split("### Traces", 1)[0]
    for widget in dashboard_body()["widgets"]:
        title = re.sub(r"\s*\([^)]*\)$", "", widget["properties"]["title"])
        assert f"*{title}*" in panels_section, f"docs/operations.md does not explain the panel {title!r}"
