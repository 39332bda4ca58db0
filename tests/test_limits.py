"""The masters' limits through real processes and the CLI: a refused submission is one line naming
the limit and the option that sets it, exit 1, and nothing already stored is lost; a peer past its
connections is closed at once and counted, and admitted again once below the limit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import psutil
import pytest
import yaml

from tests.procs import closed_by_peer, raw_connection, running_cluster, wait_for
from tests.test_metrics import scrape

CONNECTIONS_PORT = 10100  # with +10 (HTTP) and +100 (events)
BIG_FILE_PORT = 10120
FEW_DESCRIPTORS_PORT = 10140
MIB = 1 << 20


def write_workflow(path, workflow_id: str, task_ids: list[str]):
    tasks = [{"task_id": task_id, "command": "true"} for task_id in task_ids]
    path.write_text(yaml.safe_dump({"workflow": {"id": workflow_id, "name": workflow_id, "tasks": tasks}}))
    return path


def submit(path, master_url: str) -> subprocess.CompletedProcess:
    """`agentflow submit PATH` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "agentflow.cli", "submit", str(path), "--master-url", master_url],
                          capture_output=True, text=True, timeout=60)


def test_a_limit_no_message_could_carry_is_refused_at_start_naming_the_option(tmp_path):
    for option in ("--max-workflow-bytes", "--max-result-bytes", "--snapshot-chunk-bytes"):
        started = subprocess.run([sys.executable, "-m", "agentflow.cli", "master", "--port", "10160", "--data-dir",
                                  str(tmp_path), option, str(100 * MIB)], capture_output=True, text=True, timeout=60)
        lines = [line for line in started.stderr.splitlines() if line.startswith("agentflow: ")]
        assert started.returncode == 2 and len(lines) == 1 and "Traceback" not in started.stderr, started.stderr
        assert f"{option} must be at most {63 * MIB} (63 MiB, what one message can carry)" in lines[0]


def test_a_master_refuses_workflows_over_its_limits_with_one_line_naming_the_option(tmp_path):
    options = ["--max-tasks-per-workflow", "3", "--max-pending-workflows", "1"]
    with running_cluster(tmp_path / "cluster", masters=1, workers=0, first_port=18950,
                         master_options=options) as (cluster, client):
        big = write_workflow(tmp_path / "big.yaml", "big", [f"t{i}" for i in range(4)])
        refused = submit(big, cluster.master_url)
        assert refused.returncode == 1, refused
        [line] = refused.stderr.strip().splitlines()
        assert "4 tasks" in line and "--max-tasks-per-workflow" in line, line
        first = write_workflow(tmp_path / "first.yaml", "first", ["a"])
        assert submit(first, cluster.master_url).returncode == 0
        second = write_workflow(tmp_path / "second.yaml", "second", ["a"])
        refused = submit(second, cluster.master_url)  # no worker: "first" is still pending
        assert refused.returncode == 1 and "--max-pending-workflows" in refused.stderr, refused
        assert client.workflow_status("first")["state"] in ("pending", "running")
        assert client.cancel_workflow("first")
        assert submit(second, cluster.master_url).returncode == 0
        assert _rejected(f"127.0.0.1:{cluster.masters[0].http_port}", "limit_exceeded") == 2  # each refusal counted


def _connections(target: str) -> tuple[float, float, float]:
    """(open, busiest peer, refused for the per-peer limit) from a master's /metrics."""
    families = scrape(target)
    refused = families.get("agentflow_transport_connections_refused", {})
    return (families["agentflow_transport_connections_open"][("agentflow_transport_connections_open", ())],
            families["agentflow_transport_connections_peer_max"][("agentflow_transport_connections_peer_max", ())],
            refused.get(("agentflow_transport_connections_refused_total", (("reason", "per_peer_limit"),)), 0))


