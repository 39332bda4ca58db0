"""A linearizability checker: Wing & Gong's search with Lowe's memoisation (the algorithm
Porcupine implements), written here for the chaos histories.

A history is linearizable when its operations can be put in one sequential order that (1)
respects real time: an operation that completed before another was invoked comes first, and (2)
is a legal run of the sequential ``Model``. Operations whose outcome is unknown (``Op.pending``)
may take effect at any point after their invocation, or never.

The search walks a list of call and return events in time order. At a call it tries to
linearize that operation now (the model accepts it from the current state); at a return of an
operation not yet linearized it backtracks, because that operation had to take effect before
its own return. A cache of (set of linearized operations, model state) pairs already explored
keeps it from exploring the same configuration twice (Lowe 2017). Models may be
nondeterministic: ``step`` returns every state the operation may lead to, and the search
carries the set of them (a powerset state, as Porcupine does).

``check(ops, model)`` partitions the history (``model.partition``: locks by key) and checks
each part alone, which is sound for models whose parts do not interact. It gives up after
``max_steps`` and says so (``ok`` None) rather than running for ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Protocol

from tests.chaos.history import Op


class Model(Protocol):
    def init(self) -> Hashable: ...

    def step(self, state: Hashable, op: Op) -> Iterable[Hashable]:
        """Every state ``op`` (with its recorded result) may lead to from ``state``; none when
        the result is impossible from there."""

    def partition(self, ops: list[Op]) -> dict[Any, list[Op]]: ...


@dataclass
class Verdict:
    ok: bool | None  # None: gave up after max_steps
    part: Any = None
    linearized: list[Op] = field(default_factory=list)  # the longest legal prefix found
    stuck_at: list[Op] = field(default_factory=list)  # operations none of which could come next
    steps: int = 0

    def explain(self) -> str:
        if self.ok:
            return f"linearizable ({self.steps} steps)"
        if self.ok is None:
            return f"part {self.part!r}: gave up after {self.steps} steps"
        lines = [f"part {self.part!r}: NOT linearizable; longest legal order found ({len(self.linearized)} ops):"]
        lines += [f"  {_describe(op)}" for op in self.linearized[-8:]]
        lines.append("  then none of these can take effect:")
        lines += [f"  ! {_describe(op)}" for op in self.stuck_at[:8]]
        return "\n".join(lines)


def _describe(op: Op) -> str:
    end = "?" if op.pending else f"{op.complete_ms:.0f}"
    return f"#{op.id} {op.process} {op.kind}{op.args} [{op.invoke_ms:.0f}, {end}] -> {op.result}"


class _Event:
    __slots__ = ("op", "is_call", "match", "prev", "next")

    def __init__(self, op: Op | None, is_call: bool) -> None:
        self.op, self.is_call = op, is_call
        self.match: _Event | None = None
        self.prev: _Event | None = None
        self.next: _Event | None = None


def _events(ops: list[Op]) -> _Event:
    """The doubly linked list of call and return events in time order (calls before returns at
    the same instant, the permissive choice); returns its head sentinel."""
    timeline = []
    for op in ops:
        call, ret = _Event(op, True), _Event(op, False)
        call.match = ret
        timeline.append((op.invoke_ms, 0, op.id, call))
        timeline.append((float("inf") if op.pending else op.complete_ms, 1, op.id, ret))
    timeline.sort(key=lambda item: item[:3])
    head = _Event(None, False)
    last = head
    for *_, event in timeline:
        last.next, event.prev = event, last
        last = event
    return head


def _lift(call: _Event) -> None:
    for event in (call, call.match):
        event.prev.next = event.next
        if event.next is not None:
            event.next.prev = event.prev


def _unlift(call: _Event) -> None:
    for event in (call.match, call):
        event.prev.next = event
        if event.next is not None:
            event.next.prev = event


def check_part(ops: list[Op], model: Model, max_steps: int = 2_000_000, part: Any = None) -> Verdict:
    head = _events(ops)
    bit = {op.id: 1 << position for position, op in enumerate(ops)}
    must = sum(1 for op in ops if not op.pending)
    state: frozenset = frozenset([model.init()])
    linearized, done = 0, 0
    cache: set[tuple[int, frozenset]] = set()
    stack: list[tuple[_Event, frozenset]] = []
    best = Verdict(False, part)
    steps = 0
    event = head.next
    while done < must:
        steps += 1
        if steps > max_steps:
            return Verdict(None, part, steps=steps)
        if event.is_call:
            op = event.op
            following = frozenset(after for before in state for after in model.step(before, op))
            key = (linearized | bit[op.id], following)
            if following and key not in cache:
                cache.add(key)
                stack.append((event, state))
                state, linearized = following, key[0]
                done += not op.pending
                _lift(event)
                event = head.next
                continue
            event = event.next
            continue
        # The return of an operation not linearized yet: something earlier must change.
        if len(stack) >= len(best.linearized):
            best.linearized = [call.op for call, _ in stack]
            best.stuck_at = _candidates(head)
        if not stack:
            best.steps = steps
            return best
        call, state = stack.pop()
        linearized &= ~bit[call.op.id]
        done -= not call.op.pending
        _unlift(call)
        event = call.next
    return Verdict(True, part, steps=steps)


def _candidates(head: _Event) -> list[Op]:
    """The operations that could have come next: calls before the first return still listed."""
    found, event = [], head.next
    while event is not None and event.is_call:
        found.append(event.op)
        event = event.next
    if event is not None and event.op not in found:
        found.append(event.op)
    return found


def check(ops: list[Op], model: Model, max_steps: int = 2_000_000) -> list[Verdict]:
    """One verdict per part of the history, parts in a stable order."""
    parts = model.partition(ops)
    return [check_part(part_ops, model, max_steps, part) for part, part_ops in sorted(parts.items(), key=lambda kv: str(kv[0]))]
