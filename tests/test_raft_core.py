"""Unit tests of the Raft core (protocols/raft/): elections, replication, snapshots, ReadIndex,
timing, and what a Ready reports. One rule per test, on a hand-driven network (tests/raftnet.py)."""

from __future__ import annotations

import logging
import random

import pytest

from protocols import wire
from protocols.raft import (
    ENTRY_CONF_CHANGE,
    ENTRY_NOOP,
    ENTRY_NORMAL,
    AppendEntries,
    AppendResponse,
    ConfChange,
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
    SoftState,
    VoteResponse,
)
from tests.raftnet import IDS, Net, drain, make_leader, restored


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


def test_followers_that_forget_a_dead_leader_elect_another_without_waiting_for_a_timeout():
    net = Net()
    old = net.elect("n1")
    net.isolated = {"n1"}  # the leader's process died: both followers see its connection drop
    for node_id in ("n2", "n3"):
        net.cores[node_id].forget_leader()
    net.cores["n2"].campaign()
    net.settle()  # no tick: pre-vote, vote and the new leader's first append, in messages alone
    assert net.cores["n2"].role == "leader" and net.cores["n2"].term == old.term + 1
    assert net.cores["n3"].leader_id == "n2"


def test_a_follower_that_only_thinks_its_leader_is_gone_does_not_depose_it():
    """A flapping link: n2 saw its connection to the leader drop, n3 still hears from it."""
    net = Net()
    leader = net.elect("n1")
    term = leader.term
    follower = net.cores["n2"]
    for _ in range(5):
        follower.forget_leader()
        follower.campaign()
        net.settle()
        assert follower.role == "pre_candidate" and follower.term == term  # asked, and was refused
        net.tick(1)  # the leader's next heartbeat
        assert follower.role == "follower" and follower.leader_id == "n1"
    assert net.leader() is leader and leader.term == term
    assert net.cores["n3"].stats["vote_ignored_in_lease"] == 5


def test_campaign_and_forget_leader_do_nothing_on_a_leader_or_a_learner():
    net = Net()
    leader = net.elect("n1")
    leader.forget_leader()
    leader.campaign()
    assert leader.role == "leader" and leader.leader_id == "n1"
    learner = net.add("n4", [])  # not in any configuration yet
    learner.campaign()
    assert learner.role == "follower" and not drain(learner)


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


def test_an_append_carries_at_most_its_byte_budget_and_a_larger_entry_alone():
    net = Net(config=RaftConfig(max_bytes_per_append=100, max_inflight_appends=8))
    leader = net.elect("n1")
    net.tick(2)
    for size in (40, 40, 40, 250, 10, 10):
        leader.propose(b"x" * size)
    appends = [m for m in leader.ready().messages if isinstance(m, AppendEntries) and m.dst == "n2"]
    assert [[len(e.data) for e in m.entries] for m in appends] == [[40, 40], [40], [250], [10, 10]]
    net.tick(5)  # those appends were taken here, not delivered: the leader sends them again
    assert [len(c) for c in net.commands("n2")] == [40, 40, 40, 250, 10, 10]


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


# --------------------------------------------------------------------------- what a Ready reports


def test_has_ready_only_asks():
    net = Net()
    leader = net.elect("n1")
    net.tick(2)  # both followers replicate: an append moves their next index at once
    leader.propose(b"x")
    before = leader.progress()
    assert all(leader.has_ready() for _ in range(3))
    assert leader.progress() == before  # asking sent nothing
    ready = leader.ready()
    appends = [m for m in ready.messages if isinstance(m, AppendEntries)]
    assert sorted(m.dst for m in appends) == ["n2", "n3"] and leader.progress() != before


def test_a_ready_reports_each_change_of_term_role_and_leader_once():
    net = Net()
    leader = net.elect("n1")
    term = leader.term
    assert net.soft_states["n1"] == [SoftState(term - 1, "pre_candidate", None), SoftState(term, "candidate", None),
                                     SoftState(term, "leader", "n1")]
    assert net.soft_states["n2"][-1] == SoftState(term, "follower", "n1")
    net.tick(5)
    assert len(net.soft_states["n1"]) == 3  # nothing changed: nothing reported
    # Stepping down for want of a quorum changes nothing else: the Ready holds only that.
    net.isolated = {"n1"}
    for _ in range(net.config.election_ticks_min * 2 + 1):
        leader.tick()
        if leader.role != "leader":
            break
        drain(leader)
    assert leader.has_ready()
    ready = leader.ready()
    assert ready.soft_state == SoftState(term, "follower", None)
    assert not (ready.messages or ready.entries or ready.committed_entries or ready.hard_state)
    leader.advance(ready)
    assert not leader.has_ready()


def test_must_sync_for_a_new_term_vote_entry_or_snapshot_not_for_the_commit_index_alone():
    # (Without check-quorum, so that the vote below is not ignored for the leader just heard from.)
    follower = restored("n2", [2, 2], term=2, commit=3, config=RaftConfig(check_quorum=False))
    drain(follower)  # indexes 4 and 5 (term 2) are not known to be committed
    follower.step(Heartbeat("n1", "n2", 2, 4, b""))
    ready = follower.ready()
    assert ready.hard_state == HardState(2, None, 4) and not ready.must_sync
    follower.advance(ready)
    follower.step(RequestVote("n3", "n2", 3, 5, 2, False, False))
    ready = follower.ready()
    assert ready.hard_state == HardState(3, "n3", 4) and ready.must_sync
    follower.advance(ready)
    follower.step(AppendEntries("n3", "n2", 3, 5, 2, [Entry(3, 6, ENTRY_NORMAL, b"x")], 4))
    ready = follower.ready()
    assert ready.hard_state is None and [e.index for e in ready.entries] == [6] and ready.must_sync
    follower.advance(ready)
    follower.step(InstallSnapshot("n3", "n2", 3, SnapshotMeta(9, 3, IDS, []), 0, 5, b"state", True))
    ready = follower.ready()
    assert ready.snapshot is not None and ready.must_sync
