"""Priorities hold on every dispatch path, through real processes (3 masters, one single-slot worker).

Each test keeps one worker slot busy with a blocker, makes five tasks of mixed priorities ready
behind it, and reads the order they ran in from a file each appends its name to. The four paths:
the fast path (the blocker's completion makes them ready and a dispatch leaves with it), a
dispatch round (they wait in the queue), a requeue after the worker's kill -9, and the queue a
new leader rebuilds after the old one's kill -9.
"""

from __future__ import annotations

import json

import pytest

from protocols.workflow import parse_workflow
from tests.procs import running_cluster, wait_for

pytestmark = pytest.mark.integration

PRIORITIES = {"low": "low", "medium": "medium", "urgent": "urgent", "high": "high", "low2": "low"}
EXPECTED = ["urgent", "high", "medium", "low", "low2"]  # FIFO between the two lows: file order


def submit(client, workflow_id: str, tasks: list[dict]) -> None:
    client.submit_workflow(parse_workflow(json.dumps({"workflow": {"id": workflow_id, "tasks": tasks}})))


def blocker(gate, max_s: int = 30) -> str:
    """A shell loop that ends once ``gate`` exists (or after ``max_s``, so no orphan outlives a test)."""
    return f"for i in $(seq {max_s * 50}); do [ -e {gate} ] && break; sleep 0.02; done"


def ranked_tasks(log_path, dependencies: tuple[str, ...] = ()) -> list[dict]:
    return [{"task_id": name, "priority": priority, "dependencies": list(dependencies),
             "command": f"echo {name} >> {log_path}"} for name, priority in PRIORITIES.items()]


def wait_running(client, workflow_id: str, task_id: str) -> dict:
    return wait_for(lambda: (task := client.workflow_status(workflow_id)["tasks"][task_id])["state"] == "running"
                    and task, 30, what=f"{task_id} to run")


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("solo"), masters=3, workers=0, first_port=16800) as (local, client):
        local.add_worker("solo", ["--max-concurrent-tasks", "1", "--cpu-cores", "1"])
        yield local, client


def test_fast_path_dependents_of_a_completion_run_by_priority(solo, tmp_path):
    local, client = solo
    log_path, gate = tmp_path / "order.log", tmp_path / "gate"
    submit(client, "wf-fast-path", [{"task_id": "block", "command": blocker(gate)}, *ranked_tasks(log_path, ("block",))])
    wait_running(client, "wf-fast-path", "block")
    gate.touch()
    assert client.wait_workflow("wf-fast-path", timeout_s=60)["state"] == "completed"
    assert log_path.read_text().split() == EXPECTED


def test_dispatch_round_takes_queued_tasks_by_priority(solo, tmp_path):
    local, client = solo
    log_path, gate = tmp_path / "order.log", tmp_path / "gate"
    submit(client, "wf-blocker", [{"task_id": "block", "command": blocker(gate)}])
    wait_running(client, "wf-blocker", "block")
    submit(client, "wf-queued", ranked_tasks(log_path))
    gate.touch()
    assert client.wait_workflow("wf-queued", timeout_s=60)["state"] == "completed"
    assert log_path.read_text().split() == EXPECTED


def test_a_task_requeued_after_a_worker_kill_9_takes_its_place_by_priority(tmp_path):
    log_path, gate = tmp_path / "order.log", tmp_path / "gate"
    with running_cluster(tmp_path / "cluster", masters=3, workers=0, first_port=16900) as (local, client):
        doomed = local.add_worker("doomed", ["--max-concurrent-tasks", "1", "--cpu-cores", "1"])
        # Only the second attempt logs: the first one's process outlives its killed worker.
        submit(client, "wf-blocker", [{"task_id": "block", "priority": "urgent", "command":
                f'{blocker(gate, 10)}; [ "$AGENTFLOW_ATTEMPT" = 2 ] && echo block >> {log_path}'}])
        wait_running(client, "wf-blocker", "block")
        submit(client, "wf-queued", ranked_tasks(log_path))
        doomed.kill()
        wait_for(lambda: client.workflow_status("wf-blocker")["tasks"]["block"]["state"] == "ready", 30,
                 what="the blocker to be requeued")
        gate.touch()
        local.add_worker("heir", ["--max-concurrent-tasks", "1", "--cpu-cores", "1"])
        assert client.wait_workflow("wf-queued", timeout_s=60)["state"] == "completed"
        assert client.wait_workflow("wf-blocker", timeout_s=60)["tasks"]["block"]["worker"] == "heir"
        # Requeued after the urgent task of wf-queued had waited: FIFO among the two urgent ones.
        assert log_path.read_text().split() == ["urgent", "block", *EXPECTED[1:]]


def test_a_new_leader_rebuilds_the_queue_in_priority_order(tmp_path):
    log_path, gate = tmp_path / "order.log", tmp_path / "gate"
    with running_cluster(tmp_path / "cluster", client_timeout_s=20, masters=3, workers=0,
                         first_port=17900) as (local, client):
        local.add_worker("solo", ["--max-concurrent-tasks", "1", "--cpu-cores", "1"])
        submit(client, "wf-blocker", [{"task_id": "block", "command": blocker(gate)}])
        wait_running(client, "wf-blocker", "block")
        submit(client, "wf-rebuilt", ranked_tasks(log_path))
        leader_id = client.cluster_status()["leader"]
        local.by_id(leader_id).kill()
        wait_for(lambda: client.cluster_status(timeout_s=2)["leader"] not in (None, leader_id), 30,
                 what="a new leader")
        gate.touch()
        assert client.wait_workflow("wf-rebuilt", timeout_s=60)["state"] == "completed"
        assert log_path.read_text().split() == EXPECTED
