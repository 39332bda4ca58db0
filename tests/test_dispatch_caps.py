"""Tenants' caps on running tasks (the ``running_tasks`` quota), on the pure dispatch state: a
capped tenant's tasks wait in the queue, the others pass them, priorities hold within what its
cap allows, a raised cap releases them, a finish or a worker's death returns a slot, and a
tenant at its cap costs a round nothing."""

from __future__ import annotations

import pytest

from protocols.tenant_caps import CappedQueues, TenantCaps, tenant_of
from protocols.queue import PriorityTaskQueue
from protocols.rounds import Candidate, Queued
from protocols.registry import TaskRequirements
from protocols.workflow_spec import TaskNode
from tests.dispatchsim import DispatchSim, task


def running(sim: DispatchSim, *workers: str) -> list[str]:
    return sorted(key for worker in workers for key in sim.running(worker))


def of(tenant: str, keys: list[str]) -> list[str]:
    return [key for key in keys if key.startswith(tenant + ":")]


def test_a_tenant_is_the_prefix_of_its_workflow_ids():
    assert tenant_of("acme:wf/t") == "acme" and tenant_of("acme:wf") == "acme"
    assert tenant_of("wf/t") is None and tenant_of("wf/t:x") is None  # a ':' in a task id names no tenant


def test_a_capped_tenants_tasks_wait_and_the_others_pass_them():
    sim = DispatchSim()
    sim.worker("w", slots=6)
    sim.caps({"acme": 1})
    sim.submit("acme:wf", [task(f"a{i}", priority="urgent") for i in range(4)])
    sim.submit("globex:wf", [task("g1", priority="low"), task("g2", priority="low")])
    sim.submit("wf", [task("ops", priority="low")])  # an operator's: never capped
    assert running(sim, "w") == ["acme:wf/a0", "globex:wf/g1", "globex:wf/g2", "wf/ops"]
    assert [sim.state_of("acme:wf", f"a{i}") for i in range(1, 4)] == ["ready"] * 3  # waiting, not failed
    assert sim.queue_stats()["total"] == 3
    for step in range(1, 4):  # each finish lets the next one go, in FIFO order within the priority
        sim.finish("w", "acme:wf", f"a{step - 1}")
        assert of("acme", running(sim, "w")) == [f"acme:wf/a{step}"]
    sim.finish("w", "acme:wf", "a3")
    assert sim.control.workflows.get("acme:wf").state.value == "completed"


def test_priorities_hold_within_what_the_cap_allows():
    sim = DispatchSim()
    sim.worker("w", slots=8)
    sim.caps({"acme": 2})
    sim.submit("acme:blocker", [task("b1"), task("b2")])  # acme is at its cap
    sim.submit("acme:wf", [task("low", priority="low"), task("high", priority="high"),
                           task("urgent", priority="urgent"), task("high2", priority="high"),
                           task("medium", priority="medium")])
    order = []
    for blocker in ("b1", "b2"):
        sim.finish("w", "acme:blocker", blocker)
    for _ in range(5):
        now = of("acme", running(sim, "w"))
        assert len(now) <= 2
        first = next(key for key in sim.running("w") if key not in order)
        order.append(first)
        sim.finish("w", "acme:wf", first.split("/")[1])
    assert order[:2] == ["acme:wf/urgent", "acme:wf/high"]
    assert [key.split("/")[1] for key in order] == ["urgent", "high", "high2", "medium", "low"]


def test_a_raised_or_removed_cap_releases_the_waiting_tasks_at_the_next_round():
    sim = DispatchSim()
    sim.worker("w", slots=8)
    sim.caps({"acme": 1, "globex": 1})
    sim.submit("acme:wf", [task(f"a{i}") for i in range(4)])
    sim.submit("globex:wf", [task(f"g{i}") for i in range(3)])
    assert len(of("acme", running(sim, "w"))) == 1 and len(of("globex", running(sim, "w"))) == 1
    sim.caps({"acme": 3, "globex": 1})  # SIGHUP with a raised quota
    assert len(of("acme", running(sim, "w"))) == 3 and len(of("globex", running(sim, "w"))) == 1
    sim.caps({})  # no quota left: unlimited
    assert len(of("acme", running(sim, "w"))) == 4 and len(of("globex", running(sim, "w"))) == 3


