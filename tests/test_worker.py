"""The worker process against fake schedulers: registration, batches, re-sent reports,
concurrency, redirects, failover, cancels and draining on SIGTERM.

Each test runs a real worker (``agentflow worker``) and a fake "scheduler" actor on a
Node in the test process, on 127.0.0.1; every process and node a test starts, it stops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from protocols.tasks import (
    ERROR_CANCELLED,
    ERROR_DRAINING,
    AssignTasks,
    CancelTasks,
    HeartbeatAck,
    ReportsAccepted,
    RunningQuery,
    RunningTasks,
    TaskAssignment,
    TaskFinished,
    TasksFinished,
    WorkerGoodbye,
    WorkerHeartbeat,
    WorkerHello,
    WorkerWelcome,
    cancel_item,
    parse_master_urls,
)
from protocols.wire import Redirect
from runtime.actor import Actor
from runtime.node import Node
from tests.procs import REPO, wait_for

pytestmark = pytest.mark.integration

HEARTBEAT_MS = 100


class FakeScheduler(Actor):
    """Answers like a leader's SchedulerActor and records what it was told.

    ``drop_reports``: how many TasksFinished asks to leave unanswered (lost acks);
    ``hold_reports``: how many to answer only when the test calls ``release_held``;
    ``forget_once``: answer the first heartbeat with known=False."""

    def __init__(self, drop_reports: int = 0, forget_once: bool = False, hold_reports: int = 0) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.hellos: list[WorkerHello] = []
        self.heartbeats: list[WorkerHeartbeat] = []
        self.report_batches: list[TasksFinished] = []
        self.reports: dict[tuple, TaskFinished] = {}
        self.goodbyes: list[str] = []
        self.drop_reports = drop_reports
        self.hold_reports = hold_reports
        self.held: list = []
        self.forget_once = forget_once
        self.cancel_next: list = []

    def receive(self, message):
        with self.lock:
            if isinstance(message, WorkerHello):
                self.hellos.append(message)
                return WorkerWelcome(message.info.worker_id, HEARTBEAT_MS)
            if isinstance(message, WorkerHeartbeat):
                self.heartbeats.append(message)
                if self.forget_once:
                    self.forget_once = False
                    return HeartbeatAck(False, [])
                cancel, self.cancel_next = self.cancel_next, []
                return HeartbeatAck(True, cancel)
            if isinstance(message, TasksFinished):
                self.report_batches.append(message)
                if self.drop_reports > 0:
                    self.drop_reports -= 1
                    return self.defer()  # never answered: the worker must send them again
                if self.hold_reports > 0:
                    self.hold_reports -= 1
                    self.held.append((self.defer(), len(message.reports)))
                    return self.held[-1][0]
                for report in message.reports:
                    self.reports.setdefault(report.key, report)
                return ReportsAccepted(len(message.reports))
            if isinstance(message, WorkerGoodbye):
                self.goodbyes.append(message.worker_id)
                return None
        raise ValueError(f"unexpected {message!r}")

    # Read from the test thread.

    def release_held(self) -> None:
        with self.lock:
            held, self.held = self.held, []
        for answer, count in held:
            answer.resolve(ReportsAccepted(count))

    def batches_carrying(self, task_id: str) -> int:
        with self.lock:
            return sum(1 for batch in self.report_batches if any(r.task_id == task_id for r in batch.reports))

    def last_heartbeat(self) -> WorkerHeartbeat | None:
        with self.lock:
            return self.heartbeats[-1] if self.heartbeats else None

    def report(self, task_id: str) -> TaskFinished | None:
        with self.lock:
            return next((r for r in self.reports.values() if r.task_id == task_id), None)

    def reports_of(self, task_id: str) -> list[TaskFinished]:
        """Every report of ``task_id`` the worker sent, in order, each once."""
        with self.lock:
            reports = [r for batch in self.report_batches for r in batch.reports if r.task_id == task_id]
        return list({(r.attempt, r.term, r.error, r.ok): r for r in reports}.values())


class Redirector(Actor):
    """A follower: answers everything with a Redirect to the leader."""

    def __init__(self, leader_endpoint: str) -> None:
        super().__init__()
        self.leader_endpoint = leader_endpoint
        self.asked = 0

    def receive(self, message):
        self.asked += 1
        return Redirect("leader", self.leader_endpoint)


class WorkerProcess:
    """``agentflow worker`` as a child; stopped (tasks killed) on ``stop``."""

    def __init__(self, tmp_path: Path, master_urls: list[str], *extra: str) -> None:
        self.log_path = tmp_path / "worker.log"
        self.log = open(self.log_path, "w")
        argv = [sys.executable, "-m", "agentflow.cli", "worker", "--worker-id", "w1", "--master-url", ",".join(master_urls)]
        env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_LOG="info")
        self.proc = subprocess.Popen(argv + list(extra), cwd=REPO, env=env, stdout=self.log, stderr=self.log)

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Two signals: the first drains, the second stops at once and kills the tasks.
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def cluster(tmp_path):
    """Start nodes and workers through it; everything is stopped at the end."""
    nodes: list[Node] = []
    workers: list[WorkerProcess] = []

    class Cluster:
        def master(self, actor_class=FakeScheduler, *args, **kwargs):
            node = Node(f"m{len(nodes) + 1}").start()
            nodes.append(node)
            node.spawn(actor_class, *args, name="scheduler", **kwargs)
            return node, node.actor("scheduler")

        def worker(self, master_urls, *extra):
            worker = WorkerProcess(tmp_path, master_urls, *extra)
            workers.append(worker)
            return worker

    yield Cluster()
    for worker in workers:
        worker.stop()
    for node in nodes:
        node.stop()


def task(task_id: str, **fields) -> TaskAssignment:
    return TaskAssignment(workflow_id="wf", task_id=task_id, attempt=1, **fields)


def registered(scheduler: FakeScheduler, worker: WorkerProcess) -> str:
    """Wait for the worker's hello; returns its endpoint."""
    def hello():
        assert worker.proc.poll() is None, worker.output()
        with scheduler.lock:
            return scheduler.hellos[-1] if scheduler.hellos else None
    return wait_for(hello, 10.0, what="the worker's hello").info.address


