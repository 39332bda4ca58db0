"""The operator's view of the control plane: counts, workflow progress and ETAs, agent rows.

Role: pure functions over the replicated state (protocols/control.py) that the observer actor
(actors/observer.py) puts into its snapshot document, which ``/stats``, ``/metrics`` and
``agentflow top`` all read. Pure: time comes in as ``now_ms``; nothing here does I/O.

Rules: everything is bounded for a view, not a dump: at most ``limit`` workflows (the unfinished
ones first, in submit order, then the most recently submitted finished ones) and ``AGENT_ROWS``
agents, no per-task lists; counts cover everything.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from protocols.workflow_run import TaskDependencyGraph, TaskState, WorkflowState
from protocols.workflow_table import WorkflowTable
from protocols.wire import record

WORKFLOW_LIMIT = 20
AGENT_ROWS = 100


@record("obs.overview")
class OverviewRequest:
    """Ask a master's observer for its snapshot document (``workflow_limit`` rows of workflows).
    A follower answers too, with its own part (raft, transport); only the leader has the queue,
    the workers and the workflows."""

    workflow_limit: int = WORKFLOW_LIMIT


def tasks_by_state(table: WorkflowTable) -> dict[str, int]:
    counts = {state.value: 0 for state in TaskState}
    for graph in table.graphs.values():
        for state, count in graph.progress()["counts"].items():
            counts[state] += count
    return counts


def workflows_by_state(table: WorkflowTable) -> dict[str, int]:
    counts = {state.value: 0 for state in WorkflowState}
    for graph in table.graphs.values():
        counts[graph.state.value] += 1
    return counts


def remaining_ms(graph: TaskDependencyGraph, now_ms: int) -> int | None:
    """An ETA: the longest chain of unfinished tasks, each estimated at the median run time of
    the workflow's completed tasks (a running one less what it has run). None until some task
    with a run time has completed, 0 once the workflow has ended."""
    if graph.is_workflow_completed():
        return 0
    ran = [run.finished_ms - run.started_ms for run in graph.runs.values()
           if run.state is TaskState.COMPLETED and run.started_ms is not None and run.finished_ms is not None]
    if not ran:
        return None
    estimate_ms = int(statistics.median(ran))
    durations: dict[str, int] = {}
    for task_id, run in graph.runs.items():
        if run.state.is_finished:
            durations[task_id] = 0
        elif run.state is TaskState.RUNNING and run.started_ms is not None:
            durations[task_id] = max(0, estimate_ms - max(0, now_ms - run.started_ms))
        else:
            durations[task_id] = estimate_ms
    return graph.critical_path(durations)[1]


def workflow_row(graph: TaskDependencyGraph, now_ms: int) -> dict[str, Any]:
    progress = graph.progress()
    end_ms = graph.finished_ms if graph.finished_ms is not None else now_ms
    eta_ms = remaining_ms(graph, now_ms)
    return {"workflow_id": graph.workflow_id, "name": graph.workflow.name, "state": graph.state.value,
            "total": progress["total"], "finished": progress["finished"], "counts": progress["counts"],
            "elapsed_s": max(0, end_ms - graph.submitted_ms) / 1000,
            "eta_s": None if eta_ms is None else eta_ms / 1000}


def workflow_rows(table: WorkflowTable, now_ms: int, limit: int = WORKFLOW_LIMIT) -> list[dict[str, Any]]:
    """The unfinished workflows in submit order, then the most recently submitted finished ones,
    ``limit`` rows at most."""
    limit = max(0, int(limit))
    graphs = list(table.graphs.values())
    unfinished = [graph for graph in graphs if not graph.is_workflow_completed()][:limit]
    finished = [graph for graph in reversed(graphs) if graph.is_workflow_completed()][:limit - len(unfinished)]
    return [workflow_row(graph, now_ms) for graph in unfinished + finished]


def agent_rows(directory: Any, stats: dict, limit: int = AGENT_ROWS) -> list[dict[str, Any]]:
    """The first ``limit`` agents of the directory (protocols/agents.py), in registration order:
    ``{"agent_id", "host", "group", "mailbox_depth", "messages_total"}``, the figures from the
    hosts' last heartbeats (``stats``: agent id -> {"mailbox_depth", "messages_handled"}; the
    leader's; None where no heartbeat told them)."""
    rows = []
    for agent_id, entry in itertools.islice(directory.entries.items(), max(0, limit)):
        figures = stats.get(agent_id) or {}
        rows.append({"agent_id": agent_id, "host": entry.host_id, "group": entry.group,
                     "mailbox_depth": figures.get("mailbox_depth"), "messages_total": figures.get("messages_handled")})
    return rows


def agents_summary(directory: Any, stats: dict) -> dict[str, Any]:
    """Every agent counted: by group ("" for none), their mailboxes' depth and the messages they
    handled, summed."""
    by_group: dict[str, int] = {}
    depth = handled = 0
    for agent_id, entry in directory.entries.items():
        by_group[entry.group] = by_group.get(entry.group, 0) + 1
        figures = stats.get(agent_id) or {}
        depth += int(figures.get("mailbox_depth") or 0)
        handled += int(figures.get("messages_handled") or 0)
    return {"total": len(directory.entries), "by_group": dict(sorted(by_group.items())),
            "mailbox_depth": depth, "messages_total": handled}
