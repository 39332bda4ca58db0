"""`agentflow top`: one frame against a running cluster, the keys, and the header without a leader."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from agentflow.tui import ClusterPoller, Frame, ViewState, frame_text
from protocols.names import OBSERVER_ACTOR
from protocols.overview import OverviewRequest
from protocols.workflow import parse_workflow
from runtime.actor import Actor
from runtime.node import Node
from runtime.security import CurveKeys, generate_keys
from tests.procs import REPO, running_cluster, wait_for

SLOW_WORKFLOW = """
workflow:
  id: wf-top
  name: Top check
  tasks:
    - {task_id: first, command: "true", priority: high}
    - {task_id: long-a, command: "sleep 30", dependencies: [first]}
    - {task_id: long-b, command: "sleep 30", dependencies: [first]}
    - {task_id: waits, command: "true", dependencies: [long-a]}
"""


def top_once(master_url: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="140")
    return subprocess.run([sys.executable, "-m", "agentflow.cli", "top", "--once", "--master-url", master_url],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def test_keys_focus_filter_pause_help_and_quit():
    view = ViewState()
    view.press("w")
    assert view.focus == "workflows"
    view.press("m")
    assert view.focus == "masters"
    view.press("m")
    assert view.focus is None
    for key in "/wf-a":
        view.press(key)
    assert view.typing_filter and view.filter == "wf-a"
    view.press("\x7f")
    view.press("\r")
    assert not view.typing_filter and view.filter == "wf-"
    view.press("q")  # typed while not filtering: quits
    assert view.quit
    view = ViewState()
    view.press("p")
    view.press("?")
    assert view.paused and view.help
    view.press("\x03")
    assert view.quit


def test_the_header_says_when_no_leader_can_be_reached():
    masters = {"master-1": None, "master-2": {"node_id": "master-2", "role": "candidate", "serving": False,
                                             "raft": {"role": "candidate", "term": 4, "commit_index": 9,
                                                      "last_applied": 9}}}
    text = frame_text(Frame(0.0, masters, {}, None, [], None, None))
    assert "NO LEADER: cannot reach a leader" in text and "1 of 2 masters answer" in text
    assert re.search(r"master-1 .*unreachable", text)


class LeaderObserver(Actor):
    """A master's observer as far as the view needs one: its snapshot."""

    def receive(self, message):
        if isinstance(message, OverviewRequest):
            return {"node_id": "m1", "role": "leader", "serving": True, "endpoint": self.node.endpoint,
                    "raft": {"role": "leader", "term": 2, "commit_index": 5, "last_applied": 5}}
        return None


def test_the_view_uses_the_clients_keys_against_a_keyed_cluster(tmp_path):
    for name in ("masters", "me"):
        generate_keys(tmp_path, name)
    (tmp_path / "authorized").mkdir()
    (tmp_path / "authorized" / "me.key").write_bytes((tmp_path / "me.key").read_bytes())
    masters = CurveKeys.load(tmp_path / "masters.key_secret", authorized_keys_dir=tmp_path / "authorized")
    me = CurveKeys.load(tmp_path / "me.key_secret", tmp_path / "masters.key")
    with Node("m1", curve=masters) as master:
        master.spawn(LeaderObserver, name=OBSERVER_ACTOR)
        with ClusterPoller(master.endpoint, timeout_s=3, curve=me) as poller:
            frame = poller.poll()
    assert frame.leader is not None and frame.leader["node_id"] == "m1"


@pytest.mark.integration
def test_top_once_shows_three_masters_one_leader_the_workers_the_queue_and_a_running_workflow(tmp_path):
    with running_cluster(tmp_path, masters=3, workers=2, first_port=11400,
                         worker_options=["--max-concurrent-tasks", "1"]) as (cluster, client):
        workflow = parse_workflow(SLOW_WORKFLOW)
        client.submit_workflow(workflow)
        wait_for(lambda: client.workflow_status("wf-top", tasks=False)["progress"]["counts"]["running"] == 2, 20,
                 interval_s=0.1, what="both long tasks to run")
        result = top_once(cluster.master_url)
        assert result.returncode == 0, result.stderr
        frame = result.stdout
        master_rows = [line for line in frame.splitlines() if re.search(r"│\s+master-\d\s", line)]
        assert len(master_rows) == 3, frame
        assert sum(" leader " in row for row in master_rows) == 1, frame
        assert sum(" follower " in row for row in master_rows) == 2, frame
        assert all(re.search(rf"│\s+{w.node_id}\s+busy\s+1/1", frame) for w in cluster.workers), frame
        assert "queue" in frame and re.search(r"total\s+0", frame), frame
        assert re.search(r"wf-top\s+running.*1/4\s+2\s+0", frame), frame
        assert "became leader for term" in frame, frame
        client.cancel_workflow("wf-top")


def test_top_once_without_a_cluster_is_one_line_and_exit_1():
    result = top_once("127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no master answered" in result.stderr
    assert "Traceback" not in result.stderr
