"""A master that joins a cluster whose log is compacted gets the leader's snapshot in chunks and
catches up, through real processes: `agentflow cluster add` of a fresh master, a state of a few
MB sent in 64 KiB chunks (`--snapshot-chunk-bytes`), then the same applied index and state
digest on every master."""

from __future__ import annotations

import pytest

from agentflow.cluster import ChildProcess
from protocols.control import Noop
from protocols.workflow import parse_workflow
from tests.chaos.raftcheck import wait_converged
from tests.procs import running_cluster, wait_for
from tests.test_scaling import cli

pytestmark = pytest.mark.integration

FIRST_PORT = 19900
JOINER_PORT = 19920
CHUNK_BYTES = 64 * 1024
OPTIONS = ["--snapshot-every", "40", "--snapshot-chunk-bytes", str(CHUNK_BYTES)]


def pub_ports_in_range(cluster) -> None:
    """Each master's PUB port is PORT+50 instead of PORT+100: every port stays in 19900-19999."""
    for master in cluster.masters:
        master.args += ["--pub-port", str(master.port + 50)]


def big_workflow(number: int, command_bytes: int) -> str:
    """A workflow of one task whose command is ``command_bytes`` long (no worker runs it: it
    stays in the state, and in every snapshot)."""
    filler = f"{number:04d}" * (command_bytes // 4)
    return f"workflow:\n  id: big-{number}\n  tasks:\n    - {{task_id: t, command: 'echo {filler}'}}\n"


def test_a_master_joining_a_compacted_cluster_gets_the_snapshot_in_chunks_and_catches_up(tmp_path):
    with running_cluster(tmp_path, masters=3, first_port=FIRST_PORT, master_options=OPTIONS,
                         prepare=pub_ports_in_range) as (cluster, client):
        for number in range(6):  # about 3 MB of state
            client.submit_workflow(parse_workflow(big_workflow(number, 512 * 1024)))
        for i in range(60):  # enough entries for every master to compact its log
            assert client.propose(Noop(i)) == i
        joiner = ChildProcess("master-4", ["master", "--mode", "master", "--port", str(JOINER_PORT),
                                           "--node-id", "master-4", "--data-dir", str(tmp_path),
                                           "--pub-port", str(JOINER_PORT + 50), *OPTIONS],
                              tmp_path / "master-4.log", JOINER_PORT, http_port=JOINER_PORT + 10)
        cluster.masters.append(joiner.start())  # stopped with the others
        out = cli("cluster", "add", "master-4", f"127.0.0.1:{JOINER_PORT}", "--master-url", cluster.master_url)
        assert f"master-4 (tcp://127.0.0.1:{JOINER_PORT}) is a voter" in out

        views, differed = wait_converged(client, [m.url for m in cluster.masters], timeout_s=60)
        assert views is not None, differed
        joined = views["master-4"]
        assert "master-4" in joined["voters"]
        # Its own role follows once it applies its promotion (the view above may be a moment older).
        wait_for(lambda: client.status_of(joiner.url)["role"] == "follower", 30, what="master-4 to be a follower")
        # It was sent the snapshot, in chunks (the state is about 50 of them), not the log.
        chunks = joined["stats"].get("snapshot_chunks_received", 0)
        assert chunks >= 3 * 1024 * 1024 // CHUNK_BYTES, joined["stats"]
        assert "installed the leader's snapshot" in (tmp_path / "master-4.log").read_text()
        # And it goes on with the others.
        assert client.propose(Noop("after")) == "after"
        wait_for(lambda: wait_converged(client, [m.url for m in cluster.masters], timeout_s=5)[0], 30,
                 what="the four masters on the same applied index after one more command")
