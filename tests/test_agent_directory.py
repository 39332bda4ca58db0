"""The pure side of agents (protocols/agents.py): the directory, host leases, history, types."""

from __future__ import annotations

import pytest

from protocols.agents import (
    AgentDirectory,
    AgentEntry,
    HistoryEntry,
    HostLeases,
    MessageHistory,
    MessageType,
    RegisterAgent,
    RemoveAgentHost,
    SetSubscriptions,
    UnregisterAgent,
    message_type,
    reply_type,
)
from protocols.control import ControlState
from protocols.wire import decode, encode


def entry(agent_id: str, host: str, group: str = "") -> AgentEntry:
    return AgentEntry(agent_id, host, f"tcp://{host}:1", f"tcp://{host}:2", group, [])


def test_a_registration_succeeds_only_on_a_free_id_or_from_the_host_it_replaces():
    directory = AgentDirectory()
    assert directory.apply(RegisterAgent(entry("a", "h1"), None))["ok"]
    refused = directory.apply(RegisterAgent(entry("a", "h2"), None))
    assert refused == {"ok": False, "reason": "agent_exists", "host_id": "h1"}
    assert not directory.apply(RegisterAgent(entry("a", "h2"), "h3"))["ok"]
    moved = directory.apply(RegisterAgent(entry("a", "h2"), "h1"))  # the leader saw h1 die
    assert moved["ok"] and moved["replaced"] == "h1" and directory.get("a").host_id == "h2"


def test_unregister_subscribe_and_a_hosts_removal_change_only_what_they_own():
    directory = AgentDirectory()
    for agent_id, host in (("a", "h1"), ("b", "h1"), ("c", "h2")):
        directory.apply(RegisterAgent(entry(agent_id, host, "g"), None))
    version = directory.version
    assert not directory.apply(UnregisterAgent("a", "h2"))["ok"]  # not its host
    assert directory.apply(SetSubscriptions("c", "h2", ["notification"]))["ok"]
    assert directory.get("c").subscriptions == ["notification"]
    assert directory.apply(RemoveAgentHost("h1", "lease expired"))["removed"] == ["a", "b"]
    assert [e.agent_id for e in directory.group("g")] == ["c"]
    assert directory.apply(UnregisterAgent("c", "h2"))["ok"] and len(directory) == 0
    assert directory.version == version + 3
    assert directory.apply(RemoveAgentHost("h9", "lease expired")) == {"ok": True, "removed": []}


def test_the_directory_is_replicated_state_with_snapshots():
    state = ControlState()
    state.apply(1, encode(RegisterAgent(entry("a", "h1"), None)))
    restored = ControlState.from_snapshot(state.to_snapshot())
    assert restored.agents.get("a") == entry("a", "h1") and restored.agents.version == state.agents.version
    assert decode(encode(entry("a", "h1"))) == entry("a", "h1")


def test_host_leases_expire_and_a_new_leader_grants_one_lease_of_grace():
    leases = HostLeases(lease_ms=1000)
    assert leases.renew("h1", now_ms=0)
    assert not leases.renew("h1", now_ms=500)
    leases.grant_grace(["h1", "h2"], now_ms=600)  # h1 keeps its own lease
    assert leases.alive("h1", 1400) and leases.alive("h2", 1500)
    assert leases.expired(1500) == ["h1"]
    assert leases.expired(1600) == ["h2"] and not leases.alive("h2", 1600)
    with pytest.raises(ValueError):
        HostLeases(0)


def history_row(i: int, frm: str = "a", to: str = "b", kind: str = "notification", ts: int | None = None) -> list:
    return [f"m{i}", frm, to, kind, i if ts is None else ts, None, i, 8]


def test_history_is_bounded_deduplicated_and_filtered_newest_last():
    history = MessageHistory(capacity=5)
    history.add("h", [history_row(i) for i in range(3)] + [history_row(1)])
    assert [e.message_id for e in history.query(10)] == ["m0", "m1", "m2"]
    assert history.query(1)[0] == HistoryEntry("m2", "a", "b", "notification", 2, None, 2, 8, "h")
    history.add("h", [history_row(i, frm="c", kind="task_request") for i in range(3, 7)]
                + ["not a row", ["m9", "a", "b", "notification", "not a time", None, 0, 8]])
    assert len(history) == 5 and history.dropped == 2 and history.malformed == 2
    assert [e.message_id for e in history.query(2)] == ["m5", "m6"]
    assert [e.message_id for e in history.query(10, agent="c", msg_type="task_request")] == ["m3", "m4", "m5", "m6"]


def test_message_types_take_the_seeds_names_and_requests_get_their_answer_type():
    assert message_type("TaskRequest") == message_type("task_request") == MessageType.TASK_REQUEST.value
    assert reply_type("task_request") == "task_response" and reply_type("notification") == "notification"
    with pytest.raises(ValueError, match="task_request"):
        message_type("shout")
    assert len(MessageType) == 10


def test_agent_and_agent_group_tasks_parse_and_round_trip():
    from protocols.workflow import WorkflowError, dump_workflow, parse_workflow

    text = """
workflow:
  id: wf-agents
  tasks:
    - {task_id: ask, agent: planner, kwargs: {depth: 2}}
    - {task_id: solve, agent_group: solvers, args: [1], dependencies: [ask]}
"""
    workflow = parse_workflow(text)
    ask, solve = workflow.tasks
    assert (ask.kind, ask.agent, solve.kind, solve.agent_group) == ("agent", "planner", "agent", "solvers")
    assert parse_workflow(dump_workflow(workflow)) == workflow
    with pytest.raises(WorkflowError, match="agent_group"):
        parse_workflow("workflow: {id: w, tasks: [{task_id: t, command: 'true', agent_group: g}]}")


def test_history_orders_hosts_batches_by_timestamp_keeping_arrival_order_on_ties():
    history = MessageHistory(capacity=10)
    history.add("h2", [[f"late{i}", "a", "b", "notification", 10, None, i, 8] for i in range(2)])
    history.add("h1", [[f"early{i}", "a", "b", "notification", 5, None, i, 8] for i in range(2)])
    assert [(e.message_id, e.host) for e in history.query(10)] == [
        ("early0", "h1"), ("early1", "h1"), ("late0", "h2"), ("late1", "h2")]
