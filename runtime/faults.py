"""Network faults on demand, for chaos tests: drop, lose or delay a node's traffic with chosen peers.

Switched on only by a test configuration: a node whose environment has ``AGENTFLOW_FAULTS=FILE``
reads its rules from FILE (JSON, re-read when the file changes); without it the transport has
no injector and none of this code runs. The rules (peers are node ids or endpoints)::

    {"drop": ["master-2"],            # nothing to or from these peers (a partition)
     "drop_in": ["master-3"],         # nothing from them (one-way loss)
     "drop_out": [],                  # nothing to them
     "loss": {"master-2": 0.3},       # each outbound frame to them lost with this probability
     "delay_ms": {"master-3": 200}}   # each outbound frame to them held this long (a slow link)

Rules of this module: the loss is drawn from a generator seeded by ``AGENTFLOW_FAULTS_SEED``
(default 0) and the node id, so a failing seed replays; a rules file that cannot be read or
parsed counts as no faults (and is logged once), never as a crash.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.log import get_logger

log = get_logger("faults")

ENV_FILE = "AGENTFLOW_FAULTS"
ENV_SEED = "AGENTFLOW_FAULTS_SEED"
CHECK_EVERY_S = 0.05


@dataclass
class FaultRules:
    drop_in: frozenset = frozenset()
    drop_out: frozenset = frozenset()
    loss: dict = field(default_factory=dict)
    delay_s: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, document: dict) -> FaultRules:
        both = set(document.get("drop", []))
        return cls(frozenset(both | set(document.get("drop_in", []))),
                   frozenset(both | set(document.get("drop_out", []))),
                   {str(peer): float(p) for peer, p in document.get("loss", {}).items()},
                   {str(peer): float(ms) / 1000 for peer, ms in document.get("delay_ms", {}).items()})


class FaultInjector:
    """The rules of one node, and the frames they hold back (``due`` hands them out on time)."""

    def __init__(self, path: str, node_id: str, seed: int = 0, counters=None) -> None:
        self.path = path
        self.rules = FaultRules()
        self.counters = counters if counters is not None else collections.Counter()
        self._held: list[tuple[float, int, Any, list]] = []
        self._held_ids = itertools.count()
        self._random = random.Random(f"{seed}/{node_id}")
        self._mtime_ns: int | None = None
        self._checked_s = 0.0
        self._warned = False

    @classmethod
    def from_environment(cls, node_id: str, counters=None) -> FaultInjector | None:
        path = os.environ.get(ENV_FILE)
        if not path:
            return None
        log.warning("Node %s injects network faults from %s (a test configuration)", node_id, path)
        return cls(path, node_id, int(os.environ.get(ENV_SEED, "0")), counters)

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_s < CHECK_EVERY_S:
            return
        self._checked_s = now
        try:
            mtime_ns = os.stat(self.path).st_mtime_ns
            if mtime_ns == self._mtime_ns:
                return
            with open(self.path) as handle:
                self.rules = FaultRules.parse(json.load(handle))
            self._mtime_ns = mtime_ns
        except FileNotFoundError:
            self.rules, self._mtime_ns = FaultRules(), None
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("fault rules %s unreadable (%s): no faults", self.path, exc)
            self.rules = FaultRules()

    def drops_from(self, *peer: str) -> bool:
        return any(p in self.rules.drop_in for p in peer)

    def outbound(self, *peer: str) -> float | None:
        """None: drop this frame; else how long to hold it (0: send now)."""
        rules = self.rules
        if any(p in rules.drop_out for p in peer):
            return None
        for p in peer:
            loss = rules.loss.get(p)
            if loss and self._random.random() < loss:
                return None
        return max((rules.delay_s.get(p, 0.0) for p in peer), default=0.0)

    def let_through(self, peer: tuple[str, str], destination: Any, envelopes: list) -> bool:
        """True to send ``envelopes`` to ``peer`` (node id, endpoint) now; else they are dropped,
        or held until ``due`` hands them back with their ``destination``."""
        hold_s = self.outbound(*peer)
        if hold_s is None:
            self.counters["fault_dropped_out"] += len(envelopes)
            return False
        if hold_s <= 0:
            return True
        heapq.heappush(self._held, (time.monotonic() + hold_s, next(self._held_ids), destination, list(envelopes)))
        return False

    def due(self, now: float) -> list[tuple[Any, list]]:
        out = []
        while self._held and self._held[0][0] <= now:
            _, _, destination, envelopes = heapq.heappop(self._held)
            out.append((destination, envelopes))
        return out

    def next_due(self) -> float:
        """When the transport should look again: the next held frame, or soon (rules may change)."""
        soon = time.monotonic() + CHECK_EVERY_S
        return min(self._held[0][0], soon) if self._held else soon
