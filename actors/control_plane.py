"""The ControlPlane: what the master composition hands each control-plane actor (the scheduler,
the lock and agent-directory actors, the observer) so that they reach the RaftActor of their
master only by message, and the local records it carries (ARCHITECTURE §3).

Rules: ``Watch``, ``Applied`` and ``LeadershipChanged`` never go on the wire; ``state`` and
``leader_id`` are written by the RaftActor alone, on the transport thread, and read there.
"""

from __future__ import annotations

from typing import Any

from protocols.control import ControlState, Propose, Read
from protocols.names import RAFT_ACTOR
from protocols.wire import Redirect
from runtime.future import Future


class Watch:
    """Tell a local RaftActor: send ``Applied`` batches for commands whose tag starts with
    ``prefix`` (and ``LeadershipChanged``) to ``ref``. Local only: never on the wire."""

    def __init__(self, prefix: str, ref: Any) -> None:
        self.prefix, self.ref = prefix, ref


class Applied:
    """Commands applied in one Ready, in log order: ``items`` are (index, command, result)."""

    def __init__(self, items: list[tuple[int, Any, Any]], is_leader: bool) -> None:
        self.items, self.is_leader = items, is_leader


class LeadershipChanged:
    """This master started or stopped leading (in ``term``). Local only."""

    def __init__(self, is_leader: bool, term: int) -> None:
        self.is_leader, self.term = is_leader, term


# How long a proposal may wait for its answer. It is answered when applied, or failed when the
# leadership is lost; this bounds the rest.
PROPOSE_TIMEOUT_S = 10.0


class ControlPlane:
    """What the master hands each control-plane actor it spawns: the one way to propose, to read
    the replicated state, to find the leader and to watch what is applied.

    ``propose``, ``read`` and ``watch`` are messages to the RaftActor. ``state`` and ``redirect()``
    read what the RaftActor last published (it is the only writer: the replicated state as
    applied on this master, and the leader named by its last Ready): read them on the transport
    thread only, which is the one that applies (the actors handed a ControlPlane are pinned).
    """

    def __init__(self, node: Any, raft_name: str = RAFT_ACTOR) -> None:
        self.node = node
        self.raft_name = raft_name
        self.state = ControlState()  # replaced by the RaftActor
        self.leader_id: str | None = None
        self._raft: Any = None

    def propose(self, command: Any, timeout_s: float = PROPOSE_TIMEOUT_S) -> Future:
        """Commit ``command`` (a record, or bytes already encoded). The future gets its apply result
        once applied here, or a ``Redirect`` at once on a master that does not lead; it fails with
        ``not_committed`` if the leadership changes first (retry: client sessions make it safe).
        Every proposal of one transport round shares one Raft write."""
        return self._raft_ref().ask(Propose(command), timeout_s)

    def read(self, query: str, args: dict, timeout_s: float = PROPOSE_TIMEOUT_S) -> Future:
        """A linearizable read (``protocols.control.read_query``), or a ``Redirect``."""
        return self._raft_ref().ask(Read(query, args), timeout_s)

    def watch(self, prefix: str, ref: Any) -> None:
        """Tell ``ref`` the commands applied whose tag starts with ``prefix`` (``Applied``), and
        every change of this master's leadership (``LeadershipChanged``)."""
        self._raft_ref().tell(Watch(prefix, ref))

    def redirect(self) -> Redirect:
        """Where the leader is, as far as this master knows (None while an election runs)."""
        leader = self.leader_id
        return Redirect(leader, self.endpoint_of(leader) if leader else None)

    def endpoint_of(self, node_id: str | None) -> str | None:
        if node_id is None:
            return None
        if node_id == self.node.node_id:
            return self.node.endpoint
        member = self.state.members.get(node_id)
        return member.endpoint if member is not None else self.node.peers.get(node_id)

    def _raft_ref(self) -> Any:
        if self._raft is None:
            self._raft = self.node.lookup((self.node.node_id, self.raft_name))
        return self._raft
