"""Tenants: the pure scoping of protocols/tenants.py, the key folders, and the gate in processes."""

from __future__ import annotations

import pytest

from protocols.agents import (
    AgentEntry,
    AgentHostHeartbeat,
    AgentMessage,
    BroadcastRequest,
    DirectoryQuery,
    DirectoryView,
    HistoryRequest,
    RegisterAgentRequest,
    SubscribeRequest,
    UnregisterAgentRequest,
)
from protocols.control import (
    CancelWorkflowRequest,
    ClientCommand,
    ControlState,
    Join,
    Noop,
    Propose,
    Read,
    StatusQuery,
    SubmitWorkflowRequest,
    TransferLeadership,
    WorkflowStatusRequest,
)
from protocols.locks import Acquire, LockCall, LockGranted, LockInfo, LockShow, Release
from protocols.names import AGENTS_ACTOR, LOCK_ACTOR, OBSERVER_ACTOR, RAFT_ACTOR, SCHEDULER_ACTOR
from protocols.overview import OverviewRequest
from protocols.tenants import (
    Quotas,
    check_tenant_name,
    parse_quotas,
    quota_refusal,
    scope_request,
    unscope_error,
    unscope_reply,
)
from protocols.wire import ErrorRecord, Redirect, encode
from protocols.workflow_spec import TaskNode, Workflow
from protocols.workflow_table import SubmitWorkflow

KEY = "k" * 40


def workflow(workflow_id: str, *tasks: TaskNode) -> Workflow:
    return Workflow(workflow_id, "", list(tasks) or [TaskNode("t", command="true")])


def test_every_name_a_tenant_sends_gets_its_prefix():
    submit = scope_request("acme", SCHEDULER_ACTOR, SubmitWorkflowRequest(
        workflow("wf-1", TaskNode("a", agent="solver"), TaskNode("b", agent_group="solvers"),
                 TaskNode("c", command="true")), "client-1", 3))
    assert submit.workflow.workflow_id == "acme:wf-1" and submit.client_id == "acme:client-1" and submit.seq == 3
    assert [(t.agent, t.agent_group) for t in submit.workflow.tasks] == [
        ("acme:solver", None), (None, "acme:solvers"), (None, None)]
    assert scope_request("acme", SCHEDULER_ACTOR, WorkflowStatusRequest("wf-1")).workflow_id == "acme:wf-1"
    assert scope_request("acme", SCHEDULER_ACTOR, WorkflowStatusRequest(None)).workflow_id is None
    assert scope_request("acme", SCHEDULER_ACTOR, WorkflowStatusRequest("wf-1", False, True)) == \
        WorkflowStatusRequest("acme:wf-1", False, True)  # `agentflow status`'s summary
    cancel = scope_request("acme", SCHEDULER_ACTOR, CancelWorkflowRequest("wf-1", "client-1", 4))
    assert (cancel.workflow_id, cancel.client_id) == ("acme:wf-1", "acme:client-1")

    call = scope_request("acme", LOCK_ACTOR, LockCall(ClientCommand("c", 1, Acquire("db", "me", 1000, {}, 0)), 0))
    assert call.command.client_id == "acme:c" and call.command.body.key == "acme:db" and call.command.body.owner == "me"
    assert scope_request("acme", LOCK_ACTOR, LockCall(Release("db", "me"))).command.key == "acme:db"
    assert scope_request("acme", LOCK_ACTOR, LockShow("db")).key == "acme:db"
    assert scope_request("acme", LOCK_ACTOR, LockShow(None)).key is None

    entry = AgentEntry("solver", "host-1", "tcp://h:1", "tcp://h:2", "solvers", [], KEY, actor_name="raft")
    registered = scope_request("acme", AGENTS_ACTOR, RegisterAgentRequest(entry), {KEY}).entry
    assert (registered.agent_id, registered.host_id, registered.group) == ("acme:solver", "acme:host-1", "acme:solvers")
    assert registered.actor == "agent/solver"  # the host's name for it, whatever the tenant claimed
    assert scope_request("acme", AGENTS_ACTOR, UnregisterAgentRequest("solver", "host-1")) == \
        UnregisterAgentRequest("acme:solver", "acme:host-1")
    beat = scope_request("acme", AGENTS_ACTOR, AgentHostHeartbeat("host-1", "tcp://h:1", {"solver": 2}, {"solver": 9}))
    assert (beat.host_id, beat.mailbox_depths, beat.messages_handled) == ("acme:host-1", {"acme:solver": 2},
                                                                          {"acme:solver": 9})
    assert scope_request("acme", AGENTS_ACTOR, DirectoryQuery(["a", "b"])).agent_ids == ["acme:a", "acme:b"]
    message = AgentMessage("m", "cli", "", "notification", 1, 0)
    assert scope_request("acme", AGENTS_ACTOR, BroadcastRequest(message)).agent_prefix == "acme:"
    assert scope_request("acme", RAFT_ACTOR, StatusQuery(digest=True)) == StatusQuery()


