"""The scheduling policy, tested on the pure dispatch state (with the queue and registry services),
in microseconds: placement, priorities on every path, retries, aging, draining, a worker's death,
a leader change, locality, memory pressure, overload, result limits, and batching."""

from __future__ import annotations

from protocols.dispatch import DispatchConfig
from protocols.dispatch_messages import LeadershipChanged
from protocols.registry import HealthCheckConfig
from protocols.tasks import TaskFinished
from tests.dispatchsim import DispatchSim, task

RANKED = [("low", "low"), ("medium", "medium"), ("urgent", "urgent"), ("high", "high"), ("low2", "low")]
EXPECTED = ["urgent", "high", "medium", "low", "low2"]


def names(keys: list[str]) -> list[str]:
    return [key.split("/", 1)[1] for key in keys]


def ranked(deps=()):
    return [task(name, deps, priority) for name, priority in RANKED]


def run_one_at_a_time(sim: DispatchSim, worker_id: str, limit: int = 50) -> list[str]:
    """Finish what ``worker_id`` runs, one task at a time, until it runs nothing; the order run."""
    order = []
    for _ in range(limit):
        held = sim.holding(worker_id)
        if not held:
            return order
        assert len(held) == 1
        order.append(held[0].task_id)
        sim.finish(worker_id, held[0].workflow_id, held[0].task_id)
    raise AssertionError("still running after the limit")


# --------------------------------------------------------------------------- placement


def test_placement_checks_capabilities_group_and_free_resources():
    sim = DispatchSim()
    sim.worker("cpu", slots=4, cpu=4, memory_mb=1000)
    sim.worker("gpu", slots=4, cpu=2, memory_mb=8000, gpus=2, group="gpus", capabilities=("cuda",))
    sim.submit("wf", [task("needs-cuda", capabilities=("cuda",)), task("in-group", group="gpus"),
                      task("big-memory", memory_mb=4000), task("many-cpus", cpu=3),
                      task("two-gpus", gpu=2), task("plain")])
    assert sim.running("gpu") == ["wf/needs-cuda", "wf/in-group", "wf/big-memory", "wf/two-gpus"]
    assert sim.running("cpu") == ["wf/many-cpus", "wf/plain"]
    env = {a.task_id: a.env for a in sim.assigned["gpu"]}
    assert env["two-gpus"] == {"CUDA_VISIBLE_DEVICES": "0,1"} and env["in-group"] == {}


def test_gpu_tasks_run_only_on_gpu_workers_and_wait_for_a_free_gpu():
    sim = DispatchSim()
    sim.worker("cpu", slots=8)
    sim.worker("gpu", slots=8, gpus=1)
    sim.submit("wf", [task("g1", gpu=1), task("g2", gpu=1), task("c1")])
    assert sim.running("gpu") == ["wf/g1"]
    assert sim.state_of("wf", "g2") == "ready"
    sim.finish("gpu", "wf", "g1")
    assert sim.running("gpu") == ["wf/g2"]
    assert all(a.task_id != "g2" for a in sim.assigned["cpu"])


def test_an_unplaceable_task_is_refused_at_submit_with_the_reason():
    sim = DispatchSim()
    sim.worker("small", cpu=2, gpus=0)
    ask = sim.submit("wf", [task("ok"), task("huge", gpu=4)])
    assert ask.value.kind == "unplaceable" and "huge" in ask.value.message and "GPU" in ask.value.message
    assert sim.control.workflows.get("wf") is None


def test_submissions_over_the_limits_are_refused_naming_the_limit_and_nothing_stored_is_lost():
    from protocols.client_commands import SubmissionLimits

    sim = DispatchSim(DispatchConfig(limits=SubmissionLimits(max_tasks_per_workflow=3, max_pending_workflows=2)))
    # no worker: nothing runs, submitted workflows stay pending
    ask = sim.submit("big", [task(f"t{i}") for i in range(4)])
    assert ask.value.kind == "limit_exceeded" and "4 tasks" in ask.value.message
    assert "--max-tasks-per-workflow" in ask.value.message and sim.control.workflows.get("big") is None
    assert sim.submit("one", [task("a")]).value.get("ok")
    assert sim.submit("two", [task("a"), task("b"), task("c")]).value.get("ok")
    ask = sim.submit("three", [task("a")])
    assert ask.value.kind == "limit_exceeded" and "2 workflows are pending" in ask.value.message
    assert "--max-pending-workflows" in ask.value.message
    assert sim.control.workflows.get("one") is not None and sim.control.workflows.get("three") is None
    sim.cancel("one")  # a finished workflow no longer counts
    assert sim.submit("three", [task("a")]).value.get("ok")


