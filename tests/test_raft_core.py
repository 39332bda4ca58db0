"""Unit tests of protocols/raft.py: one rule per test, on a hand-driven network (``Net``)."""

from __future__ import annotations

import ast
import logging
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.raft import (
    ENTRY_CONF_CHANGE,
    ENTRY_NOOP,
    ENTRY_NORMAL,
    AppendEntries,
    AppendResponse,
    ClientSessions,
    ConfChange,
    ConfChangeRejected,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    NotLeader,
    RaftConfig,
    RaftCore,
    RequestVote,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
)
from tests.raftsim import Disk

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


# --------------------------------------------------------------------------- election


def test_single_node_elects_itself_and_commits():
    net = Net(["n1"])
    core = net.elect("n1")
    assert core.term == 2  # bootstrap is term 1
    index = core.propose(b"hello")
    net.settle()
    assert core.commit_index == index and net.commands("n1") == [b"hello"]


def test_three_nodes_elect_one_leader_and_log_it(caplog):
    caplog.set_level(logging.INFO, logger="agentflow.raft")
    net = Net()
    leader = net.elect("n1")
    assert [c.role for c in net.cores.values()].count("leader") == 1
    assert all(c.leader_id == "n1" and c.term == leader.term for c in net.cores.values())
    messages = [r.getMessage() for r in caplog.records]
    assert f"[raft] Node n1 starting election for term {leader.term}" in messages
    assert any(m.startswith(f"[raft] Node n1 became Leader for term {leader.term} (votes: ")
               and m.endswith("/3)") for m in messages)


def test_leader_replicates_and_every_node_applies_in_order():
    net = Net()
    leader = net.elect("n1")
    indexes = [leader.propose(f"c{i}".encode()) for i in range(10)]
    net.settle()
    net.tick(2)
    for node_id in IDS:
        assert net.commands(node_id) == [f"c{i}".encode() for i in range(10)]
        assert net.cores[node_id].commit_index >= indexes[-1]


def test_propose_on_follower_raises_not_leader_with_hint():
    net = Net()
    net.elect("n1")
    with pytest.raises(NotLeader) as error:
        net.cores["n2"].propose(b"x")
    assert error.value.leader_hint == "n1"


def test_pre_vote_keeps_a_partitioned_node_from_bumping_terms():
    net = Net()
    leader = net.elect("n1")
    term = leader.term
    net.isolated = {"n3"}
    net.tick(100)
    assert net.cores["n3"].term == term  # only pre-votes, which change nothing
    assert net.cores["n3"].role == "pre_candidate"
    net.isolated = set()
    net.tick(5)
    assert net.leader() is leader and leader.term == term  # not disrupted on return


def test_without_pre_vote_a_partitioned_node_bumps_its_term():
    net = Net(config=RaftConfig(pre_vote=False))
    leader = net.elect("n1")
    net.isolated = {"n3"}
    net.tick(100)
    assert net.cores["n3"].term > leader.term


def test_vote_requires_an_up_to_date_log():
    voter = restored("n1", [2, 2], term=2)  # last entry: index 5, term 2
    drain(voter)
    voter.step(RequestVote("n2", "n1", 3, 9, 1, False, False))  # longer log, older term
    assert drain(voter) == [VoteResponse("n1", "n2", 3, False, False)]
    voter.step(RequestVote("n3", "n1", 3, 4, 2, False, False))  # same last term, shorter
    assert drain(voter) == [VoteResponse("n1", "n3", 3, False, False)]
    voter.step(RequestVote("n3", "n1", 3, 5, 2, False, False))
    assert drain(voter) == [VoteResponse("n1", "n3", 3, True, False)]
    assert voter.vote == "n3"


def test_one_vote_per_term_and_the_vote_is_persisted_before_it_is_sent():
    voter = restored("n1", [], term=2)
    drain(voter)
    voter.step(RequestVote("n2", "n1", 3, 3, 1, False, False))
    ready = voter.ready()
    assert ready.hard_state == HardState(3, "n2", 3)  # persisted in the same Ready ...
    assert ready.messages == [VoteResponse("n1", "n2", 3, True, False)]  # ... before sending
    voter.advance(ready)
    voter.step(RequestVote("n3", "n1", 3, 3, 1, False, False))
    assert drain(voter) == [VoteResponse("n1", "n3", 3, False, False)]


