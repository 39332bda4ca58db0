"""Three real master processes: election, kill -9 of the leader, catch-up from SQLite, full restart."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from protocols.control import ControlState, Noop
from protocols.locks import Acquire, LockGranted
from protocols.raft import ENTRY_NORMAL
from runtime.storage import RaftStorage
from tests.procs import running_cluster, wait_for

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def http_get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def has_caught_up(client, node_id: str, behind: int = 0) -> bool:
    """Whether master ``node_id`` has applied all but ``behind`` of what the leader committed."""
    status = client.cluster_status()
    members = {member["id"]: member for member in status["members"]}
    me, leader = members[node_id], members[status["leader"]]
    return me["reachable"] and me["last_applied"] is not None and me["last_applied"] >= leader["commit_index"] - behind


def test_failover_catch_up_and_full_restart_lose_nothing(tmp_path):
    with running_cluster(tmp_path, masters=3) as (cluster, client):
        view = cluster.wait_healthy(client, voters=3)
        for i in range(50):
            assert client.propose(Noop(i)) == i
        granted = client.propose(Acquire("deploy", "node1", HOUR_MS, {"why": "test"}, 0, False))
        assert isinstance(granted.reply, LockGranted)

        leader = cluster.by_id(view["leader"])
        status, health = http_get(leader.port + 10, "/health")
        assert status == 200 and health["role"] == "leader"

        # kill -9 the leader: a new one is elected and a write commits.
        leader.kill()
        assert client.propose(Noop("after failover")) == "after failover"
        view = cluster.wait_healthy(client, voters=2)
        assert view["leader"] != leader.node_id

        # The killed master comes back from its SQLite file and catches up.
        leader.start()
        wait_for(lambda: has_caught_up(client, leader.node_id, behind=1), 30, interval_s=0.1,
                 what="the restarted master to catch up")

        before = client.cluster_status()
        commit_before = max(m["commit_index"] for m in before["members"] if m["reachable"])
        # Stop all three, start them again: nothing committed is lost.
        cluster.stop()
        for master in cluster.masters:
            master.start()
        cluster.wait_healthy(client, voters=3)
        info = client.read("lock", key="deploy")
        assert info.holder == "node1" and info.token == granted.reply.token
        assert client.propose(Noop("after restart")) == "after restart"
        after = client.cluster_status()
        assert max(m["commit_index"] for m in after["members"]) > commit_before


def test_a_master_that_fell_behind_the_compacted_log_catches_up_from_a_snapshot(tmp_path):
    with running_cluster(tmp_path, masters=3, master_options=["--snapshot-every", "20"]) as (cluster, client):
        view = cluster.wait_healthy(client, voters=3)
        lagging = next(master for master in cluster.masters if master.node_id != view["leader"])
        lagging.kill()
        granted = client.propose(Acquire("deploy", "node1", HOUR_MS, {}, 0, False))
        for i in range(100):  # five snapshots' worth: the leader's log no longer reaches back
            assert client.propose(Noop(i)) == i

        lagging.start()
        wait_for(lambda: has_caught_up(client, lagging.node_id), 30, interval_s=0.1,
                 what="the lagging master to catch up")
        cluster.stop()
        assert "installed the leader's snapshot" in lagging.log_path.read_text()

        # What it stored is a snapshot (installed from the leader or its own later one) and the
        # entries after it; replayed, it holds the lock granted while it was down.
        storage = RaftStorage(str(tmp_path / f"{lagging.node_id}.sqlite"))
        stored = storage.load()
        storage.close()
        assert stored.snapshot is not None and stored.snapshot.index > 20
        state = ControlState.from_snapshot(stored.snapshot.data)
        for entry in stored.entries:
            if entry.kind == ENTRY_NORMAL:
                state.apply(entry.index, entry.data)
        info = state.locks.check_lock("deploy", 0)
        assert info is not None and info.holder == "node1" and info.token == granted.reply.token
