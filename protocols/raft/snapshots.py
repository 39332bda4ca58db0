"""Snapshot transfer: the part of ``RaftCore`` that ships the leader's snapshot to a follower in
chunks (a mixin, as ``replication.py`` is; the state is RaftCore's).

Role: a follower that needs entries the leader has compacted away gets the snapshot instead,
as a run of ``InstallSnapshot`` chunks of at most ``max_bytes_per_snapshot_chunk`` bytes each
(the Raft paper's offset and done), so that no message comes near a receiver's frame limit
however large the state grows. The follower assembles the chunks in memory and, once the last
one is there, installs the whole snapshot exactly as a single message would have been:
everything downstream (the Ready's snapshot, persisting and applying it) is unchanged.

Rules of this module:

* Stop and wait: one chunk in flight per follower. The follower answers each chunk with what
  it holds (``SnapshotResponse.offset``), and the leader sends the next chunk on that answer.
  A chunk or its answer that is lost is sent again after an election timeout without progress
  (counted in heartbeat responses, so only while the follower is alive), from where the
  follower stands: a lost message costs one chunk again, not the transfer (unless a newer
  snapshot was taken meanwhile, below).
* A transfer is one snapshot from one leader: (leader, term, snapshot index and term, size).
  The leader keeps the snapshot it is sending (``Progress.snapshot``) until it is installed,
  even if it compacts again meanwhile, so all of a transfer's chunks come from the same bytes;
  a transfer that stalls for an election timeout while a newer snapshot exists starts over with
  the newest, and one to a follower not heard from in that time is abandoned (the snapshot it
  kept released).
  The follower holds at most one partial transfer; a chunk of another transfer discards it (the
  current leader is sending something else), and so does a new term. A chunk that does not
  start where the follower stands is answered with where it stands (``reject`` if it is ahead);
  a duplicate changes nothing.
* Bounded: a transfer declaring more than ``max_snapshot_bytes`` is refused, data beyond the
  declared size never passes the shape check (``messages.py``), and a partial transfer only
  ever holds bytes that came in order, so hostile chunks cost counters, never memory.
"""

from __future__ import annotations

import logging

from protocols.raft.log import Snapshot
from protocols.raft.messages import AppendResponse, InstallSnapshot, SnapshotMeta, SnapshotResponse
from protocols.raft.progress import SNAPSHOT, Progress

logger = logging.getLogger("agentflow.raft")


class IncomingSnapshot:
    """The chunks of one transfer received so far, in order."""

    __slots__ = ("key", "parts", "received")

    def __init__(self, key: tuple) -> None:
        self.key = key  # (leader, term, snapshot index, snapshot term, total size)
        self.parts: list[bytes] = []
        self.received = 0

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.received += len(data)

    def data(self) -> bytes:
        return b"".join(self.parts)


def _transfer_key(m: InstallSnapshot) -> tuple:
    return (m.src, m.term, m.meta.index, m.meta.term, m.total)


