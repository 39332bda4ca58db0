"""Addresses for real networks: --host/--advertise, environment variables, a master that comes
back under a new address, a --leader-url that does not resolve yet."""

from __future__ import annotations

import pytest

from agentflow.addresses import advertised_address, default_advertise_host, endpoint_host, parse_advertise, unresolved
from agentflow.cluster import ChildProcess, find_free_ports
from protocols.control import Noop
from runtime.node import Node
from tests.cliparse import parse_node_command
from tests.procs import running_cluster, wait_for


def test_advertise_is_parsed_and_refuses_what_nobody_could_use():
    assert parse_advertise(None) is None
    assert parse_advertise("m1.agentflow.svc") == ("m1.agentflow.svc", None)
    assert parse_advertise("203.0.113.7:7000") == ("203.0.113.7", 7000)
    assert parse_advertise("tcp://m1:6767") == ("m1", 6767)
    assert parse_advertise("[2001:db8::1]:6767") == ("2001:db8::1", 6767)
    assert parse_advertise("2001:db8::1") == ("2001:db8::1", None)
    for bad in ("0.0.0.0", "m1:0", "m1:99999", "m1:http", "[::1]x", ":6767"):
        with pytest.raises(ValueError, match="--advertise"):
            parse_advertise(bad)


def test_a_wildcard_bind_advertises_this_host_and_an_explicit_address_wins():
    assert advertised_address("127.0.0.1", None) == (None, None)  # as bound
    assert advertised_address("0.0.0.0", ("m1", 7000)) == ("m1", 7000)
    host, port = advertised_address("0.0.0.0", None)
    assert port is None and host == default_advertise_host()
    # A host name that resolves to a loopback address is advertised by name, never as 127.x.
    assert default_advertise_host(lambda: "localhost") == "localhost"
    assert endpoint_host("tcp://[2001:db8::1]:6767") == "2001:db8::1"
    assert unresolved(["tcp://localhost:1", "tcp://no-such-host.invalid:1"]) == ["tcp://no-such-host.invalid:1"]


def test_a_node_tells_its_peers_the_advertised_endpoint():
    with Node("a", host="127.0.0.1", advertise_host="localhost") as a, Node("b") as b:
        port = a.endpoint.rsplit(":", 1)[1]
        assert a.endpoint == f"tcp://localhost:{port}" and a.pub_endpoint.startswith("tcp://localhost:")

        from runtime.actor import Actor

        class Echo(Actor):
            def receive(self, message):
                return message

        a.spawn(Echo, name="echo")
        b.spawn(Echo, name="echo")
        # b learns a's endpoint from a's frame and answers there.
        assert a.ref(b.endpoint, "echo").ask("hi", timeout_s=5).get() == "hi"
        assert b.peers["a"] == f"tcp://localhost:{port}"
        assert b.lookup(("a", "echo")).ask("back", timeout_s=5).get() == "back"