def assign(node: Node, endpoint: str, tasks: list[TaskAssignment]) -> None:
    node.ref(endpoint, "worker").tell(AssignTasks("w1", tasks))


def wait_report(scheduler: FakeScheduler, task_id: str, timeout_s: float = 10.0) -> TaskFinished:
    return wait_for(lambda: scheduler.report(task_id), timeout_s, what=f"the report of {task_id}")


# ---------------------------------------------------------------- tests


def test_cancel_items_name_an_attempt_and_which_terms_dispatches_of_it_die():
    assert cancel_item(["wf", "t", 1]) == (("wf", "t", 1), float("inf"))  # whatever dispatched it
    assert cancel_item(["wf", "t", 1, 2]) == (("wf", "t", 1), 2)  # only dispatches before term 2
    for malformed in (["wf", "t", 1, True], ["wf", "t", 1, "2"], ["wf", 1, 1], "wf/t", None):
        assert cancel_item(malformed) == (None, 0)


def test_parse_master_urls():
    assert parse_master_urls("tcp://a:1, b:2,http://c:3/") == ["tcp://a:1", "tcp://b:2", "tcp://c:3"]
    assert parse_master_urls(["a:1", "tcp://a:1"]) == ["tcp://a:1"]
    for bad in ("", "nohost", "a:notaport", "a:70000"):
        with pytest.raises(ValueError):
            parse_master_urls(bad)


