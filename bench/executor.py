"""Executor benchmark: one worker's TaskExecutor against the standard library, side by side.

    .venv/bin/python bench/executor.py [--runs 3] [--tasks 2000] [--slots 4] [--json FILE]

Both sides keep ``slots`` tasks running at once until ``tasks`` have finished:
* ``call_tasks_per_s``: no-op ``call`` tasks (``builtins:int``) in the executor's reused task
  processes, against ``concurrent.futures.ProcessPoolExecutor(slots)`` running ``int``;
* ``command_tasks_per_s``: no-op shell tasks (``true``), against ``subprocess.run(["true"])`` from
  ``slots`` threads. The executor does more per task than either peer (its own process group,
  output files and their tails, timeouts, leftovers checks): the ratio is what that costs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, report  # noqa: E402
from protocols.tasks import TaskAssignment, TaskFinished  # noqa: E402
from runtime.executor import TaskExecutor  # noqa: E402


def tasks_per_s(kind: str, tasks: int, slots: int) -> float:
    lock = threading.Lock()
    done = threading.Event()
    state = {"started": 0, "finished": 0, "failed": 0}
    executor_box: list[TaskExecutor] = []

    def assignment(number: int) -> TaskAssignment:
        if kind == "call":
            return TaskAssignment("bench", f"t{number}", 1, call="builtins:int")
        return TaskAssignment("bench", f"t{number}", 1, command="true")

    def start_next() -> None:
        with lock:
            if state["started"] >= tasks:
                return
            state["started"] += 1
            number = state["started"]
        report = executor_box[0].run(assignment(number))
        if report is not None:
            on_finished([report])

    def on_finished(reports: list[TaskFinished]) -> None:
        with lock:
            state["finished"] += len(reports)
            state["failed"] += sum(not report.ok for report in reports)
            if state["finished"] >= tasks:
                done.set()
        for _ in reports:
            start_next()

    executor = TaskExecutor("bench", on_finished).start()
    executor_box.append(executor)
    try:
        # Warm up: one round of slots (starts the pool's children, imports builtins).
        started_s = time.perf_counter()
        for _ in range(slots):
            start_next()
        if not done.wait(600):
            raise RuntimeError(f"only {state['finished']} of {tasks} tasks finished")
        elapsed_s = time.perf_counter() - started_s
    finally:
        executor.stop()
    if state["failed"]:
        raise RuntimeError(f"{state['failed']} tasks failed")
    return tasks / elapsed_s


def stdlib_tasks_per_s(kind: str, tasks: int, slots: int) -> float:
    """The same load through the standard library (the pool is started and warmed up first)."""
    if kind == "call":
        with concurrent.futures.ProcessPoolExecutor(slots) as pool:
            list(pool.map(int, range(slots), timeout=60))  # start the processes
            started_s = time.perf_counter()
            list(pool.map(int, range(tasks), chunksize=1, timeout=600))
            return tasks / (time.perf_counter() - started_s)
    with concurrent.futures.ThreadPoolExecutor(slots) as pool:
        started_s = time.perf_counter()
        list(pool.map(lambda _: subprocess.run(["true"], check=True, timeout=60), range(tasks), timeout=600))
        return tasks / (time.perf_counter() - started_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    results = []
    for kind, peer in (("call", "ProcessPoolExecutor"), ("command", "subprocess.run, threads")):
        ours = [tasks_per_s(kind, args.tasks, args.slots) for _ in range(args.runs)]
        theirs = [stdlib_tasks_per_s(kind, args.tasks, args.slots) for _ in range(args.runs)]
        results.append(Result(f"{kind}_tasks_per_s", "tasks/s", True, ours, peer, theirs))
    report("executor", results, args.json_path)


if __name__ == "__main__":
    main()