def test_a_submission_over_the_byte_limit_as_logged_is_refused_naming_the_limit():
    from protocols.client_commands import SubmissionLimits
    from protocols.workflow_spec import Workflow
    from protocols.workflow_table import CancelWorkflow, SubmitWorkflow

    limits = SubmissionLimits(max_workflow_bytes=1024)
    submission = SubmitWorkflow(Workflow("wf-big", "big", [task("a")]), 0)
    assert limits.size_refusal(submission, 1024) is None
    refusal = limits.size_refusal(submission, 3 << 20)
    assert refusal.kind == "limit_exceeded" and "'wf-big' is 3.0 MiB" in refusal.message
    assert "--max-workflow-bytes" in refusal.message
    assert limits.size_refusal(CancelWorkflow("wf-big", 0), 3 << 20) is None  # only submissions


def test_a_task_that_fits_nowhere_now_does_not_stop_those_behind_it():
    sim = DispatchSim()
    sim.worker("w", slots=4, cpu=4)
    sim.submit("wf-busy", [task("hog", cpu=3)])
    sim.submit("wf", [task("wide", cpu=2, priority="urgent"), task("narrow", cpu=1, priority="low")])
    assert sim.running("w") == ["wf-busy/hog", "wf/narrow"]
    sim.finish("w", "wf-busy", "hog")
    assert sim.running("w") == ["wf/narrow", "wf/wide"]


# --------------------------------------------------------------------------- priorities, four paths


def test_dispatch_round_takes_queued_tasks_by_priority():
    sim = DispatchSim()
    sim.worker("solo", slots=1)
    sim.submit("wf-blocker", [task("block")])
    sim.submit("wf", ranked())
    sim.finish("solo", "wf-blocker", "block")
    assert run_one_at_a_time(sim, "solo") == EXPECTED


def test_fast_path_dependents_of_a_completion_run_by_priority():
    sim = DispatchSim()
    sim.worker("solo", slots=1)
    sim.submit("wf", [task("block"), *ranked(("block",))])
    sim.finish("solo", "wf", "block")
    # urgent left with the completion, in the same entry as block's FinishTask
    assert sim.rounds[-1] == ["wf/urgent"]
    assert run_one_at_a_time(sim, "solo") == EXPECTED


def test_fast_path_candidates_are_merged_with_the_queue_in_priority_order():
    sim = DispatchSim()
    sim.worker("solo", slots=1)
    sim.submit("wf-a", [task("block"), task("child-low", ["block"], "low")])
    sim.submit("wf-b", [task("queued-high", priority="high")])
    sim.finish("solo", "wf-a", "block")
    assert sim.running("solo") == ["wf-b/queued-high"]
    sim.finish("solo", "wf-b", "queued-high")
    assert sim.running("solo") == ["wf-a/child-low"]


def test_a_requeued_task_after_a_worker_death_takes_its_place_by_priority():
    health = HealthCheckConfig(heartbeat_interval_ms=1000, max_missed_heartbeats=3)
    sim = DispatchSim(health=health)
    sim.worker("doomed", slots=1)
    sim.submit("wf-blocker", [task("block", priority="urgent")])
    sim.advance(10)
    sim.submit("wf", ranked())
    sim.worker("heir", slots=0)  # registered, takes nothing yet
    for _ in range(30):
        sim.advance(100)
        sim.heartbeat("heir")
    assert sim.state_of("wf-blocker", "block") == "ready"
    sim.worker("heir", slots=1)
    order = run_one_at_a_time(sim, "heir")
    # requeued after wf's urgent task had waited: FIFO among the two urgent ones
    assert order == ["urgent", "block", *EXPECTED[1:]]
    assert sim.control.workflows.get("wf-blocker").runs["block"].attempts == 2


