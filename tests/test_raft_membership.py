"""Raft membership changes (protocols/raft/membership.py): learners, promotion, removal, and the
changes that are refused."""

from __future__ import annotations

import pytest

from protocols.raft import ConfChange, ConfChangeRejected, NotLeader
from tests.raftnet import IDS, Net


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
