"""/metrics, /health and /stats on real masters and workers: the families exist, follow
Prometheus' rules (promtool when installed, prometheus_client's parser always), move when work
happens, and /health means readiness (503 on a master cut off from its peers, 200 again after)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocols.locks import Acquire
from protocols.workflow import parse_workflow
from runtime.metrics import master_families, transport_families
from tests.procs import running_cluster, wait_for

pytestmark = pytest.mark.integration

MASTER_FAMILIES = {
    "agentflow_raft_has_leader", "agentflow_raft_is_leader", "agentflow_raft_term", "agentflow_raft_commit_index",
    "agentflow_raft_applied_index", "agentflow_raft_proposals_pending", "agentflow_raft_leader_changes_seen",
    "agentflow_raft_proposals_committed", "agentflow_raft_proposals_failed", "agentflow_raft_snapshots",
    "agentflow_raft_commit_duration_seconds", "agentflow_raft_fsync_duration_seconds", "agentflow_tasks",
    "agentflow_workflows", "agentflow_tasks_finished", "agentflow_task_dispatch_latency_seconds",
    "agentflow_task_run_duration_seconds", "agentflow_transport_messages", "agentflow_transport_bytes",
    "agentflow_transport_decode_errors", "agentflow_locks_held", "agentflow_lock_acquire_duration_seconds",
    "agentflow_lock_grants", "agentflow_agents", "process_cpu_seconds",
}
LEADER_FAMILIES = {"agentflow_queue_depth", "agentflow_queue_oldest_wait_seconds", "agentflow_workers",
                   "agentflow_worker_slot_utilisation_ratio"}
WORKER_FAMILIES = {"agentflow_worker_registered", "agentflow_worker_slots", "agentflow_worker_tasks_running",
                   "agentflow_worker_attempts", "agentflow_worker_attempt_duration_seconds",
                   "agentflow_transport_messages", "agentflow_transport_bytes"}

WORKFLOW = """
workflow:
  id: wf-metrics
  tasks:
    - {task_id: a, command: "true"}
    - {task_id: b, command: "true", dependencies: [a]}
    - {task_id: c, command: "exit 3", dependencies: [a]}
"""


def http_get(target: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{target}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(target: str) -> dict[str, dict[tuple, float]]:
    """family name -> {(sample name, sorted labels): value}"""
    status, text = http_get(target, "/metrics")
    assert status == 200
    families: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families


def value(families: dict, family: str, sample: str | None = None, **labels: str) -> float:
    return families[family][(sample or family, tuple(sorted(labels.items())))]


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` says about ``text`` ("" when clean)."""
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return "" if result.returncode == 0 and not result.stdout.strip() else (result.stdout + result.stderr)