def test_every_field_of_a_request_a_tenant_may_send_is_scoped_or_passed_on():
    """protocols/tenants.py rebuilds each request it lets through field by field: a field added
    to one of them fails here until it is scoped or passed on there (a tenant's `agentflow
    status` once lost its summary that way)."""
    import dataclasses

    known = {
        SubmitWorkflowRequest: ("workflow", "client_id", "seq"),
        CancelWorkflowRequest: ("workflow_id", "client_id", "seq"),
        WorkflowStatusRequest: ("workflow_id", "tasks", "summary"),
        LockShow: ("key",),
        StatusQuery: ("digest",),
        RegisterAgentRequest: ("entry",),
        UnregisterAgentRequest: ("agent_id", "host_id"),
        SubscribeRequest: ("agent_id", "host_id", "subscriptions"),
        DirectoryQuery: ("agent_ids",),
        AgentHostHeartbeat: ("host_id", "endpoint", "mailbox_depths", "messages_handled"),
    }
    for kind, fields in known.items():
        assert tuple(field.name for field in dataclasses.fields(kind)) == fields, kind.__name__


def test_what_a_tenant_may_not_send_is_forbidden_naming_the_request():
    for destination, body in [(RAFT_ACTOR, Propose(encode(Noop("x")))), (RAFT_ACTOR, Read("locks", {})),
                              (RAFT_ACTOR, Join("m4", "tcp://h:1", 0)), (RAFT_ACTOR, TransferLeadership(None)),
                              (OBSERVER_ACTOR, OverviewRequest()), (AGENTS_ACTOR, HistoryRequest(10, None, None)),
                              (LOCK_ACTOR, LockCall(Noop("x"))), (SCHEDULER_ACTOR, "hello"),
                              (SCHEDULER_ACTOR, LockShow("x")), ("worker", StatusQuery())]:
        refusal = scope_request("acme", destination, body)
        assert isinstance(refusal, ErrorRecord) and refusal.kind == "forbidden", (destination, body)
        assert type(body).__name__ in refusal.message and "acme" in refusal.message
    # An agent's entry must point at a host with one of the tenant's own keys.
    entry = AgentEntry("solver", "host-1", "tcp://h:1", "tcp://h:2", "", [], "someone-else's")
    assert scope_request("acme", AGENTS_ACTOR, RegisterAgentRequest(entry), {KEY}).kind == "forbidden"
    assert scope_request("acme", LOCK_ACTOR, LockShow(7)).kind == "bad_request"
    # Records of the right type with parts of the wrong ones (the codec checks only simple fields).
    for destination, body in [(SCHEDULER_ACTOR, SubmitWorkflowRequest(Workflow("w", "", [{"agent": 1}, 5]), "c", 1)),
                              (AGENTS_ACTOR, DirectoryQuery([1])), (LOCK_ACTOR, LockCall(ClientCommand(1, 1, Release(
                                  "k", "o")))), (AGENTS_ACTOR, AgentHostHeartbeat("h", "e", {1: 2}, None))]:
        assert scope_request("acme", destination, body).kind == "bad_request", body