def test_votes_are_ignored_while_a_leader_is_heard_from():
    net = Net()
    net.elect("n1")
    follower = net.cores["n2"]
    follower.step(RequestVote("n3", "n2", follower.term + 1, 100, 100, False, False))
    assert follower.stats["vote_ignored_in_lease"] == 1 and follower.leader_id == "n1"


def test_check_quorum_makes_an_isolated_leader_step_down():
    net = Net()
    leader = net.elect("n1")
    net.isolated = {"n1"}
    net.tick(net.config.election_ticks_min * 2 + 1, only=["n1"])
    assert leader.role == "follower"


def test_restart_restores_term_vote_and_log():
    net = Net()
    leader = net.elect("n1")
    leader.propose(b"kept")
    net.settle()
    term, vote = net.cores["n2"].term, net.cores["n2"].vote
    core = net.restart("n2")
    assert (core.term, core.vote, core.role) == (term, vote, "follower")
    assert core.last_index == leader.last_index
    net.settle()
    net.tick()  # followers learn the new commit index from the next heartbeat
    assert b"kept" in net.commands("n2")  # re-applied from the log after restart


# --------------------------------------------------------------------------- log replication


def test_conflicting_suffix_is_overwritten_from_the_first_conflict():
    follower = restored("n2", [2, 2, 3, 3], term=3)  # indexes 4..7; 6 and 7 from a deposed leader
    drain(follower)
    entries = [Entry(4, 6, ENTRY_NORMAL, b"new6"), Entry(4, 7, ENTRY_NORMAL, b"new7"),
               Entry(4, 8, ENTRY_NORMAL, b"new8")]
    follower.step(AppendEntries("n1", "n2", 4, 5, 2, entries, 3))
    ready = follower.ready()
    assert [e.index for e in ready.entries] == [6, 7, 8]  # storage truncates from index 6
    assert ready.messages == [AppendResponse("n2", "n1", 4, 8, False, 0, 0)]
    follower.advance(ready)
    assert [follower.term_at(i) for i in range(4, 9)] == [2, 2, 4, 4, 4]


def test_truncating_a_conf_change_entry_undoes_the_configuration():
    follower = restored("n2", [2], term=2)
    drain(follower)
    change = Entry(2, 5, ENTRY_CONF_CHANGE, wire.encode(ConfChange.add_learner("n4")))
    follower.step(AppendEntries("n1", "n2", 2, 4, 2, [change], 3))
    assert follower.learners == ["n4"]  # takes effect when appended
    follower.step(AppendEntries("n3", "n2", 3, 4, 2, [Entry(3, 5, ENTRY_NORMAL, b"x")], 3))
    assert follower.learners == []


def test_rejection_carries_a_hint_that_skips_a_whole_term():
    follower = restored("n2", [2] * 50, term=2)  # a long suffix of term 2 (indexes 4..53)
    drain(follower)
    follower.step(AppendEntries("n1", "n2", 5, 60, 4, [], 3))
    (reject,) = drain(follower)
    assert reject.reject and reject.index == 60
    assert (reject.hint_index, reject.hint_term) == (53, 2)  # its last entry with term <= 4

    # The leader (log: 3 bootstrap entries, then terms 3...) jumps straight past term 2.
    leader = restored("n1", [3] * 57, term=4)
    make_leader(leader)
    drain(leader)
    leader.step(AppendResponse("n2", "n1", leader.term, 60, True, 53, 2))  # rejects the probe
    (probe,) = [m for m in drain(leader) if isinstance(m, AppendEntries) and m.dst == "n2"]
    assert probe.prev_index == 3  # the last index with term <= 2: one round trip, not 57


def test_figure_8_old_term_entries_are_not_committed_by_counting():
    # n1 leads term 4 with an entry of term 2 at index 4 that n2 also has: a majority holds it,
    # but it must not be committed until an entry of term 4 is (Raft paper, figure 8).
    config = RaftConfig(max_entries_per_append=1)
    leader = restored("n1", [2], term=3, config=config)
    make_leader(leader)
    assert leader.term == 4
    drain(leader)
    leader.step(AppendResponse("n2", "n1", 4, 4, False, 0, 0))  # n2 has index 4 (term 2)
    drain(leader)
    assert leader.commit_index == 3
    leader.step(AppendResponse("n2", "n1", 4, 5, False, 0, 0))  # ... and the no-op of term 4
    drain(leader)
    assert leader.commit_index == 5


