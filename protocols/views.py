"""What `agentflow status` shows: one workflow's full document or its summary, and the list of all.

Rules: pure reads of the replicated workflow table (any master answers them from its own copy).
The full document is the contract of docs/ARCHITECTURE.md §4 (``workflow_id``, ``state``,
``tasks`` {id: ``state``, ``attempts``, ``worker``, ``exit_code``}, plus ``name``, ``progress``
and each task's error, result and output tails). The summary stays small whatever the
workflow's size: progress with the counts by state, the failed and the running tasks (at most
``limit`` of each, and how many there are), and the critical path's remaining part: the
longest chain of tasks not finished yet, which bounds how many more steps the workflow takes.
A workflow the retention policy forgot answers with its tombstone: final state, size, when.
"""

from __future__ import annotations

from protocols.workflow_run import TaskDependencyGraph, TaskState

SUMMARY_LIMIT = 20


def workflow_list(table) -> list[dict]:
    return [workflow_heading(graph) for graph in table.graphs.values()]


def workflow_heading(graph: TaskDependencyGraph) -> dict:
    """A workflow's row in the list, and the start of its document."""
    return {"workflow_id": graph.workflow_id, "name": graph.workflow.name, "state": graph.state.value,
            "progress": graph.progress()}


def workflow_document(graph: TaskDependencyGraph, tasks: bool = True, summary: bool = False,
                      limit: int = SUMMARY_LIMIT) -> dict:
    document = workflow_heading(graph)
    if summary:
        document["summary"] = workflow_summary(graph, limit)
    if tasks:
        document["tasks"] = {
            task_id: {"state": run.state.value, "attempts": run.attempts, "worker": run.worker_id or None,
                      "exit_code": run.exit_code, "error": run.error or None, "result": run.result,
                      "stdout_tail": run.stdout_tail, "stderr_tail": run.stderr_tail,
                      "started_ms": run.started_ms, "finished_ms": run.finished_ms}
            for task_id, run in graph.runs.items()}
    return document


def forgotten_document(workflow_id: str, tombstone: dict, tasks: bool = True) -> dict:
    """A workflow the retention policy forgot: its final state and size, ``"forgotten": True``;
    its tasks are gone (``"tasks": {}`` when asked for)."""
    total = tombstone.get("tasks", 0)
    document = {"workflow_id": workflow_id, "name": tombstone.get("name", ""), "state": tombstone.get("state"),
                "forgotten": True, "finished_ms": tombstone.get("finished_ms"),
                "progress": {"total": total, "finished": total, "fraction_done": 1.0, "counts": {}}}
    if tasks:
        document["tasks"] = {}
    return document


def workflow_summary(graph: TaskDependencyGraph, limit: int = SUMMARY_LIMIT) -> dict:
    failed, running = [], []
    failed_count = running_count = 0
    for task_id, run in graph.runs.items():
        if run.state is TaskState.FAILED:
            failed_count += 1
            if len(failed) < limit:
                failed.append({"task_id": task_id, "attempts": run.attempts, "worker": run.worker_id or None,
                               "exit_code": run.exit_code, "error": (run.error or "")[:200]})
        elif run.state is TaskState.RUNNING:
            running_count += 1
            if len(running) < limit:
                running.append({"task_id": task_id, "attempts": run.attempts, "worker": run.worker_id or None})
    path = remaining_critical_path(graph)
    return {"failed": failed, "failed_count": failed_count, "running": running, "running_count": running_count,
            "critical_path_remaining": len(path), "critical_path": path[:limit]}


def remaining_critical_path(graph: TaskDependencyGraph) -> list[str]:
    """The longest chain of unfinished tasks (each depending on the one before), in execution
    order; the first such chain in execution order on ties. [] when every task is finished."""
    length: dict[str, int] = {}
    previous: dict[str, str | None] = {}
    best, best_length = None, 0
    runs, tasks = graph.runs, graph.tasks
    for task_id in graph.get_execution_order():
        if runs[task_id].state.is_finished:
            continue
        before, before_length = None, 0
        for dependency in tasks[task_id].dependencies:
            if length.get(dependency, 0) > before_length:
                before, before_length = dependency, length[dependency]
        length[task_id] = before_length + 1
        previous[task_id] = before
        if length[task_id] > best_length:
            best, best_length = task_id, length[task_id]
    path: list[str] = []
    while best is not None:
        path.append(best)
        best = previous[best]
    path.reverse()
    return path
