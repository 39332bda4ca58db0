"""Log replication: the part of ``RaftCore`` that moves entries from a leader to its followers.

Role: ``Replication`` is a mixin of ``RaftCore`` (core.py), which owns every attribute used here
(as a Go type's methods may sit in several files of its package). The follower side takes
appends and heartbeats from its leader (snapshots: ``snapshots.py``). The leader side sends
them within each follower's flow control (``progress.py``), handles the answers, advances the
commit index and does what a commit allows (pending reads, its own removal); its heartbeat
timer also checks that a majority is still there.

Rules of this module:

* A follower answers only for what it holds; an append below its commit index is answered
  with the commit index, and a conflict below it is refused (only a hostile leader sends one).
* The leader commits only an entry of its own term that a majority of voters has stored
  durably (figure 8 of the Raft paper); it counts itself only up to ``durable_index``.
* Proposals are sent in batches, once per Ready (``_flush_appends``); a new commit index is
  not sent on its own.
"""

from __future__ import annotations

import logging

from protocols.raft.messages import (
    AppendEntries,
    AppendResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
)
from protocols.raft.progress import (
    PROBE,
    REPLICATE,
    SNAPSHOT,
    Progress,
    committed_index,
    quorum,
    quorum_recently_active,
)
from protocols.raft.reads import ReadState
from protocols.raft.ready import LEADER

logger = logging.getLogger("agentflow.raft")


