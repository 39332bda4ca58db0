"""Failover in a heartbeat on three real masters: a follower that sees its leader's connection
drop campaigns at once (a pre-vote first); a link that flaps must not depose a healthy leader,
whether the connection itself drops (``ss -K``, root only) or the traffic is lost while TCP stays
up (the fault hook, runtime/faults.py, one rules file per master)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time

import psutil
import pytest

from protocols.control import Noop
from tests.procs import running_cluster, wait_for

pytestmark = pytest.mark.integration


def _statuses(client, cluster) -> dict[str, dict]:
    views = {}
    for master in cluster.masters:
        if master.alive():
            view = client.status_of(master.url, timeout_s=2)
            if view is not None:
                views[view["id"]] = view
    return views


def _leader_seen_by(client, cluster, node_id: str) -> str | None:
    """The leader ``node_id`` follows, or None (also while its status does not answer: poll again)."""
    return _statuses(client, cluster).get(node_id, {}).get("leader")


def _leader_and_term(client, cluster) -> tuple[str, int]:
    views = _statuses(client, cluster)
    leaders = [v for v in views.values() if v["role"] == "leader"]
    assert len(leaders) == 1, views
    return leaders[0]["id"], leaders[0]["term"]


def test_followers_of_a_killed_leader_campaign_as_soon_as_its_connection_drops(tmp_path):
    with running_cluster(tmp_path, masters=3, first_port=16100) as (cluster, client):
        assert client.propose(Noop("before")) == "before"
        old, term = _leader_and_term(client, cluster)
        cluster.by_id(old).kill()
        assert client.propose(Noop("after")) == "after"
        views = _statuses(client, cluster)
        assert any(v["role"] == "leader" and v["term"] == term + 1 for v in views.values()), views
        # Both survivors acted on the dropped connection, not on an election timeout.
        assert all(v["stats"].get("leader_forgotten", 0) >= 1 for v in views.values()), views
        for master in cluster.masters:
            if master.node_id != old:
                assert f"lost its connection to leader {old}" in master.log_path.read_text()


def _sockets_between(pid: int, remote_port: int) -> list[tuple[int, int]]:
    return [(c.laddr.port, c.raddr.port) for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == remote_port and c.status == psutil.CONN_ESTABLISHED]


def _kill_connections(pid: int, remote_port: int) -> int:
    """Destroy the TCP connections from process ``pid`` to ``remote_port`` (the peer gets a reset)."""
    killed = 0
    for local, remote in _sockets_between(pid, remote_port):
        subprocess.run(["ss", "-K", "src", f"127.0.0.1:{local}", "dst", f"127.0.0.1:{remote}"],
                       check=True, capture_output=True, timeout=10)
        killed += 1
    return killed


def _can_kill_sockets() -> str | None:
    if shutil.which("ss") is None:
        return "ss (iproute2) is not installed"
    result = subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", ":1"], capture_output=True, timeout=10)
    if result.returncode != 0:
        return f"ss -K does not work here (root and CONFIG_INET_DIAG_DESTROY needed): {result.stderr[-200:]!r}"
    return None


def test_a_flapping_connection_between_the_leader_and_one_follower_does_not_depose_the_leader(tmp_path):
    why = _can_kill_sockets()
    if why:
        pytest.skip(why)
    with running_cluster(tmp_path, masters=3, first_port=16200) as (cluster, client):
        assert client.propose(Noop(0)) == 0
        leader_id, term = _leader_and_term(client, cluster)
        leader = cluster.by_id(leader_id)
        follower, other = [m for m in cluster.masters if m is not leader]
        drops = 0
        for i in range(1, 11):
            # The follower's connection to the leader, and the leader's to the follower.
            wait_for(lambda: _sockets_between(follower.proc.pid, leader.port), 10, what="the follower to reconnect")
            drops += _kill_connections(follower.proc.pid, leader.port)
            _kill_connections(leader.proc.pid, follower.port)
            assert client.propose(Noop(i)) == i
        assert drops >= 10
        wait_for(lambda: _leader_seen_by(client, cluster, follower.node_id) == leader_id, 10,
                 what="the follower to follow the leader again")
        assert _leader_and_term(client, cluster) == (leader_id, term)
        views = _statuses(client, cluster)
        assert views[follower.node_id]["stats"].get("leader_forgotten", 0) >= 5, views  # it did campaign
        assert views[follower.node_id]["term"] == term


def test_a_flapping_link_under_the_fault_hook_does_not_depose_the_leader(tmp_path):
    """Traffic between the leader and one follower is dropped for 0.2-1.5 s at a time (longer than
    an election timeout, sometimes), TCP staying up: the follower's pre-votes are refused."""
    rules = {}

    def one_rules_file_per_master(cluster):
        for master in cluster.masters:
            rules[master.node_id] = tmp_path / f"faults-{master.node_id}.json"
            master.prefix = ["env", f"AGENTFLOW_FAULTS={rules[master.node_id]}"]

    with running_cluster(tmp_path / "cluster", masters=3, first_port=16300,
                         prepare=one_rules_file_per_master) as (cluster, client):
        leader_id, term = _leader_and_term(client, cluster)
        follower = next(m.node_id for m in cluster.masters if m.node_id != leader_id)
        rng = random.Random(7)
        deadline = time.monotonic() + 4
        proposed = 0
        while time.monotonic() < deadline:
            rules[leader_id].write_text(json.dumps({"drop": [follower]}))
            rules[follower].write_text(json.dumps({"drop": [leader_id]}))
            down_until = time.monotonic() + rng.uniform(0.2, 1.5)
            while time.monotonic() < down_until:
                proposed += 1
                assert client.propose(Noop(proposed)) == proposed
            for path in rules.values():
                path.write_text("{}")
            time.sleep(rng.uniform(0.2, 0.5))  # the link is up for this long: the fault's schedule
        wait_for(lambda: _leader_seen_by(client, cluster, follower) == leader_id, 10,
                 what="the follower to follow the leader again")
        assert _leader_and_term(client, cluster) == (leader_id, term)
