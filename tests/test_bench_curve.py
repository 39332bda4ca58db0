"""The ``--curve`` mode of bench/raft.py and bench/tasks.py runs end to end on a tiny workload:
CURVE off and on clusters, the on/off ratio of every figure in the JSON, and no process left.

Behaviour only: the figures of so small a run mean nothing (bench/README.md has the real ones).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH_DEADLINE_S = 90


def run_bench(tmp_path: Path, script: str, options: list[str]) -> dict:
    """Run ``bench/SCRIPT --curve OPTIONS`` with its temporary files under ``tmp_path``; its JSON."""
    out = tmp_path / "result.json"
    env = dict(os.environ, TMPDIR=str(tmp_path), AGENTFLOW_LOG="warn")
    bench = subprocess.Popen([sys.executable, str(REPO / "bench" / script), "--curve", "--runs", "1", *options,
                              "--json", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        _, err = bench.communicate(timeout=BENCH_DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)  # the bench and the masters and workers it started
        bench.communicate(timeout=30)
        raise
    assert bench.returncode == 0, err[-3000:]
    # Every master and worker it started inherited TMPDIR: none may be left.
    assert not [p.info["cmdline"] for p in psutil.process_iter(["cmdline", "environ"])
                if (p.info["environ"] or {}).get("TMPDIR") == str(tmp_path)]
    return json.loads(out.read_text())


def check_ratios(document: dict, benchmark: str, metrics: list[str]) -> None:
    assert document["benchmark"] == benchmark
    assert sorted(document["curve"]) == sorted(metrics)
    rows = {row["metric"]: row for row in document["results"]}
    assert sorted(rows) == sorted(f"{metric}_curve" for metric in metrics)
    for metric in metrics:
        figures, row = document["curve"][metric], rows[f"{metric}_curve"]
        assert len(figures["runs_on"]) == len(figures["runs_off"]) == len(figures["on_over_off_by_run"]) == 1
        assert (row["agentflow"], row["peer"], row["peer_value"]) == (figures["on"], "agentflow, CURVE off",
                                                                      figures["off"])
        # The document rounds to 0.001: a 0.05 s figure is known to 1% only.
        assert figures["on_over_off"] == pytest.approx(figures["on"] / figures["off"], rel=0.05)
        assert row["ratio"] == pytest.approx(figures["on_over_off"] ** (1 if row["higher_is_better"] else -1),
                                             rel=0.05)
    assert len(document["load_average_1min"]) == 1 and "--curve" in document["command"]


@pytest.mark.integration
@pytest.mark.timeout(BENCH_DEADLINE_S + 30)
def test_raft_bench_reports_curve_on_over_off(tmp_path):
    document = run_bench(tmp_path, "raft.py", ["--commands", "200", "--window", "50", "--sequential", "20",
                                               "--port", "19300"])
    check_ratios(document, "raft", ["commits_per_s", "commit_p50_ms", "commit_p99_ms", "failover_s",
                                    "failover_s_client", "leader_cpu_us_per_commit", "leader_zmq_io_cpu_us_per_commit",
                                    "leader_cpu_us_per_sequential_commit", "leader_zmq_io_cpu_us_per_sequential_commit"])


@pytest.mark.integration
@pytest.mark.timeout(BENCH_DEADLINE_S + 30)
def test_tasks_bench_reports_curve_on_over_off(tmp_path):
    document = run_bench(tmp_path, "tasks.py", ["--tasks", "20", "--chain", "5", "--fanout", "10",
                                                "--port", "19400"])
    check_ratios(document, "tasks", ["noop_tasks_per_s", "chain_ms_per_hop", "fanout_10_s",
                                     *(f"{workload}_leader{threads}_cpu_us_per_task" for workload in ("noop", "chain", "fanout")
                                       for threads in ("", "_zmq_io"))])