def test_answers_show_the_tenants_own_rows_without_its_prefix():
    rows = [{"workflow_id": "acme:wf-1", "state": "running"}, {"workflow_id": "globex:wf-1", "state": "pending"},
            {"workflow_id": "wf-ops", "state": "completed"}]
    assert unscope_reply("acme", WorkflowStatusRequest(None), rows) == [{"workflow_id": "wf-1", "state": "running"}]
    assert unscope_reply("acme", WorkflowStatusRequest("acme:wf-1"), rows[0])["workflow_id"] == "wf-1"
    applied = {"ok": False, "reason": "workflow 'acme:wf-1' already exists", "ready": ["acme:wf-1/a"],
               "released": [], "finished": ["acme:wf-1"]}
    assert unscope_reply("acme", SubmitWorkflowRequest(workflow("acme:wf-1"), "c", 1), applied) == {
        "ok": False, "reason": "workflow 'wf-1' already exists", "ready": ["wf-1/a"], "released": [],
        "finished": ["wf-1"]}

    infos = [LockInfo("acme:db", "me", 5, {}, 0, 10, []), LockInfo("globex:db", "them", 6, {}, 0, 10, [])]
    assert unscope_reply("acme", LockShow(None), infos) == [LockInfo("db", "me", 5, {}, 0, 10, [])]
    assert unscope_reply("acme", LockShow("acme:db"), infos[0]).key == "db"
    assert unscope_reply("acme", LockShow("acme:free"), None) is None
    assert unscope_reply("acme", LockCall(Release("acme:db", "me")), LockGranted("acme:db", "me", 5, 10)).key == "db"

    entries = [AgentEntry("acme:solver", "acme:h1", "e", "p", "acme:solvers", [], KEY, "agent/solver"),
               AgentEntry("globex:solver", "globex:h2", "e2", "p2", "", [], "other", "agent/solver"),
               AgentEntry("ops-agent", "h3", "e3", "p3", "", [], "")]
    view = unscope_reply("acme", DirectoryQuery(None), DirectoryView(7, entries, {"acme:solver": {"mailbox_depth": 1},
                                                                                  "globex:solver": {}}))
    assert view.version == 7 and view.stats == {"solver": {"mailbox_depth": 1}}
    assert [(e.agent_id, e.host_id, e.group, e.actor) for e in view.entries] == [("solver", "h1", "solvers",
                                                                                  "agent/solver")]
    assert unscope_reply("acme", RegisterAgentRequest(entries[0]), {"ok": True, "replaced": "acme:h1"})["replaced"] == "h1"
    assert unscope_error("acme", ErrorRecord("unknown_workflow", "no workflow 'acme:wf-9'")).message == \
        "no workflow 'wf-9'"
    assert unscope_reply("acme", LockShow("acme:x"), Redirect("m1", "tcp://h:1")) == Redirect("m1", "tcp://h:1")


def _state_with(workflows: list[str], locks: list[str]) -> ControlState:
    state = ControlState()
    index = 0
    for workflow_id in workflows:
        index += 1
        state.apply(index, encode(SubmitWorkflow(workflow(workflow_id, TaskNode("t", command="sleep 9")), 1000)))
    for key in locks:
        index += 1
        state.apply(index, encode(Acquire(key, "me", 60_000, {}, 1000)))
    return state


