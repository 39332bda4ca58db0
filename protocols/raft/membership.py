"""Who is in the Raft group: the voters and learners, changed one server at a time.

Role: ``Membership`` holds the configuration as of the end of the log, and enough history to
undo a change whose entry is overwritten and to name the configuration at a compaction point.

Rules (Raft thesis, section 4.1):

* A configuration takes effect on a server as soon as its entry is appended to the log, not
  when it commits; overwriting that entry undoes it.
* One change at a time: the next is accepted only after the previous one committed (the core
  keeps that index). A new server joins as a learner, receives the log, and is promoted by a
  second change. The last voter cannot be removed.
* A fresh cluster writes its founders into the log as ``add_voter`` entries at term 1 (as
  etcd's bootstrap does), so a server that joins later with an empty log replays the whole
  history from index 1. ``add_voter`` is accepted from the log only, never proposed.
* Voters and learners are kept sorted: every server visits them in the same order.
"""

from __future__ import annotations

from protocols.raft.messages import CONF_OPS, ConfChange, Entry, SnapshotMeta
from protocols.wire import DecodeError, decode

PROPOSABLE_OPS = ("add_learner", "promote", "remove")


class ConfChangeRejected(ValueError):
    """A membership change that is invalid now (another one pending, unknown node, ...)."""


def apply_conf_change(voters: list[str], learners: list[str], change: ConfChange
                      ) -> tuple[list[str], list[str]]:
    """The configuration after ``change``; an inapplicable change leaves it as it is (entries
    are validated when proposed, so this only happens with a hostile log)."""
    voters, learners = list(voters), list(learners)
    node = change.node_id
    if change.op == "add_learner" and node not in voters and node not in learners:
        learners.append(node)
    elif change.op == "add_voter" and node not in voters:
        if node in learners:
            learners.remove(node)
        voters.append(node)
    elif change.op == "promote" and node in learners:
        learners.remove(node)
        voters.append(node)
    elif change.op == "remove":
        if node in voters:
            voters.remove(node)
        if node in learners:
            learners.remove(node)
    return sorted(voters), sorted(learners)


def decode_conf_change(data: bytes) -> ConfChange | None:
    try:
        change = decode(data)
    except DecodeError:
        return None
    if not isinstance(change, ConfChange) or change.op not in CONF_OPS:
        return None
    return change


class Membership:
    __slots__ = ("voters", "learners", "_base", "_changes")

    def __init__(self) -> None:
        self.voters: list[str] = []
        self.learners: list[str] = []
        # The configuration at the snapshot, plus one per conf-change entry in the log.
        self._base: tuple[list[str], list[str]] = ([], [])
        self._changes: list[tuple[int, list[str], list[str]]] = []

    def restore(self, meta: SnapshotMeta) -> None:
        """Start from a snapshot's configuration, with no change after it."""
        self._base = (sorted(meta.voters), sorted(meta.learners))
        self._changes = []
        self._set(*self._base)

    def append(self, entry: Entry) -> bool:
        """A conf-change entry went into the log; False (and no change) if it is undecodable."""
        change = decode_conf_change(entry.data)
        if change is None:
            return False
        voters, learners = apply_conf_change(self.voters, self.learners, change)
        self._changes.append((entry.index, voters, learners))
        self._set(voters, learners)
        return True

    def undo_from(self, index: int) -> bool:
        """Entries from ``index`` on were overwritten: forget their changes. True if the
        configuration changed."""
        if not self._changes or self._changes[-1][0] < index:
            return False
        while self._changes and self._changes[-1][0] >= index:
            self._changes.pop()
        self._set(*(self._changes[-1][1:] if self._changes else self._base))
        return True

    def at(self, index: int) -> tuple[list[str], list[str]]:
        """(voters, learners) as of log ``index`` (which must not be before the snapshot)."""
        voters, learners = self._base
        for change_index, change_voters, change_learners in self._changes:
            if change_index <= index:
                voters, learners = change_voters, change_learners
        return voters, learners

    def compact_to(self, index: int) -> None:
        """The log up to ``index`` went into a snapshot."""
        self._base = self.at(index)
        self._changes = [c for c in self._changes if c[0] > index]

    def refusal(self, change: object, another_pending: bool) -> str | None:
        """Why ``change`` may not be proposed now, or None."""
        if not isinstance(change, ConfChange) or change.op not in PROPOSABLE_OPS:
            return f"not a membership change: {change!r}"
        if another_pending:
            return "another membership change is still pending"
        node = change.node_id
        if change.op == "add_learner" and (node in self.voters or node in self.learners):
            return f"{node} is already a member"
        if change.op == "promote" and node not in self.learners:
            return f"{node} is not a learner"
        if change.op == "remove":
            if node not in self.voters and node not in self.learners:
                return f"{node} is not a member"
            if self.voters == [node]:
                return "cannot remove the last voter"
        return None

    def _set(self, voters: list[str], learners: list[str]) -> None:
        self.voters, self.learners = list(voters), list(learners)
