"""Status documents (protocols/views.py): the full one keeps its contract, the summary stays small."""

from __future__ import annotations

from protocols.workflow_run import TaskDependencyGraph
from protocols.workflow_spec import TaskNode, Workflow
from protocols.views import remaining_critical_path, workflow_document


def graph_of(edges: dict[str, list[str]]) -> TaskDependencyGraph:
    return TaskDependencyGraph(Workflow("wf", "wf", [TaskNode(t, command="x", dependencies=d) for t, d in edges.items()]))


def test_the_remaining_critical_path_is_the_longest_chain_of_unfinished_tasks():
    graph = graph_of({"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["c", "d"], "f": []})
    assert remaining_critical_path(graph) == ["a", "b", "c", "e"]
    graph.finish("a", graph.dispatch("a", "w"), True)
    graph.finish("b", graph.dispatch("b", "w"), True)
    assert remaining_critical_path(graph) == ["c", "e"]
    for task_id in ("c", "d", "e", "f"):
        graph.finish(task_id, graph.dispatch(task_id, "w"), True)
    assert remaining_critical_path(graph) == []


def test_a_summary_lists_failed_and_running_tasks_up_to_a_limit():
    graph = graph_of({f"t{i}": [] for i in range(30)} | {"after": ["t0"]})
    for i in range(25):
        attempt = graph.dispatch(f"t{i}", "w1")
        if i < 22:
            graph.finish(f"t{i}", attempt, False, exit_code=3, error="boom")
    document = workflow_document(graph, tasks=False, summary=True, limit=5)
    summary = document["summary"]
    assert "tasks" not in document and document["progress"]["counts"]["failed"] == 22
    assert summary["failed_count"] == 22 and len(summary["failed"]) == 5
    assert summary["failed"][0] == {"task_id": "t0", "attempts": 1, "worker": "w1", "exit_code": 3, "error": "boom"}
    assert summary["running_count"] == 3 and [r["task_id"] for r in summary["running"]] == ["t22", "t23", "t24"]
    assert summary["critical_path_remaining"] == 1  # 'after' was skipped; the rest stand alone


def test_the_full_document_keeps_its_contract():
    graph = graph_of({"a": []})
    document = workflow_document(graph)
    assert {"workflow_id", "state", "tasks"} <= set(document)
    assert {"state", "attempts", "worker", "exit_code"} <= set(document["tasks"]["a"])