def test_a_lowered_cap_stops_nothing_that_runs_and_holds_new_dispatches_until_under_it():
    sim = DispatchSim()
    sim.worker("w", slots=8)
    sim.caps({"acme": 3})
    sim.submit("acme:wf", [task(f"a{i}") for i in range(5)])
    assert running(sim, "w") == ["acme:wf/a0", "acme:wf/a1", "acme:wf/a2"]
    sim.caps({"acme": 1})
    assert running(sim, "w") == ["acme:wf/a0", "acme:wf/a1", "acme:wf/a2"]  # nothing is stopped
    sim.finish("w", "acme:wf", "a0")
    sim.finish("w", "acme:wf", "a1")
    assert running(sim, "w") == ["acme:wf/a2"]  # still at its cap of 1
    sim.finish("w", "acme:wf", "a2")
    assert running(sim, "w") == ["acme:wf/a3"]


def test_a_workers_death_returns_its_tenants_slot():
    sim = DispatchSim()
    sim.worker("w1", slots=4)
    sim.caps({"acme": 1})
    sim.submit("acme:wf", [task("a0"), task("a1")])
    assert running(sim, "w1") == ["acme:wf/a0"]
    sim.worker("w2", slots=4)
    sim.goodbye("w1")  # (missed heartbeats go the same way: a RequeueTask, committed)
    assert len(sim.running("w2")) == 1 and sim.running("w1") == []
    sim.finish("w2", "acme:wf", sim.running("w2")[0].split("/")[1])
    assert len(sim.running("w2")) == 1  # the other one, once the first finished


def test_a_report_frees_the_tenants_slot_for_a_dependent_in_the_same_entry():
    """The fast path: the tasks a completion makes ready go straight to the registry (the queue
    is empty), and no more of them than the tenant's cap allows."""
    sim = DispatchSim()
    sim.worker("w", slots=8)
    sim.caps({"acme": 1})
    sim.submit("acme:wf", [task("root"), task("c1", ["root"], "high"), task("c2", ["root"], "urgent"),
                           task("c3", ["root"])])
    offered = []
    sim.on_place = lambda request, reply: offered.append([candidate.key for candidate in request.place])
    sim.finish("w", "acme:wf", "root")
    assert offered == [["acme:wf/c2"]]  # the others were not even offered to the registry
    assert sim.rounds[-1] == ["acme:wf/c2"]  # with root's FinishTask, in one entry
    assert running(sim, "w") == ["acme:wf/c2"]
    sim.finish("w", "acme:wf", "c2")
    assert running(sim, "w") == ["acme:wf/c1"]


def test_a_capped_tenants_queue_costs_nothing_and_does_not_hold_up_the_rest():
    """Its tasks wait in a queue of their own: a round does not scan them, and while the tenant
    is at its cap nothing is retried on every tick."""
    sim = DispatchSim()
    sim.worker("w", slots=4)
    sim.caps({"acme": 1})
    sim.submit("acme:wf", [task(f"a{i}", priority="urgent") for i in range(2000)])
    queues = sim.queue.capped.queues
    assert len(queues["acme"]) == 1999 and len(sim.queue.queue) == 0
    before = dict(sim.requests)
    for _ in range(20):
        sim.advance(100)
    assert sim.requests["queue"] == before["queue"]  # no round was tried: nothing could go
    sim.submit("globex:wf", [task("g", priority="low")])
    assert running(sim, "w") == ["acme:wf/a0", "globex:wf/g"]
    sim.finish("w", "acme:wf", "a0")
    assert of("acme", running(sim, "w")) == ["acme:wf/a1"]


def test_a_new_leader_counts_the_tenants_running_tasks_from_the_log():
    sim = DispatchSim()
    sim.worker("w1", slots=4)
    sim.caps({"acme": 1})
    sim.submit("acme:wf", [task("a0"), task("a1")])
    held = sim.holding("w1")
    sim.new_leader()  # a new leader, the same caps
    sim.worker("w2", slots=4)  # a worker that runs nothing of acme's comes first
    assert sim.running("w2") == []
    sim.worker("w1", slots=4)
    sim.heartbeat("w1", running=[list(a.key) for a in held])
    assert running(sim, "w1", "w2") == ["acme:wf/a0"]
    sim.finish("w1", "acme:wf", "a0")
    assert running(sim, "w1", "w2") == ["acme:wf/a1"]


def test_agent_tasks_count_toward_the_cap_like_any_other():
    sim = DispatchSim()
    sim.worker("w", slots=4)
    sim.caps({"acme": 1})
    sim.submit("acme:wf", [TaskNode("ask", agent="acme:solver"), task("run")])
    assert running(sim, "w") == ["acme:wf/ask"]
    sim.finish("w", "acme:wf", "ask")
    assert running(sim, "w") == ["acme:wf/run"]