def test_leader_appends_a_noop_on_election():
    net = Net()
    leader = net.elect("n1")
    assert leader.entries_between(leader.last_index, leader.last_index)[0].kind == ENTRY_NOOP


def test_batching_and_pipelining_respect_the_limits():
    net = Net(config=RaftConfig(max_entries_per_append=4, max_inflight_appends=3))
    leader = net.elect("n1")
    net.tick(2)
    for i in range(40):
        leader.propose(b"%d" % i)
    appends = [m for m in leader.ready().messages if isinstance(m, AppendEntries) and m.dst == "n2"]
    assert len(appends) == 3  # three in flight ...
    assert [len(m.entries) for m in appends] == [4, 4, 4]  # ... of at most four entries each
    assert appends[1].prev_index == appends[0].prev_index + 4  # sent back to back, optimistically


def test_lost_appends_are_repaired():
    net = Net(config=RaftConfig(max_entries_per_append=2, max_inflight_appends=2))
    leader = net.elect("n1")
    net.isolated = {"n3"}
    for i in range(10):
        leader.propose(b"%d" % i)
    net.settle()
    net.isolated = set()
    net.tick(5)
    assert net.commands("n3") == net.commands("n1") and len(net.commands("n3")) == 10


# --------------------------------------------------------------------------- snapshots


def test_a_lagging_follower_gets_the_snapshot():
    net = Net()
    leader = net.elect("n1")
    net.isolated = {"n3"}
    for i in range(30):
        leader.propose(b"%d" % i)
    net.settle()
    leader.compact(leader.applied_index, b"state-at-%d" % leader.applied_index)
    assert leader.first_index == leader.applied_index + 1
    net.isolated = set()
    net.tick(3)
    follower = net.cores["n3"]
    snapshot = net.disks["n3"].snapshot
    assert snapshot is not None and snapshot.data == leader.snapshot.data
    assert snapshot.meta.voters == IDS
    assert follower.commit_index == leader.commit_index and follower.last_index == leader.last_index
    leader.propose(b"after")
    net.settle()
    net.tick()  # followers learn the new commit index from the next heartbeat
    assert net.commands("n3")[-1] == b"after"
    restarted = net.restart("n3")  # restores from the snapshot plus the log after it
    assert restarted.first_index == snapshot.meta.index + 1 and restarted.applied_index == snapshot.meta.index


def test_compaction_refuses_unapplied_indexes():
    net = Net(["n1"])
    core = net.elect("n1")
    with pytest.raises(ValueError):
        core.compact(core.applied_index + 1, b"")


# --------------------------------------------------------------------------- membership


def test_learner_is_added_catches_up_and_is_promoted():
    net = Net()
    leader = net.elect("n1")
    for i in range(5):
        leader.propose(b"%d" % i)
    net.settle()
    newcomer = net.add("n4", [])  # a server that joins with an empty log
    assert newcomer.voters == [] and newcomer.role == "follower"
    leader.propose_conf_change(ConfChange.add_learner("n4"))
    with pytest.raises(ConfChangeRejected):  # one change at a time
        leader.propose_conf_change(ConfChange.promote("n4"))
    net.settle()
    net.tick(2)
    assert newcomer.role == "learner" and newcomer.voters == IDS
    assert net.commands("n4") == net.commands("n1")
    # A learner does not count for the quorum: without n2 and n3 nothing commits.
    net.isolated = {"n2", "n3"}
    index = leader.propose(b"not yet")
    net.settle()
    assert leader.commit_index < index
    net.isolated = set()
    net.tick(2)
    leader.propose_conf_change(ConfChange.promote("n4"))
    net.settle()
    net.tick(2)
    assert newcomer.role == "follower" and newcomer.voters == IDS + ["n4"]
    assert leader.voters == IDS + ["n4"]


def test_invalid_membership_changes_are_rejected():
    net = Net()
    leader = net.elect("n1")
    net.tick(2)
    for change in (ConfChange.add_learner("n2"), ConfChange.promote("n9"), ConfChange.remove("n9")):
        with pytest.raises(ConfChangeRejected):
            leader.propose_conf_change(change)
    with pytest.raises(NotLeader):
        net.cores["n2"].propose_conf_change(ConfChange.add_learner("n4"))


