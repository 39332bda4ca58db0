"""Client sessions: exactly-once application of client commands (Raft thesis 6.3).

Role: part of the replicated state (``protocols/control.py`` keeps one ``ClientSessions``); a
client numbers its commands and retries a command until it is answered, and a retried command
applies once. It is not part of the consensus core: any replicated state machine could use it.

Rules of this module: pure and deterministic (eviction follows log order, never a clock), and
its snapshot (``to_dict``) is msgpack-native.
"""

from __future__ import annotations

from typing import Any, Callable


class ClientSessions:
    """Exactly-once application of client commands (Raft thesis 6.3), as pure replicated state.

    A client numbers its commands 1, 2, 3, ... and retries a command with the same number until
    it gets an answer. Applying (client_id, seq) a second time returns the first result instead of
    running the command again. Each session keeps the results of its last ``results_per_client``
    commands; beyond ``max_sessions`` the session applied least recently (by log index) is
    evicted, so every replica evicts the same ones. Results must be msgpack-native so the
    sessions can go into a snapshot (``to_dict`` / ``from_dict``).
    """

    NEW = "new"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"  # older than what the session still remembers: the caller reports an error

    def __init__(self, max_sessions: int = 10_000, results_per_client: int = 16) -> None:
        self.max_sessions = max_sessions
        self.results_per_client = results_per_client
        # client_id -> [last_applied_index, {seq: result} in ascending seq order];
        # dict order = least recently applied first
        self._sessions: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def check(self, client_id: str, seq: int) -> tuple[str, Any]:
        """(NEW, None), (DUPLICATE, original result) or (EXPIRED, None)."""
        session = self._sessions.get(client_id)
        if session is None:
            return self.NEW, None
        results = session[1]
        if seq in results:
            return self.DUPLICATE, results[seq]
        if results and seq < next(iter(results)):  # the lowest remembered
            return self.EXPIRED, None
        return self.NEW, None

    def record(self, client_id: str, seq: int, result: Any, index: int) -> None:
        """Remember ``result`` of (client_id, seq), applied at log ``index``."""
        session = self._sessions.pop(client_id, None)
        if session is None:
            session = [index, {}]
        session[0] = index
        results = session[1]
        in_order = not results or seq > next(reversed(results))
        results[seq] = result
        if not in_order:  # rare: commands of one session applied out of their order
            results = session[1] = dict(sorted(results.items()))
        while len(results) > self.results_per_client:
            del results[next(iter(results))]
        self._sessions[client_id] = session  # re-inserted: now the most recently applied
        while len(self._sessions) > self.max_sessions:
            del self._sessions[next(iter(self._sessions))]

    def check_and_record(self, client_id: str, seq: int, index: int,
                         apply: Callable[[], Any]) -> tuple[str, Any]:
        """Run ``apply()`` unless (client_id, seq) ran before; returns (status, result) where the
        result is the original one for a duplicate."""
        status, result = self.check(client_id, seq)
        if status != self.NEW:
            return status, result
        result = apply()
        self.record(client_id, seq, result, index)
        return status, result

    def to_dict(self) -> dict[str, Any]:
        return {"max_sessions": self.max_sessions, "results_per_client": self.results_per_client,
                "sessions": [[client, s[0], sorted(s[1].items())] for client, s in self._sessions.items()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClientSessions":
        sessions = cls(data["max_sessions"], data["results_per_client"])
        for client, index, results in data["sessions"]:
            sessions._sessions[client] = [index, {seq: result for seq, result in sorted(results, key=lambda r: r[0])}]
        return sessions
