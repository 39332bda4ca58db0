"""The workflow checker: what the cluster acknowledged, it ran, once, in dependency order.

Four records are read, each kept by someone else:

* the client history: ``submit`` operations (args ``workflow_id`` and ``tasks``: task id ->
  its dependencies); a result ``{"ok": True}`` is an acknowledgement, None an unknown outcome;
* each workflow's status document at the end (``Client.workflow_status``): per task its
  state, attempts, worker and the leader's ``started_ms``/``finished_ms``;
* the committed log, replayed (``raftcheck.LogReplay.workflow_commands``): every applied
  DispatchTask, FinishTask and RequeueTask with its result;
* the tasks' own run records (``tests/chaos/taskfuncs.py``): one line when a run starts and
  one when it ends, with its dispatch (attempt, term) and process, on the machine's monotonic clock.

The rules checked: every acknowledged workflow exists and reached a final state, ``completed``
(the workload's tasks never fail); no task of it is lost (every task completed and has a run
record of its completing attempt that started and ended); each task's completion was applied
exactly once, by its current dispatch (the attempt and term of the last accepted dispatch), and nothing
was accepted for it after it completed; the status agrees with the log; and every task started
(by the leader's clock, and its completing run by its own record) after each of its
dependencies' completing run ended. Runs that start after their task completed (a deposed
leader's dispatch: execution is at-least-once) are counted, not failed.
A workflow whose submission has an unknown outcome may be absent; if present, the same rules hold.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from protocols.workflow_table import DispatchTask, FinishTask, RequeueTask

FINAL = ("completed", "failed", "cancelled")
CLOCK_SLACK_MS = 2  # the leader stamps whole milliseconds


def read_runs(path: Path) -> dict[tuple[str, str, int, int], list[dict]]:
    """(workflow, task, attempt, term) -> its runs, each ``{"pid", "start": ms, "end": ms or
    None}`` from the run records, in file order (an end closes its process's open run). One
    attempt number can run under several terms: a deposed leader's dispatch leaves before its
    entry commits, and the next leader reuses the number."""
    runs: dict[tuple[str, str, int, int], list[dict]] = {}
    if not path.exists():
        return runs
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill -9 mid-write
        task_runs = runs.setdefault((record["wf"], record["task"], record["attempt"], record.get("term", 0)), [])
        if record["event"] == "start":
            task_runs.append({"pid": record["pid"], "start": record["t"], "end": None})
            continue
        open_runs = [run for run in task_runs if run["pid"] == record["pid"] and run["end"] is None]
        if open_runs:
            open_runs[-1]["end"] = record["t"]
    return runs


def completing_runs(runs: list[dict], finished_ms: float) -> list[dict]:
    """The runs that can have made the completion: started and ended before the leader took the
    report (more than one only if one dispatch ran twice)."""
    return [run for run in runs if run["start"] is not None and run["end"] is not None
            and run["end"] <= finished_ms + CLOCK_SLACK_MS]


def runs_after_completion(statuses: dict[str, dict | None], runs: dict) -> int:
    """Executions that started after their task had completed (at-least-once: a deposed
    leader's dispatch); counted, not a violation."""
    count = 0
    for (workflow_id, task_id, _, _), task_runs in runs.items():
        status = statuses.get(workflow_id)
        task = status["tasks"].get(task_id) if status and status.get("tasks") else None
        if task and task["state"] == "completed" and task.get("finished_ms") is not None:
            count += sum(1 for run in task_runs if run["start"] is not None and run["start"] > task["finished_ms"])
    return count


def check_workflows(submits: list, statuses: dict[str, dict | None], commands: dict[str, list],
                    runs: dict[tuple[str, str, int, int], list[dict]]) -> list[str]:
    problems: list[str] = []
    for op in submits:
        workflow_id = op.args["workflow_id"]
        acknowledged = op.result is not None and op.result.get("ok")
        status = statuses.get(workflow_id)
        if status is None:
            if acknowledged:
                problems.append(f"{workflow_id}: acknowledged at {op.complete_ms:.0f} ms but unknown to the cluster")
            continue
        problems += [f"{workflow_id}: {p}" for p in _check_one(op.args["tasks"], status, commands.get(workflow_id, []),
                                                               runs, workflow_id)]
    return problems


def _check_one(tasks: dict[str, list[str]], status: dict, commands: list, runs: dict, workflow_id: str) -> list[str]:
    if status["state"] not in FINAL:
        return [f"still {status['state']} after the faults were healed"]
    problems = []
    if status["state"] != "completed":
        failed = {t: s.get("error") for t, s in status["tasks"].items() if s["state"] != "completed"}
        problems.append(f"ended {status['state']}: {failed}")
    if set(status["tasks"]) != set(tasks):
        problems.append(f"tasks {sorted(set(tasks) ^ set(status['tasks']))} lost or invented")
    per_task = defaultdict(list)
    for index, command, result in commands:
        if not isinstance(command, (DispatchTask, FinishTask, RequeueTask)):
            continue
        per_task[command.task_id].append((index, command, result))
    completing: dict[str, list[dict]] = {}
    for task_id, task_status in status["tasks"].items():
        dispatch, worker, finished_by, after_done = (0, 0), None, [], []
        for index, command, result in per_task.get(task_id, []):
            ok = isinstance(result, dict) and result.get("ok")
            if finished_by and ok:
                after_done.append(f"{type(command).__name__} of attempt {command.attempt} at {index}")
            if isinstance(command, DispatchTask) and ok:
                dispatch, worker = (command.attempt, command.term), command.worker_id
            elif isinstance(command, FinishTask) and ok and command.succeeded:
                finished_by.append((index, (command.attempt, command.term), dispatch))
        attempt = dispatch[0]
        if task_status["state"] != "completed":
            continue
        if len(finished_by) != 1:
            problems.append(f"task {task_id}: completion applied {len(finished_by)} times {finished_by}")
        for index, by, current in finished_by:
            if by != current:
                problems.append(f"task {task_id}: completed at index {index} by attempt {by[0]} (term {by[1]}) "
                                f"while the current attempt was {current[0]} (term {current[1]})")
        if after_done:
            problems.append(f"task {task_id}: accepted after it completed: {after_done}")
        if task_status["attempts"] != attempt or (task_status["worker"] or "") != (worker or ""):
            problems.append(f"task {task_id}: status says attempt {task_status['attempts']} on "
                            f"{task_status['worker']}, the log attempt {attempt} on {worker}")
        if finished_by:
            run_key = (workflow_id, task_id, *finished_by[0][1])
            candidates = completing_runs(runs.get(run_key, []), task_status["finished_ms"])
            completing[task_id] = candidates
            if not candidates:
                problems.append(f"task {task_id}: completed by attempt {run_key[2]} (term {run_key[3]}), of which "
                                f"no run had ended by then ({runs.get(run_key)})")
    for task_id, dependencies in tasks.items():
        mine = status["tasks"].get(task_id)
        if mine is None or mine["state"] != "completed":
            continue
        for dependency in dependencies:
            theirs = status["tasks"].get(dependency)
            if theirs is None or theirs["state"] != "completed":
                problems.append(f"task {task_id} completed but its dependency {dependency} did not")
                continue
            if mine["started_ms"] < theirs["finished_ms"]:
                problems.append(f"task {task_id} dispatched at {mine['started_ms']} before its dependency "
                                f"{dependency} finished at {theirs['finished_ms']}")
            mine_runs, their_runs = completing.get(task_id), completing.get(dependency)
            if mine_runs and their_runs:  # violated only if no pairing of the candidates is in order
                latest_start = max(run["start"] for run in mine_runs)
                earliest_end = min(run["end"] for run in their_runs)
                if latest_start < earliest_end:
                    problems.append(f"task {task_id} started running at {latest_start:.0f} before {dependency}'s "
                                    f"completing run ended at {earliest_end:.0f}")
    return problems