def test_a_new_leader_rebuilds_the_queue_in_priority_order():
    sim = DispatchSim()
    sim.worker("solo", slots=1)
    sim.submit("wf-blocker", [task("block")])
    sim.submit("wf", ranked())
    sim.handle(LeadershipChanged(False, sim.control, sim.now_ms))
    sim.new_leader()
    ack = sim.heartbeat("solo", running=[["wf-blocker", "block", 1]])
    assert ack.value.known is False
    sim.worker("solo", slots=1)
    sim.heartbeat("solo", running=[["wf-blocker", "block", 1]])
    sim.finish("solo", "wf-blocker", "block")
    assert run_one_at_a_time(sim, "solo") == EXPECTED


# --------------------------------------------------------------------------- retries, aging, draining


def test_retry_penalty_orders_a_retry_behind_a_fresh_task_of_the_same_priority():
    sim = DispatchSim()
    sim.worker("solo", slots=1)
    sim.submit("wf", [task("block"), task("flaky", retries=1)])
    sim.finish("solo", "wf", "block")
    assert sim.running("solo") == ["wf/flaky"]
    sim.submit("wf-fresh", [task("fresh")])
    sim.finish("solo", "wf", "flaky", ok=False, error="boom")
    assert sim.running("solo") == ["wf-fresh/fresh"]
    sim.finish("solo", "wf-fresh", "fresh")
    assert sim.running("solo") == ["wf/flaky"]
    assert sim.control.workflows.get("wf").runs["flaky"].attempts == 2


def test_aging_lets_a_long_waiting_low_task_pass_a_fresh_high_one():
    sim = DispatchSim()
    sim.worker("solo", slots=1)
    sim.submit("wf-block", [task("block")])
    sim.submit("wf-old", [task("old-low", priority="low")])
    sim.now_ms += 51_000  # a low (250) task gains 10 points a second: 760 > 750 after 51 s
    sim.submit("wf-new", [task("new-high", priority="high")])
    sim.finish("solo", "wf-block", "block")
    assert sim.running("solo") == ["wf-old/old-low"]


def test_a_draining_worker_gets_no_new_tasks_and_its_refusals_are_requeued_without_a_failure():
    sim = DispatchSim()
    sim.worker("leaving", slots=2)
    sim.worker("staying", slots=0)
    sim.submit("wf", [task("a"), task("b")])
    assert sorted(sim.running("leaving")) == ["wf/a", "wf/b"]
    sim.heartbeat("leaving", draining=True)
    attempt = sim.attempt_on("leaving", "wf", "b")
    from protocols.tasks import ERROR_DRAINING

    sim.report("leaving", [TaskFinished("leaving", "wf", "b", attempt, False, None, None, ERROR_DRAINING, "", "", 0)])
    assert sim.state_of("wf", "b") == "ready"
    assert sim.control.workflows.get("wf").runs["b"].failures == 0
    sim.finish("leaving", "wf", "a")
    assert sim.running("leaving") == []
    sim.worker("staying", slots=2)
    assert sim.running("staying") == ["wf/b"]
    assert [row["status"] for row in sim.workers()] == ["draining", "active"]


def test_a_dead_workers_tasks_run_again_elsewhere_and_its_late_report_is_ignored():
    sim = DispatchSim(health=HealthCheckConfig(heartbeat_interval_ms=100, max_missed_heartbeats=3))
    sim.worker("a", slots=1)
    sim.submit("wf", [task("t")])
    assert sim.running("a") == ["wf/t"]
    sim.worker("b", slots=1)
    for _ in range(4):
        sim.advance(100)
        sim.heartbeat("b")
    assert sim.running("b") == ["wf/t"]
    sim.finish("a", "wf", "t")  # attempt 1, from the worker given up on
    assert sim.state_of("wf", "t") == "running"
    sim.finish("b", "wf", "t")
    assert sim.state_of("wf", "t") == "completed"


def test_a_goodbye_requeues_the_workers_running_tasks():
    sim = DispatchSim()
    sim.worker("a", slots=1)
    sim.submit("wf", [task("t")])
    sim.goodbye("a")
    assert sim.state_of("wf", "t") == "ready"
    assert [row["worker_id"] for row in sim.workers()] == []