def test_quotas_count_what_the_tenant_holds_in_the_applied_state():
    state = _state_with(["acme:a", "acme:b", "globex:a", "ops"], ["acme:x", "acme:y", "globex:x", "ops"])
    quotas = Quotas(pending_workflows=2, locks_held=2)
    submit = SubmitWorkflowRequest(workflow("acme:c"), "acme:client", 1)
    refusal = quota_refusal("acme", submit, quotas, state)
    assert refusal.kind == "quota_exceeded" and "pending_workflows=2" in refusal.message and "acme" in refusal.message
    assert quota_refusal("globex", SubmitWorkflowRequest(workflow("globex:c"), "globex:c", 1), quotas, state) is None
    assert quota_refusal("acme", submit, Quotas(pending_workflows=3), state) is None
    # A workflow that exists already is refused as such, not counted again (a retry of an accepted submit).
    assert quota_refusal("acme", SubmitWorkflowRequest(workflow("acme:a"), "acme:client", 1), quotas, state) is None

    acquire = LockCall(ClientCommand("acme:c", 1, Acquire("acme:z", "me", 1000, {}, 0)))
    refusal = quota_refusal("acme", acquire, quotas, state)
    assert refusal.kind == "quota_exceeded" and "locks_held=2" in refusal.message
    renewal = LockCall(ClientCommand("acme:c", 2, Acquire("acme:x", "me", 1000, {}, 0)))
    assert quota_refusal("acme", renewal, quotas, state) is None  # held already: no new lease
    assert quota_refusal("acme", LockCall(Release("acme:x", "me")), quotas, state) is None
    assert quota_refusal("acme", acquire, Quotas(), state) is None


def test_tenant_names_and_quota_files():
    assert check_tenant_name("acme-2.eu_west") == "acme-2.eu_west"
    for bad in ("", "-x", "a b", "a:b", "a/b", "x" * 65, 7):
        with pytest.raises(ValueError):
            check_tenant_name(bad)
    assert parse_quotas({"pending_workflows": 10, "locks_held": 5, "running_tasks": 4}) == Quotas(4, 10, 5)
    assert parse_quotas(None) == Quotas() and parse_quotas({"locks_held": None}) == Quotas()
    for bad, problem in [({"locks": 1}, "unknown quota 'locks'"), ({"locks_held": -1}, "non-negative"),
                         ({"locks_held": "5"}, "non-negative"), ([1], "a map")]:
        with pytest.raises(ValueError, match=problem):
            parse_quotas(bad, "acme/quotas.yaml")


# --------------------------------------------------------------------------- keys and nodes


def test_key_folders_say_whose_key_is_whose(tmp_path):
    from runtime.security import AuthorizedKeys, CurveKeys, KeyFileError, generate_keys

    ops, _ = generate_keys(tmp_path, "ops")
    alice, _ = generate_keys(tmp_path / "acme", "alice")
    masters, _ = generate_keys(tmp_path / "acme", "masters")  # misplaced: the masters' key is an operator's
    generate_keys(tmp_path / "..data", "mounted")  # a Kubernetes Secret's hidden folder is no tenant
    (tmp_path / "acme" / "quotas.yaml").write_text("locks_held: 3\n")
    (tmp_path / "globex").mkdir()
    masters_key = masters.read_bytes().split(b'public-key = "')[1][:40]
    found = AuthorizedKeys.load(tmp_path, frozenset({masters_key}))
    by_owner = sorted((owner or "", key) for key, owner in found.tenants.items())
    assert [owner for owner, _ in by_owner] == ["", "", "acme"]
    assert masters_key in {key for owner, key in by_owner if owner == ""}
    assert found.quotas == {"acme": Quotas(locks_held=3), "globex": Quotas()}
    (tmp_path / "masters.key").write_text(masters.read_text())  # in two folders: an operator's in both
    assert CurveKeys.load(tmp_path / "acme" / "masters.key_secret", None, tmp_path).admit == {masters_key}
    (tmp_path / "masters.key").unlink()

    for name, mistake, problem in [("acme", ("quotas.yaml", "locks: 1"), "unknown quota"),
                                   ("a b", ("x.key", ops.read_text()), "bad tenant name"),
                                   ("globex", ("copy.key", alice.read_text()), "two owners")]:
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / mistake[0]).write_text(mistake[1])
        with pytest.raises(KeyFileError, match=problem):
            AuthorizedKeys.load(tmp_path)
        (tmp_path / name / mistake[0]).unlink()
        if name == "a b":
            (tmp_path / name).rmdir()
        if name == "acme":
            (tmp_path / "acme" / "quotas.yaml").write_text("locks_held: 3\n")