def test_removing_the_leader_makes_it_step_down_after_commit():
    net = Net()
    leader = net.elect("n1")
    net.tick(2)
    index = leader.propose_conf_change(ConfChange.remove("n1"))
    assert leader.role == "leader" and leader.voters == ["n2", "n3"]
    net.settle()
    assert leader.commit_index >= index and leader.role == "follower"
    net.tick(50)
    new_leader = net.leader()
    assert new_leader.node_id in ("n2", "n3") and new_leader.voters == ["n2", "n3"]
    assert net.cores["n1"].role == "follower"  # never campaigns again: not a voter


# --------------------------------------------------------------------------- transfer and reads


def test_leadership_transfer():
    net = Net()
    leader = net.elect("n1")
    net.tick(2)
    leader.transfer_leadership("n3")
    with pytest.raises(NotLeader) as error:
        leader.propose(b"x")  # proposals wait for the new leader
    assert error.value.leader_hint == "n3"
    net.settle()
    assert net.leader().node_id == "n3" and net.cores["n3"].term == leader.term


def test_transfer_to_a_lagging_follower_catches_it_up_first():
    net = Net()
    leader = net.elect("n1")
    net.isolated = {"n3"}
    for i in range(5):
        leader.propose(b"%d" % i)
    net.settle()
    net.isolated = set()
    leader.transfer_leadership("n3")
    net.settle()
    assert net.leader().node_id == "n3" and net.cores["n3"].last_index >= 9


def test_read_index_after_a_heartbeat_quorum():
    net = Net()
    leader = net.elect("n1")
    net.tick(2)
    leader.propose(b"w")
    net.settle()
    net.isolated = {"n2", "n3"}
    leader.read_index(b"r1")
    net.settle()
    assert net.read_states["n1"] == []  # no quorum has confirmed the leadership yet
    net.isolated = set()
    net.tick(net.config.heartbeat_ticks)
    assert [(s.index, s.request_ctx) for s in net.read_states["n1"]] == [(leader.commit_index, b"r1")]
    with pytest.raises(NotLeader):
        net.cores["n2"].read_index(b"r2")


def test_read_index_of_a_new_leader_waits_for_its_noop_to_commit():
    leader = restored("n1", [2, 2], term=2)  # indexes 4, 5 of term 2: not known to be committed
    make_leader(leader)
    drain(leader)
    noop_index = leader.last_index
    leader.read_index(b"early")
    assert not any(isinstance(m, Heartbeat) for m in drain(leader))  # waits for the no-op
    leader.step(AppendResponse("n2", "n1", leader.term, noop_index, False, 0, 0))
    (heartbeat,) = [m for m in drain(leader) if isinstance(m, Heartbeat) and m.dst == "n2"]
    assert heartbeat.context == b"early" and leader.commit_index == noop_index
    leader.step(HeartbeatResponse("n2", "n1", leader.term, b"early"))
    ready = leader.ready()
    assert [(s.index, s.request_ctx) for s in ready.read_states] == [(noop_index, b"early")]


# --------------------------------------------------------------------------- client sessions


def test_client_sessions_apply_a_retried_command_once():
    sessions = ClientSessions()
    runs = []

    def apply():
        runs.append(1)
        return len(runs)

    assert sessions.check_and_record("c1", 1, 10, apply) == ("new", 1)
    assert sessions.check_and_record("c1", 1, 11, apply) == ("duplicate", 1)
    assert sessions.check_and_record("c1", 2, 12, apply) == ("new", 2)
    assert sessions.check_and_record("c2", 1, 13, apply) == ("new", 3)
    assert runs == [1, 1, 1]


def test_client_sessions_are_bounded_and_evict_deterministically():
    sessions = ClientSessions(max_sessions=2, results_per_client=2)
    sessions.record("a", 1, "ra", 1)
    sessions.record("b", 1, "rb", 2)
    sessions.record("a", 2, "ra2", 3)  # a is now the most recently applied
    sessions.record("c", 1, "rc", 4)  # evicts b, the least recently applied
    assert len(sessions) == 2 and sessions.check("b", 1) == ("new", None)
    sessions.record("a", 3, "ra3", 5)  # a keeps its last two results
    assert sessions.check("a", 1) == ("expired", None)
    assert sessions.check("a", 2) == ("duplicate", "ra2")
    copy = ClientSessions.from_dict(wire.decode(wire.encode(sessions.to_dict())))
    assert copy.to_dict() == sessions.to_dict()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=80))
