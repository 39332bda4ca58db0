"""The Raft checkers: after the faults are healed, every master converges on the same log and
the same state, and that state is what the committed log says.

* ``wait_converged``: polls every master (its own status, with the state digest) until all
  report the same applied index and the same digest, or the deadline passes (a violation).
* ``LogReplay`` reads each master's SQLite log read-only (the masters keep running), checks
  that the logs agree entry for entry up to the converged index (Log Matching), applies the new
  entries to a fresh ``ControlState`` (the same pure code, driven only by the committed log) and
  checks that its digest equals the masters'. It remembers every applied workflow command with
  its result, for the workflow checker. Incremental: each episode reads only what is new.
* ``LeaderMonitor`` samples the masters' roles during a run: two masters leading in one term is
  a violation of Election Safety.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import defaultdict

from protocols.control import Batch, ControlState, StatusQuery
from protocols.workflow_table import DispatchTask, FinishTask, RequeueTask, SubmitWorkflow
from protocols.names import RAFT_ACTOR
from protocols.raft import ENTRY_NORMAL
from runtime.client import Client
from runtime.future import AskTimeout, RemoteError


def statuses(client: Client, endpoints: list[str], digest: bool = False, timeout_s: float = 1.0) -> list[dict | None]:
    asks = [client.node.ref(endpoint, RAFT_ACTOR).ask(StatusQuery(digest), timeout_s=timeout_s) for endpoint in endpoints]
    out = []
    for ask in asks:
        try:
            out.append(ask.get())
        except (AskTimeout, RemoteError):
            out.append(None)
    return out


def wait_converged(client: Client, endpoints: list[str], timeout_s: float = 30.0) -> tuple[dict | None, str]:
    """``(views, "")`` once every master reports the same applied index and state digest; else
    ``(None, what differed last)``."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        views = statuses(client, endpoints, digest=True)
        if any(view is None for view in views):
            last = "unreachable: " + ", ".join(e for e, v in zip(endpoints, views) if v is None)
        else:
            applied = {(v["last_applied"], v["state_digest"]) for v in views}
            leaders = [v["id"] for v in views if v["role"] == "leader"]
            if len(applied) == 1 and len(leaders) == 1 and all(v["commit_index"] == views[0]["commit_index"]
                                                               for v in views):
                return {v["id"]: v for v in views}, ""
            last = "; ".join(f"{v['id']} {v['role']} t{v['term']} applied {v['last_applied']} "
                             f"commit {v['commit_index']} {v['state_digest'][:8]}" for v in views)
        time.sleep(0.1)
    return None, last


def state_digest(state: ControlState) -> str:
    return hashlib.blake2b(state.to_snapshot(), digest_size=16).hexdigest()


def _read_entries(path: str, after: int, upto: int) -> list[tuple[int, int, int, bytes]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT entry_index, term, kind, data FROM entries WHERE entry_index > ? AND entry_index <= ?"
                          " ORDER BY entry_index", (after, upto)).fetchall()
    finally:
        db.close()


class LogReplay:
    def __init__(self, storage_paths: dict[str, str]) -> None:
        self.paths = storage_paths  # master id -> its SQLite file
        self.state = ControlState()
        self.index = 0
        self.entries_checked = 0
        # workflow id -> [(index, command, result)] for its wf.* commands, in log order
        self.workflow_commands: dict[str, list] = defaultdict(list)

    def advance(self, upto: int, digest: str) -> list[str]:
        """Check and apply the entries (self.index, upto]; the violations found."""
        logs = {node: _read_entries(path, self.index, upto) for node, path in sorted(self.paths.items())}
        problems = []
        reference_node, reference = max(logs.items(), key=lambda item: len(item[1]))
        if [row[0] for row in reference] != list(range(self.index + 1, upto + 1)):
            return [f"{reference_node}'s log has gaps in ({self.index}, {upto}] (compacted?)"]
        for node, rows in logs.items():
            if len(rows) != len(reference):
                problems.append(f"{node} has {len(rows)} entries in ({self.index}, {upto}], {reference_node} "
                                f"{len(reference)}")
            for mine, theirs in zip(rows, reference):
                if mine != theirs:
                    problems.append(f"{node} and {reference_node} disagree at index {mine[0]} (terms "
                                    f"{mine[1]}/{theirs[1]}): Log Matching broken")
                    break
        for index, _term, kind, data in reference:
            if kind != ENTRY_NORMAL:
                continue
            command, result = self.state.apply(index, data)
            for sub, sub_result in _flatten(command, result):
                if isinstance(sub, SubmitWorkflow):
                    self.workflow_commands[sub.workflow.workflow_id].append((index, sub, sub_result))
                elif isinstance(sub, (DispatchTask, FinishTask, RequeueTask)):
                    self.workflow_commands[sub.workflow_id].append((index, sub, sub_result))
        self.entries_checked += len(reference)
        self.index = upto
        mine = state_digest(self.state)
        if mine != digest:
            problems.append(f"replaying the committed log to {upto} gives state {mine[:12]}, the masters have "
                            f"{digest[:12]}")
        return problems


def _flatten(command, result):
    if isinstance(command, Batch):
        return list(zip(command.commands, result))
    return [] if command is None else [(command, result)]


class LeaderMonitor:
    """Samples every master's role and term every ``interval_s`` on a thread of its own."""

    def __init__(self, client: Client, endpoints, interval_s: float = 0.1) -> None:
        self.client, self.endpoints, self.interval_s = client, endpoints, interval_s
        self.leaders: dict[int, set[str]] = defaultdict(set)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-monitor", daemon=True)

    def __enter__(self) -> LeaderMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for view in statuses(self.client, self.endpoints(), timeout_s=0.3):
                if view is not None and view["role"] == "leader":
                    self.leaders[view["term"]].add(view["id"])
            self.samples += 1
            self._stop.wait(self.interval_s)

    def problems(self) -> list[str]:
        return [f"two leaders in term {term}: {sorted(ids)}" for term, ids in sorted(self.leaders.items())
                if len(ids) > 1]