def test_a_host_takes_its_own_tenants_and_operators_messages_and_events_only(tmp_path):
    """In-process nodes with CURVE: acme's agent host answers alice (acme) and an operator, not
    bob (globex), and nothing but agents; its events reach acme and operators, not globex; a
    mistake in the keys on reload keeps the keys read before."""
    from agentflow import Actor, Node
    from runtime.future import RemoteError
    from runtime.security import CurveKeys, generate_keys
    from tests.procs import wait_for

    class Echo(Actor):
        def receive(self, message):
            return message

    class Inbox(Actor):
        def __init__(self):
            super().__init__()
            self.events = []

        def receive(self, message):
            self.events.append(message)

    authorized = tmp_path / "authorized"
    generate_keys(tmp_path, "masters")
    generate_keys(authorized, "ops")
    for tenant, names in (("acme", ("host", "alice")), ("globex", ("bob",))):
        for name in names:
            generate_keys(authorized / tenant, name)
    masters_key = tmp_path / "masters.key"

    def keys(path, directory=None):
        return CurveKeys.load(path, masters_key, directory)

    host_keys = keys(authorized / "acme" / "host.key_secret", authorized)
    with Node("host", curve=host_keys) as host, \
            Node("alice", curve=keys(authorized / "acme" / "alice.key_secret", authorized)) as alice, \
            Node("bob", curve=keys(authorized / "globex" / "bob.key_secret", authorized)) as bob, \
            Node("ops", curve=keys(authorized / "ops.key_secret", authorized)) as ops:
        host.spawn(Echo, name="agent/echo")
        host.spawn(Echo, name="echo")
        for node in (alice, bob, ops):
            node.transport.know_server_key(host.endpoint, host_keys.public_key)
            node.transport.know_server_key(host.pub_endpoint, host_keys.public_key)

        def ask(node, actor):
            return node.ref(host.endpoint, actor).ask("hi", timeout_s=5).get()

        assert ask(alice, "agent/echo") == "hi" and ask(ops, "agent/echo") == "hi" and ask(ops, "echo") == "hi"
        for actor in ("agent/echo", "echo"):
            _refused(lambda: ask(bob, actor), "forbidden", "globex")
        _refused(lambda: ask(alice, "echo"), "forbidden", "acme")
        assert host.stats()["rejected_forbidden"] == 3

        inboxes = {node.node_id: node.spawn(Inbox, name="inbox") for node in (alice, bob, ops)}
        for node in (alice, bob, ops):
            node.subscribe(host.pub_endpoint, "news", inboxes[node.node_id])
        wait_for(lambda: host.publish("news", 1) or (len(alice.actor("inbox").events) >= 3
                                                     and len(ops.actor("inbox").events) >= 3), 10,
                 interval_s=0.05, what="acme and the operator to get the host's events")
        assert bob.actor("inbox").events == [] and host.transport.gatekeeper.denied >= 1

        gatekeeper = host.transport.gatekeeper
        (authorized / "acme" / "quotas.yaml").write_text("nonsense: 1\n")
        assert gatekeeper.reload() == 5  # alice, bob, ops, the host and the masters' key, as before
        assert gatekeeper.tenant_of(host_keys.public_key) == "acme" and gatekeeper.quotas["acme"] == Quotas()
        with pytest.raises(RemoteError):
            ask(bob, "agent/echo")


