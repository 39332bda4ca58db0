"""Linearizable reads without a log entry: the ReadIndex protocol (Raft thesis 6.4; etcd's
read_only.go).

Role: ``PendingReads`` keeps a leader's read requests until a majority of voters has
confirmed, by answering a heartbeat that carried the request's context, that it was still the
leader when the request arrived. A confirmed request becomes a ``ReadState``: reading the state
machine once it has applied ``index`` is linearizable.

Rules: requests are confirmed in the order they arrived (a confirmation of one confirms every
earlier one too); they are dropped when leadership is lost (the caller's deadline retries).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: reading the state machine once applied >= index is linearizable."""

    index: int
    request_ctx: bytes


class _PendingRead:
    __slots__ = ("index", "ctx", "acks")

    def __init__(self, index: int, ctx: bytes, acks: set[str]) -> None:
        self.index = index
        self.ctx = ctx
        self.acks = acks


class PendingReads:
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[_PendingRead] = []

    def newest_context(self) -> bytes:
        """What the next heartbeat carries: confirming it confirms every request before it."""
        return self._pending[-1].ctx if self._pending else b""

    def add(self, index: int, ctx: bytes, leader_id: str) -> None:
        """A request at commit ``index``; the leader confirms itself."""
        self._pending.append(_PendingRead(index, ctx, {leader_id}))

    def confirm(self, ctx: bytes, voter: str, voters: list[str], quorum: int) -> list[ReadState]:
        """``voter`` answered the heartbeat that carried ``ctx``: the requests a majority has now
        confirmed, in order (often none)."""
        for position, pending in enumerate(self._pending):
            if pending.ctx == ctx:
                pending.acks.add(voter)
                acks = sum(1 for v in voters if v in pending.acks)
                if acks >= quorum:
                    # A quorum confirmed us after every earlier request was registered too.
                    done = self._pending[: position + 1]
                    del self._pending[: position + 1]
                    return [ReadState(p.index, p.ctx) for p in done]
                return []
        return []