# --------------------------------------------------------------------------- leader changes


def test_a_new_leader_keeps_claimed_runs_and_requeues_the_unlisted_and_the_unclaimed():
    sim = DispatchSim(DispatchConfig(claim_grace_ms=3000))
    sim.worker("w", slots=2, capabilities=("y",))
    sim.worker("zz-gone", slots=1, capabilities=("x",))
    sim.submit("wf", [task("claimed", capabilities=("y",)), task("lost", capabilities=("y",)),
                      task("orphan", capabilities=("x",))])
    assert sim.running("zz-gone") == ["wf/orphan"] and sorted(sim.running("w")) == ["wf/claimed", "wf/lost"]
    sim.new_leader()
    sim.worker("w", slots=2, capabilities=("y",))  # zz-gone never comes back
    attempts = lambda task_id: sim.control.workflows.get("wf").runs[task_id].attempts  # noqa: E731
    sim.heartbeat("w", running=[["wf", "claimed", 1]])
    assert attempts("lost") == 1  # heartbeats may leave before an assignment arrives: a grace
    sim.advance(2999)
    sim.heartbeat("w", running=[["wf", "claimed", 1]])
    assert attempts("lost") == 1 and attempts("orphan") == 1
    sim.advance(1)
    sim.heartbeat("w", running=[["wf", "claimed", 1]])
    assert attempts("lost") == 2 and "wf/lost" in sim.running("w")  # requeued, and placed again
    assert attempts("claimed") == 1 and sim.state_of("wf", "orphan") == "ready"  # its worker never came back


def test_a_task_its_worker_does_not_list_for_the_grace_is_requeued():
    sim = DispatchSim(DispatchConfig(claim_grace_ms=3000))
    sim.worker("w", slots=1)
    sim.submit("wf", [task("t")])
    assert sim.running("w") == ["wf/t"]  # the assignment is lost on the way: w never lists it
    sim.heartbeat("w", running=[])
    sim.advance(5000)  # however long, one heartbeat is not enough
    sim.heartbeat("w", running=[])
    run = sim.control.workflows.get("wf").runs["t"]
    assert run.attempts == 2 and run.state.value == "running" and run.failures == 0
    sim.finish("w", "wf", "t")
    assert sim.state_of("wf", "t") == "completed"


def test_a_report_of_the_attempt_number_running_on_another_worker_does_not_finish_the_task():
    sim = DispatchSim()
    sim.worker("named", slots=1)
    sim.worker("other", slots=1)
    sim.submit("wf", [task("t")])
    (holder,) = [w for w in ("named", "other") if sim.running(w) == ["wf/t"]]
    stranger = "other" if holder == "named" else "named"
    # A deposed leader's dispatch of the same attempt number ran on the other worker.
    ask = sim.report(stranger, [TaskFinished(stranger, "wf", "t", 1, True, 0, "wrong", "", "", "", 1)])
    assert ask.value.count == 0 and sim.state_of("wf", "t") == "running"
    sim.finish(holder, "wf", "t", result="right")
    assert sim.control.workflows.get("wf").runs["t"].result == "right"


def test_a_heartbeat_that_left_before_the_report_does_not_hold_the_slot_again():
    sim = DispatchSim()
    sim.worker("w", slots=1)
    sim.submit("wf", [task("first"), task("second")])
    with sim.one_batch():  # both arrive in one batch: the heartbeat still lists the finished run
        sim.heartbeat("w", running=[["wf", "first", 1]])
        sim.finish("w", "wf", "first")
    assert sim.running("w") == ["wf/second"]
    sim.finish("w", "wf", "second")
    assert sim.workers()[0]["running"] == 0