def test_an_answer_counts_only_on_the_connection_its_ask_went_out_on():
    """Correlation ids are sequential: a REPLY that any peer (a tenant's key on a master, say)
    sends to a node's ROUTER for one of its pending asks settles nothing; the real answer does."""
    import zmq

    from agentflow import Actor, Node
    from protocols.wire import REPLY, encode_frame
    from tests.procs import wait_for

    class Later(Actor):
        def __init__(self):
            super().__init__()
            self.pending = []

        def receive(self, message):
            self.pending.append(self.defer())
            return self.pending[-1]

    with Node("asker") as asker, Node("answerer") as answerer:
        answerer.spawn(Later, name="later")
        answer = asker.ref(answerer.endpoint, "later").ask("question", timeout_s=20)
        later = answerer.actor("later")
        wait_for(lambda: later.pending, 10, what="the question to arrive")
        (correlation_id,) = asker.transport._asks
        context = zmq.Context()
        forger = context.socket(zmq.DEALER)
        try:
            forger.connect(asker.endpoint)
            forger.send(encode_frame("forger", "", [(REPLY, "", "", correlation_id, "forged")]))
            wait_for(lambda: asker.stats().get("misrouted_replies"), 10, what="the forged answer to be counted")
        finally:
            forger.close(linger=0)
            context.term()
        assert not answer.done()
        later.pending[0].resolve("the real answer")
        assert answer.get(10) == "the real answer"


# --------------------------------------------------------------------------- real processes


def _tenant_keys(tmp_path):
    """The masters' key; in authorized/: the operators' (a worker, ops), acme's (alice, its agent
    host) and globex's (bob, its agent host); acme's quotas."""
    from runtime.security import generate_keys

    keys, authorized = tmp_path / "keys", tmp_path / "keys" / "authorized"
    generate_keys(keys, "masters")
    for folder, names in ((authorized, ("workers", "ops")), (authorized / "acme", ("alice", "acme-host")),
                          (authorized / "globex", ("bob", "globex-host"))):
        for name in names:
            generate_keys(folder, name)
    (authorized / "acme" / "quotas.yaml").write_text("pending_workflows: 2\nlocks_held: 2\n")
    return keys, authorized


def _secret(authorized, who: str):
    return next(authorized.rglob(f"{who}.key_secret"))


def _refused(call, kind: str, *words: str):
    from runtime.future import RemoteError

    with pytest.raises(RemoteError) as refusal:
        call()
    assert refusal.value.kind == kind, refusal.value
    for word in words:
        assert word in refusal.value.message, refusal.value.message
    return refusal.value


