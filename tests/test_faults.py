"""The transport's fault hook (runtime/faults.py) on three real masters: a leader cut off by
rules and healed again; a slow link. Each master reads the rules file named by AGENTFLOW_FAULTS."""

from __future__ import annotations

import json

import pytest

from protocols.control import Noop
from tests.procs import running_cluster, wait_for

pytestmark = pytest.mark.integration


def test_an_isolated_leader_is_replaced_and_rejoins_when_the_cut_heals(tmp_path, monkeypatch):
    rules = tmp_path / "faults.json"
    monkeypatch.setenv("AGENTFLOW_FAULTS", str(rules))
    with running_cluster(tmp_path / "cluster", client_timeout_s=20, masters=3, first_port=18700) as (_, client):
        assert client.propose(Noop("before")) == "before"
        old = client.cluster_status()["leader"]
        rules.write_text(json.dumps({"drop": [old]}))  # every other node drops the leader's traffic
        wait_for(lambda: client.cluster_status(timeout_s=2)["leader"] not in (None, old), 30,
                        what="a leader on the majority side")
        assert client.propose(Noop("during")) == "during"
        rules.unlink()
        healed = wait_for(lambda: (v := client.cluster_status(timeout_s=2)) and len(
            {m["last_applied"] for m in v["members"]}) == 1 and all(m["reachable"] for m in v["members"]) and v,
            30, what="the old leader to catch up")
        roles = {m["id"]: m["role"] for m in healed["members"]}
        assert roles[old] == "follower" and list(roles.values()).count("leader") == 1


def test_a_slow_link_delays_but_loses_nothing(tmp_path, monkeypatch):
    rules = tmp_path / "faults.json"
    monkeypatch.setenv("AGENTFLOW_FAULTS", str(rules))
    with running_cluster(tmp_path / "cluster", masters=3, first_port=18800) as (_, client):
        follower = next(m["id"] for m in client.cluster_status()["members"] if m["role"] == "follower")
        rules.write_text(json.dumps({"delay_ms": {follower: 150}}))
        for i in range(20):
            assert client.propose(Noop(i)) == i
        rules.unlink()
        wait_for(lambda: len({m["last_applied"] for m in client.cluster_status()["members"]}) == 1, 30,
                 what="the slow follower to catch up")
