"""A deterministic simulated Raft cluster, for the safety and liveness tests of protocols/raft/.

Everything is driven by one seeded ``random.Random``: the network (drops, duplicates, delays,
hence reordering; partitions that come and go; one link of the leader's that flaps), crashes and
restarts, the RaftActor's hint that a leader's connection dropped (it forgets the leader and
campaigns), client proposals, reads, compaction, leadership transfers and membership changes. A node that crashes keeps only what
the harness persisted from its Readys (the "disk"); it restarts from that, as the RaftActor
restarts from SQLite. After every step the safety properties of the Raft paper are checked:

* election safety: at most one leader per term;
* log matching: two persisted entries with the same index and term have the same data and the
  same predecessor term (so, inductively, the same log before them);
* leader completeness: a new leader has every entry known to be committed;
* state machine safety: every node applies the same entries in the same order, without gaps
  (checked with a running digest of the applied commands at each index);
* ReadIndex: a read state is never older than a commit that was known when the read began;
* Ready: its soft state reports every change of term, role and leader (and its ``must_sync``
  is what the disk honours: a vote or an entry lost to a Ready that was not synced breaks
  the checks above).

At the end the network heals (no loss, in order), every node restarts, and a command must
commit and be applied everywhere within a bounded number of ticks (liveness).

Replay one seed (prints the last events of the run on failure)::

    .venv/bin/python -m tests.raftsim --scenario five --seed 123   (scenarios: SCENARIOS below)
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from protocols.raft import (
    LEADER,
    ConfChange,
    ConfChangeRejected,
    Entry,
    NotLeader,
    RaftConfig,
    RaftCore,
    Ready,
    SoftState,
    campaign_rank,
)
from tests.raftdisk import Disk, StateMachine


class SafetyViolation(AssertionError):
    pass


@dataclass
class Faults:
    """Probabilities per step (one tick of simulated time) unless said otherwise."""

    drop: float = 0.05  # per message
    duplicate: float = 0.02  # per message
    delay_max_ticks: int = 3  # delivery after 1..delay_max_ticks ticks: reorders messages
    crash: float = 0.004
    crash_leader: float = 0.0  # crash whoever leads: leaders dying in a row is what figure 8 needs
    crash_mid_ready: float = 0.002  # per Ready: persisted but crashed before sending
    restart: float = 0.08  # per step, for one crashed node
    partition: float = 0.01
    heal: float = 0.04
    propose: float = 0.5
    read: float = 0.05
    compact: float = 0.02
    transfer: float = 0.004
    membership: float = 0.0  # remove a voter / add it back as learner / promote it
    # The RaftActor's hint (a dropped connection): when a leader crashes, each follower of it is
    # told with this probability (it forgets the leader and campaigns a tick or two later) ...
    crash_hint: float = 0.0
    # ... and per step, the link between the leader and one follower goes down for a while, the
    # follower told so, while the leader lives on (a flapping link).
    flap: float = 0.0


# The simulated state machine's snapshot is 12-16 bytes: in chunks of 4, every transfer takes
# several, lost, duplicated and reordered by the faults like any message.
SNAPSHOT_CHUNK_BYTES = 4


def sim_config() -> RaftConfig:
    # Small batches and windows so that batching, pipelining and flow control are exercised.
    return RaftConfig(election_ticks_min=10, election_ticks_max=20, heartbeat_ticks=2,
                      max_entries_per_append=4, max_inflight_appends=3,
                      max_bytes_per_snapshot_chunk=SNAPSHOT_CHUNK_BYTES)


@dataclass
class SimNode:
    node_id: str
    core: RaftCore | None
    disk: Disk = field(default_factory=Disk)
    machine: StateMachine = field(default_factory=StateMachine)
    commit_seen: int = 0  # commit index at the last check, since the last restart
    soft_state: SoftState | None = None  # as its Readys reported it (the start is not reported)


class Cluster:
    def __init__(self, seed: int, node_count: int = 3, faults: Faults | None = None,
                 config: RaftConfig | None = None, spare_count: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.config = config or sim_config()
        self.founders = [f"n{i}" for i in range(1, node_count + 1)]
        # Spares start with an empty log and no configuration, as a server that joins later.
        spares = [f"n{i}" for i in range(node_count + 1, node_count + spare_count + 1)]
        self.nodes: dict[str, SimNode] = {}
        for node_id in self.founders + spares:
            self.nodes[node_id] = SimNode(node_id, None)
            self._start(node_id)
        self.now = 0
        self.network: list[tuple[int, float, int, Any]] = []
        self.sent_count = 0
        self.group: dict[str, int] = {n: 0 for n in self.nodes}
        self.cut: dict[frozenset[str], int] = {}  # a flapping link -> the tick it comes back
        self.campaigns: list[tuple[int, str]] = []  # (due tick, node) told its leader is gone
        self.trace: deque[str] = deque(maxlen=60)
        self.proposed = 0
        self.reads_started: dict[bytes, int] = {}
        self.read_count = 0
        # What the checks know so far.
        self.leader_of_term: dict[int, str] = {}
        self.committed: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, kind, data)
        self.digest_at: dict[int, bytes] = {}
        self.entry_at: dict[tuple[int, int], tuple[int | None, int, bytes]] = {}
        self.leaders_checked: set[tuple[int, str]] = set()
        self.replay = f".venv/bin/python -m tests.raftsim --seed {seed}"
        self.coverage: Counter[str] = Counter()  # what the run exercised, for the tests' sanity

    # ------------------------------------------------------------------ node lifecycle

    def _start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        disk = node.disk
        rng = random.Random(self.rng.getrandbits(64))
        voters = self.founders if node_id in self.founders else []
        node.core = RaftCore(node_id, voters, self.config, rng, hard_state=disk.hard_state,
                             entries=list(disk.entries), snapshot=disk.snapshot)
        node.machine = StateMachine()
        node.commit_seen = 0
        node.soft_state = SoftState(node.core.term, node.core.role, node.core.leader_id)
        if disk.snapshot is not None:
            node.machine.restore(disk.snapshot.data)

    def crash(self, node_id: str) -> None:
        self.nodes[node_id].core = None
        self.note(f"crash {node_id}")
        for node in self.live():
            if node.core.leader_id == node_id and self.rng.random() < self.faults.crash_hint:
                self.leader_gone(node, node_id)

    def leader_gone(self, node: SimNode, leader_id: str) -> None:
        """What the RaftActor does when its leader's connection drops: forget the leader now,
        campaign a little later if still leaderless, staggered by rank (3 ticks: more than a
        round trip) with a tick of jitter."""
        rank = campaign_rank(node.core.voters, node.node_id, leader_id)
        node.core.forget_leader()
        self.campaigns.append((self.now + 3 * rank + self.rng.randint(0, 1), node.node_id))
        self.coverage["leader_gone_hint"] += 1

    def start_due_campaigns(self) -> None:
        due = [c for c in self.campaigns if c[0] <= self.now]
        self.campaigns = [c for c in self.campaigns if c[0] > self.now]
        for _, node_id in sorted(due):
            core = self.nodes[node_id].core
            if core is not None and core.role != LEADER and core.leader_id is None:
                core.campaign()

    def restart(self, node_id: str) -> None:
        self._start(node_id)
        self.note(f"restart {node_id}")

    def live(self) -> list[SimNode]:
        return [n for _, n in sorted(self.nodes.items()) if n.core is not None]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.live() if n.core.role == LEADER]

    # ------------------------------------------------------------------ network

    def connected(self, a: str, b: str) -> bool:
        return self.group.get(a, 0) == self.group.get(b, 0) and self.cut.get(frozenset((a, b)), 0) <= self.now

    def send(self, message: Any, lossless: bool = False) -> None:
        if not lossless and self.rng.random() < self.faults.drop:
            return
        copies = 2 if not lossless and self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            # A healed network (lossless) behaves like TCP: in order, one tick.
            delay = 1 if lossless else self.rng.randint(1, max(1, self.faults.delay_max_ticks))
            self.sent_count += 1
            heapq.heappush(self.network, (self.now + delay, self.rng.random(), self.sent_count, message))

    def deliver_due(self) -> None:
        while self.network and self.network[0][0] <= self.now:
            _, _, _, message = heapq.heappop(self.network)
            node = self.nodes.get(message.dst)
            if node is None or node.core is None or not self.connected(message.src, message.dst):
                continue
            node.core.step(message)

    def partition(self) -> None:
        ids = sorted(self.nodes)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        self.group = {n: (0 if i < cut else 1) for i, n in enumerate(ids)}
        self.note(f"partition {sorted(ids[:cut])} | {sorted(ids[cut:])}")

    def heal(self) -> None:
        self.group = {n: 0 for n in self.nodes}
        self.cut = {}
        self.note("heal")

    def flap(self) -> None:
        """The link between the leader and its first follower goes down (one link, the same one
        while the leader lasts: a leader cut off from every follower is rightly replaced)."""
        leaders = self.leaders()
        if not leaders or any(until > self.now for until in self.cut.values()):
            return
        leader = leaders[0]
        others = [v for v in leader.core.voters if v != leader.node_id]
        follower = self.nodes[others[0]] if others else None
        if follower is None or follower.core is None or follower.core.leader_id != leader.node_id:
            return
        until = self.now + self.rng.randint(1, 2 * self.config.election_ticks_min)
        self.cut[frozenset((leader.node_id, follower.node_id))] = until
        self.note(f"link {leader.node_id}-{follower.node_id} down until t={until}")
        self.leader_gone(follower, leader.node_id)

    # ------------------------------------------------------------------ the loop

    def note(self, text: str) -> None:
        self.trace.append(f"t={self.now} {text}")

    def step(self, faulty: bool = True) -> None:
        self.now += 1
        if faulty:
            self.random_events()
        for node in self.live():
            node.core.tick()
        self.start_due_campaigns()
        self.deliver_due()
        for node in self.live():
            self.handle_ready(node, faulty)
        self.check()

    def random_events(self) -> None:
        rng, f = self.rng, self.faults
        live = self.live()
        down = [n for _, n in sorted(self.nodes.items()) if n.core is None]
        if live and rng.random() < f.crash:
            self.crash(rng.choice(live).node_id)
        leaders = self.leaders()
        if leaders and rng.random() < f.crash_leader:
            self.crash(rng.choice(leaders).node_id)
        if down and rng.random() < f.restart:
            self.restart(rng.choice(down).node_id)
        if rng.random() < f.partition:
            self.partition()
        if rng.random() < f.heal:
            if len(set(self.group.values())) > 1:
                self.heal()
        if rng.random() < f.flap:
            self.flap()
        live = self.live()
        if not live:
            return
        if rng.random() < f.propose:
            for _ in range(rng.randint(1, 3)):
                self.propose(rng.choice(live))
        if rng.random() < f.read:
            self.read(rng.choice(live))
        if rng.random() < f.compact:
            self.compact(rng.choice(live))
        if rng.random() < f.transfer:
            leaders = self.leaders()
            if leaders:
                leader = rng.choice(leaders)
                target = rng.choice([v for v in leader.core.voters])
                try:
                    leader.core.transfer_leadership(target)
                    self.note(f"transfer {leader.node_id} -> {target}")
                except (NotLeader, ValueError):
                    pass
        if rng.random() < f.membership:
            self.change_membership()

    def propose(self, node: SimNode) -> int | None:
        self.proposed += 1
        data = f"{self.seed}:{self.proposed}".encode()
        try:
            return node.core.propose(data)
        except NotLeader:
            return None

    def read(self, node: SimNode) -> None:
        self.read_count += 1
        ctx = f"read{self.read_count}".encode()
        try:
            node.core.read_index(ctx)
        except NotLeader:
            return
        self.reads_started[ctx] = max(self.committed, default=0)

    def compact(self, node: SimNode) -> None:
        core, machine = node.core, node.machine
        index = machine.applied_index  # the state machine can only snapshot its current state
        if index > core.first_index + 2:
            core.compact(index, machine.snapshot_data())
            node.disk.compact(core.snapshot)
            self.note(f"compact {node.node_id} to {index}")

    def change_membership(self) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        core = self.rng.choice(leaders).core
        try:
            if core.learners:
                change = ConfChange.promote(core.learners[0])
            else:
                absent = [n for n in sorted(self.nodes) if n not in core.voters]
                if absent:
                    change = ConfChange.add_learner(absent[0])
                elif len(core.voters) > 2:
                    change = ConfChange.remove(self.rng.choice(core.voters))
                else:
                    return
            core.propose_conf_change(change)
            self.note(f"{core.node_id} proposes {change.op} {change.node_id}")
        except (NotLeader, ConfChangeRejected):
            pass

    def handle_ready(self, node: SimNode, faulty: bool) -> None:
        for _ in range(3):
            core = node.core
            if core is None or not core.has_ready():
                return
            ready = core.ready()
            self.check_soft_state(node, ready)
            self.check_new_entries(core, ready.entries)
            node.disk.save(ready)
            if faulty and self.rng.random() < self.faults.crash_mid_ready:
                self.crash(node.node_id)  # persisted, but nothing sent or applied
                return
            for message in ready.messages:
                kind = type(message).__name__
                if kind == "AppendResponse" and message.reject:
                    kind = "AppendReject"
                elif kind == "SnapshotResponse" and message.reject:
                    kind = "SnapshotReject"
                elif kind == "InstallSnapshot" and message.offset > 0:
                    kind = "InstallSnapshotLaterChunk"
                self.coverage[kind] += 1
                if self.connected(message.src, message.dst):
                    self.send(message, lossless=not faulty)
            machine = node.machine
            if ready.snapshot is not None:
                self.coverage["snapshot_installed"] += 1
                machine.restore(ready.snapshot.data)
                if machine.applied_index != ready.snapshot.meta.index:  # pieces of two snapshots
                    self.fail(f"{node.node_id} installed a snapshot at {ready.snapshot.meta.index} "
                              f"holding the state at {machine.applied_index}")
                self.check_applied(node, ready.snapshot.meta.index, machine.digest)
            for entry in ready.committed_entries:
                if entry.index != machine.applied_index + 1:
                    self.fail(f"{node.node_id} applies {entry.index} after {machine.applied_index}")
                self.check_committed(node, entry)
                self.coverage[f"applied_kind{entry.kind}"] += 1
                machine.apply(entry)
                self.check_applied(node, entry.index, machine.digest)
            for read_state in ready.read_states:
                self.coverage["read_state"] += 1
                started = self.reads_started.pop(read_state.request_ctx, None)
                if started is not None and read_state.index < started:
                    self.fail(f"{node.node_id} read index {read_state.index} < commit {started} "
                              f"known when the read began")
            core.advance(ready)

    # ------------------------------------------------------------------ the checks

    def fail(self, what: str) -> None:
        raise SafetyViolation(f"seed={self.seed} t={self.now}: {what}\nreplay: {self.replay}\n"
                              + self.describe())

    def describe(self) -> str:
        lines = ["last events:"] + [f"  {line}" for line in self.trace] + ["nodes:"]
        for node_id, node in sorted(self.nodes.items()):
            core = node.core
            if core is None:
                lines.append(f"  {node_id}: down")
            else:
                lines.append(f"  {node_id}: {core.role} term={core.term} lead={core.leader_id} "
                             f"commit={core.commit_index} applied={core.applied_index} "
                             f"last={core.last_index} first={core.first_index} voters={core.voters} "
                             f"learners={core.learners} stats={core.stats}")
        return "\n".join(lines)

    def check_soft_state(self, node: SimNode, ready: Ready) -> None:
        """A Ready reports every change of term, role or leader since the previous one."""
        if ready.soft_state is not None:
            node.soft_state = ready.soft_state
        core = node.core
        if node.soft_state != SoftState(core.term, core.role, core.leader_id):
            self.fail(f"{node.node_id}'s Readys say {node.soft_state}, but it is {core.role} in term "
                      f"{core.term} led by {core.leader_id}")

    def check_new_entries(self, core: RaftCore, entries: list[Entry]) -> None:
        if not entries:
            return
        previous_term = core.term_at(entries[0].index - 1)
        for entry in entries:
            key = (entry.index, entry.term)
            seen = self.entry_at.setdefault(key, (previous_term, entry.kind, entry.data))
            if previous_term is not None and seen[0] is None:
                self.entry_at[key] = seen = (previous_term, seen[1], seen[2])
            if seen[1:] != (entry.kind, entry.data) or (
                    previous_term is not None and seen[0] != previous_term):
                self.fail(f"log matching: {core.node_id} has {entry} after term {previous_term}, "
                          f"another node has {seen}")
            previous_term = entry.term

    def check_committed(self, node: SimNode, entry: Entry) -> None:
        known = self.committed.setdefault(entry.index, (entry.term, entry.kind, entry.data))
        if known != (entry.term, entry.kind, entry.data):
            self.fail(f"{node.node_id} commits {entry} but {known} was committed at that index")

    def check_applied(self, node: SimNode, index: int, digest: bytes) -> None:
        known = self.digest_at.setdefault(index, digest)
        if known != digest:
            self.fail(f"state machine safety: {node.node_id} state at {index} differs")

    def check(self) -> None:
        for node in self.live():
            core = node.core
            if core.stats.get("step_error"):
                self.fail(f"{node.node_id} raised inside step()")
            if not node.commit_seen <= core.commit_index <= core.last_index:
                self.fail(f"{node.node_id} commit index went from {node.commit_seen} to "
                          f"{core.commit_index} (last index {core.last_index})")
            node.commit_seen = core.commit_index
            if core.role != LEADER:
                continue
            if self.leader_of_term.setdefault(core.term, node.node_id) != node.node_id:
                self.fail(f"two leaders in term {core.term}: "
                          f"{self.leader_of_term[core.term]} and {node.node_id}")
            if (core.term, node.node_id) not in self.leaders_checked:
                self.leaders_checked.add((core.term, node.node_id))
                for index, (term, _, _) in self.committed.items():
                    if index >= core.first_index and core.term_at(index) != term:
                        self.fail(f"leader completeness: {node.node_id} leads term {core.term} "
                                  f"without committed entry {index} (term {term})")

    # ------------------------------------------------------------------ scenario

    def run(self, steps: int, liveness_ticks: int = 300) -> int:
        """``steps`` faulty steps, then heal everything and return the ticks it took until a new
        command was applied on every node."""
        for _ in range(steps):
            self.step()
        self.heal()
        for node_id, node in sorted(self.nodes.items()):
            if node.core is None:
                self.restart(node_id)
        self.note("liveness phase")
        markers: list[tuple[int, int]] = []  # (index, term) of each marker command proposed
        marker_leader = None
        for tick in range(1, liveness_ticks + 1):
            self.step(faulty=False)
            members = self._members()
            for index, term in markers:
                known = self.committed.get(index)
                if known is not None and known[0] == term and all(
                        self.nodes[n].machine.applied_index >= index for n in members):
                    return tick
            leaders = self.leaders()
            if len(leaders) == 1 and marker_leader != (leaders[0].node_id, leaders[0].core.term):
                # A (new) leader: propose a marker through it; an earlier marker may have gone
                # to a leader that was deposed before it could commit anything.
                index = self.propose(leaders[0])
                if index is not None:
                    marker_leader = (leaders[0].node_id, leaders[0].core.term)
                    markers.append((index, leaders[0].core.term))
        self.fail(f"liveness: no command applied everywhere within {liveness_ticks} ticks "
                  f"after healing")
        return liveness_ticks

    def _members(self) -> set[str]:
        leaders = self.leaders()
        if not leaders:
            return set(self.nodes)
        return set(leaders[0].core.voters) | set(leaders[0].core.learners)


@dataclass(frozen=True)
class Scenario:
    node_count: int
    steps: int
    faults: Faults
    config: RaftConfig | None = None  # None: sim_config()
    spare_count: int = 0  # servers that start empty, outside the cluster, and may be added


SCENARIOS = {
    "three": Scenario(3, 400, Faults()),
    "five": Scenario(5, 400, Faults()),
    "five_membership": Scenario(5, 400, Faults(membership=0.03)),
    "three_membership": Scenario(3, 400, Faults(membership=0.03)),
    "three_join": Scenario(3, 400, Faults(membership=0.04), spare_count=2),
    # Lossy and partition-heavy: elections all the time.
    "three_harsh": Scenario(3, 400, Faults(drop=0.25, duplicate=0.1, delay_max_ticks=8,
                                           crash=0.02, partition=0.05, heal=0.05)),
    # Leaders crash soon after election, one entry per append: the figure 8 sequences.
    "three_crashy": Scenario(3, 400, Faults(crash_leader=0.08, restart=0.3, crash_mid_ready=0.02,
                                            drop=0.1, crash_hint=0.8), RaftConfig(
        election_ticks_min=4, election_ticks_max=8, heartbeat_ticks=1, max_entries_per_append=1,
        max_inflight_appends=2, max_bytes_per_snapshot_chunk=SNAPSHOT_CHUNK_BYTES)),
    "five_crashy": Scenario(5, 400, Faults(crash_leader=0.08, restart=0.3, crash_mid_ready=0.02,
                                           drop=0.1, crash_hint=0.8), RaftConfig(
        election_ticks_min=4, election_ticks_max=8, heartbeat_ticks=1, max_entries_per_append=1,
        max_inflight_appends=2, max_bytes_per_snapshot_chunk=SNAPSHOT_CHUNK_BYTES)),
    # Everything at once: membership changes with joining servers while leaders crash.
    "five_chaos": Scenario(5, 500, Faults(membership=0.04, crash_leader=0.03, restart=0.2,
                                          partition=0.02, crash_mid_ready=0.01, crash_hint=0.8,
                                          flap=0.01), spare_count=2),
    # Links between the leader and one follower drop and come back, the follower told each time,
    # while leaders also crash (and their followers are told).
    "three_flapping": Scenario(3, 400, Faults(flap=0.05, crash_leader=0.01, crash_hint=0.9)),
    # Only flapping links, nothing else goes wrong: the first leader must lead to the end.
    "three_flapping_only": Scenario(3, 400, Faults(drop=0.0, duplicate=0.0, crash=0.0, crash_mid_ready=0.0,
                                                   partition=0.0, transfer=0.0, flap=0.1)),
    # Compaction all the time while followers are cut off and leaders crash: snapshot transfers
    # are cut short by a new leader, a newer snapshot or a crash, their chunks lost and repeated.
    "three_snapshots": Scenario(3, 400, Faults(compact=0.3, partition=0.03, heal=0.06, crash_leader=0.01,
                                               drop=0.1, duplicate=0.05)),
    # The plain Raft paths: no pre-vote, no check-quorum, one entry per append, no pipelining.
    "three_plain": Scenario(3, 400, Faults(), RaftConfig(
        election_ticks_min=10, election_ticks_max=20, heartbeat_ticks=2, max_entries_per_append=1,
        max_inflight_appends=1, pre_vote=False, check_quorum=False,
        max_bytes_per_snapshot_chunk=SNAPSHOT_CHUNK_BYTES)),
}


def run_seed(seed: int, scenario: str = "three", steps: int | None = None) -> Cluster:
    """Run one seed of a scenario; a SafetyViolation names the command that replays it."""
    spec = SCENARIOS[scenario]
    steps = spec.steps if steps is None else steps
    cluster = Cluster(seed, spec.node_count, spec.faults, spec.config, spec.spare_count)
    cluster.replay = f".venv/bin/python -m tests.raftsim --scenario {scenario} --seed {seed} --steps {steps}"
    cluster.run(steps)
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--scenario", default="three", choices=sorted(SCENARIOS))
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        cluster = run_seed(args.seed, args.scenario, args.steps)
    except SafetyViolation as exc:
        print(exc)
        return 1
    print(f"seed={args.seed} ok: {cluster.now} ticks, {cluster.sent_count} messages, "
          f"{len(cluster.committed)} entries committed, {len(cluster.leader_of_term)} leaders")
    print(cluster.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