class Replication:
    """RaftCore's replication methods (a mixin: the state is RaftCore's)."""

    # ------------------------------------------------------------------ follower side

    def _handle_append(self, m: AppendEntries) -> None:
        log = self._log
        if m.prev_index < log.committed:
            # Everything up to our commit index is known to match; say so and let the leader
            # continue from there (it is a duplicate or reordered append).
            self._send(AppendResponse(self._id, m.src, self._term, log.committed, False, 0, 0))
            return
        if log.term_at(m.prev_index) != m.prev_term:
            hint = log.last_index_with_term_at_most(min(m.prev_index, log.last_index), m.prev_term)
            self._send(AppendResponse(self._id, m.src, self._term, m.prev_index, True, hint,
                                      log.term_at(hint) or 0))
            return
        last_new = m.prev_index + len(m.entries)
        if not self._append_from_leader(m.entries):
            return
        if m.commit > log.committed:
            log.commit_to(min(m.commit, last_new))
        self._send(AppendResponse(self._id, m.src, self._term, last_new, False, 0, 0))

    def _append_from_leader(self, entries: list[Entry]) -> bool:
        """Append ``entries`` (which follow a matching entry), truncating a conflicting suffix."""
        log = self._log
        present = log.first_new(entries)
        if present == len(entries):
            return True  # all present already
        new_entries = entries[present:]
        first = new_entries[0].index
        if first <= log.committed:
            self._count("conflict_below_commit")  # only a hostile or buggy leader does this
            return False
        if log.truncate_and_append(new_entries) and self._members.undo_from(first):
            self._config_changed()
        self._note_appended(new_entries)
        return True

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        log = self._log
        if m.commit > log.committed:
            log.commit_to(min(m.commit, log.last_index))
        self._send(HeartbeatResponse(self._id, m.src, self._term, m.context))

    # ------------------------------------------------------------------ leader side

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_ticks_min:
            self._election_elapsed = 0
            if self.config.check_quorum:
                self._abandon_silent_snapshot_transfers()  # before recent activity is reset
                if not quorum_recently_active(self._members.voters, self._progress, self._id):
                    logger.info("[raft] Node %s stepping down: no quorum heard from in term %d",
                                self._id, self._term)
                    self._become_follower(self._term, None)
                    return
            if self._transferee is not None:
                logger.info("[raft] Node %s aborting leadership transfer to %s", self._id, self._transferee)
                self._transferee = None
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _on_commit_advanced(self) -> None:
        if self._reads_awaiting_commit and self._log.term_at(self._log.committed) == self._term:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for ctx in waiting:
                self._add_read(ctx)
        if self._id not in self._members.voters and self._pending_conf_index <= self._log.committed:
            # Our own removal has committed: the cluster goes on without us (thesis 4.2.2).
            logger.info("[raft] Node %s removed from the cluster; stepping down", self._id)
            self._broadcast_append()  # the others must learn that it committed
            self._become_follower(self._term, None)

    def _add_read(self, ctx: bytes) -> None:
        if self._members.voters == [self._id]:
            self._read_states.append(ReadState(self._log.committed, ctx))
            return
        self._reads.add(self._log.committed, ctx, self._id)
        self._broadcast_heartbeat()

    def _broadcast_heartbeat(self) -> None:
        context = self._reads.newest_context()
        commit = self._log.committed
        for peer in self._peers():
            progress = self._progress[peer]
            self._send(Heartbeat(self._id, peer, self._term, min(progress.match, commit), context))

    def _broadcast_append(self) -> None:
        for peer in self._peers():
            self._send_appends(peer, self._progress[peer], send_if_empty=True)
        self._needs_broadcast = False

    def _flush_appends(self) -> None:
        """Send what proposals added since the last Ready, batched per Ready: a burst of
        proposals costs one round of messages, not one per proposal.

        A new commit index is not sent on its own: followers learn it from the next append or
        heartbeat (as hashicorp/raft does). Nothing waits on a follower's commit index, and an
        append per commit would cost every follower a wake-up, and the leader an answer, on the
        path of the next command."""
        if self._needs_broadcast and self._role == LEADER:
            for peer in self._peers():
                progress = self._progress[peer]
                # A peer in probe with nothing in flight (one just added) is probed at once.
                self._send_appends(peer, progress, send_if_empty=progress.state == PROBE)
        self._needs_broadcast = False

    def _send_appends(self, peer: str, progress: Progress, send_if_empty: bool) -> None:
        """Send as many appends as the follower's state allows (pipelining when replicating)."""
        if not self._send_append(peer, progress, send_if_empty):
            return
        while (progress.state == REPLICATE and progress.next <= self._log.last_index
               and self._send_append(peer, progress, send_if_empty=False)):
            pass

    def _send_append(self, peer: str, progress: Progress, send_if_empty: bool) -> bool:
        """Send one append (or the snapshot) to ``peer``; False if nothing was sent."""
        if progress.state == SNAPSHOT or (progress.state == PROBE and progress.paused):
            return False
        if progress.state == REPLICATE and len(progress.inflight) >= self.config.max_inflight_appends:
            return False
        log = self._log
        prev_index = progress.next - 1
        prev_term = log.term_at(prev_index)
        if prev_term is None:
            return self._send_snapshot(peer, progress)
        last_index = log.last_index
        if progress.next > last_index and not send_if_empty:
            return False
        high = min(last_index, prev_index + self.config.max_entries_per_append)
        entries = _within_bytes(log.entries_between(prev_index + 1, high), self.config.max_bytes_per_append)
        high = entries[-1].index if entries else prev_index
        self._send(AppendEntries(self._id, peer, self._term, prev_index, prev_term, entries, log.committed))
        if progress.state == REPLICATE:
            if entries:
                progress.next = high + 1
                progress.inflight.append(high)
        else:
            progress.paused = True
        return True

    def _handle_append_response(self, m: AppendResponse, progress: Progress) -> None:
        progress.recent_active = True
        log = self._log
        if m.index > log.last_index:
            self._count("ack_beyond_log")  # hostile: would make us commit what we don't have
            return
        if m.reject:
            match_hint = m.hint_index
            if m.hint_term > 0:
                match_hint = log.last_index_with_term_at_most(m.hint_index, m.hint_term)
            if progress.maybe_decrease_to(m.index, match_hint):
                if progress.state == REPLICATE:
                    progress.become_probe()
                self._send_appends(m.src, progress, send_if_empty=False)
            return
        was_paused = progress.state == PROBE and progress.paused
        if not progress.maybe_update(m.index) and not (
                progress.state == PROBE and progress.match == m.index):
            if progress.state == REPLICATE:
                progress.free_inflight_to(m.index)
            return
        if progress.state == PROBE:
            progress.become_replicate()
        elif progress.state == SNAPSHOT and progress.match >= progress.pending_snapshot:
            progress.become_replicate()
        elif progress.state == REPLICATE:
            progress.free_inflight_to(m.index)
        if self._maybe_commit():
            self._on_commit_advanced()
            if self._role != LEADER:
                return
        self._send_appends(m.src, progress, send_if_empty=was_paused)
        if m.src == self._transferee and progress.match == log.last_index:
            logger.info("[raft] Node %s transferring leadership to %s", self._id, m.src)
            self._send(TimeoutNow(self._id, m.src, self._term))

    def _handle_heartbeat_response(self, m: HeartbeatResponse, progress: Progress) -> None:
        progress.recent_active = True
        progress.paused = False
        last_index = self._log.last_index
        if progress.state == SNAPSHOT:
            self._snapshot_heard_alive(m.src, progress)
        if (progress.state == REPLICATE and progress.match < last_index
                and len(progress.inflight) >= self.config.max_inflight_appends):
            progress.inflight.popleft()  # an append was probably lost: let one more through
        if progress.match < last_index:
            # An empty append at next_index also uncovers a lost append: the follower rejects it.
            self._send_appends(m.src, progress, send_if_empty=True)
        if m.context and m.src in self._members.voters:
            self._read_states.extend(self._reads.confirm(m.context, m.src, self._members.voters,
                                                         quorum(self._members.voters)))

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a quorum of voters has durably stored, but only to
        an entry of the current term (counting replicas is unsafe for older terms, figure 8)."""
        log = self._log
        quorum_index = committed_index(self._members.voters, self._progress, self._id, log.durable_index)
        if quorum_index > log.committed and log.term_at(quorum_index) == self._term:
            log.committed = quorum_index
            return True
        return False


def _within_bytes(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``entries`` whose data fits in ``max_bytes``, and never empty when
    ``entries`` is not (an entry larger than the budget goes alone)."""
    total = 0
    for count, entry in enumerate(entries):
        total += len(entry.data)
        if total > max_bytes and count:
            return entries[:count]
    return entries
