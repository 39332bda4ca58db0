"""The workflow state machine: readiness, attempts, retries, failure and skip, cancel, the
order helpers, snapshots, the command table, and a property over random DAGs."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.workflow_run import TaskDependencyGraph, TaskState, WorkflowState
from protocols.workflow_spec import TaskNode, TaskPriority, Workflow, WorkflowError, priority_value, split_task_key, task_key
from protocols.workflow_table import (
    CancelWorkflow,
    DispatchTask,
    FinishTask,
    ForgetWorkflow,
    RequeueTask,
    SubmitWorkflow,
    WorkflowTable,
)


def make_workflow(spec: dict[str, list[str]], workflow_id: str = "w", **task_fields) -> Workflow:
    """``{"a": [], "b": ["a"]}`` -> a workflow of command tasks with those dependencies."""
    return Workflow(
        workflow_id,
        workflow_id,
        [TaskNode(task_id, command=f"run {task_id}", dependencies=deps, **task_fields) for task_id, deps in spec.items()],
    )


DIAMOND = {"fetch": [], "lint": ["fetch"], "unit": ["fetch"], "report": ["lint", "unit"]}


def run(graph: TaskDependencyGraph, task_id: str, succeeded: bool = True, **details) -> None:
    attempt = graph.dispatch(task_id, "worker1")
    assert attempt > 0
    assert graph.finish(task_id, attempt, succeeded, **details)


def test_enums_match_the_design():
    assert [p.value for p in TaskPriority] == [1000, 750, 500, 250]
    assert [s.value for s in TaskState] == ["pending", "ready", "running", "completed", "failed", "skipped", "cancelled"]
    assert [s.value for s in WorkflowState] == ["pending", "running", "completed", "failed", "cancelled"]
    assert TaskState.READY == "ready"
    assert priority_value("Urgent") == 1000 and priority_value(42) == 42
    with pytest.raises(ValueError):
        priority_value("soon")
    assert split_task_key(task_key("wf", "a/b")) == ("wf", "a/b")


def test_roots_are_ready_at_once_and_others_pending():
    graph = TaskDependencyGraph.from_workflow(make_workflow(DIAMOND))
    assert graph.get_ready_tasks() == ["fetch"]
    assert graph.task_state("report") is TaskState.PENDING
    assert graph.state is WorkflowState.PENDING


def test_task_ready_only_when_all_dependencies_completed(caplog):
    graph = TaskDependencyGraph.from_workflow(make_workflow(DIAMOND))
    run(graph, "fetch")
    assert graph.get_ready_tasks() == ["lint", "unit"]
    assert graph.state is WorkflowState.RUNNING
    run(graph, "lint")
    assert graph.task_state("report") is TaskState.PENDING
    with caplog.at_level(logging.DEBUG, logger="agentflow.dependency"):
        run(graph, "unit")
    assert graph.get_ready_tasks() == ["report"]
    assert [r.getMessage() for r in caplog.records if r.name == "agentflow.dependency"] == [
        "Task report is ready (all dependencies completed)"
    ]
    run(graph, "report")
    assert graph.is_workflow_completed()
    assert graph.state is WorkflowState.COMPLETED


def test_results_are_kept_for_dependents():
    graph = TaskDependencyGraph.from_workflow(make_workflow(DIAMOND))
    run(graph, "fetch", result={"rows": 3}, exit_code=0, stdout_tail="fetched\n")
    run(graph, "lint", result="clean")
    assert graph.results["fetch"] == {"rows": 3}
    assert graph.dependency_results("lint") == {"fetch": {"rows": 3}}
    assert graph.dependency_results("report") == {"lint": "clean", "unit": None}
    fetch = graph.runs["fetch"]
    assert (fetch.exit_code, fetch.stdout_tail, fetch.worker_id, fetch.attempts) == (0, "fetched\n", "worker1", 1)


def test_only_the_current_attempt_may_finish_a_task():
    graph = TaskDependencyGraph.from_workflow(make_workflow({"a": []}))
    first = graph.dispatch("a", "w1", now_ms=10)
    assert graph.requeue("a", first, now_ms=20, reason="worker lost")
    assert graph.task_state("a") is TaskState.READY
    assert not graph.finish("a", first, True)  # the lost worker reports late: ignored
    second = graph.dispatch("a", "w2", now_ms=30)
    assert second == first + 1
    assert not graph.finish("a", first, True)  # still stale
    assert not graph.requeue("a", first)
    assert graph.finish("a", second, True, now_ms=40)
    assert not graph.finish("a", second, True)  # a duplicate report: ignored
    assert graph.runs["a"].failures == 0  # requeues do not use up retries
    assert graph.runs["a"].worker_id == "w2"


def test_dispatch_requires_ready_and_the_next_attempt():
    graph = TaskDependencyGraph.from_workflow(make_workflow({"a": [], "b": ["a"]}))
    assert graph.dispatch("b", "w1") == 0  # pending
    assert graph.dispatch("a", "w1", attempt=2) == 0  # not the next attempt
    assert graph.dispatch("a", "w1", attempt=1) == 1
    assert graph.dispatch("a", "w1") == 0  # already running


def test_failure_retries_then_fails_and_skips_downstream():
    workflow = Workflow(
        "w",
        "w",
        [
            TaskNode("prepare", command="true"),
            TaskNode("flaky", command="exit 3", retries=1, dependencies=["prepare"]),
            TaskNode("publish", command="true", dependencies=["flaky"]),
            TaskNode("announce", command="true", dependencies=["publish"]),
            TaskNode("docs", command="true", dependencies=["prepare"]),
        ],
    )
    graph = TaskDependencyGraph.from_workflow(workflow)
    run(graph, "prepare")
    run(graph, "flaky", succeeded=False, exit_code=3)
    assert graph.task_state("flaky") is TaskState.READY  # one retry left
    assert graph.runs["flaky"].failures == 1
    run(graph, "flaky", succeeded=False, exit_code=3, stderr_tail="boom")
    assert graph.task_state("flaky") is TaskState.FAILED
    assert graph.runs["flaky"].attempts == 2 and graph.runs["flaky"].exit_code == 3
    assert graph.task_state("publish") is TaskState.SKIPPED
    assert graph.task_state("announce") is TaskState.SKIPPED
    # The independent branch goes on; the workflow is failed once it is done.
    assert graph.state is WorkflowState.RUNNING
    assert not graph.is_workflow_completed()
    run(graph, "docs")
    assert graph.is_workflow_completed()
    assert graph.state is WorkflowState.FAILED


def test_update_task_state_is_the_seed_entry_point():
    graph = TaskDependencyGraph.from_workflow(make_workflow({"a": [], "b": ["a"]}, retries=1))
    assert graph.update_task_state("a", "running", worker_id="w1")
    assert graph.runs["a"].attempts == 1
    assert not graph.update_task_state("a", TaskState.COMPLETED, attempt=7)  # stale
    assert graph.update_task_state("a", TaskState.FAILED, attempt=1, exit_code=1)
    assert graph.task_state("a") is TaskState.READY  # retried
    assert graph.update_task_state("a", TaskState.RUNNING, attempt=2, worker_id="w2")
    assert graph.update_task_state("a", TaskState.READY, attempt=2, reason="worker lost")
    assert graph.update_task_state("a", TaskState.RUNNING, worker_id="w3")
    assert graph.update_task_state("a", TaskState.COMPLETED, attempt=3, result=5)
    assert graph.task_state("b") is TaskState.READY
    assert not graph.update_task_state("b", TaskState.SKIPPED)
    assert graph.update_task_state("b", TaskState.CANCELLED)
    assert not graph.update_task_state("b", TaskState.CANCELLED)
    assert graph.state is WorkflowState.CANCELLED


def test_cancel_marks_everything_unfinished():
    graph = TaskDependencyGraph.from_workflow(make_workflow(DIAMOND))
    run(graph, "fetch")
    graph.dispatch("lint", "w1")
    released = graph.cancel(now_ms=5)
    assert released == ["lint", "unit"]  # running and ready: the owner lets go of them
    assert graph.task_state("fetch") is TaskState.COMPLETED
    assert [graph.task_state(t) for t in ("lint", "unit", "report")] == [TaskState.CANCELLED] * 3
    assert graph.state is WorkflowState.CANCELLED
    assert graph.is_workflow_completed()
    assert graph.get_ready_tasks() == []


def test_cancel_task_cancels_downstream_only():
    graph = TaskDependencyGraph.from_workflow(make_workflow(DIAMOND))
    run(graph, "fetch")
    assert graph.cancel_task("unit") == ["unit"]
    assert graph.task_state("report") is TaskState.CANCELLED
    assert graph.task_state("lint") is TaskState.READY
    run(graph, "lint")
    assert graph.state is WorkflowState.CANCELLED


def test_execution_order_is_topological_with_declaration_tie_break():
    graph = TaskDependencyGraph.from_workflow(
        make_workflow({"z": [], "c": ["z"], "a": [], "b": ["a", "z"], "d": ["c", "b"]})
    )
    assert graph.get_execution_order() == ["z", "c", "a", "b", "d"]
    assert graph.get_dependency_chain("d") == ["z", "c", "a", "b"]
    assert graph.get_dependency_chain("z") == []
    assert graph.get_dependents_chain("a") == ["b", "d"]


def test_critical_path_by_given_and_past_durations():
    graph = TaskDependencyGraph.from_workflow(make_workflow(DIAMOND))
    path, total_ms = graph.critical_path({"fetch": 10, "lint": 5, "unit": 30, "report": 1})
    assert (path, total_ms) == (["fetch", "unit", "report"], 41)
    path, total_ms = graph.critical_path({"fetch": 10, "lint": 50, "unit": 30, "report": 1})
    assert (path, total_ms) == (["fetch", "lint", "report"], 61)
    # Past durations: how long each task actually ran.
    for task_id, start_ms, end_ms in (("fetch", 0, 100), ("lint", 100, 120), ("unit", 100, 400), ("report", 400, 410)):
        attempt = graph.dispatch(task_id, "w1", now_ms=start_ms)
        graph.finish(task_id, attempt, True, now_ms=end_ms)
    assert graph.critical_path() == (["fetch", "unit", "report"], 410)


def test_progress_counts_every_state():
    graph = TaskDependencyGraph.from_workflow(make_workflow(DIAMOND))
    run(graph, "fetch")
    graph.dispatch("lint", "w1")
    progress = graph.progress()
    assert progress["total"] == 4 and progress["finished"] == 1
    assert progress["fraction_done"] == 0.25
    assert progress["counts"] == {
        "pending": 1,
        "ready": 1,
        "running": 1,
        "completed": 1,
        "failed": 0,
        "skipped": 0,
        "cancelled": 0,
    }


def test_structure_is_checked_for_workflows_built_in_python():
    with pytest.raises(WorkflowError, match="unknown dependency"):
        TaskDependencyGraph.from_workflow(make_workflow({"a": ["x"]}))
    with pytest.raises(WorkflowError, match="cycle: a -> b -> a"):
        TaskDependencyGraph.from_workflow(make_workflow({"a": ["b"], "b": ["a"]}))
    with pytest.raises(WorkflowError, match="duplicate"):
        TaskDependencyGraph.from_workflow(Workflow("w", "w", [TaskNode("a"), TaskNode("a")]))


def test_deep_chain_needs_no_recursion():
    spec = {"t0": []} | {f"t{i}": [f"t{i - 1}"] for i in range(1, 5000)}
    graph = TaskDependencyGraph.from_workflow(make_workflow(spec))
    assert graph.get_execution_order()[-1] == "t4999"
    with pytest.raises(WorkflowError, match="cycle"):
        TaskDependencyGraph.from_workflow(make_workflow(spec | {"t0": ["t4999"]}))


def test_graph_snapshot_round_trip_keeps_behaviour():
    graph = TaskDependencyGraph.from_workflow(make_workflow(DIAMOND, retries=1), now_ms=1)
    run(graph, "fetch", result=[1, 2])
    run(graph, "unit", succeeded=False)
    graph.dispatch("lint", "w9", now_ms=3)
    snapshot = graph.to_snapshot()
    assert wire.decode(wire.encode(snapshot)) == snapshot  # msgpack-native
    restored = TaskDependencyGraph.from_snapshot(wire.decode(wire.encode(snapshot)))
    assert restored.to_snapshot() == snapshot
    assert restored.progress() == graph.progress()
    for each in (graph, restored):
        assert each.finish("lint", 1, True)
        run(each, "unit")
        assert each.get_ready_tasks() == ["report"]
        run(each, "report")
        assert each.state is WorkflowState.COMPLETED
    assert restored.to_snapshot() == graph.to_snapshot()


# --------------------------------------------------------------------------- the command table


def test_table_applies_commands_and_reports_what_to_enqueue():
    table = WorkflowTable()
    applied = table.apply(SubmitWorkflow(make_workflow(DIAMOND, "wf"), now_ms=0))
    assert applied.ok and applied.ready == ["wf/fetch"]
    applied = table.apply(DispatchTask("wf", "fetch", 1, "worker1", now_ms=1))
    assert applied.ok and applied.attempt == 1
    assert not table.apply(DispatchTask("wf", "fetch", 1, "worker2", now_ms=1)).ok  # a second leader's
    applied = table.apply(FinishTask("wf", "fetch", 1, True, now_ms=2, exit_code=0, result="r"))
    assert applied.ok and applied.ready == ["wf/lint", "wf/unit"]
    assert not table.apply(FinishTask("wf", "fetch", 1, True, now_ms=3)).ok
    table.apply(DispatchTask("wf", "lint", 1, "worker1", now_ms=4))
    assert table.apply(RequeueTask("wf", "lint", 1, "worker lost", now_ms=5)).ready == ["wf/lint"]
    applied = table.apply(CancelWorkflow("wf", now_ms=6))
    assert applied.ok and applied.released == ["wf/lint", "wf/unit"] and applied.finished == ["wf"]
    assert table.get("wf").state is WorkflowState.CANCELLED
    assert not table.apply(CancelWorkflow("wf", now_ms=7)).ok
    assert table.apply(ForgetWorkflow("wf")).ok
    assert "wf" not in table
    assert table.apply(FinishTask("wf", "x", 1, True, now_ms=8)).reason == "unknown workflow"


def test_table_rejects_duplicate_and_invalid_workflows():
    table = WorkflowTable()
    assert table.apply(SubmitWorkflow(make_workflow({"a": []}, "wf"), 0)).ok
    assert "already exists" in table.apply(SubmitWorkflow(make_workflow({"a": []}, "wf"), 0)).reason
    assert "cycle" in table.apply(SubmitWorkflow(make_workflow({"a": ["a"]}, "bad"), 0)).reason
    assert "bad" not in table
    assert not table.apply(ForgetWorkflow("wf")).ok  # still running


def test_seed_workflow_of_noop_markers_completes_on_submit():
    seed = Workflow("wf1", "wf1", [TaskNode("build"), TaskNode("test", dependencies=["build"]),
                                    TaskNode("deploy", dependencies=["test"])])
    table = WorkflowTable()
    applied = table.apply(SubmitWorkflow(seed, 0))
    assert applied.ok and applied.ready == [] and applied.finished == ["wf1"]
    assert table.get("wf1").state is WorkflowState.COMPLETED


def test_noop_join_completes_when_its_dependencies_do():
    workflow = Workflow("wf", "wf", [TaskNode("a", command="x"), TaskNode("join", dependencies=["a"]),
                                     TaskNode("b", command="y", dependencies=["join"])])
    table = WorkflowTable()
    table.apply(SubmitWorkflow(workflow, 0))
    table.apply(DispatchTask("wf", "a", 1, "w", 1))
    applied = table.apply(FinishTask("wf", "a", 1, True, 2))
    assert applied.ready == ["wf/b"]
    assert table.get("wf").task_state("join") is TaskState.COMPLETED


def test_failure_in_table_releases_nothing_running_but_skips():
    table = WorkflowTable()
    table.apply(SubmitWorkflow(make_workflow({"a": [], "b": ["a"], "c": []}, "wf"), 0))
    table.apply(DispatchTask("wf", "a", 1, "w", 1))
    applied = table.apply(FinishTask("wf", "a", 1, False, 2, exit_code=3))
    assert applied.ok and applied.ready == [] and applied.finished == []
    assert table.get("wf").task_state("b") is TaskState.SKIPPED
    table.apply(DispatchTask("wf", "c", 1, "w", 3))
    assert table.apply(FinishTask("wf", "c", 1, True, 4)).finished == ["wf"]
    assert table.get("wf").state is WorkflowState.FAILED


def test_commands_are_wire_records_and_table_snapshots_round_trip():
    commands = [
        SubmitWorkflow(make_workflow(DIAMOND, "wf"), 0),
        DispatchTask("wf", "fetch", 1, "w", 1),
        FinishTask("wf", "fetch", 1, True, 2, exit_code=0, result={"k": [1]}),
    ]
    decoded = [wire.decode(wire.encode(command)) for command in commands]
    assert decoded == commands
    first, second = WorkflowTable(), WorkflowTable()
    for command in commands:
        first.apply(command)
    for command in decoded:
        second.apply(command)
    assert first.to_snapshot() == second.to_snapshot()
    restored = WorkflowTable.from_snapshot(wire.decode(wire.encode(first.to_snapshot())))
    assert restored.to_snapshot() == first.to_snapshot()
    assert restored.apply(DispatchTask("wf", "lint", 1, "w", 3)).ok


# --------------------------------------------------------------------------- property


@st.composite
def random_dags(draw):
    count = draw(st.integers(1, 25))
    spec: dict[str, list[str]] = {}
    names = [f"t{i}" for i in range(count)]
    draw(st.randoms()).shuffle(names)  # declaration order is not id order
    for index, name in enumerate(names):
        spec[name] = draw(st.lists(st.sampled_from(names[:index]), unique=True, max_size=4)) if index else []
    return spec


@settings(max_examples=80, deadline=None)
@given(random_dags(), st.data())
def test_running_ready_tasks_runs_every_task_after_its_dependencies(spec, data):
    graph = TaskDependencyGraph.from_workflow(make_workflow(spec))
    finished_at: dict[str, int] = {}
    running: list[tuple[str, int]] = []
    steps = 0
    while not graph.is_workflow_completed():
        steps += 1
        assert steps <= 4 * len(spec) + 5, "did not terminate"
        ready = graph.get_ready_tasks()
        for task_id in ready:
            assert all(finished_at.get(dep) is not None for dep in spec[task_id])
        # Start any subset of the ready tasks and finish any one running task, in any order.
        if ready:
            for task_id in data.draw(st.lists(st.sampled_from(ready), unique=True, min_size=1)):
                running.append((task_id, graph.dispatch(task_id, "w")))
        index = data.draw(st.integers(0, len(running) - 1))
        task_id, attempt = running.pop(index)
        assert graph.finish(task_id, attempt, True)
        finished_at[task_id] = steps
    assert set(finished_at) == set(spec)
    for task_id, deps in spec.items():
        assert all(finished_at[dep] < finished_at[task_id] for dep in deps)
    assert graph.state is WorkflowState.COMPLETED
    order = graph.get_execution_order()
    assert sorted(order) == sorted(spec)
    assert all(order.index(dep) < order.index(task_id) for task_id, deps in spec.items() for dep in deps)


@settings(max_examples=60, deadline=None)
@given(random_dags(), st.data())
def test_any_failure_skips_exactly_what_is_downstream(spec, data):
    graph = TaskDependencyGraph.from_workflow(make_workflow(spec))
    doomed = data.draw(st.sampled_from(list(spec)))
    while not graph.is_workflow_completed():
        task_id = graph.get_ready_tasks()[0]
        attempt = graph.dispatch(task_id, "w")
        graph.finish(task_id, attempt, task_id != doomed)
    downstream = set(graph.get_dependents_chain(doomed))
    for task_id in spec:
        expected = (
            TaskState.FAILED if task_id == doomed else TaskState.SKIPPED if task_id in downstream else TaskState.COMPLETED
        )
        assert graph.task_state(task_id) is expected
    assert graph.state is WorkflowState.FAILED
