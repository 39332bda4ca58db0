"""Throughput of one TaskExecutor: no-op ``call`` tasks and no-op shell ``command`` tasks per second.

    .venv/bin/python -m tests.bench_taskpool [--tasks 2000] [--slots 4] [--kind call|command|both]

Keeps ``slots`` attempts running at once (like a worker with that many slots), counts reports
until ``tasks`` have come back, and prints tasks/s. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import threading
import time

from protocols.tasks import TaskAssignment, TaskFinished
from runtime.executor import TaskExecutor


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--kind", choices=["call", "command", "both"], default="both")
    args = parser.parse_args()
    kinds = ["call", "command"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        rate = tasks_per_s(kind, args.tasks, args.slots)
        print(f"{kind}: {args.tasks} no-op tasks, {args.slots} slots: {rate:,.0f} tasks/s")


if __name__ == "__main__":
    main()