def test_every_option_a_manifest_sets_comes_from_the_environment_and_flags_win(monkeypatch):
    env = {"AGENTFLOW_MODE": "master", "AGENTFLOW_PORT": "7000", "AGENTFLOW_HOST": "0.0.0.0",
           "AGENTFLOW_ADVERTISE": "m1.svc", "AGENTFLOW_LEADER_URL": "m0.svc:7000", "AGENTFLOW_DATA_DIR": "/data",
           "AGENTFLOW_HTTP_PORT": "7010", "AGENTFLOW_NODE_ID": "m1", "AGENTFLOW_HEARTBEAT_MS": "200",
           "AGENTFLOW_ELECTION_TIMEOUT_MS": "2000-4000", "AGENTFLOW_SNAPSHOT_EVERY": "5000",
           "AGENTFLOW_SNAPSHOT_CHUNK_BYTES": "65536",
           "AGENTFLOW_RETAIN_WORKFLOWS": "50", "AGENTFLOW_RETAIN_S": "600", "AGENTFLOW_MAX_RESULT_BYTES": "4096",
           "AGENTFLOW_LOCK_MAX_WAITERS": "50", "AGENTFLOW_MAX_TASKS_PER_WORKFLOW": "500",
           "AGENTFLOW_MAX_PENDING_WORKFLOWS": "20", "AGENTFLOW_AGENT_HISTORY_SIZE": "300",
           "AGENTFLOW_MAX_WORKFLOW_BYTES": "65536", "AGENTFLOW_MAX_CONNECTIONS_PER_PEER": "40",
           "AGENTFLOW_COMPRESS_MIN_BYTES": "32768", "AGENTFLOW_INSECURE": "1"}  # 0.0.0.0 without CURVE keys is refused otherwise
    code, seen, output = parse_node_command(["master"], env, monkeypatch)
    assert code == 0, output
    assert seen == {"process": "master", "mode": "master", "port": 7000, "host": "0.0.0.0", "advertise": "m1.svc",
                    "leader_url": "m0.svc:7000", "data_dir": "/data", "http_port": 7010, "pub_port": None,
                    "node_id": "m1", "heartbeat_ms": 200, "election_timeout_ms": (2000, 4000),
                    "snapshot_every_entries": 5000, "snapshot_chunk_bytes": 65536, "curve": None, "retain_workflows": 50, "retain_s": 600.0,
                    "max_result_bytes": 4096, "lock_max_waiters": 50, "max_tasks_per_workflow": 500,
                    "max_pending_workflows": 20, "agent_history_size": 300, "max_workflow_bytes": 65536,
                    "max_connections_per_peer": 40, "compress_min_bytes": 32768}
    code, seen, _ = parse_node_command(["master", "--port", "7100", "--node-id", "m9"], env, monkeypatch)
    assert (seen["port"], seen["node_id"], seen["mode"]) == (7100, "m9", "master")

    env = {"AGENTFLOW_MASTER_URL": "m0.svc:7000,m1.svc:7000", "WORKER_CPU_CORES": "1.5", "WORKER_MEMORY_MB": "2048",
           "WORKER_GPU_COUNT": "1", "WORKER_GROUP": "gpu", "WORKER_CAPABILITIES": "bash cuda",
           "WORKER_MAX_CONCURRENT_TASKS": "3", "AGENTFLOW_NODE_ID": "w1", "AGENTFLOW_HOST": "0.0.0.0",
           "AGENTFLOW_ADVERTISE": "10.1.2.3", "AGENTFLOW_PORT": "7200", "WORKER_MEMORY_PRESSURE_MB": "128",
           "WORKER_RESULT_CACHE_MB": "64", "AGENTFLOW_COMPRESS_MIN_BYTES": "0", "AGENTFLOW_INSECURE": "1"}
    code, seen, output = parse_node_command(["worker"], env, monkeypatch)
    assert code == 0, output
    assert seen == {"process": "worker", "master_urls": "m0.svc:7000,m1.svc:7000", "cpu_cores": 1.5,
                    "memory_mb": 2048, "gpu_count": 1, "group": "gpu", "capabilities": ["bash", "cuda"],
                    "max_concurrent_tasks": 3, "worker_id": "w1", "host": "0.0.0.0", "advertise": "10.1.2.3",
                    "port": 7200, "curve": None, "http_port": None, "memory_pressure_mb": 128, "result_cache_mb": 64,
                    "compress_min_bytes": 0}
    _, seen, _ = parse_node_command(["worker", "--cpu-cores", "4", "--worker-id", "w2"],
                                    {**env, "AGENTFLOW_WORKER_ID": "w7"}, monkeypatch)
    assert (seen["cpu_cores"], seen["worker_id"]) == (4.0, "w2")
    _, seen, _ = parse_node_command(["worker"], {**env, "AGENTFLOW_WORKER_ID": "w7"}, monkeypatch)
    assert seen["worker_id"] == "w7"  # the more specific variable first
    env = {"AGENTFLOW_MASTER_URL": "m0.svc:7000", "AGENTFLOW_HOST": "0.0.0.0", "AGENTFLOW_ADVERTISE": "10.1.2.4",
           "AGENTFLOW_PORT": "7300", "AGENTFLOW_NODE_ID": "host-1", "AGENTFLOW_INSECURE": "1"}
    code, seen, output = parse_node_command(["agent", "run", "pkg.mod:Agent", "--agent-id", "a1"], env, monkeypatch)
    assert code == 0, output
    assert (seen["host"], seen["advertise"], seen["port"], seen["node_id"], seen["master_urls"]) == (
        "0.0.0.0", "10.1.2.4", 7300, "host-1", "m0.svc:7000")
    code, _, output = parse_node_command(["master", "--port", "many"], {}, monkeypatch)
    assert code == 2 and "--port" in output
    code, seen, output = parse_node_command(["master", "--host", "0.0.0.0"], {}, monkeypatch)
    assert code == 2 and seen == {} and "--insecure" in output