def test_a_new_leader_cancels_the_run_of_a_dispatch_that_never_committed_and_runs_the_task_again():
    sim = DispatchSim()
    sim.auto_commit = False
    sim.worker("w", slots=1)
    sim.submit("wf", [task("t")])
    sim.commit()  # the submission; its dispatch is proposed and sent, never committed
    assert sim.proposals and sim.state_of("wf", "t") == "ready"
    sim.proposals.clear()
    lost = sim.given("w", "wf", "t")
    sim.auto_commit = True
    sim.new_leader()
    with sim.one_batch():
        sim.worker("w", slots=1)
        ack = sim.heartbeat("w", running=[["wf", "t", 1]])
    assert ack.value.cancel == [["wf", "t", 1, 2]]  # runs of attempt 1 dispatched before term 2
    again = sim.given("w", "wf", "t")
    assert (again.attempt, again.term, lost.term) == (1, 2, 1)
    assert sim.state_of("wf", "t") == "running"
    # The lost dispatch's run reports after all (it finished before the cancel): not the task's.
    sim.report("w", [TaskFinished("w", "wf", "t", 1, True, 0, "lost", "", "", "", 1, lost.term)])
    assert sim.state_of("wf", "t") == "running"
    sim.finish("w", "wf", "t", result="again")
    assert sim.state_of("wf", "t") == "completed"
    assert sim.control.workflows.get("wf").runs["t"].result == "again"


def test_a_dependent_dispatched_with_its_dependencys_uncommitted_completion_is_run_again():
    """A chain hop: a's completion and b's dispatch leave in one entry, and b's assignment with
    it; the leader is deposed before the entry commits. The next leader commits a's completion
    from the report sent again and dispatches b under the same attempt number: the run of the
    lost dispatch (which used a's result before it was committed) must not complete b, even on
    the same worker."""
    sim = DispatchSim()
    sim.worker("w", slots=1)
    sim.submit("wf", [task("a"), task("b", ["a"])])
    sim.auto_commit = False
    sim.finish("w", "wf", "a", result="first")
    lost = sim.given("w", "wf", "b")
    assert lost.inputs == {"a": "first"} and sim.state_of("wf", "a") == "running"
    sim.proposals.clear()  # never committed
    sim.auto_commit = True
    sim.new_leader()
    sim.worker("w", slots=1)
    sim.report("w", [TaskFinished("w", "wf", "a", 1, True, 0, "first", "", "", "", 1, 1)])  # sent again
    assert sim.state_of("wf", "a") == "completed"
    again = sim.given("w", "wf", "b")
    assert (again.attempt, again.term) == (1, 2)
    sim.report("w", [TaskFinished("w", "wf", "b", 1, True, 0, "stale", "", "", "", 1, lost.term)])
    assert sim.state_of("wf", "b") == "running" and sim.running("w") == ["wf/b"]
    sim.finish("w", "wf", "b", result="right")
    assert sim.control.workflows.get("wf").runs["b"].result == "right"


def test_a_follower_proposes_nothing():
    sim = DispatchSim()
    sim.handle(LeadershipChanged(False, sim.control, sim.now_ms))
    sim.advance(1000)
    assert sim.proposals == [] and sim.rounds == []


# --------------------------------------------------------------------------- locality, pressure, load


def test_a_task_prefers_the_worker_where_its_dependencies_ran_when_it_has_room():
    sim = DispatchSim()
    sim.worker("w1", slots=2)
    sim.worker("w2", slots=2)
    sim.submit("wf", [task("produce"), task("consume", ["produce"])])
    producer = "w1" if sim.running("w1") else "w2"
    sim.submit("wf-other", [task("busy")])  # least-loaded placement would now pick the other worker
    sim.finish(producer, "wf", "produce", result="big")
    assert "wf/consume" in sim.running(producer)
    assignment = [a for a in sim.assigned[producer] if a.task_id == "consume"][0]
    assert assignment.inputs == {"produce": "big"}


def test_without_room_there_a_task_goes_to_the_same_group_before_a_less_loaded_worker():
    sim = DispatchSim()
    sim.worker("a-producer", slots=2, cpu=2, group="g", capabilities=("x",))
    sim.worker("b-far", slots=4, cpu=4, group="other")
    sim.worker("c-sibling", slots=4, cpu=4, group="g")
    sim.submit("wf", [task("produce", capabilities=("x",)), task("hog", cpu=1, capabilities=("x",)),
                      task("consume", ["produce"], cpu=2)])
    assert sim.running("a-producer") == ["wf/produce", "wf/hog"]
    sim.finish("a-producer", "wf", "produce")
    assert sim.running("c-sibling") == ["wf/consume"]  # b-far, idle and first by id, is in another group


