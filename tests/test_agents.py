"""Agents on three masters and separate agent-host processes: messaging, its guarantees, its errors.

Every agent runs in its own `agentflow agent run` process (its own node); the caller is a node in
the test process. The agents are in tests/agentfuncs.py.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from agentflow import (
    AgentCommunication,
    Client,
    AgentError,
    AgentExists,
    AgentNotFound,
    AgentUnavailable,
    MailboxFull,
    MessageType,
    Node,
    RequestTimeout,
    Workflow,
    parse_workflow,
)
from tests.agentfuncs import Echo
from tests.procs import running_cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("agents"), masters=3, workers=0, first_port=18100) as (local, client):
        yield local


@pytest.fixture(scope="module")
def comm(cluster):
    with Node("agent-tests", master_urls=cluster.master_url) as node:
        yield AgentCommunication(node, "tester")


def report(comm, agent_id: str) -> dict:
    return comm.request(agent_id, "report", timeout_ms=5000).content


def test_request_response_and_the_directory(cluster, comm):
    cluster.add_agent("tests.agentfuncs:Echo", "echo-1", ["--group", "echoes"])
    reply = comm.request("echo-1", {"n": 1}, timeout_ms=5000)
    assert reply.content == {"echo": {"n": 1}, "by": "echo-1"}
    assert reply.from_agent == "echo-1" and reply.to_agent == "tester"
    assert reply.msg_type == MessageType.TASK_RESPONSE and reply.correlation_id
    view = comm.agents()
    entry = next(e for e in view.entries if e.agent_id == "echo-1")
    assert entry.group == "echoes" and entry.host_id.startswith("agent-host-echo-1")


def test_point_to_point_keeps_each_pairs_order(cluster, comm):
    cluster.add_agent("tests.agentfuncs:Recorder", "rec-order")
    cluster.add_agent("tests.agentfuncs:Sender", "sender-a")
    cluster.add_agent("tests.agentfuncs:Sender", "sender-b")
    assert comm.request("sender-a", {"send_to": "rec-order", "count": 2000}).content == 2000
    assert comm.request("sender-b", {"send_to": "rec-order", "count": 500}).content == 500
    received = wait_for(lambda: (r := report(comm, "rec-order")["received"]) and len(r.get("sender-a", [])) == 2000
                        and len(r.get("sender-b", [])) == 500 and r, 30, what="every message")
    assert received["sender-a"] == list(range(2000))
    assert received["sender-b"] == list(range(500))


def test_broadcast_reaches_subscribers_only_and_counts_what_they_missed(cluster, comm):
    for agent_id in ("sub-1", "sub-2"):
        cluster.add_agent("tests.agentfuncs:Recorder", agent_id, ["--subscribe", "notification"])
    cluster.add_agent("tests.agentfuncs:Recorder", "not-subscribed")
    cluster.add_agent("tests.agentfuncs:Sender", "broadcaster")
    # A subscriber hears a publisher once its SUB socket has connected: warm up until both do.
    wait_for(lambda: comm.request("broadcaster", {"broadcast": 1}) and all(
        report(comm, s)["broadcasts"] > 0 for s in ("sub-1", "sub-2")), 30, interval_s=0.2, what="subscriptions")
    before = {s: report(comm, s)["broadcasts"] for s in ("sub-1", "sub-2")}
    assert comm.request("broadcaster", {"broadcast": 300}).content == 300
    for subscriber in ("sub-1", "sub-2"):
        seen = wait_for(lambda: (r := report(comm, subscriber))["broadcasts"] >= before[subscriber] + 300 and r, 30,
                        what=f"{subscriber} to hear all")
        assert seen["received"]["broadcaster"][-300:] == list(range(300))
        assert seen["missed"] == 0
    assert report(comm, "not-subscribed")["received"] == {}


def test_request_errors_each_within_its_bound(cluster, comm):
    started = time.monotonic()
    with pytest.raises(AgentNotFound):
        comm.request("nobody-here", 1, timeout_ms=5000)
    assert time.monotonic() - started < 0.5
    cluster.add_agent("tests.agentfuncs:Echo", "echo-errors")
    with pytest.raises(AgentError) as failed:
        comm.request("echo-errors", {"raise": "no such part"}, timeout_ms=5000)
    assert "ValueError: no such part" in str(failed.value)
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        comm.request("echo-errors", {"sleep_s": 1.5}, timeout_ms=300)
    assert 0.25 <= time.monotonic() - started < 1.2
    assert comm.request("echo-errors", "still fine", timeout_ms=5000).content["echo"] == "still fine"


def test_a_request_to_a_killed_host_fails_fast_and_the_agent_leaves_the_directory(cluster, comm):
    host = cluster.add_agent("tests.agentfuncs:Echo", "victim")
    outcome = {}

    def in_flight():
        try:
            comm.request("victim", {"sleep_s": 10}, timeout_ms=20_000)
        except Exception as exc:  # noqa: BLE001 - the test checks which
            outcome["error"], outcome["at"] = exc, time.monotonic()

    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_for(lambda: comm.agents().stats.get("victim", {}).get("mailbox_depth") == 1, 10, interval_s=0.1,
             what="the request to be in the victim's hands")
    killed_at = time.monotonic()
    host.kill()
    thread.join(15)
    assert isinstance(outcome["error"], AgentUnavailable), outcome
    assert outcome["at"] - killed_at < 1.0
    started = time.monotonic()
    with pytest.raises((AgentUnavailable, AgentNotFound)):
        comm.request("victim", "after the kill", timeout_ms=5000)
    assert time.monotonic() - started < 1.0
    # Its host's lease runs out: the directory drops it, and it is not found at all.
    wait_for(lambda: all(e.agent_id != "victim" for e in comm.agents().entries), 20, what="the lease to run out")
    with pytest.raises(AgentNotFound):
        comm.request("victim", "gone", timeout_ms=5000)


def test_a_full_mailbox_refuses_instead_of_growing(cluster, comm):
    cluster.add_agent("tests.agentfuncs:Slow", "slow", ["--mailbox-limit", "3"])
    outcomes = []
    for i in range(10):
        try:
            comm.deliver(comm.message("slow", i))
            outcomes.append("in")
        except MailboxFull:
            outcomes.append("full")
    assert outcomes[:3] == ["in", "in", "in"] and "full" in outcomes


def test_a_group_request_survives_the_kill_9_of_a_member(cluster, comm):
    members = {agent_id: cluster.add_agent("tests.agentfuncs:Echo", agent_id, ["--group", "reviewers"])
               for agent_id in ("reviewer-1", "reviewer-2")}
    answered_by = {comm.request(content=i, group="reviewers", timeout_ms=5000).content["by"] for i in range(6)}
    assert answered_by == {"reviewer-1", "reviewer-2"}
    members["reviewer-1"].kill()
    answers = [comm.request(content=i, group="reviewers", timeout_ms=5000).content for i in range(10)]
    assert [a["echo"] for a in answers] == list(range(10))
    assert {a["by"] for a in answers} == {"reviewer-2"}


def test_a_duplicate_agent_id_is_refused_while_the_first_is_alive(cluster, comm):
    cluster.add_agent("tests.agentfuncs:Echo", "unique")
    with Node("second-host", master_urls=cluster.master_url) as node:
        with pytest.raises(AgentExists):
            node.spawn(Echo, agent_id="unique")
        assert "agent/unique" not in node.targets
    assert comm.request("unique", "first", timeout_ms=5000).content["by"] == "unique"


def test_history_keeps_the_messages_newest_last(cluster, comm):
    cluster.add_agent("tests.agentfuncs:Echo", "echo-history")
    sent = [comm.request("echo-history", {"i": i}, timeout_ms=5000) for i in range(5)]
    found = wait_for(lambda: (h := comm.get_history(limit=100, agent="echo-history")) and
                     {e.correlation_id for e in h} >= {reply.correlation_id for reply in sent} and h, 10,
                     what="the history")
    requests = [e for e in found if e.msg_type == "task_request"]
    assert [e.content for e in requests][-5:] == [{"i": i} for i in range(5)]
    assert all(e.to_agent == "echo-history" for e in requests)


def agent_workflow(workflow_id: str, solve: dict) -> Workflow:
    return parse_workflow(json.dumps({"workflow": {"id": workflow_id, "tasks": [
        {"task_id": "seed", "call": "builtins:int", "args": [21]},
        {"task_id": "solve", "dependencies": ["seed"], **solve},
        {"task_id": "report", "call": "tests.taskfuncs:total", "dependencies": ["solve"]},
    ]}}))


def test_a_workflow_task_run_by_an_agent_group_passes_its_result_on(cluster, comm):
    cluster.add_agent("tests.agentfuncs:Doubler", "doubler-1", ["--group", "doublers"])
    cluster.add_worker("agent-task-worker")
    with Client(cluster.master_url, timeout_s=15) as client:
        client.submit_workflow(agent_workflow("wf-agent-group", {"agent_group": "doublers"}))
        status = client.wait_workflow("wf-agent-group", timeout_s=60)
        assert status["state"] == "completed", status
        assert status["tasks"]["solve"]["result"] == {"doubled": 42, "by": "doubler-1"}
        assert status["tasks"]["report"]["result"] == 42
        client.submit_workflow(agent_workflow("wf-agent-missing", {"agent": "nobody", "retries": 1}))
        status = client.wait_workflow("wf-agent-missing", timeout_s=60)
        assert status["state"] == "failed" and status["tasks"]["solve"]["attempts"] == 2
        assert "AgentNotFound" in status["tasks"]["solve"]["error"]
        assert status["tasks"]["report"]["state"] == "skipped"


def test_an_agent_task_completes_across_a_kill_9_of_the_leader(tmp_path):
    with running_cluster(tmp_path, client_timeout_s=20, masters=3, workers=1, first_port=18300) as (local, client):
        local.add_agent("tests.agentfuncs:Doubler", "doubler")
        client.submit_workflow(agent_workflow("wf-agent-failover", {"agent": "doubler", "kwargs": {"sleep_s": 1.5}}))
        wait_for(lambda: client.workflow_status("wf-agent-failover")["tasks"]["solve"]["state"] == "running", 30,
                 what="the agent task to run")
        leader_id = client.cluster_status()["leader"]
        local.by_id(leader_id).kill()
        status = client.wait_workflow("wf-agent-failover", timeout_s=90)
        assert status["state"] == "completed", status
        assert status["tasks"]["report"]["result"] == 42
        assert client.cluster_status()["leader"] != leader_id
        with Node("asker", master_urls=local.master_url) as node:
            attempts = AgentCommunication(node, "tester").request("doubler", "attempts", timeout_ms=5000).content
        assert ["solve", 1] in attempts  # a re-sent request carries its attempt number


def test_a_live_host_whose_agents_the_directory_dropped_registers_them_again(cluster, comm):
    from protocols.agents import RemoveAgentHost

    cluster.add_agent("tests.agentfuncs:Echo", "comeback")
    host_id = comm.directory.lookup("comeback").host_id
    with Client(cluster.master_url, timeout_s=10) as client:
        client.propose(RemoveAgentHost(host_id, "a test pretends its lease ran out"))
    assert all(e.agent_id != "comeback" for e in comm.agents().entries)
    wait_for(lambda: any(e.agent_id == "comeback" for e in comm.agents().entries), 15, interval_s=0.1,
             what="the host to register its agent again")
    comm.directory.forget("comeback")
    assert comm.request("comeback", "back", timeout_ms=5000).content["echo"] == "back"
