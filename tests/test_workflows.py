"""Workflows end to end on real processes: 3 masters (Raft on) and workers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from protocols.names import SCHEDULER_ACTOR
from protocols.control import SubmitWorkflowRequest
from protocols.workflow_spec import TaskNode, Workflow
from protocols.workflow import parse_workflow
from runtime.future import RemoteError
from tests.procs import REPO, running_cluster, wait_for

pytestmark = pytest.mark.integration


def workflow(text: str):
    return parse_workflow(textwrap.dedent(text))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cluster for the tests that do not kill anything: two CPU workers and a GPU worker."""
    with running_cluster(tmp_path_factory.mktemp("shared"), masters=3, workers=2, first_port=17200) as (local, client):
        local.add_worker("gpu-worker", ["--gpu-count", "1", "--max-concurrent-tasks", "2"])
        yield local, client


def run_cli(*args: str, master_url: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AGENTFLOW_MASTER_URL=master_url, AGENTFLOW_LOG="warn")
    return subprocess.run([sys.executable, "-m", "agentflow.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_diamond_completes_and_status_json_follows_the_contract(shared):
    local, client = shared
    result = run_cli("submit", str(REPO / "examples" / "diamond.yaml"), "--wait", "--json", master_url=local.master_url)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["state"] == "completed"
    assert set(document["tasks"]) == {"fetch", "lint", "unit_tests", "report"}
    for task in document["tasks"].values():
        assert set(task) == {"state", "attempts", "worker", "exit_code"}
        assert task["state"] == "completed" and task["attempts"] == 1 and task["exit_code"] == 0
    status = run_cli("status", "wf-diamond", "--json", master_url=local.master_url)
    assert json.loads(status.stdout) == document


def test_failing_task_retries_then_skips_its_dependents(shared):
    local, client = shared
    result = run_cli("submit", str(REPO / "examples" / "failing_branch.yaml"), "--wait", "--json",
                     master_url=local.master_url)
    assert result.returncode == 1
    tasks = json.loads(result.stdout)["tasks"]
    assert tasks["flaky"] == {**tasks["flaky"], "state": "failed", "attempts": 2, "exit_code": 3}
    assert tasks["publish"]["state"] == "skipped" and tasks["publish"]["attempts"] == 0
    assert tasks["docs"]["state"] == "completed"
    assert "trying" in client.workflow_status("wf-failing-branch")["tasks"]["flaky"]["stdout_tail"]


def test_results_flow_to_dependents(shared):
    local, client = shared
    wf = workflow("""
        workflow:
          id: wf-results
          tasks:
            - {task_id: produce, call: "tests.taskfuncs:produce", kwargs: {n: 4}}
            - {task_id: consume, call: "tests.taskfuncs:consume", dependencies: [produce]}
    """)
    client.submit_workflow(wf)
    status = client.wait_workflow("wf-results", timeout_s=60)
    assert status["state"] == "completed", status
    assert status["tasks"]["consume"]["result"] == sum(range(4)) * 2


def test_gpu_tasks_run_only_on_the_gpu_worker_and_impossible_tasks_are_refused(shared):
    local, client = shared
    wf = workflow("""
        workflow:
          id: wf-gpu
          tasks:
    """ + "".join(f"""
            - task_id: train{i}
              command: 'test -n "$CUDA_VISIBLE_DEVICES"'
              resources: {{cpu: 0.1, gpu: 1}}
    """ for i in range(4)) + """
            - {task_id: cpu_only, command: "true", resources: {cpu: 0.1}}
    """)
    client.submit_workflow(wf)
    status = client.wait_workflow("wf-gpu", timeout_s=60)
    assert status["state"] == "completed", status
    assert {status["tasks"][f"train{i}"]["worker"] for i in range(4)} == {"gpu-worker"}
    with pytest.raises(RemoteError) as refused:
        client.submit_workflow(workflow("""
            workflow:
              id: wf-too-big
              tasks: [{task_id: huge, command: "true", resources: {gpu: 8}}]
        """))
    assert refused.value.kind == "unplaceable" and "huge" in refused.value.message


def test_a_retried_submit_is_logged_once_and_answered_with_the_first_result(tmp_path):
    """A client retries a submit whose answer is late (a big workflow takes longer to log than one
    try): the copies wait for the first commit instead of each being logged again."""
    with running_cluster(tmp_path, masters=1, workers=0, first_port=17400) as (local, client):
        big = Workflow("wf-big", "big", [TaskNode(f"t{i}", call="builtins:int") for i in range(3000)])
        command = client.next_command(None)
        request = SubmitWorkflowRequest(big, command.client_id, command.seq)
        leader = client.node.ref(local.masters[0].url, SCHEDULER_ACTOR)
        commit_before = client.cluster_status()["members"][0]["commit_index"]
        answers = [leader.ask(request, timeout_s=30) for _ in range(3)]  # sent before the first commits
        results = [answer.get() for answer in answers]
        assert results[0]["ok"] and results[1] == results[0] and results[2] == results[0]
        assert client.cluster_status()["members"][0]["commit_index"] == commit_before + 1
        assert leader.ask(request, timeout_s=30).get() == results[0]  # after the commit: from the session
        assert client.cluster_status()["members"][0]["commit_index"] == commit_before + 1
        assert client.workflow_status("wf-big", tasks=False)["progress"]["counts"]["ready"] == 3000


def test_kill_9_of_a_worker_mid_task_the_task_completes_elsewhere(tmp_path):
    with running_cluster(tmp_path, masters=3, workers=2, first_port=17600) as (local, client):
        client.submit_workflow(workflow("""
            workflow:
              id: wf-lost-worker
              tasks: [{task_id: slow, command: "sleep 1.5", retries: 0}]
        """))
        running = wait_for(lambda: (t := client.workflow_status("wf-lost-worker")["tasks"]["slow"])["state"]
                           == "running" and t, 30, what="the task to run")
        victim = next(w for w in local.workers if w.name == running["worker"])
        victim.proc.kill()
        status = client.wait_workflow("wf-lost-worker", timeout_s=60)
        task = status["tasks"]["slow"]
        assert status["state"] == "completed"
        assert task["attempts"] == 2 and task["worker"] != victim.name


def test_kill_9_of_the_leader_mid_workflow_loses_no_task(tmp_path):
    with running_cluster(tmp_path, client_timeout_s=20, masters=3, workers=2, first_port=17800) as (local, client):
        tasks = "".join(f"""
                - {{task_id: t{i}, command: "sleep 0.1", dependencies: [{f't{i - 2}' if i >= 2 else ''}]}}
        """ for i in range(16))
        client.submit_workflow(workflow("""
            workflow:
              id: wf-leader-dies
              tasks:
        """ + tasks))
        wait_for(lambda: client.workflow_status("wf-leader-dies")["progress"]["finished"] >= 4, 30,
                 what="some progress")
        leader_id = client.cluster_status()["leader"]
        leader = next(m for m in local.masters if m.name == leader_id)
        leader.proc.kill()
        status = client.wait_workflow("wf-leader-dies", timeout_s=90)
        assert status["state"] == "completed", status
        assert all(task["state"] == "completed" for task in status["tasks"].values())
        assert client.cluster_status()["leader"] != leader_id