def test_a_master_closes_connections_past_the_per_peer_limit_counts_them_and_admits_again_below_it(tmp_path):
    limit = 20
    options = ["--max-connections-per-peer", str(limit)]
    with running_cluster(tmp_path / "cluster", masters=1, workers=0, first_port=CONNECTIONS_PORT,
                         master_options=options) as (cluster, client):
        master = cluster.masters[0]
        target = f"127.0.0.1:{master.http_port}"
        baseline, _, refused_before = _connections(target)  # the test's client and whatever else connected
        raw = []
        try:
            for _ in range(limit + 5):
                raw.append(raw_connection(master.port))

            def over_the_limit():
                closed = [sock for sock in raw if closed_by_peer(sock)]
                opened, busiest, refused = _connections(target)
                return (len(closed) >= 5 and opened == limit and refused - refused_before == len(closed)
                        and (len(closed), busiest))

            closed, busiest = wait_for(over_the_limit, timeout_s=20, what="the connections past the limit closed")
            assert busiest == limit
            # Connections open before keep being served; a new client (a ZeroMQ DEALER) is refused too.
            assert client.cluster_status(timeout_s=10)["leader"] == master.node_id
            refused = subprocess.run([sys.executable, "-m", "agentflow.cli", "cluster", "--master-url", cluster.master_url],
                                     capture_output=True, text=True, timeout=60)
            assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused
            wait_for(lambda: _connections(target)[2] > refused_before + closed, 10, what="the new client's refusal counted")
        finally:
            for sock in raw:
                sock.close()
        wait_for(lambda: _connections(target)[0] <= baseline, timeout_s=20, what="the closed connections forgotten")
        workflow = write_workflow(tmp_path / "after.yaml", "after", ["a"])
        assert submit(workflow, cluster.master_url).returncode == 0
        # Refused dozens of times, logged once (once a minute per peer at most).
        assert master.log_path.read_text().count("refusing connections from 127.0.0.1") == 1


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux) to start a master with few descriptors")
def test_a_flood_from_one_peer_cannot_take_a_masters_last_descriptors(tmp_path):
    """A master allowed 256 descriptors, 200 connections per peer, and 600 connections from one
    address: while it accepts faster than it refuses it runs out for a moment, and a connection
    it looks at then must still be counted and refused: it ends with the peer's 200 and no more."""
    options = ["--max-connections-per-peer", "200"]

    def few_descriptors(cluster):
        cluster.masters[0].prefix = ["prlimit", "--nofile=256", "--"]

    with running_cluster(tmp_path / "cluster", masters=1, workers=0, first_port=FEW_DESCRIPTORS_PORT,
                         master_options=options, prepare=few_descriptors) as (cluster, client):
        master = cluster.masters[0]
        target = f"127.0.0.1:{master.http_port}"
        process = psutil.Process(master.proc.pid)
        baseline = _connections(target)[0]
        raw = []
        try:
            for _ in range(600):
                raw.append(raw_connection(master.port, timeout_s=20))  # accepted late while it has no descriptor
            wait_for(lambda: _connections(target)[:2] == (200, 200) and process.num_fds() < 240, timeout_s=30,
                     what="the peer held to 200 connections and the master's descriptors free again")
            assert client.cluster_status(timeout_s=10)["leader"] == master.node_id
        finally:
            for sock in raw:
                sock.close()
        wait_for(lambda: _connections(target)[0] <= baseline, timeout_s=20, what="the closed connections forgotten")


def _rejected(target: str, reason: str) -> float:
    families = scrape(target).get("agentflow_requests_rejected", {})
    return families.get(("agentflow_requests_rejected_total", (("reason", reason),)), 0)


def test_a_50_mb_workflow_file_is_refused_in_one_line_and_the_master_keeps_neither_it_nor_its_memory(tmp_path):
    with running_cluster(tmp_path / "cluster", masters=1, workers=0, first_port=BIG_FILE_PORT) as (cluster, client):
        master = cluster.masters[0]
        target = f"127.0.0.1:{master.http_port}"
        big = tmp_path / "big.json"  # a few tasks, one with a 50 MB command
        tasks = [{"task_id": "a", "command": "true"}, {"task_id": "big", "command": "true #" + "x" * (50 * MIB)}]
        big.write_text(json.dumps({"workflow": {"id": "wf-big", "tasks": tasks}}))
        process = psutil.Process(master.proc.pid)
        memory_before = process.memory_info().rss
        refused = submit(big, cluster.master_url)
        assert refused.returncode == 1, refused
        [line] = refused.stderr.strip().splitlines()
        assert "wf-big" in line and "50.0 MiB" in line and "--max-workflow-bytes" in line, line
        assert _rejected(target, "limit_exceeded") == 1
        assert client.workflow_status() == []  # nothing stored
        # The master decoded it (the frame limit, 64 MiB, bounds that) and let it go.
        assert process.memory_info().rss - memory_before < 32 * MIB, (memory_before, process.memory_info().rss)
        # Past the frame limit the file is not even read: no master could take it.
        huge = tmp_path / "huge.json"
        with open(huge, "wb") as handle:
            handle.truncate(70 * MIB)
        refused = submit(huge, cluster.master_url)
        assert refused.returncode == 2 and "70.0 MiB" in refused.stderr and refused.stderr.count("\n") == 1, refused
        normal = write_workflow(tmp_path / "normal.yaml", "normal", ["a", "b"])
        assert submit(normal, cluster.master_url).returncode == 0
        assert client.workflow_status("normal")["state"] in ("pending", "running")
