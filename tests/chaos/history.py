"""Histories of client operations, as the checkers read them.

An ``Op`` is one call a client made: who made it (``process``: one client thread, never two
calls at once), what it asked (``kind`` and ``args``), when it was invoked and when its answer
came (``invoke_ms``, ``complete_ms``: milliseconds of the machine's monotonic clock, the clock
the masters stamp commands with), and the answer (``result``: a plain dict, or None when the
outcome is unknown: the call timed out or the cluster was unavailable, so it may or may not
have taken effect, at any time after its invocation; ``complete_ms`` is None then).

Rules: a ``History`` is appended to from several threads (one lock); its ``ops`` are in
invocation order. ``dump`` writes it as JSON lines, so a failing seed's history can be read and
checked again offline (``load``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def now_ms() -> float:
    return time.monotonic() * 1000


@dataclass
class Op:
    process: str
    kind: str
    args: dict
    invoke_ms: float
    complete_ms: float | None = None
    result: dict | None = None
    id: int = field(default=0)

    @property
    def pending(self) -> bool:
        return self.complete_ms is None


class History:
    def __init__(self, limit: int = 1_000_000) -> None:
        self.ops: list[Op] = []
        self.limit = limit  # bounded like every history: a runaway workload fails, it does not eat memory
        self._lock = threading.Lock()

    def invoke(self, process: str, kind: str, **args: Any) -> Op:
        op = Op(process, kind, args, now_ms())
        with self._lock:
            if len(self.ops) >= self.limit:
                raise RuntimeError(f"history over {self.limit} operations")
            op.id = len(self.ops)
            self.ops.append(op)
        return op

    @staticmethod
    def complete(op: Op, result: dict) -> None:
        op.result = result
        op.complete_ms = now_ms()

    def of_kind(self, *kinds: str) -> list[Op]:
        with self._lock:
            return [op for op in self.ops if op.kind in kinds]

    def dump(self, path: Path) -> None:
        with open(path, "w") as out:
            for op in list(self.ops):
                out.write(json.dumps(asdict(op)) + "\n")

    @classmethod
    def load(cls, path: Path) -> History:
        history = cls()
        history.ops = [Op(**json.loads(line)) for line in Path(path).read_text().splitlines() if line]
        return history