def test_memory_pressure_stops_new_tasks_until_the_worker_recovers():
    sim = DispatchSim()
    sim.worker("w", slots=4)
    sim.heartbeat("w", load={"memory_pressure": True, "memory_available_mb": 50})
    sim.submit("wf", [task("t")])
    assert sim.running("w") == [] and sim.state_of("wf", "t") == "ready"
    assert sim.workers()[0]["memory_pressure"] is True
    sim.heartbeat("w", load={"memory_pressure": False, "memory_available_mb": 900})
    assert sim.running("w") == ["wf/t"]


def test_least_loaded_placement_counts_cpu_load_as_well_as_slots():
    sim = DispatchSim()
    sim.worker("hot", slots=4)
    sim.worker("cool", slots=4)
    sim.heartbeat("hot", load={"cpu_percent": 95.0})
    sim.heartbeat("cool", load={"cpu_percent": 5.0})
    sim.submit("wf", [task("a"), task("b")])
    assert sim.running("cool") == ["wf/a", "wf/b"]  # cool at 2/4 slots + 5% < hot at 0/4 + 95%


def test_a_result_above_the_limit_fails_the_task_with_a_clear_error():
    sim = DispatchSim(DispatchConfig(max_result_bytes=1000))
    sim.worker("w", slots=1)
    sim.submit("wf", [task("big"), task("after", ["big"])])
    sim.finish("w", "wf", "big", result="x" * 5000)
    run = sim.control.workflows.get("wf").runs["big"]
    assert run.state.value == "failed" and run.result is None
    assert "result too large: 5000 bytes, above the limit of 1000" in run.error
    assert sim.state_of("wf", "after") == "skipped"


# --------------------------------------------------------------------------- cancel, batching


def test_cancelling_a_workflow_cancels_its_running_tasks_on_their_workers():
    sim = DispatchSim()
    sim.worker("w", slots=1)
    sim.submit("wf", [task("t"), task("u")])
    sim.cancel("wf")
    assert sim.cancelled["w"] == [["wf", "t", 1]]
    assert sim.state_of("wf", "u") == "cancelled"
    sim.submit("wf2", [task("next")])
    assert sim.running("w") == ["wf2/next"]


def test_a_round_is_a_take_and_its_settle_one_registry_request_and_one_entry():
    sim = DispatchSim()
    for index in range(4):
        sim.worker(f"w{index}", slots=4)
    sim.submit("wf", [task(f"t{i}") for i in range(100)])
    rounds_before = len(sim.rounds)
    finished = []
    for index in range(4):
        requests, entries = dict(sim.requests), sim.index
        finished.extend(sim.finish_all(f"w{index}"))
        # each batch of reports: one round (the queue's take and its settle, one placement)
        # and one Batch entry of its finishes and dispatches
        assert (sim.requests["queue"] - requests["queue"], sim.requests["registry"] - requests["registry"],
                sim.index - entries) == (2, 1, 1)
    assert len(finished) == 16
    assert sim.rounds[-4:] and all(len(keys) == 4 for keys in sim.rounds[-4:])
    assert rounds_before + 4 == len(sim.rounds)


def test_queue_stats_count_by_priority_and_the_oldest_wait():
    sim = DispatchSim()
    sim.submit("wf", [task("a", priority="high"), task("b", priority="low"), task("c", priority=600)])
    sim.now_ms += 1500
    stats = sim.queue_stats()
    assert stats["total"] == 3 and stats["oldest_wait_ms"] == 1500 and stats["oldest_task"] == "wf/a"
    assert stats["by_priority"] == {"urgent": 0, "high": 1, "medium": 0, "low": 1, "600": 1}


def test_dispatches_are_stamped_with_the_time_of_their_round():
    sim = DispatchSim()
    sim.now_ms = 10_000
    sim.worker("w", slots=1)
    sim.submit("wf", [task("first"), task("next", ["first"])])
    sim.now_ms += 5
    sim.finish("w", "wf", "first")
    runs = sim.control.workflows.get("wf").runs
    assert (runs["first"].started_ms, runs["first"].finished_ms, runs["next"].started_ms) == (10_000, 10_005, 10_005)