def test_client_sessions_remember_the_highest_seqs_whatever_their_order(seqs):
    """Against a model: a session remembers the results of its ``results_per_client`` highest
    sequence numbers; one below all of them is expired, and a snapshot keeps exactly that."""
    sessions = ClientSessions(results_per_client=4)
    remembered: dict[int, str] = {}
    for index, seq in enumerate(seqs, 1):
        status, result = sessions.check_and_record("c", seq, index, lambda: f"r{seq}")
        if seq in remembered:
            assert (status, result) == ("duplicate", remembered[seq])
        elif remembered and seq < min(remembered):
            assert (status, result) == ("expired", None)
        else:
            assert (status, result) == ("new", f"r{seq}")
            remembered[seq] = f"r{seq}"
            if len(remembered) > 4:
                del remembered[min(remembered)]
    copy = ClientSessions.from_dict(wire.decode(wire.encode(sessions.to_dict())))
    for seq in range(1, 42):
        assert copy.check("c", seq) == sessions.check("c", seq)


# --------------------------------------------------------------------------- hostile input


def test_hostile_and_malformed_messages_are_ignored_not_raised():
    net = Net()
    leader = net.elect("n1")
    net.tick(2)
    follower = net.cores["n2"]
    term, commit, last = follower.term, follower.commit_index, follower.last_index
    hostile = [
        None, 42, b"bytes", {"src": "n1"}, wire.ErrorRecord("x", "y"),
        AppendEntries("n1", "n9", term, 0, 0, [], 0),  # not for us
        AppendEntries("n2", "n2", term, 0, 0, [], 0),  # from ourselves
        AppendEntries("n1", "n2", -1, 0, 0, [], 0),
        AppendEntries("n1", "n2", True, 0, 0, [], 0),
        AppendEntries(1, "n2", term, 0, 0, [], 0),
        AppendEntries("n1", "n2", term, last, 0, ["not an entry"], 0),
        AppendEntries("n1", "n2", term, last, 0, [Entry(term, last + 5, 0, b"gap")], 0),
        AppendEntries("n1", "n2", term, last, 0, [Entry(term + 9, last + 1, 0, b"future")], 0),
        AppendEntries("n1", "n2", term, last, 0, [Entry(term, last + 1, 7, b"kind")], 0),
        AppendEntries("n1", "n2", term, 0, 0, [Entry(term, 1, 0, b"rewrite committed")], 0),
        AppendEntries("n1", "n2", term, last, leader.last_term, [], "commit"),
        Heartbeat("n1", "n2", term, 10**9, b""),
        Heartbeat("n1", "n2", term, 1, "ctx"),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(1, 1, "n1", []), b""),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(10**9, term + 1, [], []), b""),
        InstallSnapshot("n1", "n2", term, None, b""),
        RequestVote("n3", "n2", term, None, 0, False, False),
        VoteResponse("n3", "n2", term, "yes", False),
        TimeoutNow("n1", "n2", term - 1),
    ]
    for message in hostile:
        follower.step(message)
    assert follower.term == term and follower.leader_id == "n1"
    assert follower.commit_index <= follower.last_index and follower.commit_index >= commit
    assert "step_error" not in follower.stats and sum(follower.stats.values()) >= len(hostile) - 2
    # A follower claiming it has entries the leader never wrote must not make it commit them.
    leader.step(AppendResponse("n2", "n1", leader.term, leader.last_index + 100, False, 0, 0))
    leader.step(AppendResponse("n2", "n1", leader.term, 0, True, 10**9, 10**9))
    leader.step(HeartbeatResponse("n9", "n1", leader.term, b"ctx"))
    assert leader.commit_index <= leader.last_index and "step_error" not in leader.stats
    net.settle()
    index = leader.propose(b"still works")
    net.settle()
    net.tick()  # followers learn the new commit index from the next heartbeat
    assert net.commands("n2")[-1] == b"still works" and follower.commit_index >= index