def test_worker_registers_runs_a_batch_and_reports_results(cluster):
    node, scheduler = cluster.master(forget_once=True)
    worker = cluster.worker([node.endpoint], "--cpu-cores", "3", "--memory-mb", "2048", "--gpu-count", "0")
    endpoint = registered(scheduler, worker)
    info = scheduler.hellos[0].info
    assert (info.worker_id, info.max_concurrent_tasks, info.resources.cpu_cores) == ("w1", 3, 3.0)
    assert (info.resources.memory_mb, info.resources.gpu_count) == (2048, 0)
    # The first heartbeat was answered "unknown": the worker says hello again.
    wait_for(lambda: len(scheduler.hellos) >= 2, 5.0, what="a second hello")

    assign(node, endpoint, [
        task("shell", command="echo out; echo err >&2", env={"CUDA_VISIBLE_DEVICES": "0"}),
        task("gpu", command='echo "$CUDA_VISIBLE_DEVICES"', env={"CUDA_VISIBLE_DEVICES": "2,3"}),
        task("call", call="tests.test_executor:sum_inputs", kwargs={"scale": 2}, inputs={"shell": {"n": 5}}),
        task("exit3", command="exit 3"),
        task("marker"),
        task("agent", agent="reviewer"),
    ])
    shell = wait_report(scheduler, "shell")
    assert (shell.ok, shell.exit_code, shell.stdout_tail, shell.stderr_tail, shell.worker_id) == (
        True, 0, "out\n", "err\n", "w1")
    assert wait_report(scheduler, "gpu").stdout_tail == "2,3\n"
    call = wait_report(scheduler, "call")
    assert (call.ok, call.result) == (True, {"total": 10})
    exit3 = wait_report(scheduler, "exit3")
    assert (exit3.ok, exit3.exit_code, exit3.error) == (False, 3, "exit code 3")
    marker = wait_report(scheduler, "marker")
    assert (marker.ok, marker.result, marker.exit_code) == (True, None, None)
    agent = wait_report(scheduler, "agent")
    # An agent task is a request to the agent; this fake master keeps no agent directory.
    assert not agent.ok and "no actor 'agents'" in agent.error

    # Once every report is accepted, the worker holds nothing; heartbeats carry its load.
    wait_for(lambda: (hb := scheduler.last_heartbeat()) is not None and hb.running == [], 5.0,
             what="an empty heartbeat")
    load = scheduler.last_heartbeat().load
    assert set(load) >= {"cpu_percent", "memory_available_mb", "running"} and load["running"] == 0
    answer = node.ref(endpoint, "worker").ask(RunningQuery(), 5.0).get()
    assert answer == RunningTasks("w1", [])
    assert "[worker] Worker w1 registered with master m1" in worker.output()


def test_unaccepted_reports_are_sent_again_until_accepted(cluster):
    node, scheduler = cluster.master(drop_reports=1)
    worker = cluster.worker([node.endpoint])
    endpoint = registered(scheduler, worker)
    assign(node, endpoint, [task("once", command="echo hi")])
    report = wait_report(scheduler, "once")
    with scheduler.lock:
        carrying = [batch for batch in scheduler.report_batches
                    if any(r.task_id == "once" for r in batch.reports)]
    assert len(carrying) >= 2  # the first batch's answer was lost; the report came again
    assert report.ok and report.stdout_tail == "hi\n"
    # While unaccepted the attempt was still held (heartbeats listed it); now it is not.
    with scheduler.lock:
        assert any(["wf", "once", 1] in hb.running for hb in scheduler.heartbeats)
    wait_for(lambda: scheduler.last_heartbeat().running == [], 5.0, what="the report to be let go")


def test_an_attempt_assigned_again_while_its_report_is_on_its_way_runs_again_after_the_answer(cluster, tmp_path):
    """A leader that lost the first dispatch refuses the report (the task was not running) and
    dispatches the same attempt again: the worker must run it again once the first report is
    answered, or the task hangs (found by a chaos run: pause_leader seed 12). Reporting the
    first run instead would complete the task with a run that may have used results the
    cluster never committed (a chaos run found that too). The second run is the later
    dispatch's (its term); the same dispatch assigned twice is run once."""
    node, scheduler = cluster.master(hold_reports=1)
    worker = cluster.worker([node.endpoint])
    endpoint = registered(scheduler, worker)
    ran = tmp_path / "ran"
    again = task("again", command=f"echo $AGENTFLOW_DISPATCH_TERM >> {ran}", term=1)
    assign(node, endpoint, [again])
    wait_for(lambda: scheduler.held, 10.0, what="the first report, held")
    assign(node, endpoint, [again])  # the same dispatch again: a duplicate
    assign(node, endpoint, [replace(again, term=2)])  # the same attempt from a later leader, its report unacknowledged
    node.ref(endpoint, "worker").ask(RunningQuery(), 5.0).get()  # answered after the assignments above
    assert ran.read_text() == "1\n"  # not run again yet
    scheduler.release_held()
    wait_for(lambda: scheduler.batches_carrying("again") >= 2, 10.0, what="the second run's report")
    assert scheduler.reports_of("again")[-1].term == 2
    wait_for(lambda: scheduler.last_heartbeat().running == [], 5.0, what="the report to be let go")
    assert ran.read_text() == "1\n2\n"


