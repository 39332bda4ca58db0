"""Scheduling through real processes: memory pressure with a process that allocates, data
locality with a large intermediate result, big workflows' views, the queue and reprioritizing,
retention of finished workflows."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from agentflow.cli import app
from protocols.workflow import parse_workflow
from tests.procs import running_cluster, wait_for

pytestmark = pytest.mark.integration

runner = CliRunner()


def submit(client, workflow_id: str, tasks: list[dict]) -> None:
    client.submit_workflow(parse_workflow(json.dumps({"workflow": {"id": workflow_id, "tasks": tasks}})))


def gated(gate, max_s: int = 30) -> str:
    return f"for i in $(seq {max_s * 50}); do [ -e {gate} ] && break; sleep 0.02; done"


def worker_row(client, worker_id: str) -> dict:
    return next(row for row in client.workers() if row["worker_id"] == worker_id)


def test_a_worker_under_memory_pressure_gets_nothing_new_until_it_recovers(tmp_path):
    gate = tmp_path / "gate"
    hog = (f"{sys.executable} -c \"import os, time; b = bytearray(600 << 20); "
           f"[b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; "
           f"[time.sleep(0.02) for _ in range(1500) if not os.path.exists('{gate}')]\"")
    with running_cluster(tmp_path / "cluster", masters=1, workers=0, first_port=15300) as (local, client):
        worker = local.add_worker("tight", ["--memory-mb", "900", "--memory-pressure-mb", "300",
                                            "--max-concurrent-tasks", "2"])
        submit(client, "wf-warm", [{"task_id": "call", "call": "builtins:int"}])  # leaves an idle call process
        assert client.wait_workflow("wf-warm", timeout_s=30)["state"] == "completed"
        submit(client, "wf-hog", [{"task_id": "hog", "command": hog}])
        wait_for(lambda: worker_row(client, "tight")["memory_pressure"], 30, what="memory pressure")
        # Its submission is applied, and the round that would place it run, before submit returns.
        submit(client, "wf-after", [{"task_id": "after", "call": "builtins:int"}])
        assert client.workflow_status("wf-after")["tasks"]["after"]["state"] == "ready"  # a slot is free, though
        assert worker_row(client, "tight")["running"] == 1
        wait_for(lambda: "idle task processes retired" in worker.log_path.read_text(), 10, what="the recycling")
        log = worker.log_path.read_text()
        assert "under memory pressure" in log and "1 idle task processes retired" in log
        gate.touch()
        assert client.wait_workflow("wf-after", timeout_s=30)["state"] == "completed"
        assert not worker_row(client, "tight")["memory_pressure"]
        assert "recovered from memory pressure" in worker.log_path.read_text()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("pair"), masters=3, workers=0, first_port=15400,
                         master_options=["--retain-workflows", "3"]) as (local, client):
        local.add_worker("w1", ["--max-concurrent-tasks", "2"])
        local.add_worker("w2", ["--max-concurrent-tasks", "2"])
        yield local, client


def test_a_large_intermediate_result_stays_on_the_worker_that_made_it(pair):
    local, client = pair
    submit(client, "wf-local", [
        {"task_id": "make", "call": "tests.taskfuncs:blob", "args": [300_000]},
        {"task_id": "use", "call": "tests.taskfuncs:sizes", "dependencies": ["make"]},
        {"task_id": "other", "call": "tests.taskfuncs:sizes", "dependencies": ["make"], "locality": "none"}])
    status = client.wait_workflow("wf-local", timeout_s=60)
    tasks = status["tasks"]
    assert status["state"] == "completed"
    assert tasks["use"]["worker"] == tasks["make"]["worker"]
    assert tasks["use"]["attempts"] == 1  # its input came from that worker's cache, not sent again
    assert tasks["use"]["result"] == {"make": 300_000} and tasks["other"]["result"] == {"make": 300_000}


def test_big_workflows_print_a_summary_and_the_queue_and_reprioritize_work(pair, tmp_path):
    local, client = pair
    gate, order = tmp_path / "gate", tmp_path / "order.log"
    blockers = [{"task_id": f"block{i}", "priority": "urgent", "command": gated(gate)} for i in range(4)]
    waiting = [{"task_id": f"t{i:03}", "priority": "low", "command": f"echo t{i:03} >> {order}"} for i in range(120)]
    submit(client, "wf-big", blockers + waiting)
    wait_for(lambda: client.workflow_status("wf-big", tasks=False)["progress"]["counts"]["running"] == 4, 30,
             what="the blockers to run")
    env = {"AGENTFLOW_MASTER_URL": local.master_url}
    queue = json.loads(runner.invoke(app, ["queue", "--json"], env=env).output)
    assert queue["total"] == 120 and queue["by_priority"]["low"] == 120 and queue["oldest_wait_ms"] >= 0
    result = runner.invoke(app, ["reprioritize", "wf-big", "t119", "urgent"], env=env)
    assert result.exit_code == 0 and "wf-big/t119: priority urgent (1000)" in result.output
    assert json.loads(runner.invoke(app, ["queue", "--json"], env=env).output)["by_priority"]["urgent"] == 1
    summary = runner.invoke(app, ["status", "wf-big"], env=env)
    assert summary.exit_code == 0 and "running 4" in summary.output and "ready 120" in summary.output
    assert "critical path: 1 tasks to go" in summary.output and "t042" not in summary.output
    assert "agentflow status wf-big --all" in summary.output
    every = runner.invoke(app, ["status", "wf-big", "--all"], env=env)
    assert "t042" in every.output and "t119" in every.output
    document = json.loads(runner.invoke(app, ["status", "wf-big", "--json"], env=env).output)
    assert set(document) == {"workflow_id", "state", "tasks"} and len(document["tasks"]) == 124
    bad = runner.invoke(app, ["reprioritize", "wf-big", "nope", "high"], env=env)
    assert bad.exit_code == 1 and "unknown task" in bad.output
    gate.touch()
    finished = client.wait_workflow("wf-big", timeout_s=120)
    assert finished["state"] == "completed" and len(order.read_text().split()) == 120
    # Four slots free at once run four tasks side by side, so the order their echoes reach the file
    # is a race; the leader's dispatch time is not: the urgent one left first.
    started_ms = {task_id: task["started_ms"] for task_id, task in finished["tasks"].items()}
    assert started_ms["t119"] <= min(started_ms[f"t{i:03}"] for i in range(119))


def test_finished_workflows_beyond_the_retention_are_forgotten_and_status_says_so(pair):
    local, client = pair
    for index in range(5):
        submit(client, f"wf-kept-{index}", [{"task_id": "t", "call": "builtins:int"}])
        assert client.wait_workflow(f"wf-kept-{index}", timeout_s=30)["state"] == "completed"
    wait_for(lambda: [row["workflow_id"] for row in client.workflow_status(None)][-3:] ==
             ["wf-kept-2", "wf-kept-3", "wf-kept-4"] and len(client.workflow_status(None)) <= 3, 10,
             what="the oldest finished workflows to be forgotten")
    forgotten = client.workflow_status("wf-kept-0")
    assert forgotten["forgotten"] is True and forgotten["state"] == "completed" and forgotten["tasks"] == {}
    env = {"AGENTFLOW_MASTER_URL": local.master_url}
    text = runner.invoke(app, ["status", "wf-kept-0"], env=env)
    assert text.exit_code == 0 and "wf-kept-0: completed, then forgotten" in text.output
    assert "no workflow" in runner.invoke(app, ["status", "wf-never"], env=env).output
