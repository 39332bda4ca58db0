"""Shared pieces of the benchmarks: medians, the JSON document of docs/ARCHITECTURE.md §6, the rich table."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table


@dataclass
class Result:
    metric: str
    unit: str
    higher_is_better: bool
    runs: list[float]
    peer: str
    peer_runs: list[float] = field(default_factory=list)

    @property
    def agentflow(self) -> float:
        return statistics.median(self.runs)

    @property
    def peer_value(self) -> float | None:
        return statistics.median(self.peer_runs) if self.peer_runs else None

    @property
    def ratio(self) -> float | None:
        """Above 1 always means AgentFlow is ahead."""
        peer = self.peer_value
        if peer is None or peer == 0 or self.agentflow == 0:
            return None
        return self.agentflow / peer if self.higher_is_better else peer / self.agentflow

    def to_json(self) -> dict:
        ratio = self.ratio
        return {
            "metric": self.metric,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "agentflow": round(self.agentflow, 3),
            "peer": self.peer,
            "peer_value": None if self.peer_value is None else round(self.peer_value, 3),
            "ratio": None if ratio is None else round(ratio, 3),
            "runs": [round(r, 3) for r in self.runs],
            "peer_runs": [round(r, 3) for r in self.peer_runs],
        }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(benchmark: str, results: list[Result], json_path: str | None) -> dict:
    document = {
        "benchmark": benchmark,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": [r.to_json() for r in results],
    }
    table = Table(title=f"{benchmark} (median of runs)")
    for column in ("metric", "agentflow", "peer", "peer value", "ratio (>1: agentflow ahead)"):
        table.add_column(column)
    for r in results:
        ratio = r.ratio
        table.add_row(
            f"{r.metric} [{r.unit}]",
            f"{r.agentflow:,.1f}",
            r.peer,
            "missing" if r.peer_value is None else f"{r.peer_value:,.1f}",
            "-" if ratio is None else f"{ratio:.2f}x",
        )
    Console(width=max(Console().width, 150)).print(table)
    if json_path:
        with open(json_path, "w") as out:
            json.dump(document, out, indent=2)
    return document
