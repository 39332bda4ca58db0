"""RaftActor: drives the pure Raft core over the runtime, with SQLite storage, on a master.

Role: the only owner of a master's ``RaftCore``, its ``RaftStorage`` and its replicated
``ControlState``. It steps messages from peer RaftActors, ticks the core from the node's timer,
proposes clients' commands, and once per transport round (after that round's messages, calls and
ticks) runs the Ready loop: persist (one SQLite transaction), then send, then apply, then answer.

Rules:

* Spawned pinned (on the transport thread): consensus traffic is latency-critical, and a pinned
  actor costs no thread hand-off per message (bench/README.md, design probe 1). It never blocks but for the
  SQLite commit, once per round (group commit), never once per entry.
* Nothing is sent before what it depends on is durable (the Ready obligations), except a
  leader's appends and heartbeats, which leave before its own write (it counts itself in a
  quorum only for what it has persisted). Writing the leader's entries on a thread of their
  own instead was measured slower on these machines (bench/README.md, raft).
* A follower that sees its leader's connection drop (the transport's socket monitor) forgets
  the leader and campaigns at once, a pre-vote first, staggered by its rank among the other
  followers (``campaign_rank``): a leader that died is replaced in milliseconds, not an election
  timeout, and one that lives on keeps its followers' refusals (ARCHITECTURE §3).
* A master whose disk fails (full, read-only, an I/O error) never acknowledges what it could
  not persist: it holds the Ready that failed, drops peers' messages, stops ticking and
  answers clients with a redirect, as if cut off; it says why in its status (``disk_error``,
  hence /health) and its log, tries the write again every ``DISK_RETRY_S``, and goes on from
  where it stopped once the disk takes it.
* A snapshot from the leader that it cannot load (damaged bytes, another version's format)
  stops it the same way, for good: nothing of it is written or acknowledged, /health and the
  log say why once, and a restart fetches the leader's snapshot anew.
* A proposal is answered only once its entry is applied; if another leader's entry takes its
  index, the proposer is told ``not_committed`` and retries (client sessions make that safe).
* Other actors reach it only through the ``ControlPlane`` the master hands them: they propose,
  read and watch by message (applied commands by tag prefix, and leadership changes), and read
  what it publishes there (its replicated state, the leader named by its last Ready). They
  never touch the core.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from actors.control_plane import Applied, ControlPlane, LeadershipChanged, Watch
from protocols.control import (
    Batch,
    ControlState,
    Join,
    Propose,
    Read,
    RemoveMember,
    SetMember,
    StatusQuery,
    TransferLeadership,
    read_query,
)
from protocols.names import RAFT_ACTOR
from protocols.raft import (
    ENTRY_CONF_CHANGE,
    ENTRY_NORMAL,
    LEADER,
    MESSAGE_TYPES,
    AppendEntries,
    ConfChange,
    ConfChangeRejected,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshot,
    NotLeader,
    RaftConfig,
    RaftCore,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    campaign_rank,
    numbers_in_range,
)
from protocols.wire import ErrorRecord, Redirect, Tick, encode, is_record, tag_of
from runtime.actor import Actor, Deferred
from runtime.log import get_logger
from runtime.storage import RaftStorage, StorageError

log = get_logger("raft")

_RAFT_MESSAGES = frozenset(MESSAGE_TYPES)
# Terms and indexes come from the network, and SQLite keeps 63-bit integers: a forged vote in
# term 2**63 - 1 made a master elect itself in term 2**63 and exit, unable to write it (fuzzing).
MAX_RAFT_NUMBER = 2**62
_LEADER_EARLY_MESSAGES = frozenset((AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow))


# etcd's default --snapshot-count. A snapshot encodes the whole state on this thread: with 46,000
# finished tasks kept that is 0.4 s and 15 MB to write, on every master at about the same index.
SNAPSHOT_EVERY_ENTRIES = 100_000
# Followers whose leader's connection dropped campaign this far apart, by rank, so that they do
# not split the vote (far more than a pre-vote and vote round trip), with a little jitter.
CAMPAIGN_STAGGER_S = 0.05
CAMPAIGN_JITTER_S = 0.01
CAMPAIGN_TIMER = "raft-campaign"
DISK_RETRY_S = 0.5
DISK_RETRY_TIMER = "raft-disk-retry"
_CLIENT_REQUESTS = (Propose, Read, Join, RemoveMember, TransferLeadership)


class RaftActor(Actor):
    def __init__(
        self,
        control: ControlPlane,
        storage_path: str,
        config: RaftConfig | None = None,
        tick_s: float = 0.1,
        bootstrap: bool = True,
        http_port: int = 0,
        snapshot_every_entries: int = SNAPSHOT_EVERY_ENTRIES,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config or RaftConfig()
        self.tick_s = tick_s
        self.http_port = http_port
        self.snapshot_every_entries = snapshot_every_entries
        self.storage = RaftStorage(storage_path)
        self.control = control  # this actor publishes its state and the leader there
        self.state = control.state = ControlState()
        self._pending: dict[int, tuple[int, Deferred]] = {}  # index -> (term, answer)
        self._reads: list[tuple[int, Deferred, Read]] = []  # waiting for applied >= index
        self._read_contexts: dict[bytes, tuple[Deferred, Read]] = {}
        self._read_seq = 0
        self._watchers: list[Watch] = []
        self._watch_routes: dict[str, list[int]] = {}  # record tag -> the watchers it goes to
        self._peer_refs: dict[str, tuple[str, Any]] = {}
        self._leading = False  # as the last Ready's soft state said
        self._in_ready = False
        self._stopped = False  # on_stop closed the storage: later rounds' hooks must not write
        self.disk_failure: str | None = None  # why the last write failed, until one succeeds
        self.snapshot_failure: str | None = None  # why the leader's snapshot could not be loaded
        self._held: tuple[Any, list] | None = None  # (a Ready whose write failed, its messages to send)
        self._held_compaction: tuple[int, Snapshot] | None = None
        self._timer_id: int | None = None
        stored = self.storage.load()
        rng = random.Random(seed)
        self._rng = random.Random(rng.getrandbits(64))
        if stored.hard_state is None and stored.snapshot is None and not stored.entries:
            voters = [self.node.node_id] if bootstrap else []
            self.core = RaftCore(self.node.node_id, voters, self.config, rng)
        else:
            snapshot = None
            if stored.snapshot is not None:
                s = stored.snapshot
                snapshot = Snapshot(SnapshotMeta(s.index, s.term, list(s.voters), list(s.learners)), s.data)
                self.state = control.state = ControlState.from_snapshot(s.data)
            hard_state = None
            if stored.hard_state is not None:
                h = stored.hard_state
                hard_state = HardState(h.term, h.vote, h.commit)
            entries = [Entry(e.term, e.index, e.kind, e.data) for e in stored.entries]
            self.core = RaftCore(self.node.node_id, [], self.config, rng, hard_state, entries, snapshot)
            log.info("Node %s recovered term %d, %d entries after snapshot %d", self.node.node_id,
                     self.core.term, len(entries), snapshot.meta.index if snapshot else 0)

    # ------------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self._timer_id = self.node.every(self.tick_s, self.node.lookup(self.address), "raft")
        self.node.transport.add_end_of_round_hook(self._process_ready)
        self.node.transport.on_disconnect(self._on_disconnect)
        if self.core.voters == [self.node.node_id]:
            # A quorum by itself: waiting out an election timeout (1-2 s) would only delay the
            # cluster (etcd advances its election ticks at boot for the same reason).
            self.core.campaign()
        self._process_ready()

    def on_stop(self) -> None:
        if self._timer_id is not None:
            self.node.cancel_timer(self._timer_id)
        self._stopped = True
        self.storage.close()

    # ------------------------------------------------------------------ messages

    # The Ready loop runs once per transport round (an end-of-round hook), not once per batch:
    # every message, proposal and tick of a round shares one SQLite transaction.

    def receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is StatusQuery:
            return self.status(message.digest)
        if kind is Watch:
            self._watchers.append(message)
            self._watch_routes = {}
            if self._leading:  # it started after this master took the lead: it must hear of it too
                message.ref.tell(LeadershipChanged(True, self.core.term))
            return None
        if self._stopped:  # what arrives between on_stop and the transport's end: as if cut off
            return Redirect(None, None) if kind in _CLIENT_REQUESTS else None
        if self._cut_off:
            return self._receive_cut_off(message)
        if kind in _RAFT_MESSAGES:
            if not numbers_in_range(message, MAX_RAFT_NUMBER):
                self.node.count("raft_out_of_range")
                return None
            self.core.step(message)
            return None
        if kind is Tick:
            if message.name == CAMPAIGN_TIMER:
                if self.core.role != LEADER and self.core.leader_id is None:
                    self.core.campaign()  # still leaderless: nobody else won meanwhile
                return None
            self.core.tick()
            if self.core.role == LEADER:
                self._promote_caught_up_learners()
            return None
        if kind is Propose:
            return self._propose(message.body)
        if kind is Read:
            return self._read(message)
        if kind is Join:
            return self._join(message)
        if kind is RemoveMember:
            return self._remove(message.node_id)
        if kind is TransferLeadership:
            return self._transfer(message.to)
        return ErrorRecord("unknown_message", type(message).__name__)

    @property
    def _cut_off(self) -> bool:
        """It must neither acknowledge nor vote: its disk failed, or it could not load a snapshot."""
        return self.disk_failure is not None or self.snapshot_failure is not None

    def _receive_cut_off(self, message: Any) -> Any:
        """As if cut off: nothing reaches the core until the disk is back (for good after a bad snapshot)."""
        kind = type(message)
        if kind in _RAFT_MESSAGES:
            self.node.count("raft_dropped_disk_failed")
        elif kind is Tick:
            if message.name == DISK_RETRY_TIMER:
                self._retry_disk()
        elif kind in _CLIENT_REQUESTS:
            leader = self.core.leader_id
            return self.redirect() if leader != self.node.node_id else Redirect(None, None)
        else:
            return ErrorRecord("unknown_message", kind.__name__)
        return None

    def _on_disconnect(self, endpoint: str) -> None:
        core = self.core
        leader = core.leader_id
        if (self._cut_off or leader is None or core.role == LEADER
                or self.control.endpoint_of(leader) != endpoint):
            return
        core.forget_leader()
        delay_s = (campaign_rank(core.voters, self.node.node_id, leader) * CAMPAIGN_STAGGER_S
                   + self._rng.uniform(0, CAMPAIGN_JITTER_S))
        log.info("Node %s lost its connection to leader %s; campaigning in %.0f ms",
                 self.node.node_id, leader, delay_s * 1000)
        self.node.after(delay_s, self.node.lookup(self.address), CAMPAIGN_TIMER)

    def redirect(self) -> Redirect:
        """What a follower answers a client with: where the leader is, as far as its core knows
        now (the ControlPlane's redirect names the leader of the last Ready)."""
        leader = self.core.leader_id
        return Redirect(leader, self.control.endpoint_of(leader) if leader else None)

    def _propose(self, body: Any) -> Any:
        # A client sends its command already encoded: the leader logs those bytes as they are.
        try:
            index = self.core.propose(body if isinstance(body, bytes) else encode(body))
        except NotLeader:
            return self.redirect()
        answer = self.defer()
        self._pending[index] = (self.core.term, answer)
        return answer

    def _propose_member(self, node_id: str, endpoint: str, http_port: int) -> None:
        """Log where a member listens (nobody waits for the answer). Refused only while a
        leadership transfer is under way; the next leader logs its own entry again."""
        try:
            self.core.propose(encode(SetMember(node_id, endpoint, http_port)))
        except NotLeader:
            pass

    def _read(self, read: Read) -> Any:
        self._read_seq += 1
        context = self._read_seq.to_bytes(8, "big")
        try:
            self.core.read_index(context)
        except NotLeader:
            return self.redirect()
        answer = self.defer()
        self._read_contexts[context] = (answer, read)
        return answer

    def _join(self, join: Join) -> Any:
        if self.core.role != LEADER:
            return self.redirect()
        if join.node_id in self.core.voters or join.node_id in self.core.learners:
            # Known by its node id: a master back under a new address gets it recorded.
            known = self.state.members.get(join.node_id)
            if known is None or (known.endpoint, known.http_port) != (join.endpoint, join.http_port):
                self._propose_member(join.node_id, join.endpoint, join.http_port)
            return {"joined": True, "role": "voter" if join.node_id in self.core.voters else "learner"}
        self._propose_member(join.node_id, join.endpoint, join.http_port)
        try:
            index = self.core.propose_conf_change(ConfChange.add_learner(join.node_id))
        except NotLeader:  # a leadership transfer is under way: the joiner asks the next leader
            return self.redirect()
        except ConfChangeRejected as exc:
            return ErrorRecord("busy", str(exc))
        answer = self.defer()
        self._pending[index] = (self.core.term, answer)
        log.info("Node %s adds %s (%s) as a learner", self.node.node_id, join.node_id, join.endpoint)
        return answer

    def _remove(self, node_id: str) -> Any:
        if self.core.role != LEADER:
            return self.redirect()
        if node_id == self.node.node_id and len(self.core.voters) > 1:
            # Removing itself would leave the group leaderless until an election: hand over first;
            # the caller is told no leader is known yet and asks again, then the next leader.
            self._transfer(None)
            return Redirect(None, None)
        try:
            index = self.core.propose_conf_change(ConfChange.remove(node_id))
        except NotLeader:
            return self.redirect()
        except ConfChangeRejected as exc:  # "busy": one change at a time, ask again
            return ErrorRecord("busy" if "pending" in str(exc) else "rejected", str(exc))
        answer = self.defer()
        self._pending[index] = (self.core.term, answer)
        log.info("Node %s removes %s from the cluster", self.node.node_id, node_id)
        return answer

    def _transfer(self, to: str | None) -> Any:
        if self.core.role != LEADER:
            return self.redirect()
        voters = [v for v in self.core.voters if v != self.node.node_id]
        if to is None:
            progress = self.core.progress()
            to = max(voters, key=lambda v: (progress.get(v, {}).get("match", 0), v), default=None)
        if to is None or to not in voters:
            return ErrorRecord("no_target", "no other voter to transfer leadership to")
        self.core.transfer_leadership(to)
        return {"transferring_to": to}

    def _promote_caught_up_learners(self) -> None:
        progress = self.core.progress()
        for learner in self.core.learners:
            if progress.get(learner, {}).get("match", 0) >= self.core.commit_index:
                try:
                    self.core.propose_conf_change(ConfChange.promote(learner))
                    log.info("Node %s promotes %s to voter", self.node.node_id, learner)
                except (ConfChangeRejected, NotLeader):
                    pass  # one change at a time: try again on a later tick
                return

    # ------------------------------------------------------------------ the Ready loop

    def _process_ready(self) -> None:
        if self._in_ready or self._stopped:
            return  # re-entered from inside the loop below (the outer loop picks the work up), or stopped
        self._in_ready = True
        try:
            while True:
                was_leading = self._leading
                self._ready_loop()
                if self._leading == was_leading:
                    return
                self._on_leadership_changed(self._leading)  # may propose: loop again
        finally:
            self._in_ready = False

    def _ready_loop(self) -> None:
        core = self.core
        while not self._cut_off and core.has_ready():
            ready = core.ready()
            if ready.soft_state is not None:
                self._leading = ready.soft_state.role == LEADER
                self.control.leader_id = ready.soft_state.leader_id
            if ready.snapshot is not None:
                try:
                    state = ControlState.from_snapshot(ready.snapshot.data)
                except Exception as exc:  # noqa: BLE001 - damaged bytes or another version's format
                    self._snapshot_unloadable(ready.snapshot.meta.index, exc)
                    return
                self.state = self.control.state = state
                log.info("Node %s installed the leader's snapshot at index %d", self.node.node_id,
                         ready.snapshot.meta.index)
            later = ready.messages
            if self._leading:
                # A leader's appends and heartbeats may leave before its own write: it counts
                # itself in a quorum only for what it has persisted (thesis 10.2.1, as etcd does),
                # so its fsync and the followers' run in parallel. Flush them now, since this
                # thread is the transport's and would otherwise send them only after the write.
                early, later = [], []
                for message in ready.messages:
                    (early if type(message) in _LEADER_EARLY_MESSAGES else later).append(message)
                if early:
                    for message in early:
                        self._send(message)
                    self.node.transport.flush()
            if not self._persist(ready):
                self._held = (ready, later)
                return
            self._finish(ready, later)
        self._answer_reads()
        self._maybe_snapshot()

    def _finish(self, ready, messages: list) -> None:
        """The rest of a Ready once it is durable: send, apply, answer reads, advance."""
        for message in messages:
            self._send(message)
        if messages and ready.committed_entries:
            self.node.transport.flush()  # an acknowledgement leaves before this node applies
        if ready.committed_entries:
            self._apply(ready.committed_entries)
        for read_state in ready.read_states:
            waiting = self._read_contexts.pop(read_state.request_ctx, None)
            if waiting is not None:
                self._reads.append((read_state.index, *waiting))
        self.core.advance(ready)

    def _persist(self, ready) -> bool:
        """One transaction for what this Ready must make durable (False if the disk refused it).

        A Ready that need not be synced (its hard state differs from the stored one only by its
        commit index) writes nothing: the commit index goes with the next entries. It can always
        be learned again from the leader (or, alone, by committing a new entry), so losing it
        loses nothing, and skipping it halves the fsyncs per command."""
        if not ready.must_sync:
            return True
        try:
            self._save(ready)
        except StorageError as exc:
            self._disk_failed(str(exc))
            return False
        return True

    def _save(self, ready) -> None:
        core = self.core
        self.storage.save(HardState(core.term, core.vote, core.commit_index), ready.entries, ready.snapshot)

    # ------------------------------------------------------------------ a failing disk

    def _disk_failed(self, reason: str) -> None:
        """A write failed: stop acknowledging, voting and leading (the Ready loop that called this
        tells the watchers that this master no longer leads)."""
        first = self.disk_failure is None
        self.disk_failure = reason
        if not first:
            return
        self.node.count("raft_disk_failures")
        log.error("Node %s cannot write its Raft log: %s. It stops voting, acknowledging and leading, "
                  "and tries again every %.1f s", self.node.node_id, reason, DISK_RETRY_S)
        if self.control.leader_id == self.node.node_id:
            self.control.leader_id = None
        self._leading = False
        self.node.after(DISK_RETRY_S, self.node.lookup(self.address), DISK_RETRY_TIMER)

    def _snapshot_unloadable(self, index: int, exc: Exception) -> None:
        """The leader's snapshot cannot become this master's state: stop as a failed disk does
        (the Ready is dropped unwritten), without retrying, since the core holds it as installed."""
        self.snapshot_failure = f"snapshot at index {index}: {type(exc).__name__}: {exc}"
        self.node.count("raft_snapshot_load_failures")
        log.error("Node %s cannot load the leader's %s. It stops voting, acknowledging and serving; "
                  "start it again to fetch the leader's snapshot anew", self.node.node_id, self.snapshot_failure)

    def _retry_disk(self) -> None:
        try:
            if self._held is not None:
                ready, messages = self._held
                self._save(ready)
                self._held = None
                self._finish(ready, messages)
            if self._held_compaction is not None:
                self.storage.compact(*self._held_compaction)
                self._held_compaction = None
        except StorageError as exc:
            self.disk_failure = str(exc)
            self.node.after(DISK_RETRY_S, self.node.lookup(self.address), DISK_RETRY_TIMER)
            return
        log.warning("Node %s writes its Raft log again; it rejoins the cluster", self.node.node_id)
        self.disk_failure = None
        core = self.core
        self._leading, self.control.leader_id = core.role == LEADER, core.leader_id
        if self._leading:
            self._on_leadership_changed(True)
        self._process_ready()

    def _apply(self, entries: list[Entry]) -> None:
        applied: list[tuple[int, Any, Any]] = []
        for entry in entries:
            result: Any = None
            if entry.kind == ENTRY_NORMAL:
                command, result = self.state.apply(entry.index, entry.data)
                if isinstance(command, Batch):
                    applied.extend((entry.index, sub, sub_result) for sub, sub_result in zip(command.commands, result))
                elif command is not None:  # None: nothing applied (a duplicate, or undecodable)
                    applied.append((entry.index, command, result))
            elif entry.kind == ENTRY_CONF_CHANGE:
                result = {"voters": self.core.voters, "learners": self.core.learners}
            pending = self._pending.pop(entry.index, None)
            if pending is not None:
                term, answer = pending
                if term == entry.term:
                    answer.resolve(result)
                else:
                    answer.fail("not_committed", "leadership changed before the command committed; retry")
        if applied and self._watchers:
            routes, batches = self._watch_routes, {}
            for item in applied:
                tag = _tag(item[1])
                watching = routes.get(tag)
                if watching is None:  # once per record tag (a finite set) and set of watchers
                    watching = routes[tag] = [i for i, w in enumerate(self._watchers) if tag.startswith(w.prefix)]
                for i in watching:
                    batches.setdefault(i, []).append(item)
            is_leader = self._leading  # as the watchers were told (a disk retry tells them after)
            for i in sorted(batches):
                self._watchers[i].ref.tell(Applied(batches[i], is_leader))

    def _answer_reads(self) -> None:
        if not self._reads:
            return
        applied = self.core.applied_index
        waiting = []
        for index, answer, read in self._reads:
            if index <= applied:
                answer.resolve(read_query(self.state, read.query, read.args))
            else:
                waiting.append((index, answer, read))
        self._reads = waiting

    def _maybe_snapshot(self) -> None:
        core = self.core
        if core.applied_index - core.first_index + 1 < self.snapshot_every_entries:
            return
        core.compact(core.applied_index, self.state.to_snapshot())
        try:
            self.storage.compact(core.applied_index, core.snapshot)
        except StorageError as exc:
            self._held_compaction = (core.applied_index, core.snapshot)
            self._disk_failed(str(exc))
        log.debug("Node %s compacted its log up to %d", self.node.node_id, core.applied_index)

    def _on_leadership_changed(self, is_leader: bool) -> None:
        if is_leader:
            me = self.state.members.get(self.node.node_id)
            if me is None or me.endpoint != self.node.endpoint or me.http_port != self.http_port:
                self._propose_member(self.node.node_id, self.node.endpoint, self.http_port)
        else:
            for _, answer in self._pending.values():
                answer.fail("not_committed", "this master lost the leadership; retry")
            self._pending.clear()
        for watch in self._watchers:
            watch.ref.tell(LeadershipChanged(is_leader, self.core.term))

    # ------------------------------------------------------------------ peers

    def _send(self, message: Any) -> None:
        endpoint = self.control.endpoint_of(message.dst)
        if endpoint is None:
            self.node.count("raft_unknown_peer")
            return
        cached = self._peer_refs.get(message.dst)
        if cached is None or cached[0] != endpoint:
            cached = (endpoint, self.node.ref(endpoint, RAFT_ACTOR, message.dst))
            self._peer_refs[message.dst] = cached
        cached[1].tell(message)

    # ------------------------------------------------------------------ status

    def status(self, digest: bool = False) -> dict:
        core = self.core
        status = {
            "id": self.node.node_id,
            "address": self.node.endpoint,
            "http_port": self.http_port,
            "role": core.role if core.role != "pre_candidate" else "candidate",
            "term": core.term,
            "leader": core.leader_id,
            "commit_index": core.commit_index,
            "last_applied": core.applied_index,
            "last_index": core.last_index,
            "voters": list(core.voters),
            "learners": list(core.learners),
            "members": {node_id: self.state.members[node_id].endpoint for node_id in sorted(self.state.members)
                        if node_id in core.voters or node_id in core.learners},
            "stats": dict(core.stats),
            "disk_error": self.disk_failure,
            "snapshot_error": self.snapshot_failure,
        }
        if digest:
            status["state_digest"] = hashlib.blake2b(self.state.to_snapshot(), digest_size=16).hexdigest()
        return status


def _tag(command: Any) -> str:
    """The record tag of an applied command ("" for a plain value), matched against watchers'
    prefixes."""
    return tag_of(type(command)) if is_record(command) else ""
