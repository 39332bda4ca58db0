"""A hand-driven network of Raft cores for the unit tests (tests/test_raft_*.py): ``Net`` wires
cores together, ``restored`` builds a core from a given log, ``make_leader`` wins it an election,
``drain`` takes every Ready's messages."""

from __future__ import annotations

import random

from protocols import wire
from protocols.raft import (
    ENTRY_CONF_CHANGE,
    ENTRY_NORMAL,
    ConfChange,
    Entry,
    HardState,
    RaftConfig,
    RaftCore,
    RequestVote,
    VoteResponse,
)
from tests.raftdisk import Disk

IDS = ["n1", "n2", "n3"]


class Net:
    """Cores wired together by hand: ``settle()`` persists each Ready, then delivers every message
    whose endpoints are not isolated, until nothing is left to do."""

    def __init__(self, ids=IDS, config: RaftConfig | None = None, seed: int = 0, voters=None) -> None:
        self.config = config or RaftConfig()
        self.voters = list(ids) if voters is None else voters
        self.cores: dict[str, RaftCore] = {}
        self.disks: dict[str, Disk] = {}
        self.applied: dict[str, list[Entry]] = {}
        self.read_states: dict[str, list] = {}
        self.soft_states: dict[str, list] = {}  # every SoftState each node's Readys reported
        self.isolated: set[str] = set()
        self.queue: list = []
        self.seed = seed
        for node_id in ids:
            self.add(node_id, self.voters)

    def add(self, node_id: str, voters: list[str]) -> RaftCore:
        rng = random.Random(f"{self.seed}-{node_id}")
        self.cores[node_id] = RaftCore(node_id, voters, self.config, rng)
        self.disks[node_id] = Disk()
        self.applied[node_id] = []
        self.read_states[node_id] = []
        self.soft_states[node_id] = []
        return self.cores[node_id]

    def restart(self, node_id: str) -> RaftCore:
        disk = self.disks[node_id]
        self.cores[node_id] = RaftCore(node_id, self.voters, self.config, random.Random(1),
                                       hard_state=disk.hard_state, entries=list(disk.entries),
                                       snapshot=disk.snapshot)
        self.applied[node_id] = []
        return self.cores[node_id]

    def process(self) -> None:
        for node_id, core in sorted(self.cores.items()):
            while core.has_ready():
                ready = core.ready()
                self.disks[node_id].save(ready)
                self.queue.extend(ready.messages)
                self.applied[node_id].extend(ready.committed_entries)
                self.read_states[node_id].extend(ready.read_states)
                if ready.soft_state is not None:
                    self.soft_states[node_id].append(ready.soft_state)
                core.advance(ready)

    def deliver(self) -> None:
        messages, self.queue = self.queue, []
        for message in messages:
            if message.src in self.isolated or message.dst in self.isolated:
                continue
            if message.dst in self.cores:
                self.cores[message.dst].step(message)

    def settle(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            self.process()
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("network did not settle")

    def tick(self, count: int = 1, only: list[str] | None = None) -> None:
        for _ in range(count):
            for node_id, core in sorted(self.cores.items()):
                if only is None or node_id in only:
                    core.tick()
            self.settle()

    def elect(self, node_id: str) -> RaftCore:
        core = self.cores[node_id]
        for _ in range(100):
            if core.role == "leader":
                return core
            core.tick()
            self.settle()
        raise AssertionError(f"{node_id} not elected")

    def leader(self) -> RaftCore:
        leaders = [c for c in self.cores.values() if c.role == "leader"]
        assert len(leaders) == 1, [(c.node_id, c.role, c.term) for c in self.cores.values()]
        return leaders[0]

    def commands(self, node_id: str) -> list[bytes]:
        return [e.data for e in self.applied[node_id] if e.kind == ENTRY_NORMAL]


def restored(node_id: str, log_terms: list[int], term: int, voters=IDS, vote=None, commit=None,
             config: RaftConfig | None = None) -> RaftCore:
    """A core restored with the bootstrap entries followed by entries of ``log_terms``."""
    entries = [Entry(1, i + 1, ENTRY_CONF_CHANGE, wire.encode(ConfChange("add_voter", v)))
               for i, v in enumerate(voters)]
    for t in log_terms:
        entries.append(Entry(t, len(entries) + 1, ENTRY_NORMAL, f"t{t}".encode()))
    hard_state = HardState(term, vote, len(voters) if commit is None else commit)
    return RaftCore(node_id, voters, config or RaftConfig(), random.Random(0), hard_state=hard_state,
                    entries=entries)


def make_leader(core: RaftCore) -> None:
    """Run an election for ``core`` in which every peer grants its (pre-)vote."""
    for _ in range(100):
        core.tick()
        for message in drain(core):
            if isinstance(message, RequestVote):
                core.step(VoteResponse(message.dst, core.node_id, message.term, True, message.pre_vote))
        if core.role == "leader":
            return
    raise AssertionError("not elected")


def drain(core: RaftCore) -> list:
    messages = []
    while core.has_ready():
        ready = core.ready()
        messages.extend(ready.messages)
        core.advance(ready)
    return messages