def test_random_bytes_decoded_by_the_wire_never_break_step():
    net = Net()
    net.elect("n1")
    rng = random.Random(7)
    follower = net.cores["n2"]
    template = wire.encode(AppendEntries("n1", "n2", follower.term, 3, 1,
                                         [Entry(follower.term, 4, 0, b"x")], 3))
    for _ in range(2000):
        data = bytearray(template)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            message = wire.decode(bytes(data))
        except wire.DecodeError:
            continue
        follower.step(message)
    assert "step_error" not in follower.stats


def test_every_message_round_trips_the_wire():
    meta = SnapshotMeta(5, 2, ["n1", "n2"], ["n3"])
    messages = [
        AppendEntries("n1", "n2", 3, 4, 2, [Entry(3, 5, ENTRY_NORMAL, b"x")], 4),
        AppendResponse("n2", "n1", 3, 5, False, 0, 0),
        RequestVote("n1", "n2", 3, 4, 2, True, False),
        VoteResponse("n2", "n1", 3, True, True),
        InstallSnapshot("n1", "n2", 3, meta, b"state"),
        Heartbeat("n1", "n2", 3, 4, b"ctx"),
        HeartbeatResponse("n2", "n1", 3, b"ctx"),
        TimeoutNow("n1", "n2", 3),
    ]
    for message in messages:
        assert wire.decode(wire.encode(message)) == message


def test_the_core_is_pure():
    tree = ast.parse(Path(__file__).parents[1].joinpath("protocols/raft.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"time", "threading", "socket", "zmq", "pykka", "sqlite3", "os", "asyncio"}
    assert not imported & forbidden
    # `random` only under TYPE_CHECKING: the generator is always passed in.
    top_level = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert "random" not in top_level


# --------------------------------------------------------------------------- timing and roles


def test_the_seeds_timing_is_expressible_and_nonsense_is_refused():
    seed_timing = RaftConfig(heartbeat_ticks=10, election_ticks_min=50, election_ticks_max=100)
    assert seed_timing.heartbeat_ticks == 10  # 1 s / 5-10 s with a 100 ms tick
    with pytest.raises(ValueError):
        RaftConfig(heartbeat_ticks=10, election_ticks_min=10)
    with pytest.raises(ValueError):
        RaftConfig(election_ticks_min=20, election_ticks_max=10)


def test_election_timeouts_are_randomized_within_bounds():
    config = RaftConfig(election_ticks_min=10, election_ticks_max=20)
    first_campaign = []
    for seed in range(30):
        core = RaftCore("n1", IDS, config, random.Random(seed))
        drain(core)
        ticks = 0
        while core.role == "follower":
            core.tick()
            ticks += 1
        first_campaign.append(ticks)
    assert min(first_campaign) >= 10 and max(first_campaign) <= 20
    assert len(set(first_campaign)) > 3


def test_a_learner_never_campaigns():
    net = Net()
    net.elect("n1")
    learner = net.add("n4", [])
    net.cores["n1"].propose_conf_change(ConfChange.add_learner("n4"))
    net.settle()
    net.isolated = {"n4"}
    net.tick(200, only=["n4"])
    assert learner.role == "learner" and learner.stats.get("vote_ignored_in_lease") is None
    assert not any(isinstance(m, RequestVote) for m in net.queue)


def test_a_transfer_to_an_unreachable_node_is_aborted():
    net = Net()
    leader = net.elect("n1")
    net.tick(2)
    net.isolated = {"n3"}
    leader.transfer_leadership("n3")
    with pytest.raises(NotLeader):
        leader.propose(b"x")
    net.tick(net.config.election_ticks_min + 1, only=["n1"])
    assert leader.role == "leader" and leader.transferee is None
    leader.propose(b"accepted again")


def test_entries_overwritten_between_ready_and_advance_are_handed_out_again():
    follower = restored("n2", [2], term=3)  # index 4 of term 2
    drain(follower)
    follower.step(AppendEntries("n1", "n2", 3, 4, 2, [Entry(3, 5, 0, b"a"), Entry(3, 6, 0, b"b")], 3))
    first = follower.ready()
    assert [e.data for e in first.entries] == [b"a", b"b"]
    # Before the caller reports them persisted, a new leader overwrites them.
    follower.step(AppendEntries("n3", "n2", 4, 4, 2, [Entry(4, 5, 0, b"c")], 3))
    follower.advance(first)
    second = follower.ready()
    assert [(e.index, e.data) for e in second.entries] == [(5, b"c")]
    follower.advance(second)
    assert not follower.ready().entries
