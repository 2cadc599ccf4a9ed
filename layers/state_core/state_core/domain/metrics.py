"""The metrics collaborator the core is given (Powertools' Metrics in the functions, a recorder in tests)."""

from __future__ import annotations

from typing import Any, Protocol


class MetricsSink(Protocol):
    def add_metric(self, name: str, unit: Any, value: float) -> None: ...
