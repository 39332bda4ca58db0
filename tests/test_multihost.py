"""A cluster across hosts: three masters, two workers and an agent host, each in a network
namespace of its own (tests/netns_hosts.py), bound to that host's address and advertised by it,
every socket encrypted and authenticated with CURVE keys; a workflow submitted and an agent asked
from the root namespace; the leader's host cut off in the middle. The workflow completes, the
agent still answers, and the old leader rejoins once the cut heals."""

from __future__ import annotations

import pytest

from agentflow.cluster import ChildProcess
from protocols.workflow import parse_workflow
from runtime.client import Client
from tests.netns_hosts import NetnsHosts, unavailable
from tests.procs import wait_for

pytestmark = pytest.mark.integration

WHY_NOT = unavailable()
MASTERS, WORKERS, AGENT_HOST = ["m1", "m2", "m3"], ["w1", "w2"], "a1"
PORT = 14700  # every host has its own network stack: the same port on each
WORKFLOW = """
workflow:
  id: wf-across-hosts
  tasks:
""" + "".join(f"""    - {{task_id: l{level}t{lane}, command: "sleep 0.7", retries: 2,
        dependencies: [{f"l{level - 1}t{lane}" if level else ""}]}}
""" for level in range(4) for lane in range(2))


@pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces here: {WHY_NOT}")
def test_a_cluster_across_hosts_survives_the_leaders_host_being_cut_off(tmp_path):
    import shutil

    from runtime.agents import AgentCommunication
    from runtime.node import Node
    from runtime.security import CurveKeys, generate_keys

    keys, authorized = tmp_path / "keys", tmp_path / "keys" / "authorized"
    for name in ("masters", "workers", "agents", "tester"):
        generate_keys(keys, name)
    authorized.mkdir()
    for name in ("workers", "agents", "tester"):
        shutil.copy(keys / f"{name}.key", authorized)
    as_master = ["--curve-secret-key", str(keys / "masters.key_secret"), "--authorized-keys", str(authorized)]

    def as_node(name: str) -> list[str]:
        return ["--curve-secret-key", str(keys / f"{name}.key_secret"), "--curve-server-key", str(keys / "masters.key")]

    tester = CurveKeys.load(keys / "tester.key_secret", keys / "masters.key")

    with NetnsHosts(MASTERS + WORKERS + [AGENT_HOST]) as hosts:
        address = hosts.addresses
        children: list[ChildProcess] = []
        own_nodes: list = []

        def start(name: str, args: list[str]) -> ChildProcess:
            child = ChildProcess(name, args, tmp_path / f"{name}.log", PORT, prefix=hosts.command(name)).start()
            children.append(child)
            return child

        first = "m1.agentflow.test"  # a DNS name for --leader-url, from each host's /etc/hosts
        for name in MASTERS + WORKERS + [AGENT_HOST]:
            hosts.set_hosts_file(name, {} if name == "m3" else {first: address["m1"]})
        master_urls = ",".join(f"{address[name]}:{PORT}" for name in MASTERS)
        common = ["--port", str(PORT), "--data-dir", str(tmp_path), *as_master]
        try:
            start("m1", ["master", "--mode", "leader", "--node-id", "m1", "--host", address["m1"], *common])
            masters = {"m1": children[0]}
            for name in ("m2", "m3"):  # bound to every interface, advertised by the host's address
                masters[name] = start(name, ["master", "--mode", "master", "--node-id", name, "--host", "0.0.0.0",
                                             "--advertise", address[name], "--leader-url", f"{first}:{PORT}",
                                             *common])
            wait_for(lambda: f"waits for tcp://{first}:{PORT} to resolve" in masters["m3"].log_path.read_text(),
                     30, interval_s=0.1, what="m3 to wait for a name it cannot resolve yet")
            hosts.set_hosts_file("m3", {first: address["m1"]})  # the name appears: m3 joins
            for name in WORKERS:
                start(name, ["worker", "--master-url", master_urls, "--worker-id", name, "--host", address[name],
                             "--port", str(PORT + 10), *as_node("workers")])
            start(AGENT_HOST, ["agent", "run", "tests.agentfuncs:Echo", "--agent-id", "echo-1", "--host", "0.0.0.0",
                               "--advertise", address[AGENT_HOST], "--port", str(PORT), "--master-url", master_urls,
                               *as_node("agents"), "--authorized-keys", str(authorized)])
            # The root namespace's own node: agents answer it at its bridge address.
            asker = Node("root-asker", host=hosts.root_address, master_urls=master_urls, curve=tester).start()
            own_nodes.append(asker)
            comm = AgentCommunication(asker, "tester")

            def echo(n: int):
                return wait_for(lambda: _answer(comm, n), 30, interval_s=0.2, what=f"echo-1 to answer request {n}")

            with Client(master_urls, timeout_s=20, curve=tester) as client:
                def cluster_of_three():
                    view = client.cluster_status(timeout_s=2)
                    voters = [m for m in view["members"] if m["role"] in ("leader", "follower")]
                    return view if view["leader"] and len(voters) == 3 else None

                view = wait_for(cluster_of_three, 60, interval_s=0.2, what="three masters under one leader")
                assert {m["id"]: m["address"] for m in view["members"]} == {
                    name: f"tcp://{address[name]}:{PORT}" for name in MASTERS}
                wait_for(lambda: {w["worker_id"] for w in client.workers()} == set(WORKERS), 30, interval_s=0.2,
                         what="both workers to register")
                assert {w["worker_id"]: w["address"] for w in client.workers()} == {
                    name: f"tcp://{address[name]}:{PORT + 10}" for name in WORKERS}

                assert echo(1) == {"echo": {"n": 1}, "by": "echo-1"}
                workflow = parse_workflow(WORKFLOW)
                client.submit_workflow(workflow)
                progress = wait_for(lambda: (lambda p: p if p["finished"] >= 2 else None)(
                    client.workflow_status(workflow.workflow_id)["progress"]), 30, interval_s=0.1,
                    what="the first tasks to finish")
                old_leader = client.cluster_status(timeout_s=2)["leader"]
                hosts.cut(old_leader)
                assert progress["finished"] < progress["total"]  # cut in the middle
                done = client.wait_workflow(workflow.workflow_id, timeout_s=90)
                assert done["state"] == "completed", done
                assert all(task["state"] == "completed" for task in done["tasks"].values()), done
                new_view = client.cluster_status(timeout_s=2)
                assert new_view["leader"] not in (None, old_leader)
                assert echo(2) == {"echo": {"n": 2}, "by": "echo-1"}  # while the old leader is cut off

                hosts.heal(old_leader)
                old_endpoint = f"tcp://{address[old_leader]}:{PORT}"

                def rejoined():
                    mine, leader = client.status_of(old_endpoint, 1.0), client.cluster_status(timeout_s=2)
                    leading = next((m for m in leader["members"] if m["id"] == leader["leader"]), None)
                    return (mine and leading and mine["role"] == "follower" and mine["term"] == leading["term"]
                            and mine["last_applied"] >= leading["commit_index"] - 1)

                wait_for(rejoined, 60, interval_s=0.2, what=f"{old_leader} to rejoin as a follower")
        except BaseException:
            for child in children:
                print(f"--- {child.name}\n{child.log_path.read_text(errors='replace')}")
            raise
        finally:
            for node in own_nodes:
                node.stop()
            for child in reversed(children):
                child.stop()


def _answer(comm, n: int):
    """The agent's reply, or None while it is not registered or reachable yet."""
    from runtime.agents import AgentCommunicationError
    from runtime.client import ClusterUnavailable
    from runtime.future import RemoteError

    try:
        return comm.request("echo-1", {"n": n}, timeout_ms=3000).content
    except (AgentCommunicationError, ClusterUnavailable, RemoteError):
        return None
