"""Bounded state: finished workflows are forgotten through committed commands, by count and by
age, and leave a tombstone; the policy itself; reprioritizing through the log."""

from __future__ import annotations

from protocols.dispatch import DispatchConfig
from protocols.retention import RetentionPolicy
from protocols.workflow_spec import TaskNode, Workflow
from protocols.workflow_table import MAX_FORGOTTEN, ForgetWorkflow, SubmitWorkflow, WorkflowTable
from tests.dispatchsim import DispatchSim, task


def test_the_policy_forgets_the_oldest_beyond_the_count_and_the_age():
    policy = RetentionPolicy(retain_workflows=2, retain_ms=1000)
    finished = {"a": 10, "b": 20, "c": 900, "d": 950}
    assert policy.to_forget(finished, now_ms=960) == ["a", "b"]
    assert policy.to_forget(finished, now_ms=960, forgetting={"a"}) == ["b"]
    assert policy.to_forget({"c": 900, "d": 950}, now_ms=1899) == []
    assert policy.to_forget({"c": 900, "d": 950}, now_ms=1900) == ["c"]


def test_forgetting_leaves_a_bounded_tombstone_and_the_id_can_be_used_again():
    table = WorkflowTable()
    table.apply(SubmitWorkflow(Workflow("wf", "the wf", [TaskNode("marker")]), 5))
    assert table.finished == {"wf": 5}
    assert table.apply(ForgetWorkflow("wf")).ok
    assert "wf" not in table and table.finished == {}
    assert table.forgotten["wf"] == {"name": "the wf", "state": "completed", "finished_ms": 5, "tasks": 1}
    restored = WorkflowTable.from_snapshot(table.to_snapshot())
    assert restored.forgotten == table.forgotten and restored.clock_ms == 5
    table.apply(SubmitWorkflow(Workflow("wf", "again", [TaskNode("x", command="true")]), 6))
    assert "wf" not in table.forgotten
    for index in range(MAX_FORGOTTEN + 5):
        table.apply(SubmitWorkflow(Workflow(f"w{index}", "", [TaskNode("m")]), 7))
        table.apply(ForgetWorkflow(f"w{index}"))
    assert len(table.forgotten) == MAX_FORGOTTEN and "w0" not in table.forgotten


def test_the_leader_forgets_finished_workflows_by_count_and_by_age_through_the_log():
    sim = DispatchSim(DispatchConfig(retention=RetentionPolicy(retain_workflows=3, retain_ms=60_000)))
    sim.worker("w", slots=8)
    for index in range(5):
        sim.submit(f"wf{index}", [task("t")])
        sim.finish("w", f"wf{index}", "t")
        sim.now_ms += 10
    sim.submit("running", [task("t")])
    sim.advance(100)
    assert list(sim.control.workflows.finished) == ["wf2", "wf3", "wf4"]
    assert set(sim.control.workflows.forgotten) == {"wf0", "wf1"}
    sim.advance(60_000)
    assert list(sim.control.workflows.finished) == [] and "running" in sim.control.workflows


def test_reprioritizing_is_committed_and_reorders_the_queue():
    sim = DispatchSim()
    sim.worker("solo", slots=1)
    sim.submit("wf", [task("block"), task("a", priority="low"), task("b", priority="low")])
    assert sim.reprioritize("wf", "b", 1000).value["ok"]
    assert sim.control.workflows.get("wf").tasks["b"].priority == 1000
    sim.finish("solo", "wf", "block")
    assert sim.running("solo") == ["wf/b"]
    refused = sim.reprioritize("wf", "block", 1000).value
    assert refused["ok"] is False and refused["reason"] == "task already finished"