def test_bad_advertise_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    from tests.procs import REPO

    result = subprocess.run([sys.executable, "-m", "agentflow.cli", "master", "--port", "14095", "--advertise",
                             "0.0.0.0", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 2 and "--advertise" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_a_master_back_under_a_new_address_rejoins_by_its_node_id(tmp_path):
    with running_cluster(tmp_path, masters=3, first_port=14000) as (cluster, client):
        moved = cluster.masters[2]
        moved.stop()
        client.propose(Noop("while it was away"))
        new_port = find_free_ports(1, 14200)[0]
        moved.args[moved.args.index("--port") + 1] = str(new_port)
        moved.port = new_port
        moved.start()
        new_endpoint = f"tcp://127.0.0.1:{new_port}"

        def caught_up_at_new_address():
            view = client.cluster_status(timeout_s=2)
            member = next((m for m in view["members"] if m["id"] == moved.node_id), None)
            return member if member and member["address"] == new_endpoint and member["role"] == "follower" else None

        wait_for(caught_up_at_new_address, 30, interval_s=0.1, what="master-3 at its new address")
        assert client.propose(Noop("after")) == "after"
        view = client.cluster_status()
        committed = next(m for m in view["members"] if m["id"] == view["leader"])["commit_index"]
        wait_for(lambda: (client.status_of(new_endpoint) or {}).get("last_applied", 0) >= committed, 15,
                 what="the moved master to apply what was committed after it came back")
        assert client.status_of(new_endpoint)["members"][moved.node_id] == new_endpoint


@pytest.mark.integration
def test_a_leader_url_that_does_not_resolve_yet_is_waited_for(tmp_path):
    child = ChildProcess("m-wait", ["master", "--mode", "master", "--port", "14090", "--node-id", "m-wait",
                                    "--data-dir", str(tmp_path), "--leader-url", "agentflow-master-0.invalid:6767"],
                         tmp_path / "m-wait.log", 14090).start()
    try:
        wait_for(lambda: "waits for tcp://agentflow-master-0.invalid:6767 to resolve" in child.log_path.read_text(),
                 60, interval_s=0.1, what="the waiting line in the log")
        assert child.alive()
    finally:
        child.stop()


@pytest.mark.integration
def test_masters_started_alike_form_one_cluster_the_first_of_leader_url_bootstraps(tmp_path):
    """What every pod of the masters' StatefulSet runs: the same command, started in parallel."""
    def alike(cluster):
        for master in cluster.masters:
            master.args = ["master", "--mode", "master", "--port", str(master.port), "--node-id", master.node_id,
                           "--data-dir", str(tmp_path), "--leader-url", cluster.master_url]

    with running_cluster(tmp_path, masters=3, first_port=14100, prepare=alike) as (cluster, client):
        view = client.cluster_status()
        assert view["leader"] and sorted(m["id"] for m in view["members"]) == ["master-1", "master-2", "master-3"]
        first = client.status_of(cluster.masters[0].url)
        assert sorted(first["voters"]) == ["master-1", "master-2", "master-3"]
        assert "it bootstraps the cluster" in cluster.masters[0].log_path.read_text()
