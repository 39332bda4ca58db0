"""The task that chaos workflows run (``call: "tests.chaos.taskfuncs:run"``): it records its own
start and end, with its dispatch (attempt and the dispatching leader's term), so the checker can
see what really ran and when.

One JSON line per event, appended with a single ``write`` on an ``O_APPEND`` file (lines from
concurrent runs never interleave), stamped with the machine's monotonic clock in ms.
"""

from __future__ import annotations

import json
import os
import time


def _record(log: str, event: str) -> int:
    attempt = int(os.environ.get("AGENTFLOW_ATTEMPT", "0"))
    line = json.dumps({"wf": os.environ.get("AGENTFLOW_WORKFLOW_ID"), "task": os.environ.get("AGENTFLOW_TASK_ID"),
                       "attempt": attempt, "term": int(os.environ.get("AGENTFLOW_DISPATCH_TERM", "0")), "event": event, "t": time.monotonic() * 1000, "pid": os.getpid()})
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return attempt


def run(log: str, sleep_s: float) -> int:
    attempt = _record(log, "start")
    time.sleep(sleep_s)  # the task's work: long enough to be caught by a fault
    _record(log, "end")
    return attempt