def test_a_later_leaders_assignment_of_a_running_attempt_runs_it_again_and_its_cancel_spares_that_run(
        cluster, tmp_path):
    """A new leader finds a run of a dispatch lost before it committed: it cancels the runs of
    that attempt dispatched before its term, and may dispatch the same attempt number itself.
    The worker kills the old run, reports it, and runs the attempt for the new term; the same
    cancel arriving again does not touch the new run."""
    node, scheduler = cluster.master()
    worker = cluster.worker([node.endpoint])
    endpoint = registered(scheduler, worker)
    gate, ran = tmp_path / "gate", tmp_path / "ran"
    first = task("again", term=1, command=f"echo $AGENTFLOW_DISPATCH_TERM >> {ran}; "
                                          f"for i in $(seq 500); do [ -e {gate} ] && break; sleep 0.02; done")  # 10 s at most
    assign(node, endpoint, [first])
    wait_for(lambda: ran.exists(), 10.0, what="the first run to start")
    assign(node, endpoint, [replace(first, term=2)])
    node.ref(endpoint, "worker").ask(RunningQuery(), 5.0).get()  # answered after the assignment above
    lost = [["wf", "again", 1, 2]]  # attempt 1's runs dispatched before term 2
    with scheduler.lock:
        scheduler.cancel_next = lost
    wait_for(lambda: ran.read_text() == "1\n2\n", 10.0, what="the run for term 2")
    assert scheduler.report("again").term == 1 and scheduler.report("again").error == ERROR_CANCELLED
    with scheduler.lock:
        scheduler.cancel_next = list(lost)
        seen = len(scheduler.heartbeats)
    wait_for(lambda: len(scheduler.heartbeats) > seen + 1, 5.0, what="the cancel to be answered")
    assert [r.term for r in scheduler.reports_of("again")] == [1]  # the term-2 run still runs
    gate.touch()
    wait_for(lambda: len(scheduler.reports_of("again")) == 2, 10.0, what="the term-2 run's report")
    assert scheduler.reports_of("again")[1].term == 2 and scheduler.reports_of("again")[1].ok


def test_an_attempt_run_again_after_the_answer_takes_its_local_inputs_from_the_cache(cluster):
    """The run again of an attempt assigned while its report was on its way gets the results
    its assignment names in ``local_inputs``, as the first run did."""
    from protocols.assignments import LOCAL_INPUT_MIN_BYTES

    node, scheduler = cluster.master()
    worker = cluster.worker([node.endpoint])
    endpoint = registered(scheduler, worker)
    assign(node, endpoint, [task("make", call="tests.taskfuncs:blob", args=[LOCAL_INPUT_MIN_BYTES])])
    assert wait_report(scheduler, "make").ok  # its result stays in the worker's cache
    with scheduler.lock:
        scheduler.hold_reports = 1
    use = task("use", call="tests.taskfuncs:sizes", local_inputs=["make"])
    assign(node, endpoint, [use])
    wait_for(lambda: scheduler.held, 10.0, what="the first report, held")
    assign(node, endpoint, [replace(use, term=1)])  # the same attempt again, while its report is unacknowledged
    node.ref(endpoint, "worker").ask(RunningQuery(), 5.0).get()  # answered after the assignment above
    scheduler.release_held()
    again = wait_report(scheduler, "use")  # the held one was not recorded: this is the second run's
    assert (again.ok, again.result) == (True, {"make": LOCAL_INPUT_MIN_BYTES}), again


def test_max_concurrent_tasks_is_never_exceeded(cluster, tmp_path):
    node, scheduler = cluster.master()
    worker = cluster.worker([node.endpoint], "--max-concurrent-tasks", "2")
    endpoint = registered(scheduler, worker)
    trace = tmp_path / "trace"
    command = f"echo start >> {trace}; sleep 0.4; echo end >> {trace}"
    assign(node, endpoint, [task(f"t{i}", command=command) for i in range(6)])
    for i in range(6):
        assert wait_report(scheduler, f"t{i}").ok
    running = most = 0
    for line in trace.read_text().split():
        running += 1 if line == "start" else -1
        most = max(most, running)
    assert most == 2  # never more than 2, and the slots were used
    with scheduler.lock:
        assert max(hb.load["running"] for hb in scheduler.heartbeats) <= 2


