"""What every benchmark shares: timing loops, statistics, rows, the table and its JSON."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYER = REPO_ROOT / "layers" / "state_core"


@dataclass
class Row:
    """One table row: the measured thing and its baseline (times in ms unless `unit` says otherwise)."""

    name: str
    baseline: str
    median: float
    p99: float
    runs: int
    baseline_median: float
    baseline_p99: float
    unit: str = "ms"
    # Throughput rows: the ratio is then the fraction of the baseline's limit reached (larger is better).
    higher_is_better: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Measured over baseline (medians)."""
        return self.median / self.baseline_median if self.baseline_median else math.nan

    @property
    def overhead(self) -> float:
        return self.median - self.baseline_median

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = round(self.ratio, 3)
        data["overhead_median"] = round(self.overhead, 3)
        return data


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(samples_seconds: list[float]) -> tuple[float, float]:
    """(median, p99) in milliseconds."""
    ms = [s * 1000 for s in samples_seconds]
    return statistics.median(ms), percentile(ms, 0.99)


def timed(
    operation: Callable[[int], Any],
    runs: int,
    *,
    warmup: int = 20,
    before: Callable[[int], Any] | None = None,
) -> list[float]:
    """Seconds per call of `operation(i)`; `before(i)` runs untimed first (e.g. to empty the cache)."""
    return _timed_in_turn([(operation, before)], runs, warmup)[0]


def interleaved(
    measured: Callable[[int], Any],
    baseline: Callable[[int], Any],
    runs: int,
    *,
    warmup: int = 20,
    before: Callable[[int], Any] | None = None,
    before_baseline: Callable[[int], Any] | None = None,
) -> tuple[list[float], list[float]]:
    """Both timed in alternation, so drift in the machine's load hits both alike."""
    measured_samples, baseline_samples = _timed_in_turn([(measured, before), (baseline, before_baseline)], runs, warmup)
    return measured_samples, baseline_samples


def _timed_in_turn(
    targets: list[tuple[Callable[[int], Any], Callable[[int], Any] | None]], runs: int, warmup: int
) -> list[list[float]]:
    """For i from -warmup to runs, each (operation, before) in turn: before(i) untimed, then operation(i)
    timed; the seconds of the runs with i >= 0, one list per target."""
    samples: list[list[float]] = [[] for _ in targets]
    for i in range(-warmup, runs):
        for (operation, before), out in zip(targets, samples, strict=True):
            if before is not None:
                before(i)
            started = time.perf_counter()
            operation(i)
            elapsed = time.perf_counter() - started
            if i >= 0:
                out.append(elapsed)
    return samples


def row(name: str, baseline: str, measured: list[float], base: list[float], **notes: Any) -> Row:
    median, p99 = summary(measured)
    base_median, base_p99 = summary(base)
    return Row(name, baseline, median, p99, len(measured), base_median, base_p99, notes=notes)


def throughput_row(
    name: str, baseline: str, throughputs: list[float], base_median: float, base_p99: float, **notes: Any
) -> Row:
    """A row of rounds' throughputs (op/s): their median, and the slowest round in the p99 column."""
    return Row(
        name,
        baseline,
        statistics.median(throughputs),
        min(throughputs),
        len(throughputs),
        base_median,
        base_p99,
        unit="op/s",
        higher_is_better=True,
        notes=notes,
    )


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null: the handlers' logs and EMF metrics go there, as they go to a
    pipe in Lambda, without flooding the terminal (Powertools' handlers hold the stream, so sys.stdout
    alone would not do)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)


def load_module(name: str, path: Path) -> ModuleType:
    """A module by path (every function's module is app.py, so each is loaded under its own name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def format_table(rows: list[Row]) -> str:
    header = ("row", "median", "p99", "runs", "baseline", "base median", "base p99", "ratio")
    lines = []
    for r in rows:
        lines.append(
            (
                r.name,
                f"{r.median:.2f} {r.unit}",
                f"{r.p99:.2f} {r.unit}",
                str(r.runs),
                r.baseline,
                f"{r.baseline_median:.2f} {r.unit}",
                f"{r.baseline_p99:.2f} {r.unit}",
                f"{r.ratio:.2f}x",
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
    return "\n".join(out)