class SnapshotTransfer:
    """RaftCore's snapshot-transfer methods (a mixin: the state is RaftCore's)."""

    # ------------------------------------------------------------------ follower side

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta, log, incoming = m.meta, self._log, self._incoming_snapshot
        if meta.index <= log.committed:
            if incoming is not None and incoming.key[2] <= log.committed:
                self._drop_incoming_snapshot()  # nothing we still need
            self._send(AppendResponse(self._id, m.src, self._term, log.committed, False, 0, 0))
            return
        if incoming is None or incoming.key != _transfer_key(m):
            self._drop_incoming_snapshot()  # another transfer's: the leader now sends this one
            if m.offset != 0:
                self._count("snapshot_chunk_of_unknown_transfer")
                self._answer_chunk(m, 0, reject=True)
                return
            if log.term_at(meta.index) == meta.term:
                # We already have the log up to the snapshot: no need to replace the state.
                log.commit_to(meta.index)
                self._send(AppendResponse(self._id, m.src, self._term, meta.index, False, 0, 0))
                return
            if m.total > self.config.max_snapshot_bytes:
                self._count("snapshot_too_large")
                logger.warning("[raft] Node %s refuses the snapshot at index %d from %s: %d bytes, "
                               "more than max_snapshot_bytes (%d)", self._id, meta.index, m.src, m.total,
                               self.config.max_snapshot_bytes)
                return
            incoming = self._incoming_snapshot = IncomingSnapshot(_transfer_key(m))
        if m.offset != incoming.received:
            # A duplicate (behind what we hold) or a chunk after a lost one (ahead).
            self._count("snapshot_chunk_duplicate" if m.offset < incoming.received else "snapshot_chunk_gap")
            self._answer_chunk(m, incoming.received, reject=m.offset > incoming.received)
            return
        incoming.add(m.data)
        self._count("snapshot_chunks_received")
        if not m.done:
            self._answer_chunk(m, incoming.received, reject=False)
            return
        self._incoming_snapshot = None
        self._install_snapshot(m.src, meta, incoming.data())

    def _drop_incoming_snapshot(self) -> None:
        if self._incoming_snapshot is not None:
            self._count("snapshot_transfer_abandoned")
            self._incoming_snapshot = None

    def _answer_chunk(self, m: InstallSnapshot, offset: int, reject: bool) -> None:
        self._send(SnapshotResponse(self._id, m.src, self._term, m.meta.index, m.meta.term, offset, reject))

    def _install_snapshot(self, leader: str, meta: SnapshotMeta, data: bytes) -> None:
        logger.info("[raft] Node %s installing snapshot at index %d term %d (%d bytes) from %s",
                    self._id, meta.index, meta.term, len(data), leader)
        self._log.install(Snapshot(meta, data))
        self._members.restore(meta)
        self._config_changed()
        self._send(AppendResponse(self._id, leader, self._term, meta.index, False, 0, 0))

    # ------------------------------------------------------------------ leader side

    def _send_snapshot(self, peer: str, progress: Progress) -> bool:
        snapshot = self._log.snapshot
        if not progress.recent_active or snapshot is None:
            return False  # don't ship a snapshot to a peer that is probably down
        progress.become_snapshot(snapshot)
        self._send_snapshot_chunk(peer, progress)
        return True

    def _send_snapshot_chunk(self, peer: str, progress: Progress) -> None:
        """The chunk of ``progress.snapshot`` from ``progress.snapshot_offset``."""
        snapshot, offset = progress.snapshot, progress.snapshot_offset
        total = len(snapshot.data)
        end = min(total, offset + self.config.max_bytes_per_snapshot_chunk)
        self._send(InstallSnapshot(self._id, peer, self._term, snapshot.meta, offset, total,
                                   snapshot.data[offset:end], end == total))

    def _handle_snapshot_response(self, m: SnapshotResponse, progress: Progress) -> None:
        progress.recent_active = True
        snapshot = progress.snapshot
        if (progress.state != SNAPSHOT or snapshot is None
                or (m.index, m.snap_term) != (snapshot.meta.index, snapshot.meta.term)):
            self._count("stale_snapshot_response")  # an earlier transfer's
            return
        if m.offset > len(snapshot.data):
            self._count("snapshot_ack_beyond_size")  # hostile
            return
        # An answer moves the transfer on only if it says something new: more held than where the
        # chunk in flight starts, or (a reject) another starting point. The answers to duplicates
        # and resent chunks do not, so they never put a second chunk in flight.
        moves_on = m.offset != progress.snapshot_offset if m.reject else m.offset > progress.snapshot_offset
        if not moves_on:
            return
        progress.snapshot_offset = m.offset
        progress.snapshot_elapsed = 0
        self._send_snapshot_chunk(m.src, progress)

    def _snapshot_heard_alive(self, peer: str, progress: Progress) -> None:
        """A heartbeat response from ``peer`` while its snapshot is being sent: after an election
        timeout without progress, the chunk in flight (or its answer) is taken as lost, and sent
        again."""
        progress.snapshot_elapsed += self.config.heartbeat_ticks
        if progress.snapshot_elapsed < self.config.election_ticks_min:
            return
        progress.snapshot_elapsed = 0
        newest = self._log.snapshot
        if progress.snapshot is not newest:
            progress.become_snapshot(newest)  # a stalled transfer of an old one: send the newest
        self._count("snapshot_chunk_resent")
        self._send_snapshot_chunk(peer, progress)

    def _abandon_silent_snapshot_transfers(self) -> None:
        """Once per election timeout, before recent activity is reset: a follower not heard from
        since the last one is probably down. Its transfer is abandoned, releasing the snapshot it
        kept; it begins again once the follower answers (where the follower stands, if the
        snapshot is still the newest)."""
        for progress in self._progress.values():
            if progress.state == SNAPSHOT and not progress.recent_active:
                progress.become_probe()