@pytest.mark.integration
def test_two_tenants_and_an_operator_on_one_cluster(tmp_path):
    """Three masters and a worker with CURVE, two tenants and an operator: neither tenant reads,
    cancels, locks or reaches the other's names; listings show each its own; a tenant proposes
    no raw command; quota refusals name the quota (also through the CLI), and SIGHUP reads new
    quotas and new tenants; the operator sees everything."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from agentflow import AgentCommunication, AgentMessage, Client, DistributedLock, Node, parse_workflow
    from runtime.security import CurveKeys, generate_keys
    from tests.procs import REPO, running_cluster, wait_for

    keys, authorized = _tenant_keys(tmp_path)
    masters_key = keys / "masters.key"

    def curve(who):
        return CurveKeys.load(_secret(authorized, who), masters_key)

    def as_node(who):
        return ["--curve-secret-key", str(_secret(authorized, who)), "--curve-server-key", str(masters_key)]

    def wf(workflow_id, **task):
        return parse_workflow(json.dumps({"workflow": {"id": workflow_id, "tasks": [
            {"task_id": "t", **(task or {"command": "true"})}]}}))

    master_options = ["--curve-secret-key", str(keys / "masters.key_secret"), "--authorized-keys", str(authorized)]
    with running_cluster(tmp_path / "cluster", curve=curve("ops"), masters=3, workers=1, first_port=13000,
                         master_options=master_options, worker_options=as_node("workers")) as (local, ops), \
            Client(local.master_url, timeout_s=15, curve=curve("alice")) as alice, \
            Client(local.master_url, timeout_s=15, curve=curve("bob")) as bob:
        host_options = ["--authorized-keys", str(authorized)]
        local.add_agent("tests.agentfuncs:Echo", "helper", as_node("acme-host") + host_options, listed_as="acme:helper")
        local.add_agent("tests.agentfuncs:Recorder", "helper", as_node("globex-host") + host_options,
                        listed_as="globex:helper")

        # The same names in two tenants are two things; each lists only its own, without its prefix.
        for client in (alice, bob):
            client.submit_workflow(wf("wf-shared"))
            assert client.wait_workflow("wf-shared", timeout_s=60)["state"] == "completed"
        assert [row["workflow_id"] for row in bob.workflow_status()] == ["wf-shared"]
        everything = {row["workflow_id"] for row in ops.workflow_status()}
        assert {"acme:wf-shared", "globex:wf-shared"} <= everything

        # Neither can read or cancel the other's workflow, whatever name it tries.
        alice.submit_workflow(wf("wf-long", command="sleep 60"))
        _refused(lambda: bob.workflow_status("acme:wf-long"), "unknown_workflow")
        assert not bob.cancel_workflow("acme:wf-long")["ok"]
        assert not bob.cancel_workflow("wf-long")["ok"]
        assert alice.workflow_status("wf-long", tasks=False)["state"] in ("pending", "running")

        # Locks: the same key in two tenants; neither can release, renew or see the other's.
        alice_lock, bob_lock = DistributedLock(alice, "alice", 30), DistributedLock(bob, "bob", 30)
        assert alice_lock.acquire("deploy") and bob_lock.acquire("deploy")
        assert bob_lock.check_lock("deploy").holder == "bob" and bob_lock.check_lock("acme:deploy") is None
        assert [info.key for info in bob_lock.list_locks()] == ["deploy"]
        intruder = DistributedLock(bob, "alice", 30)  # even under alice's owner name
        assert not intruder.release("acme:deploy") and not intruder.renew("acme:deploy")
        assert alice_lock.check_lock("deploy").holder == "alice"
        operator_view = {info.key: info.holder for info in DistributedLock(ops, "ops").list_locks()}
        assert operator_view["acme:deploy"] == "alice" and operator_view["globex:deploy"] == "bob"

        # Agents: each tenant reaches its own "helper"; not the other's, even straight at its host.
        with Node("alice-node", master_urls=local.master_url, curve=curve("alice")) as node:
            comm = AgentCommunication(node, "alice")
            assert comm.request("helper", 1, timeout_ms=5000).content == {"echo": 1, "by": "helper"}
            assert [e.agent_id for e in comm.agents().entries] == ["helper"]
        with Node("bob-node", master_urls=local.master_url, curve=curve("bob")) as node:
            assert "received" in AgentCommunication(node, "bob").request("helper", "report", timeout_ms=5000).content
            with Node("ops-node", master_urls=local.master_url, curve=curve("ops")) as ops_node:
                operator = AgentCommunication(ops_node, "ops")
                assert {"acme:helper", "globex:helper"} <= {e.agent_id for e in operator.agents().entries}
                entry = operator.directory.lookup("acme:helper")
                # An operator's send reaches a tenant's agent by TENANT:ID (`agentflow send acme:helper`).
                operator.deliver(AgentMessage("m-ops", "ops", "acme:helper", "notification", {"hi": 1}, 0))
            node.transport.know_server_key(entry.endpoint, entry.public_key)
            message = AgentMessage("m-1", "bob", "helper", "task_request", 2, 0)
            _refused(lambda: node.ref(entry.endpoint, entry.actor).ask(message, timeout_s=5).get(), "forbidden", "globex")
        # A tenant's agent task runs on that tenant's agent (the operator's worker asks it).
        alice.submit_workflow(wf("wf-agent", agent="helper", args=[1]))
        done = alice.wait_workflow("wf-agent", timeout_s=60)
        assert done["state"] == "completed" and done["tasks"]["t"]["result"]["by"] == "helper", done

        # No raw Raft commands, no membership changes, no leadership transfer for a tenant.
        from protocols.control import Noop

        _refused(lambda: alice.propose(Noop("x")), "forbidden", "Propose", "acme")
        _refused(lambda: alice.read("locks"), "forbidden", "Read")
        _refused(lambda: alice.add_master("m9", "tcp://127.0.0.1:1", 0), "forbidden", "Join")
        _refused(lambda: alice.remove_master("master-1"), "forbidden", "RemoveMember")
        assert alice.cluster_status()["leader"]  # the cluster's own status is not secret

        # Quotas (acme: 2 unfinished workflows, 2 locks held) name the quota; globex has none.
        alice.submit_workflow(wf("wf-long-2", command="sleep 60"))
        _refused(lambda: alice.submit_workflow(wf("wf-3")), "quota_exceeded", "pending_workflows=2")
        bob.submit_workflow(wf("wf-long", command="sleep 60"))
        bob.submit_workflow(wf("wf-long-2", command="sleep 60"))
        bob.submit_workflow(wf("wf-3"))
        assert alice_lock.acquire("second")
        _refused(lambda: alice_lock.acquire("third"), "quota_exceeded", "locks_held=2")
        assert alice_lock.acquire("deploy")  # a renewal takes no new lock
        env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_MASTER_URL=local.master_url,
                   AGENTFLOW_CURVE_SECRET_KEY=str(_secret(authorized, "alice")),
                   AGENTFLOW_CURVE_SERVER_KEY=str(masters_key))
        cli = subprocess.run([sys.executable, "-m", "agentflow.cli", "lock", "acquire", "third", "--owner", "alice"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 1 and "quota locks_held=2" in cli.stderr and "\n" not in cli.stderr.strip(), cli
        assert alice_lock.release("second") and alice_lock.acquire("third")

        # SIGHUP: the masters read new quotas and new tenants.
        (authorized / "acme" / "quotas.yaml").write_text("pending_workflows: 3\n")
        generate_keys(authorized / "initech", "carol")
        for master in local.masters:
            os.kill(master.proc.pid, signal.SIGHUP)
        wait_for(lambda: _submitted(alice, wf("wf-3")), 20, what="acme's new quota to apply")
        for client in (alice, bob):
            for workflow_id in ("wf-long", "wf-long-2"):
                assert client.cancel_workflow(workflow_id)["ok"]
        with Client(local.master_url, timeout_s=15, curve=curve("carol")) as carol:
            wait_for(lambda: _listed(carol), 20, what="initech to be admitted")
            carol.submit_workflow(wf("wf-shared"))
            assert carol.wait_workflow("wf-shared", timeout_s=60)["state"] == "completed"
            assert [row["workflow_id"] for row in carol.workflow_status()] == ["wf-shared"]
        assert "initech:wf-shared" in {row["workflow_id"] for row in ops.workflow_status()}


def _submitted(client, workflow) -> bool:
    from runtime.future import RemoteError

    try:
        client.submit_workflow(workflow)
        return True
    except RemoteError as exc:
        assert exc.kind == "quota_exceeded", exc
        return False


def _listed(client):
    from runtime.client import ClusterUnavailable
    from runtime.future import RemoteError

    try:
        return client.workflow_status() == []
    except (ClusterUnavailable, RemoteError):
        return False


def test_hostile_requests_and_answers_never_raise():
    """Any record (the fuzzers' generator: right types with wrong parts) is scoped or refused,
    and any answer to a scoped request is un-scoped, without raising."""
    from tests.fuzz.frames import HostileFrames

    destinations = (SCHEDULER_ACTOR, LOCK_ACTOR, AGENTS_ACTOR, RAFT_ACTOR, OBSERVER_ACTOR)
    for seed in range(10):
        frames = HostileFrames(seed)
        for _ in range(200):
            body = frames._random_record(depth=0)
            for destination in destinations:
                scoped = scope_request("acme", destination, body, {KEY})
                if not isinstance(scoped, ErrorRecord):
                    unscope_reply("acme", scoped, frames._random_record(depth=0))
                    unscope_reply("acme", scoped, frames._random_value(depth=0))
                    quota_refusal("acme", scoped, Quotas(0, 0, 0), ControlState())
