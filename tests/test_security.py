"""CurveZMQ: who may connect, at the runtime level (nodes in this process) and key files."""

from __future__ import annotations

import shutil

import pytest

from agentflow import Actor, Node
from agentflow.cli import app
from runtime.client import DirectAsks, PeerUnreachable
from runtime.future import RemoteError
from runtime.security import CurveKeys, KeyFileError, check_bind, generate_keys
from typer.testing import CliRunner

from tests.procs import wait_for


class Echo(Actor):
    def receive(self, message):
        return message


@pytest.fixture
def keys(tmp_path):
    """A masters' keypair, an authorized client, an unknown one; the authorized-keys folder."""
    for name in ("masters", "alice", "mallory"):
        generate_keys(tmp_path, name)
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(tmp_path / "alice.key", authorized)
    return tmp_path


def ask(node: Node, endpoint: str, message="hello", actor="echo"):
    return node.ref(endpoint, actor).ask(message, timeout_s=3).get()


def test_only_authorized_keys_get_in_and_masters_reach_back(keys):
    masters = CurveKeys.load(keys / "masters.key_secret", authorized_keys_dir=keys / "authorized")
    alice = CurveKeys.load(keys / "alice.key_secret", keys / "masters.key")
    mallory = CurveKeys.load(keys / "mallory.key_secret", keys / "masters.key")
    with Node("master", curve=masters) as master, Node("alice", curve=alice) as a, \
            Node("mallory", curve=mallory) as m, Node("plain") as plain:
        master.spawn(Echo, name="echo")
        a.spawn(Echo, name="echo")
        assert ask(a, master.endpoint) == "hello"
        for outsider in (m, plain):
            with pytest.raises(RemoteError) as refused:
                ask(outsider, master.endpoint)
            assert refused.value.kind == "peer_unreachable"
        assert master.transport.gatekeeper.denied >= 1
        # The master learned alice's key from her frames: it can connect back (a worker's case).
        assert ask(master, a.endpoint, "back") == "back"


def test_a_client_tells_a_refused_key_from_a_handshake_that_broke_off(keys):
    """Only the ZAP handler's "no" is ``not_authorized`` (a client stops there); a handshake that
    breaks off (a wrong server key here, a master dying mid-handshake in a failover) is
    ``PeerUnreachable``, after which a client tries the next master."""
    masters = CurveKeys.load(keys / "masters.key_secret", authorized_keys_dir=keys / "authorized")
    mallory = CurveKeys.load(keys / "mallory.key_secret", keys / "masters.key")
    alice_astray = CurveKeys.load(keys / "alice.key_secret", keys / "mallory.key")
    with Node("master", curve=masters) as master:
        master.spawn(Echo, name="echo")
        for curve, expected in ((mallory, RemoteError), (alice_astray, PeerUnreachable)):
            asks = DirectAsks("client", "", curve)
            try:
                with pytest.raises((RemoteError, PeerUnreachable)) as failed:
                    asks.ask(master.endpoint, "echo", "hello", timeout_s=5)
            finally:
                asks.close()
            assert type(failed.value) is expected
            assert expected is PeerUnreachable or failed.value.kind == "not_authorized"


def test_authorized_keys_are_read_again_on_reload(keys):
    masters = CurveKeys.load(keys / "masters.key_secret", authorized_keys_dir=keys / "authorized")
    mallory = CurveKeys.load(keys / "mallory.key_secret", keys / "masters.key")
    with Node("master", curve=masters) as master, Node("mallory", curve=mallory) as m:
        master.spawn(Echo, name="echo")
        with pytest.raises(RemoteError):
            ask(m, master.endpoint)
        shutil.copy(keys / "mallory.key", keys / "authorized")
        assert master.transport.gatekeeper.reload() == 3  # alice, mallory and the masters' own
        # Its socket retries the handshake by itself; once the new list is read it gets in.
        assert wait_for(lambda: _answer(m, master.endpoint), 10, what="mallory to be admitted") == "hello"


