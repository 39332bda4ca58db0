"""Shared pieces of the benchmarks: medians, the JSON document of docs/ARCHITECTURE.md §6, the rich table,
the peers' own virtual environments, and the CURVE on/off comparison (``--curve``).

A peer whose pins clash with ours (AutoGen, Ray, the etcd3 client's protobuf) runs in its own venv under
.venv-peers/NAME, created through pip on first use, as a child process that prints one JSON document;
every such child runs under a deadline and in its own process group, killed whole when the deadline
passes.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.peers.child import percentile, thread_cpu_s  # noqa: F401 - the benchmarks' one percentile, also here


@dataclass
class Result:
    metric: str
    unit: str
    higher_is_better: bool
    runs: list[float]
    peer: str
    peer_runs: list[float] = field(default_factory=list)

    @property
    def agentflow(self) -> float | None:
        """None while AgentFlow's side is not built (its row is reported, with no figure)."""
        return statistics.median(self.runs) if self.runs else None

    @property
    def peer_value(self) -> float | None:
        return statistics.median(self.peer_runs) if self.peer_runs else None

    @property
    def ratio(self) -> float | None:
        """Above 1 always means AgentFlow is ahead."""
        peer = self.peer_value
        if peer is None or peer == 0 or not self.agentflow:
            return None
        return self.agentflow / peer if self.higher_is_better else peer / self.agentflow

    def to_json(self) -> dict:
        ratio = self.ratio
        return {
            "metric": self.metric,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "agentflow": None if self.agentflow is None else round(self.agentflow, 3),
            "peer": self.peer,
            "peer_value": None if self.peer_value is None else round(self.peer_value, 3),
            "ratio": None if ratio is None else round(ratio, 3),
            "runs": [round(r, 3) for r in self.runs],
            "peer_runs": [round(r, 3) for r in self.peer_runs],
        }


def report(benchmark: str, results: list[Result], json_path: str | None, **extra) -> dict:
    """Print the table and write the document; ``extra`` keys (a benchmark's per-system detail) go
    into the document after "results"."""
    document = {
        "benchmark": benchmark,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": [r.to_json() for r in results],
        **extra,
    }
    table = Table(title=f"{benchmark} (median of runs)")
    for column in ("metric", "agentflow", "peer", "peer value", "ratio (>1: agentflow ahead)"):
        table.add_column(column)
    for r in results:
        ratio = r.ratio
        table.add_row(  # escaped: rich took "[us]" and a peer's "pip install -e '.[bench]'" for markup
            escape(f"{r.metric} [{r.unit}]"),
            "not built" if r.agentflow is None else f"{r.agentflow:,.1f}",
            escape(r.peer),
            "missing" if r.peer_value is None else f"{r.peer_value:,.1f}",
            "-" if ratio is None else f"{ratio:.2f}x",
        )
    Console(width=max(Console().width, 150)).print(table)
    if json_path:
        with open(json_path, "w") as out:
            json.dump(document, out, indent=2)
    return document


# --------------------------------------------------------------------------- peers in their own venvs

VENVS = Path(__file__).resolve().parent.parent / ".venv-peers"
PEERS = Path(__file__).resolve().parent / "peers"