def test_snapshot_families_render_cleanly_without_a_cluster():
    """The scrape-time families from a snapshot document, checked by promtool when installed."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    snapshot = {"raft": {"role": "leader", "leader": "m1", "term": 3, "commit_index": 9, "last_applied": 9,
                         "last_index": 9, "snapshot_index": 0, "proposals_pending": 0, "voters": ["m1"]},
                "tasks": {"running": 1}, "workflows": {"running": 1},
                "queue": {"by_priority": {"high": 2}, "oldest_wait_s": 0.5},
                "workers": {"by_status": {"active": 1}, "slots_total": 4, "slots_used": 1},
                "locks": {"held": 1, "waiting": 0}, "connections": {"open": 7, "busiest_peer": 5},
                "agents_summary": {"total": 1, "by_group": {"g": 1}, "mailbox_depth": 2, "messages_total": 5}}

    class Collector:
        def collect(self):
            yield from transport_families({"msgs_in": 3, "bad_frames_too_big": 1, "late_replies": 2,
                                           "connections_refused_per_peer_limit": 4,
                                           "frames_compressed_out": 2, "compression_saved_bytes_out": 900})
            yield from master_families(snapshot)

    registry = CollectorRegistry()
    registry.register(Collector())
    text = generate_latest(registry).decode()
    assert 'agentflow_transport_decode_errors_total{reason="too_big"} 1.0' in text
    assert 'agentflow_transport_connections_refused_total{reason="per_peer_limit"} 4.0' in text
    assert "agentflow_transport_connections_open 7.0" in text and "agentflow_transport_connections_peer_max 5.0" in text
    assert 'agentflow_transport_compressed_frames_total{direction="out"} 2.0' in text
    assert 'agentflow_transport_compression_saved_bytes_total{direction="out"} 900.0' in text
    assert 'agentflow_transport_compressed_frames_total{direction="in"} 0.0' in text
    assert 'agentflow_queue_depth{priority="high"} 2.0' in text and "agentflow_agent_messages_handled 5.0" in text
    if shutil.which("promtool"):
        assert promtool_problems(text) == ""


def test_every_endpoint_exports_its_families_and_they_move_with_work(tmp_path):
    with running_cluster(tmp_path, masters=3, workers=1, first_port=11000) as (cluster, client):
        view = cluster.wait_healthy(client, voters=3)
        leader = next(target for name, kind, target in cluster.http_targets() if name == view["leader"])
        worker = next(target for name, kind, target in cluster.http_targets() if kind == "worker")
        before = scrape(leader)
        worker_before = scrape(worker)
        for name, kind, target in cluster.http_targets():
            families = scrape(target)
            expected = WORKER_FAMILIES if kind == "worker" else MASTER_FAMILIES | (
                LEADER_FAMILIES if name == view["leader"] else set())
            assert expected <= families.keys(), (name, sorted(expected - families.keys()))
            if shutil.which("promtool"):
                assert promtool_problems(http_get(target, "/metrics")[1]) == "", name
        assert value(before, "agentflow_raft_has_leader") == 1 and value(before, "agentflow_raft_is_leader") == 1

        workflow = parse_workflow(WORKFLOW)
        client.submit_workflow(workflow)
        assert client.wait_workflow(workflow.workflow_id, timeout_s=30)["state"] == "failed"
        client.propose(Acquire("metrics-lock", "me", 60_000, {}, 0))

        def moved():
            after = scrape(leader)
            failed = value(after, "agentflow_tasks_finished", "agentflow_tasks_finished_total", state="failed")
            grants = value(after, "agentflow_lock_grants", "agentflow_lock_grants_total")
            return after if failed >= 1 and grants >= 1 else None

        def rose(family: str, sample: str) -> bool:
            return value(after, family, sample) > value(before, family, sample)

        after = wait_for(moved, 10, interval_s=0.1, what="the leader's counters to move")
        assert value(after, "agentflow_tasks_finished", "agentflow_tasks_finished_total", state="completed") >= 2
        assert rose("agentflow_raft_proposals_committed", "agentflow_raft_proposals_committed_total")
        assert rose("agentflow_raft_fsync_duration_seconds", "agentflow_raft_fsync_duration_seconds_count")
        assert rose("agentflow_raft_commit_duration_seconds", "agentflow_raft_commit_duration_seconds_count")
        assert value(after, "agentflow_task_dispatch_latency_seconds",
                     "agentflow_task_dispatch_latency_seconds_count") >= 3
        assert value(after, "agentflow_task_run_duration_seconds", "agentflow_task_run_duration_seconds_count") >= 2
        assert value(after, "agentflow_tasks", state="failed") == 1 and value(after, "agentflow_workflows",
                                                                               state="failed") == 1
        assert value(after, "agentflow_locks_held") == 1
        assert value(after, "agentflow_transport_messages", "agentflow_transport_messages_total", direction="in") > \
            value(before, "agentflow_transport_messages", "agentflow_transport_messages_total", direction="in")
        def attempts(families: dict, outcome: str) -> float:
            return value(families, "agentflow_worker_attempts", "agentflow_worker_attempts_total", outcome=outcome)

        worker_after = wait_for(lambda: (lambda f: f if attempts(f, "failed") >= 1 else None)(scrape(worker)),
                                10, interval_s=0.1, what="the worker's counters to move")
        assert attempts(worker_after, "succeeded") == attempts(worker_before, "succeeded") + 2

        status, body = http_get(leader, "/stats")
        stats = json.loads(body)
        assert status == 200 and {"node_id", "serving", "raft", "counters"} <= stats.keys()
        assert any("failed" in event["text"] for event in stats["events"] if event["kind"] == "task")


def test_health_is_503_on_a_master_cut_off_from_its_peers_and_200_again_after(tmp_path):
    with running_cluster(tmp_path, masters=3, first_port=11200) as (cluster, client):
        view = cluster.wait_healthy(client, voters=3)
        survivor = next(m for m in cluster.masters if m.node_id != view["leader"])  # a follower; then any
        target = f"127.0.0.1:{survivor.http_port}"
        status, body = http_get(target, "/health")
        assert status == 200 and json.loads(body)["status"] == "serving"
        others = [m for m in cluster.masters if m is not survivor]
        for master in others:
            master.kill()

        def cut_off():
            code, text = http_get(target, "/health")
            return (code, json.loads(text)) if code == 503 else None

        status, health = wait_for(cut_off, 15, interval_s=0.1, what="/health to turn 503")
        assert health["status"] == "not serving" and "no leader" in health["reason"]
        assert http_get(target, "/health/live")[0] == 200
        for master in others:
            master.start()
        wait_for(lambda: http_get(target, "/health")[0] == 200, 30, interval_s=0.1, what="/health to be 200 again")
        assert json.loads(http_get(target, "/health")[1])["leader"] is not None