def _answer(node, endpoint):
    try:
        return ask(node, endpoint)
    except RemoteError:
        return None


def test_key_files_and_binding_rules(keys, tmp_path):
    with pytest.raises(KeyFileError, match="no secret key"):
        CurveKeys.load(keys / "alice.key")
    with pytest.raises(KeyFileError, match="not a directory"):
        CurveKeys.load(keys / "masters.key_secret", authorized_keys_dir=tmp_path / "missing")
    check_bind("127.0.0.1", None, insecure=False)
    with pytest.raises(ValueError, match="--insecure"):
        check_bind("0.0.0.0", None, insecure=False)
    check_bind("0.0.0.0", None, insecure=True)
    result = CliRunner().invoke(app, ["keys", "generate", str(tmp_path / "new"), "bob"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "bob.key").exists() and (tmp_path / "new" / "bob.key_secret").stat().st_mode & 0o077 == 0


@pytest.mark.integration
def test_with_curve_on_everything_works_and_an_outsider_gets_nothing(keys, tmp_path):
    """Three masters, a worker and an agent host with keys: an authorized client submits, reads,
    locks and asks an agent; a client with an unknown key (and one with none) can do none of it."""
    import json

    from agentflow import AgentCommunication, AgentMessage, Client, ClusterUnavailable, DistributedLock, parse_workflow
    from tests.procs import running_cluster

    for name in ("workers", "agents"):
        generate_keys(keys, name)
        shutil.copy(keys / f"{name}.key", keys / "authorized")
    masters_key = str(keys / "masters.key")

    def as_node(name: str) -> list[str]:
        return ["--curve-secret-key", str(keys / f"{name}.key_secret"), "--curve-server-key", masters_key]

    alice = CurveKeys.load(keys / "alice.key_secret", keys / "masters.key")
    mallory = CurveKeys.load(keys / "mallory.key_secret", keys / "masters.key")
    master_options = ["--curve-secret-key", str(keys / "masters.key_secret"), "--authorized-keys",
                      str(keys / "authorized")]
    with running_cluster(tmp_path / "cluster", curve=alice, masters=3, workers=1, first_port=18900,
                         master_options=master_options, worker_options=as_node("workers")) as (local, client):
        local.add_agent("tests.agentfuncs:Echo", "guarded", [*as_node("agents"), "--authorized-keys",
                                                              str(keys / "authorized")])
        workflow = parse_workflow(json.dumps({"workflow": {"id": "wf-curve", "tasks": [
            {"task_id": "hello", "command": "echo hello"}]}}))
        client.submit_workflow(workflow)
        assert client.wait_workflow("wf-curve", timeout_s=60)["state"] == "completed"
        assert DistributedLock(client, "alice", 10).acquire("curve-lock")
        with Node("alice-node", master_urls=local.master_url, curve=alice) as node:
            assert AgentCommunication(node, "alice").request("guarded", 1, timeout_ms=5000).content["echo"] == 1

        for outsider in (mallory, None):
            with Client(local.master_url, timeout_s=2, curve=outsider) as intruder:
                with pytest.raises((ClusterUnavailable, RemoteError)):
                    intruder.workflow_status("wf-curve")
                with pytest.raises((ClusterUnavailable, RemoteError)):
                    intruder.submit_workflow(workflow)
                with pytest.raises((ClusterUnavailable, RemoteError)):
                    DistributedLock(intruder, "mallory", 10).acquire("curve-lock")
            # Straight to the agent's host too, with the address and key alice's directory gives.
            with Node("alice-peek", master_urls=local.master_url, curve=alice) as peek:
                entry = AgentCommunication(peek, "alice").directory.lookup("guarded")
            with Node("intruder-node", curve=outsider) as node:
                node.transport.know_server_key(entry.endpoint, entry.public_key)
                message = AgentMessage("m-1", "mallory", "guarded", "task_request", 2, 0, None)
                with pytest.raises(RemoteError) as refused:
                    node.ref(entry.endpoint, entry.actor).ask(message, timeout_s=3).get()
                assert refused.value.kind == "peer_unreachable"