def peer_python(name: str, requirements: list[str], timeout_s: float = 1800) -> tuple[str | None, str]:
    """(the python of .venv-peers/NAME with ``requirements`` installed, "") or (None, why not).

    The venv is made on first use (and again when the requirements change) with pip from the registry."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = "\n".join(requirements) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python), ""
    print(f"setting up {venv}: pip install {' '.join(requirements)} (once) ...", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300,
                       capture_output=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               *requirements], timeout=timeout_s, capture_output=True, text=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not set up {venv}: {exc}"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"pip install {' '.join(requirements)} failed: {tail}"
    stamp.write_text(wanted)
    return str(python), ""


def run_child(argv: list[str], timeout_s: float) -> dict:
    """Run a child that prints one JSON document as its last stdout line; kill its whole process group
    (a peer's helpers too) if it is not done within ``timeout_s``. Raises RuntimeError naming the failure."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        raise RuntimeError(f"{Path(argv[1]).name} {' '.join(argv[2:])}: no result within {timeout_s:.0f} s (killed)")
    finally:
        try:  # whatever the child left behind in its group (Ray's raylet, a worker runtime) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise RuntimeError(f"{Path(argv[1]).name} {' '.join(argv[2:])} exited {proc.returncode}: {tail}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- CURVE on against CURVE off


@dataclass(frozen=True)
class CurveSetup:
    """What turns a LocalCluster into a CURVE one; the default, no keys at all, is CURVE off. An
    "on" cluster differs from an "off" one in these options and the bench client's keys only."""

    master_options: tuple[str, ...] = ()
    worker_options: tuple[str, ...] = ()
    client: object = None  # runtime.security.CurveKeys of the benchmark's own client and node

    @classmethod
    def generate(cls, directory: Path) -> CurveSetup:
        """Fresh keys in ``directory``: the masters', the workers' and the benchmark client's, the
        last two authorized, as README.md's "Keys" section sets a cluster up."""
        from runtime.security import CurveKeys, generate_keys

        authorized = directory / "authorized"
        authorized.mkdir(parents=True, exist_ok=True)
        for name in ("masters", "workers", "bench"):
            generate_keys(directory, name)
        for name in ("workers", "bench"):
            shutil.copy(directory / f"{name}.key", authorized)
        masters_key = str(directory / "masters.key")
        return cls(("--curve-secret-key", str(directory / "masters.key_secret"), "--authorized-keys", str(authorized)),
                   ("--curve-secret-key", str(directory / "workers.key_secret"), "--curve-server-key", masters_key),
                   CurveKeys.load(directory / "bench.key_secret", masters_key))


def cpu_s_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds process ``pid``'s live threads have used so far (bench/peers/child.py
    ``thread_cpu_s``): ``"zmq_io"`` in libzmq's I/O threads (where CURVE encrypts and decrypts
    every frame), ``"other"`` in the rest (Python's)."""
    totals = {"zmq_io": 0.0, "other": 0.0}
    for name, seconds in thread_cpu_s(pid):
        totals["zmq_io" if name.startswith("ZMQbg/IO") else "other"] += seconds
    return totals


def cpu_us_per_item(before: dict[str, float], after: dict[str, float], items: int) -> tuple[float, float]:
    """(all threads', libzmq I/O threads') CPU microseconds per item between two ``cpu_s_by_thread``."""
    zmq_io = after["zmq_io"] - before["zmq_io"]
    return (zmq_io + after["other"] - before["other"]) * 1e6 / items, zmq_io * 1e6 / items


def curve_order(run: int) -> tuple[str, str]:
    """Which of CURVE "off" and "on" goes first in run ``run``: off-on, on-off, off-on, ... so that
    a drift of the machine's load (or a warm page cache) falls on both sides alike."""
    return ("off", "on") if run % 2 == 0 else ("on", "off")


def curve_report(benchmark: str, metrics: list[tuple[str, str, bool]], runs: dict[str, dict[str, list[float]]],
                 load_averages: list[float], json_path: str | None, **extra) -> dict:
    """The document of a ``--curve`` run: a row ``METRIC_curve`` per metric (AgentFlow with CURVE
    on, its peer the same cluster with CURVE off; the ratio, as in every row, above 1 when CURVE on
    is ahead) and ``"curve"``: per metric the medians, the runs and ``on_over_off``, the median
    with CURVE on over the median with it off (above 1 for a latency: CURVE makes it slower), and
    ``on_over_off_by_run``, the same ratio within each run (its two halves ran back to back, so
    these move less with the machine's load than the medians do);
    ``"load_average_1min"``: the machine's load average as each run began."""
    results, curve = [], {}
    for metric, unit, higher in metrics:
        on, off = runs["on"].get(metric, []), runs["off"].get(metric, [])
        results.append(Result(f"{metric}_curve", unit, higher, on, "agentflow, CURVE off", off))
        on_median = statistics.median(on) if on else None
        off_median = statistics.median(off) if off else None
        ratio = on_median / off_median if on_median is not None and off_median else None
        curve[metric] = {"unit": unit, "higher_is_better": higher,
                         "on": None if on_median is None else round(on_median, 3),
                         "off": None if off_median is None else round(off_median, 3),
                         "on_over_off": None if ratio is None else round(ratio, 3),
                         "on_over_off_by_run": [round(a / b, 3) if b else None for a, b in zip(on, off)],
                         "runs_on": [round(r, 3) for r in on], "runs_off": [round(r, 3) for r in off]}
    document = report(benchmark, results, None, curve=curve, load_average_1min=load_averages, **extra)
    for metric, figures in curve.items():
        ratio = "-" if figures["on_over_off"] is None else f"{figures['on_over_off']:.3f}x"
        print(f"{metric}: CURVE on / off = {ratio} (on {figures['on']}, off {figures['off']} {figures['unit']}; "
              f"by run: {' / '.join(map(str, figures['on_over_off_by_run']))})")
    if load_averages:
        print(f"load average (1 min) as the runs began: {min(load_averages):.2f}-{max(load_averages):.2f}")
    if json_path:
        with open(json_path, "w") as out:
            json.dump(document, out, indent=2)
    return document