def test_the_queue_is_empty_once_a_round_placed_all_it_lent():
    sim = DispatchSim()
    sim.worker("w", slots=2)
    sim.submit("wf", [task("a", priority="high"), task("b")])
    assert sorted(sim.running("w")) == ["wf/a", "wf/b"]
    assert sim.queue.stats(sim.now_ms).total == 0  # what the observer reads, without asking


def test_the_per_task_lines_are_logged_at_debug_and_an_unhealthy_worker_at_info(caplog):
    import logging

    sim = DispatchSim(health=HealthCheckConfig(heartbeat_interval_ms=100, max_missed_heartbeats=3))
    sim.worker("w", slots=1)
    with caplog.at_level(logging.DEBUG, logger="agentflow"):
        sim.submit("wf", [task("a"), task("b", ["a"])])
        sim.finish("w", "wf", "a")
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "Task wf/a dispatched to w" in debug and "Task wf/b dispatched to w" in debug
    assert "Task b is ready (all dependencies completed)" in debug
    assert any(line.startswith("Worker w selected (least loaded: 0% of slots") for line in debug)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agentflow"):
        sim.advance(400)
    assert [(r.levelno, r.getMessage()) for r in caplog.records if "unhealthy" in r.getMessage()] == [
        (logging.INFO, "Worker w marked as unhealthy after 3 failures")]


def test_a_locality_hint_picks_which_dependencies_to_follow_or_none():
    sim = DispatchSim()
    sim.worker("w1", slots=4, capabilities=("one",))
    sim.worker("w2", slots=4, capabilities=("two",))
    sim.submit("wf", [task("small", capabilities=("one",)), task("big", capabilities=("two",)),
                      task("hog1", capabilities=("two",)), task("hog2", capabilities=("two",)),
                      task("follow-big", ["small", "big"], locality=["big"]),
                      task("anywhere", ["big"], locality=[])])
    sim.finish("w1", "wf", "small")
    sim.finish("w2", "wf", "big")
    assert "wf/follow-big" in sim.running("w2")  # where big ran, though w2 is the busier
    assert sim.running("w1") == ["wf/anywhere"]  # no preference: the least loaded


def test_a_big_input_made_on_the_same_worker_stays_there_and_is_sent_in_full_if_it_was_lost():
    from protocols.tasks import ERROR_INPUTS_MISSING, TaskFinished

    sim = DispatchSim()
    sim.worker("w", slots=2)
    sim.submit("wf", [task("big"), task("small"), task("use", ["big", "small"])])
    sim.finish("w", "wf", "small", result="tiny")
    sim.finish("w", "wf", "big", result="x" * 100_000)
    first = [a for a in sim.assigned["w"] if a.task_id == "use"][-1]
    assert first.local_inputs == ["big"] and first.inputs == {"small": "tiny"}
    sim.report("w", [TaskFinished("w", "wf", "use", first.attempt, False, None, None, ERROR_INPUTS_MISSING,
                                  "", "", 0)])
    again = [a for a in sim.assigned["w"] if a.task_id == "use"][-1]
    assert again.attempt == first.attempt + 1 and again.local_inputs == []
    assert again.inputs == {"big": "x" * 100_000, "small": "tiny"}
    assert sim.control.workflows.get("wf").runs["use"].failures == 0


def test_a_queue_reply_that_crossed_later_enqueues_does_not_hide_them():
    sim = DispatchSim()
    sim.worker("w", slots=1)
    sim.submit("wf-a", [task("t1"), task("t2")])
    sim.hold_queue_replies = True
    sim.finish("w", "wf-a", "t1")  # its round borrows t2 from the queue; the answer is on its way
    sim.submit("wf-b", [task("u")])  # enqueued by a later request, before that answer arrives
    sim.hold_queue_replies = False
    sim.release_replies()
    assert sim.running("w") == ["wf-a/t2"]
    sim.finish("w", "wf-a", "t2")
    assert sim.running("w") == ["wf-b/u"]  # the answer said the queue was empty after t2; u came after
