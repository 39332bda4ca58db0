"""A real Prometheus against a local cluster: `make prometheus`, and tests/test_prometheus.py.

    python -m agentflow.prometheus        # what `make prometheus` runs

Role: write a scrape config for every master and worker of a ``LocalCluster``, start Debian's
``prometheus`` binary on it (2.42 here), wait until every target is up, run a workflow, and query
the server over its HTTP API: the answers show that what the nodes export is what a Prometheus
reads. Every process it starts, it stops; every wait has a deadline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from agentflow.cluster import LocalCluster, find_free_ports, stop_process, wait_until
from protocols.workflow import parse_workflow
from runtime.client import Client

SCRAPE_INTERVAL_S = 1
INSTALL_HINT = "Debian's prometheus is not installed: apt-get install prometheus"

# 4 chains of 6 short tasks: the workflow spans several scrapes.
CHECK_WORKFLOW = "workflow:\n  id: wf-prometheus\n  tasks:\n" + "".join(
    f"    - {{task_id: c{chain}-{step}, command: 'sleep 0.2'"
    + (f", dependencies: [c{chain}-{step - 1}]" if step else "") + "}\n"
    for chain in range(4) for step in range(6))

QUERIES = {
    "masters with a leader": "sum(agentflow_raft_has_leader)",
    "leaders": "sum(agentflow_raft_is_leader)",
    "targets up": 'count(up{job="agentflow"} == 1)',
    "tasks completed": 'sum(agentflow_tasks_finished_total{state="completed"})',
    "workers active": 'sum(agentflow_workers{status="active"})',  # only the leader exports the worker table
    "fsync p99 (s)": "histogram_quantile(0.99, sum by (le) (rate(agentflow_raft_fsync_duration_seconds_bucket[1m])))",
    "commit p99 (s)": "histogram_quantile(0.99, sum by (le) (rate(agentflow_raft_commit_duration_seconds_bucket[1m])))",
    "dispatch latency p50 (s)":
        "histogram_quantile(0.5, sum by (le) (rate(agentflow_task_dispatch_latency_seconds_bucket[1m])))",
    "messages in per s": 'sum(rate(agentflow_transport_messages_total{direction="in"}[1m]))',
}


def scrape_config(targets: list[tuple[str, str, str]], interval_s: float = SCRAPE_INTERVAL_S) -> str:
    """A prometheus.yml scraping ``(node id, kind, host:port)`` targets, each labelled with
    its node id and kind (master or worker)."""
    lines = ["global:", f"  scrape_interval: {interval_s}s", f"  evaluation_interval: {interval_s}s",
             "scrape_configs:", "  - job_name: agentflow", "    static_configs:"]
    for node_id, kind, target in targets:
        lines += [f"      - targets: ['{target}']", f"        labels: {{node: '{node_id}', kind: '{kind}'}}"]
    return "\n".join(lines) + "\n"


class Prometheus:
    """The ``prometheus`` binary on 127.0.0.1:``port`` with ``config``, its data in ``directory``."""

    def __init__(self, directory: Path, config: str, port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.url = f"http://127.0.0.1:{port}"
        (directory / "prometheus.yml").write_text(config)
        self._log = open(directory / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def wait_targets_up(self, count: int, timeout_s: float = 60.0) -> list[dict]:
        def all_up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                active = self._get("/api/v1/targets")["data"]["activeTargets"]
            except OSError:
                return None
            return active if len(active) == count and all(t["health"] == "up" for t in active) else None

        return wait_until(all_up, timeout_s, f"prometheus to see {count} targets up", interval_s=0.25)

    def query(self, expression: str) -> float | None:
        """The instant value of a query that yields one number (None: no data)."""
        data = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expression}))["data"]["result"]
        return float(data[0]["value"][1]) if data else None

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def check(directory: Path, first_port: int | None = None, report=print) -> dict[str, float | None]:
    """Run the whole check; returns the queries' answers (before/after the workflow for the
    completed-tasks counter). Raises AssertionError on a wrong answer."""
    cluster = LocalCluster(directory / "cluster", masters=3, workers=2, first_port=first_port)
    prometheus = None
    try:
        with Client(cluster.master_url, timeout_s=10) as client:
            cluster.start(client)
            targets = cluster.http_targets()
            port = find_free_ports(1, None if first_port is None else first_port + 90, offsets=(0,))[0]
            prometheus = Prometheus(directory, scrape_config(targets), port)
            prometheus.wait_targets_up(len(targets))
            report(f"prometheus at {prometheus.url} scrapes {len(targets)} targets, all up")
            wait_until(lambda: prometheus.query(QUERIES["tasks completed"]) is not None, 30, "a first scrape")
            before = prometheus.query(QUERIES["tasks completed"])
            workflow = parse_workflow(CHECK_WORKFLOW)
            client.submit_workflow(workflow)
            assert client.wait_workflow(workflow.workflow_id, timeout_s=60)["state"] == "completed"
            wait_until(lambda: (prometheus.query(QUERIES["tasks completed"]) or 0) >= before + len(workflow.tasks),
                       30, "prometheus to scrape the completed tasks", interval_s=0.25)
            answers = {name: prometheus.query(expression) for name, expression in QUERIES.items()}
            answers["tasks completed before the workflow"] = before
        for name, expression in QUERIES.items():
            report(f"  {name:34} {answers[name]!s:>24}   {expression}")
        assert answers["masters with a leader"] == 3 and answers["leaders"] == 1, answers
        assert answers["targets up"] == len(targets), answers
        assert answers["tasks completed"] >= before + len(workflow.tasks), answers
        assert answers["workers active"] == 2, answers
        return answers
    finally:
        if prometheus is not None:
            prometheus.stop()
        cluster.stop()


def main() -> int:
    if shutil.which("prometheus") is None:
        print(f"agentflow: {INSTALL_HINT}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="agentflow-prometheus-") as directory:
        try:
            check(Path(directory))
        except (AssertionError, RuntimeError, TimeoutError) as exc:
            print(f"agentflow: the Prometheus check failed: {exc}", file=sys.stderr)
            return 1
    print("the Prometheus check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
