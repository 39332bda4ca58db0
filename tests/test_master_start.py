"""A master's start, in one process: a sole voter takes the lead without waiting out an election
timeout, and an actor that starts watching after it took the lead is told it leads."""

from __future__ import annotations

from actors.control_plane import ControlPlane, LeadershipChanged
from agentflow.master import Master
from protocols.names import RAFT_ACTOR
from runtime.actor import Actor
from tests.procs import wait_for


class Recorder(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def receive(self, message):
        self.seen.append(message)


def test_a_sole_voter_leads_at_once_and_a_late_watcher_hears_that_it_leads(tmp_path):
    # An election timeout of a minute: leading within seconds means it did not wait for one.
    master = Master(mode="leader", port=16520, data_dir=str(tmp_path), node_id="m1",
                    election_timeout_ms=(60_000, 60_001))
    try:
        raft = master.node.actor(RAFT_ACTOR)
        wait_for(lambda: raft.status()["role"] == "leader", 10, what="the sole voter to lead")
        recorder_ref = master.node.spawn(Recorder, name="recorder", pinned=True)
        ControlPlane(master.node, RAFT_ACTOR).watch("wf.", recorder_ref)
        recorder = master.node.actor("recorder")
        changes = wait_for(lambda: [m for m in recorder.seen if isinstance(m, LeadershipChanged)], 10,
                           what="the late watcher to hear of the leadership")
        assert [(c.is_leader, c.term) for c in changes] == [(True, raft.status()["term"])]
    finally:
        master.stop()