def test_the_dispatch_counts_what_holds_a_slot_and_the_queue_lends_within_the_allowance():
    caps = TenantCaps({"acme": 2}, ["acme:a/1", "globex:b/1", "c/1"])
    assert caps.allowance() == {"acme": 1}
    assert caps.admit("acme:a/2") and not caps.admit("acme:a/3") and caps.admit("globex:b/2")
    caps.discard("acme:a/1")
    assert caps.allowance() == {"acme": 1}

    main = PriorityTaskQueue()
    queues = CappedQueues(main)

    def item(key, priority, now_ms=0):
        return Queued(Candidate(key, TaskRequirements()), priority, now_ms)

    for index, (key, priority) in enumerate([("acme:a/1", 500), ("b/1", 500), ("acme:a/2", 900), ("b/2", 100),
                                             ("acme:a/3", 500)]):
        queues.enqueue(item(key, priority, now_ms=index))
    queues.cap(["acme"])  # entries move with their places
    assert len(main) == 2 and len(queues) == 3
    lent, full = queues.lend(4, {"acme": 2})
    assert [entry.key for entry in lent] == ["acme:a/2", "acme:a/1", "b/1", "b/2"] and queues.held(full) == 1
    for entry in lent:
        queues.of(entry.key).restore(entry)
    lent, full = queues.lend(4, {})
    assert [entry.key for entry in lent] == ["b/1", "b/2"] and queues.held(full) == 3
    queues.cap([])  # no longer capped: back in the main queue, in their places
    assert len(queues) == 0 and [entry.key for entry in main.entries()] == ["acme:a/2", "acme:a/1", "acme:a/3"]


def _lost_dispatch(sim: DispatchSim) -> list:
    """acme (cap 1): a's dispatch was sent to w and not committed (returned: it may commit
    late); b (higher) waits for a; a new leader takes over, with both ready."""
    sim.auto_commit = False
    sim.worker("w", slots=2)
    sim.caps({"acme": 1})
    sim.submit("acme:wf", [task("a", priority="low")])
    sim.commit()  # the submission; a's dispatch is proposed and sent, not committed
    late, sim.proposals = sim.proposals, []
    sim.submit("acme:wf2", [task("b", priority="high")])
    sim.commit()
    assert sim.proposals == [] and sim.state_of("acme:wf2", "b") == "ready"  # acme is at its cap
    sim.auto_commit = True
    sim.new_leader()
    return late


def test_a_new_leader_cancels_the_run_of_a_lost_dispatch_and_dispatches_in_order_within_the_cap():
    """The lost dispatch's run is cancelled, not adopted (it may have used results that never
    committed); only runs of earlier terms, so the same attempt number dispatched again is spared."""
    sim = DispatchSim()
    _lost_dispatch(sim)
    with sim.one_batch():
        sim.worker("w", slots=2)
        ack = sim.heartbeat("w", running=[["acme:wf", "a", 1]])
    assert ack.value.cancel == [["acme:wf", "a", 1, 2]]
    sim.worker("w2", slots=2)
    assert running(sim, "w", "w2") == ["acme:wf2/b"]  # the higher first; a waits for the cap
    [holder] = [worker for worker in ("w", "w2") if running(sim, worker)]
    sim.finish(holder, "acme:wf2", "b")
    [holder] = [worker for worker in ("w", "w2") if running(sim, worker)]
    assert running(sim, holder) == ["acme:wf/a"] and sim.given(holder, "acme:wf", "a").term == 2
    sim.finish(holder, "acme:wf", "a")
    assert sim.state_of("acme:wf", "a") == "completed"


def test_a_placement_whose_tenant_filled_up_during_its_round_goes_back_to_the_queue():
    sim = DispatchSim()
    late = _lost_dispatch(sim)
    sim.hold_queue_replies = True  # the round is in flight (it lent b) ...
    sim.worker("w", slots=2)
    sim.proposals = late
    sim.commit()  # ... when the previous leader's dispatch of a commits after all
    sim.hold_queue_replies = False
    sim.release_replies()
    assert running(sim, "w") == ["acme:wf/a"] and sim.state_of("acme:wf2", "b") == "ready"
    assert sim.queue_stats()["total"] == 1
    sim.finish("w", "acme:wf", "a")  # the committed dispatch's run (term 1) completes it
    assert running(sim, "w") == ["acme:wf2/b"]