def test_redirect_is_followed_and_a_silent_master_is_skipped(cluster):
    leader_node, scheduler = cluster.master()
    follower_node, follower = cluster.master(Redirector, leader_node.endpoint)
    with socket.socket() as probe:  # a port where nobody answers
        probe.bind(("127.0.0.1", 0))
        silent_port = probe.getsockname()[1]
    host, port = follower_node.endpoint.removeprefix("tcp://").split(":")
    worker = cluster.worker([f"127.0.0.1:{silent_port}", f"http://{host}:{port}"])
    endpoint = registered(scheduler, worker)
    assert follower.asked >= 1
    assign(leader_node, endpoint, [task("after", command="echo led")])
    assert wait_report(scheduler, "after").stdout_tail == "led\n"


def test_cancel_kills_a_running_task(cluster):
    node, scheduler = cluster.master()
    worker = cluster.worker([node.endpoint])
    endpoint = registered(scheduler, worker)
    assign(node, endpoint, [task("long", command="sleep 100"), task("other", command="sleep 100")])
    wait_for(lambda: (hb := scheduler.last_heartbeat()) is not None and hb.load["running"] == 2, 10.0,
             what="both tasks to run")
    node.ref(endpoint, "worker").tell(CancelTasks("w1", [["wf", "long", 1]]))
    long = wait_report(scheduler, "long")
    assert (long.ok, long.error) == (False, "cancelled")
    with scheduler.lock:
        scheduler.cancel_next = [["wf", "other", 1]]  # the heartbeat-ack way
    other = wait_report(scheduler, "other")
    assert (other.ok, other.error) == (False, "cancelled")


def test_sigterm_drains_running_tasks_then_exits_0(cluster):
    node, scheduler = cluster.master()
    worker = cluster.worker([node.endpoint])
    endpoint = registered(scheduler, worker)
    assign(node, endpoint, [task("running", command="sleep 0.8; echo done")])
    wait_for(lambda: (hb := scheduler.last_heartbeat()) is not None and ["wf", "running", 1] in hb.running
             and hb.load["running"] == 1, 10.0, what="the task to run")
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: scheduler.last_heartbeat().draining, 5.0, what="a draining heartbeat")
    assign(node, endpoint, [task("late", command="echo never")])
    late = wait_report(scheduler, "late")
    assert (late.ok, late.exit_code, late.error, late.stdout_tail) == (False, None, ERROR_DRAINING, "")
    done = wait_report(scheduler, "running")
    assert (done.ok, done.stdout_tail) == (True, "done\n")
    assert worker.proc.wait(10) == 0, worker.output()
    wait_for(lambda: scheduler.goodbyes == ["w1"], 5.0, what="the goodbye")


def test_resources_are_detected_and_flags_override_them(tmp_path, monkeypatch):
    from runtime.resources import detect_gpus, detect_resources, parse_nvidia_smi

    assert parse_nvidia_smi("0, 16384 MiB\n1, 8192 MiB\ngarbage\n") == [(0, 16384), (1, 8192)]
    fake = tmp_path / "nvidia-smi"  # a stand-in for the real tool, found on the PATH
    fake.write_text("#!/bin/sh\nprintf '0, 16384 MiB\\n1, 8192 MiB\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == [(0, 16384), (1, 8192)]
    detected = detect_resources()
    assert detected.gpu_count == 2 and detected.custom == {"gpu_memory_mb": [16384, 8192]}
    assert detected.cpu_cores >= 1 and detected.memory_mb > 0
    assert 0 < detected.memory_available_mb <= detected.memory_mb
    flagged = detect_resources(cpu_cores=0.5, memory_mb=300, gpu_count=0)
    assert (flagged.cpu_cores, flagged.memory_mb, flagged.gpu_count) == (0.5, 300, 0)
    assert flagged.memory_available_mb <= 300
