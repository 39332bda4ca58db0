"""The chaos workload: client threads that use the cluster while faults hit it and record every
call in a ``History``.

* ``LockClient``: one owner, one thread, a few keys. It acquires (non-blocking), renews what it
  holds, releases (waiting for the answer, or one-way as ``release(wait=False)`` does: an op
  that stays pending), lets leases lapse and reads, at random (a seeded ``random.Random``), with
  leases of a few hundred ms so that expiry happens within a run.
* ``WorkflowClient``: submits small random DAGs whose tasks run ``tests.chaos.taskfuncs:run``.

Rules: every call has a deadline (``call_timeout_s``); an exception is an unknown outcome (the
op stays pending in the history), never a retry with a new command. A thread stops at the
next call after ``stop()``; ``join`` waits for it with a deadline.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from protocols.workflow_spec import TaskNode, TaskResources, Workflow
from protocols.locks import Acquire, LockCall, LockDenied, LockGranted, LockInfo, LockNotHeld, LockReleased, \
    LockRenewed, LockShow, Release, Renew
from protocols.names import LOCK_ACTOR
from runtime.client import Client
from tests.chaos.history import History


def lock_result(reply: Any) -> dict:
    if isinstance(reply, LockGranted):
        return {"type": "granted", "token": reply.token}
    if isinstance(reply, LockDenied):
        return {"type": "denied", "holder": reply.holder, "reason": reply.reason}
    if isinstance(reply, LockReleased):
        return {"type": "released", "token": reply.token}
    if isinstance(reply, LockRenewed):
        return {"type": "renewed", "token": reply.token}
    if isinstance(reply, LockNotHeld):
        return {"type": "not_held", "reason": reply.reason}
    if isinstance(reply, LockInfo):
        return {"type": "info", "holder": reply.holder, "token": reply.token}
    if reply is None:
        return {"type": "free"}
    return {"type": "unexpected", "reply": repr(reply)[:200]}


class _Worker(threading.Thread):
    def __init__(self, name: str, master_url: str, history: History, rng: random.Random,
                 call_timeout_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.history, self.rng = history, rng
        self.client = Client(master_url, timeout_s=call_timeout_s, client_id=f"{name}-{rng.getrandbits(32):08x}")
        self.call_timeout_s = call_timeout_s
        self._stop_event = threading.Event()
        self.errors: list[str] = []

    def stop(self) -> None:
        self._stop_event.set()

    def join_within(self, timeout_s: float) -> None:
        self.join(timeout_s)
        if self.is_alive():
            raise RuntimeError(f"{self.name} did not stop within {timeout_s} s")
        self.client.close()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                self.one_call()
                self._stop_event.wait(self.rng.uniform(0.0, 0.03))
        except Exception as exc:  # a bug in the workload itself: reported, never silent
            self.errors.append(f"{self.name}: {exc!r}")

    def one_call(self) -> None:
        raise NotImplementedError


class LockClient(_Worker):
    def __init__(self, owner: str, keys: list[str], *args, **kwargs) -> None:
        super().__init__(owner, *args, **kwargs)
        self.owner, self.keys = owner, keys
        self.held: dict[str, int | None] = {}  # key -> token we believe we hold (None: unknown)

    def _call(self, kind: str, body: Any, **args) -> dict | None:
        op = self.history.invoke(self.owner, kind, **args)
        message = LockShow(args["key"]) if kind == "read" else LockCall(self.client.next_command(body), 0)
        try:
            reply = self.client.call(LOCK_ACTOR, message, self.call_timeout_s)
        except Exception:
            return None  # unknown outcome: it may still take effect
        result = lock_result(reply)
        self.history.complete(op, result)
        return result

    def one_call(self) -> None:
        key = self.rng.choice(self.keys)
        choice = self.rng.random()
        ttl_ms = self.rng.choice((300, 600, 1000, 2000))
        if key in self.held:
            token = self.held[key]
            if choice < 0.5:
                result = self._call("renew", Renew(key, self.owner, token, ttl_ms, 0), key=key, owner=self.owner,
                                    token=token, ttl_ms=ttl_ms)
                if result is not None and result["type"] != "renewed":
                    del self.held[key]
            elif choice < 0.8:
                release = Release(key, self.owner, token, 0)
                if choice < 0.65:
                    self._call("release", release, key=key, owner=self.owner, token=token)
                else:  # one-way: nobody answers, so its outcome stays unknown
                    self.history.invoke(self.owner, "release", key=key, owner=self.owner, token=token)
                    self.client.tell_leader(LOCK_ACTOR, LockCall(self.client.next_command(release), 0))
                del self.held[key]  # released or not, we no longer count on it
            elif choice < 0.9:
                del self.held[key]  # walk away: the lease lapses
            else:
                self._call("read", None, key=key)
            return
        if choice < 0.75:
            result = self._call("acquire", Acquire(key, self.owner, ttl_ms, {}, 0, False), key=key, owner=self.owner,
                                ttl_ms=ttl_ms)
            if result is not None and result["type"] == "granted":
                self.held[key] = result["token"]
        else:
            self._call("read", None, key=key)


class WorkflowClient(_Worker):
    """Submits a workflow every ``every_s``: 2-5 tasks, each depending on up to two earlier ones."""

    def __init__(self, name: str, run_log: str, prefix: str, *args, every_s: float = 0.4, **kwargs) -> None:
        super().__init__(name, *args, **kwargs)
        self.run_log, self.prefix, self.every_s = run_log, prefix, every_s
        self.count = 0

    def one_call(self) -> None:
        self.count += 1
        workflow_id = f"{self.prefix}-{self.count}"
        tasks, dependencies = [], {}
        for i in range(self.rng.randint(2, 5)):
            task_id = f"t{i}"
            deps = sorted(self.rng.sample([t.task_id for t in tasks], min(len(tasks), self.rng.randint(0, 2))))
            dependencies[task_id] = deps
            tasks.append(TaskNode(task_id, call="tests.chaos.taskfuncs:run", dependencies=deps,
                                  kwargs={"log": self.run_log, "sleep_s": round(self.rng.uniform(0.02, 0.6), 3)},
                                  resources=TaskResources(cpu=0.1)))
        op = self.history.invoke(self.name, "submit", workflow_id=workflow_id, tasks=dependencies)
        try:
            self.client.submit_workflow(Workflow(workflow_id, tasks=tasks), timeout_s=self.call_timeout_s)
        except Exception:
            pass  # unknown outcome
        else:
            self.history.complete(op, {"ok": True})
        self._stop_event.wait(self.every_s)