def test_a_previous_leaders_dispatch_that_commits_late_counts_toward_the_cap():
    sim = DispatchSim()
    sim.auto_commit = False
    sim.worker("w", slots=2)
    sim.caps({"acme": 1})
    sim.submit("acme:wf", [task("a", priority="high"), task("b", priority="low")])
    sim.commit()  # the submission; a's dispatch is proposed and sent ...
    late = sim.proposals[:]
    sim.proposals.clear()
    sim.new_leader()
    sim.proposals = late
    sim.commit()  # ... and commits under the new leader
    sim.auto_commit = True
    sim.worker("w", slots=2)
    sim.heartbeat("w", running=[["acme:wf", "a", 1]])
    assert running(sim, "w") == ["acme:wf/a"] and sim.state_of("acme:wf", "b") == "ready"
    sim.finish("w", "acme:wf", "a")
    assert running(sim, "w") == ["acme:wf/b"]


# --------------------------------------------------------------------------- real processes


def _ran(done: dict) -> list[tuple[float, float]]:
    """When each task of a completed workflow of ``timed`` tasks ran, by start."""
    assert done["state"] == "completed", done
    return sorted((task["result"]["start"], task["result"]["end"]) for task in done["tasks"].values())


def _overlapping(first: list, second: list) -> bool:
    return any(start < other_end and other_start < end
               for index, (start, end) in enumerate(first)
               for other_start, other_end in (second if second is not first else first[index + 1:]))


@pytest.mark.integration
def test_a_tenants_cap_on_running_tasks_through_real_processes(tmp_path):
    """A master and two workers with CURVE: acme (running_tasks: 1) never runs two tasks at
    once, its others wait ready, while globex's run alongside, several at once; after SIGHUP
    with a raised quota, acme's waiting tasks go at once."""
    import json
    import os
    import signal

    from agentflow import Client, parse_workflow
    from runtime.security import CurveKeys
    from tests.procs import running_cluster, wait_for
    from tests.test_tenants import _secret, _tenant_keys

    keys, authorized = _tenant_keys(tmp_path)
    quotas = authorized / "acme" / "quotas.yaml"
    quotas.write_text("running_tasks: 1\n")
    masters_key = keys / "masters.key"

    def curve(who):
        return CurveKeys.load(_secret(authorized, who), masters_key)

    def timed(workflow_id, count, seconds):
        return parse_workflow(json.dumps({"workflow": {"id": workflow_id, "tasks": [
            {"task_id": f"t{i}", "call": "tests.taskfuncs:timed", "args": [seconds]} for i in range(count)]}}))

    worker_options = ["--curve-secret-key", str(_secret(authorized, "workers")), "--curve-server-key",
                      str(masters_key), "--max-concurrent-tasks", "4"]
    master_options = ["--curve-secret-key", str(keys / "masters.key_secret"), "--authorized-keys", str(authorized)]
    with running_cluster(tmp_path / "cluster", curve=curve("ops"), masters=1, workers=2, first_port=19600,
                         master_options=master_options, worker_options=worker_options) as (local, _), \
            Client(local.master_url, timeout_s=15, curve=curve("alice")) as alice, \
            Client(local.master_url, timeout_s=15, curve=curve("bob")) as bob:
        alice.submit_workflow(timed("wf", 4, 0.5))
        bob.submit_workflow(timed("wf", 6, 0.5))
        seen = []

        def acme_done():
            status = alice.workflow_status("wf")
            states = [task["state"] for task in status["tasks"].values()]
            seen.append((states.count("running"), states.count("ready")))
            return status["state"] in ("completed", "failed")

        wait_for(acme_done, 60, interval_s=0.05, what="acme's workflow to finish")
        acme, globex = _ran(alice.wait_workflow("wf", timeout_s=60)), _ran(bob.wait_workflow("wf", timeout_s=60))
        for (_, end), (start, _) in zip(acme, acme[1:]):
            assert start >= end, acme  # one after another: never two at once
        assert max(running for running, _ in seen) == 1 and any(ready for _, ready in seen), seen  # waiting, ready
        assert _overlapping(globex, globex) and _overlapping(acme, globex), (acme, globex)

        # A raised quota (SIGHUP) lets acme's waiting tasks go at the next round.
        alice.submit_workflow(timed("wf-2", 3, 3.0))
        wait_for(lambda: [task["state"] for task in alice.workflow_status("wf-2")["tasks"].values()].count("running"),
                 30, what="acme's first task of wf-2 to run")
        quotas.write_text("running_tasks: 3\n")
        for master in local.masters:
            os.kill(master.proc.pid, signal.SIGHUP)
        raised = _ran(alice.wait_workflow("wf-2", timeout_s=60))
        assert _overlapping(raised, raised), raised
