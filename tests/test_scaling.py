"""Scaling the masters 3 -> 5 -> 3 under a running workflow, with the real CLI (`agentflow cluster
add|remove`), as a StatefulSet scaled up and down would: nothing is lost and a leader serves
throughout; the removed masters include the leader, which hands over first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentflow.cluster import ChildProcess, find_free_ports
from protocols.workflow import parse_workflow
from tests.procs import REPO, running_cluster, wait_for

pytestmark = pytest.mark.integration


def chains(workflow_id: str, lanes: int, levels: int, gates: dict[int, Path] | None = None) -> str:
    """``lanes`` chains of ``levels`` short tasks; the tasks of a level in ``gates`` run until the
    test creates that file (120 s at most, like their timeout: a loop a killed worker orphaned
    must end by itself), so the workflow is surely running then."""
    def command(level: int) -> str:
        gate = (gates or {}).get(level)
        return f"for i in $(seq 2400); do [ -e {gate} ] && break; sleep 0.05; done" if gate else "sleep 0.1"

    tasks = "".join(
        f"    - {{task_id: l{level}t{lane}, command: '{command(level)}', timeout_s: 120, "
        f"dependencies: [{f'l{level - 1}t{lane}' if level else ''}]}}\n"
        for level in range(levels) for lane in range(lanes))
    return f"workflow:\n  id: {workflow_id}\n  tasks:\n{tasks}"


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "agentflow.cli", *args], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def test_scaling_the_masters_three_five_three_under_a_running_workflow_loses_nothing(tmp_path):
    with running_cluster(tmp_path, masters=3, workers=2, first_port=14400) as (cluster, client):
        def voters_are(expected: list[str]) -> bool:
            """The leader's voters are ``expected`` (False while no leader answers in time)."""
            view = client.cluster_status(timeout_s=5)
            leader = next((m for m in view["members"] if m["id"] == view["leader"]), None)
            leader_view = client.status_of(leader["address"], 5.0) if leader else None
            return leader_view is not None and sorted(leader_view["voters"]) == expected

        # Two more masters, started to wait for `cluster add` (no --leader-url).
        added = dict(zip(("master-4", "master-5"), find_free_ports(2, 14450)))
        for node_id, port in added.items():
            cluster.masters.append(ChildProcess(  # stopped with the others
                node_id, ["master", "--mode", "master", "--port", str(port), "--node-id", node_id,
                          "--data-dir", str(tmp_path)], tmp_path / f"{node_id}.log", port).start())
        at_five, at_three = tmp_path / "gate-five", tmp_path / "gate-three"
        submitted = [parse_workflow(chains("wf-long", lanes=3, levels=6, gates={2: at_five, 4: at_three}))]
        client.submit_workflow(submitted[0])
        def progress() -> tuple[int, int]:
            figures = client.workflow_status("wf-long", tasks=False)["progress"]
            return figures["finished"], figures["counts"]["running"]

        wait_for(lambda: progress() == (6, 3), 30, what="the first levels done and the gated level running")

        # 3 -> 5
        for node_id, port in added.items():
            out = cli("cluster", "add", node_id, f"127.0.0.1:{port}", "--master-url", cluster.master_url)
            assert f"{node_id} (tcp://127.0.0.1:{port}) is a voter" in out
        wait_for(lambda: voters_are(["master-1", "master-2", "master-3", "master-4", "master-5"]), 30,
                 what="five voters")
        submitted.append(parse_workflow(chains("wf-at-five", lanes=2, levels=2)))
        client.submit_workflow(submitted[-1])
        at_five.touch()
        wait_for(lambda: progress() == (12, 3), 30, what="the levels before the second gate done")

        # 5 -> 3: the leader and one more leave, as a scale-down would take them away.
        leader = client.cluster_status()["leader"]
        leaving = [leader, "master-5" if leader != "master-5" else "master-4"]
        for node_id in leaving:
            out = cli("cluster", "remove", node_id, "--master-url", cluster.master_url)
            assert f"{node_id} removed" in out
            cluster.by_id(node_id).stop()
        staying = sorted(set(["master-1", "master-2", "master-3", "master-4", "master-5"]) - set(leaving))
        wait_for(lambda: voters_are(staying), 30, what="three voters")
        # The workflow ran under both changes: its gated level still runs, nothing after it yet.
        wait_for(lambda: progress() == (12, 3), 30, what="the second gated level still running")
        view = client.cluster_status()
        assert view["leader"] in staying and sorted(m["id"] for m in view["members"]) == staying
        assert "still running" not in str(view)
        submitted.append(parse_workflow(chains("wf-at-three", lanes=2, levels=2)))
        client.submit_workflow(submitted[-1])
        at_three.touch()

        for workflow in submitted:
            done = client.wait_workflow(workflow.workflow_id, timeout_s=90)
            assert done["state"] == "completed", done
            assert sorted(done["tasks"]) == sorted(task.task_id for task in workflow.tasks)
            assert all(task["state"] == "completed" for task in done["tasks"].values()), done
        # Still a working group of three: a command commits.
        from protocols.control import Noop

        assert client.propose(Noop("after")) == "after"
        refused = subprocess.run([sys.executable, "-m", "agentflow.cli", "cluster", "remove", "master-9",
                                  "--master-url", cluster.master_url], capture_output=True, text=True, timeout=60,
                                 cwd=REPO)
        assert refused.returncode == 1 and "master-9 is not a member" in refused.stderr
