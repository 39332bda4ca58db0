"""TaskExecutor with real child processes: shell commands, Python calls, timeouts, cancels.

The functions below are also the ``call`` targets the child processes import
(``tests.test_executor:add`` and friends), so this module keeps its imports light.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time

import psutil

from protocols.tasks import ERROR_AGENT_UNSUPPORTED, TaskAssignment, TaskFinished
from runtime.executor import TaskExecutor
from tests.procs import wait_for


# ---------------------------------------------------------------- call targets (run in children)


def add(a, b):
    return a + b


def sum_inputs(scale, inputs):
    print("summing", sorted(inputs))
    return {"total": scale * sum(value["n"] for value in inputs.values())}


def fail(message):
    raise ValueError(message)


def unsendable():
    return object()


async def async_double(x):
    return 2 * x


def whoami(text=""):
    """Prints ``text`` to stdout and stderr; returns this process's pid and the env it sees."""
    print(text)
    print(f"err-{text}", file=sys.stderr)
    names = ("AGENTFLOW_TASK_ID", "EXTRA_SETTING", "LEAKED_BY_A_TASK", "CUDA_VISIBLE_DEVICES")
    seen = {name: os.environ.get(name) for name in names}
    seen["PYTHONPATH set"] = "PYTHONPATH" in os.environ  # the pool's own environment has it
    os.environ["LEAKED_BY_A_TASK"] = "yes"  # must not reach the next task
    os.environ.pop("PYTHONPATH", None)  # must be back for the next task
    return {"pid": os.getpid(), "env": seen}


def sleep_forever():
    time.sleep(100)


def exit_abruptly(code):
    os._exit(code)


def leave_a_process_behind():
    return subprocess.Popen(["sleep", "100"]).pid


# ---------------------------------------------------------------- helpers


class Collector:
    def __init__(self) -> None:
        self.reports: queue.Queue[TaskFinished] = queue.Queue()
        self.batches = 0

    def __call__(self, reports: list[TaskFinished]) -> None:
        self.batches += 1
        for report in reports:
            self.reports.put(report)

    def next(self, timeout_s: float = 10.0) -> TaskFinished:
        return self.reports.get(timeout=timeout_s)


def make_executor(kill_grace_s: float = 0.5) -> tuple[TaskExecutor, Collector]:
    collector = Collector()
    return TaskExecutor("w1", collector, kill_grace_s=kill_grace_s).start(), collector


def assignment(task_id: str, **fields) -> TaskAssignment:
    return TaskAssignment(workflow_id="wf", task_id=task_id, attempt=1, **fields)


def run_one(executor: TaskExecutor, collector: Collector, task: TaskAssignment) -> TaskFinished:
    immediate = executor.run(task)
    if immediate is not None:
        return immediate
    report = collector.next()
    assert report.key == task.key
    return report


# ---------------------------------------------------------------- tests


def test_shell_command_success_and_failure_with_tails_and_exit_codes():
    executor, collector = make_executor()
    try:
        ok = run_one(executor, collector, assignment("ok", command="echo hello; echo oops >&2"))
        assert (ok.ok, ok.exit_code, ok.error) == (True, 0, "")
        assert ok.stdout_tail == "hello\n" and ok.stderr_tail == "oops\n"
        assert ok.worker_id == "w1" and ok.duration_ms >= 0

        failed = run_one(executor, collector, assignment("bad", command="echo partial; exit 3"))
        assert (failed.ok, failed.exit_code, failed.error) == (False, 3, "exit code 3")
        assert failed.stdout_tail == "partial\n"

        # Only the tail of a long output travels.
        long = run_one(executor, collector, assignment(
            "long", command="i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done"))
        assert long.ok and len(long.stdout_tail.encode()) <= 4096
        assert long.stdout_tail.endswith("line1999\n")
    finally:
        executor.stop()


def test_shell_task_sees_its_identity_inputs_and_env_and_returns_a_result():
    executor, collector = make_executor()
    try:
        task = assignment(
            "env", command='echo "$AGENTFLOW_WORKFLOW_ID $AGENTFLOW_TASK_ID $AGENTFLOW_ATTEMPT '
                           '$CUDA_VISIBLE_DEVICES $AGENTFLOW_INPUTS"; echo \'{"x": 1}\' > "$AGENTFLOW_RESULT_FILE"',
            env={"CUDA_VISIBLE_DEVICES": "1,3"}, inputs={"build": {"n": 2}})
        report = run_one(executor, collector, task)
        assert report.ok, report
        assert report.stdout_tail == 'wf env 1 1,3 {"build": {"n": 2}}\n'
        assert report.result == {"x": 1}
    finally:
        executor.stop()


def test_timeout_kills_the_whole_process_group():
    executor, collector = make_executor(kill_grace_s=0.5)
    try:
        # The shell ignores SIGTERM, so only the SIGKILL after the grace ends it; its background
        # child must die too.
        task = assignment("slow", command="trap '' TERM; sleep 100 & echo $!; wait", timeout_s=0.5)
        started = time.monotonic()
        assert executor.run(task) is None
        report = collector.next()
        elapsed_s = time.monotonic() - started
        assert (report.ok, report.error) == (False, "timed out after 0.5 s")
        assert report.exit_code == -9
        assert 0.9 <= elapsed_s < 5.0
        background_pid = int(report.stdout_tail.split()[0])
        wait_for(lambda: not psutil.pid_exists(background_pid)
                 or psutil.Process(background_pid).status() == psutil.STATUS_ZOMBIE,
                 5.0, what="the background sleep to die")
        assert executor.running() == []
    finally:
        executor.stop()


def test_leftover_background_processes_die_with_a_finished_task():
    executor, collector = make_executor()
    try:
        report = run_one(executor, collector, assignment("bg", command="sleep 100 & echo $!"))
        assert report.ok
        background_pid = int(report.stdout_tail.split()[0])
        wait_for(lambda: not psutil.pid_exists(background_pid)
                 or psutil.Process(background_pid).status() == psutil.STATUS_ZOMBIE,
                 5.0, what="the background sleep to die")
    finally:
        executor.stop()


def test_cancel_kills_a_running_task_and_reports_it():
    executor, collector = make_executor()
    try:
        task = assignment("long", command="sleep 100")
        assert executor.run(task) is None
        wait_for(lambda: executor.running() == [task.key], 5.0, what="the task to run")
        assert executor.cancel(task.key)
        report = collector.next()
        assert (report.ok, report.error, report.exit_code) == (False, "cancelled", -15)
        assert not executor.cancel(task.key)
    finally:
        executor.stop()


def test_call_returns_its_result_and_gets_its_inputs():
    executor, collector = make_executor()
    try:
        report = run_one(executor, collector, assignment("add", call="tests.test_executor:add", args=[2, 3]))
        assert (report.ok, report.result, report.exit_code) == (True, 5, 0)

        report = run_one(executor, collector, assignment(
            "sum", call="tests.test_executor:sum_inputs", kwargs={"scale": 10},
            inputs={"a": {"n": 1}, "b": {"n": 2}}))
        assert report.ok, report
        assert report.result == {"total": 30}
        assert report.stdout_tail == "summing ['a', 'b']\n"

        report = run_one(executor, collector, assignment("async", call="tests.test_executor:async_double", args=[21]))
        assert (report.ok, report.result) == (True, 42)
    finally:
        executor.stop()


def test_failing_calls_report_the_error():
    executor, collector = make_executor()
    try:
        report = run_one(executor, collector, assignment("fail", call="tests.test_executor:fail", args=["boom"]))
        assert (report.ok, report.error, report.exit_code, report.result) == (False, "ValueError: boom", 1, None)
        assert "Traceback" in report.stderr_tail and "boom" in report.stderr_tail

        report = run_one(executor, collector, assignment("missing", call="tests.no_such_module:f"))
        assert not report.ok and report.error.startswith("ModuleNotFoundError")

        report = run_one(executor, collector, assignment("unsendable", call="tests.test_executor:unsendable"))
        assert not report.ok and "cannot be sent" in report.error

        report = run_one(executor, collector, assignment("badargs", call="tests.test_executor:add", args=[object()]))
        assert not report.ok and report.error.startswith("could not start the task")

        report = run_one(executor, collector, assignment("badspec", call="no_colon"))
        assert not report.ok and "expected 'package.module:function'" in report.error
    finally:
        executor.stop()


def test_noop_and_agent_tasks_end_at_once_and_many_tasks_run_in_parallel(tmp_path):
    executor, collector = make_executor()
    try:
        noop = executor.run(assignment("marker"))
        assert noop is not None and (noop.ok, noop.result, noop.exit_code) == (True, None, None)
        agent = executor.run(assignment("agent", agent="reviewer"))
        assert agent is not None and (agent.ok, agent.error) == (False, ERROR_AGENT_UNSUPPORTED)

        # A barrier: each task waits until all 8 have started, so they only finish (before their
        # timeout) if they all run at the same time.
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        command = (f'touch {barrier}/$AGENTFLOW_TASK_ID; '
                   f'while [ "$(ls {barrier} | wc -l)" -lt 8 ]; do sleep 0.02; done; echo $AGENTFLOW_TASK_ID')
        tasks = [assignment(f"t{i}", command=command, timeout_s=20) for i in range(8)]
        for task in tasks:
            assert executor.run(task) is None
        reports = {report.task_id: report for report in (collector.next(30.0) for _ in tasks)}
        assert set(reports) == {task.task_id for task in tasks}
        assert all(report.ok and report.stdout_tail == f"{task_id}\n" for task_id, report in reports.items())
    finally:
        executor.stop()


def task_pids(marker: str) -> list[int]:
    """Pids of this process's children whose command line contains ``marker``."""
    pids = []
    for child in psutil.Process().children():
        try:
            if marker in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            pass  # exited meanwhile
    return pids


def test_stop_kills_running_tasks():
    executor, collector = make_executor()
    try:
        task = assignment("forever", command="sleep 100 # stop-test")
        assert executor.run(task) is None
        wait_for(lambda: executor.running() == [task.key], 5.0, what="the task to run")
        shell_pids = wait_for(lambda: task_pids("stop-test"), 5.0, what="the task's process")
    finally:
        executor.stop()
    assert all(not psutil.pid_exists(pid) for pid in shell_pids)
    assert collector.reports.empty()
    late = executor.run(assignment("late", command="true"))
    assert late is not None and late.error == "worker stopping"


# ---------------------------------------------------------------- the call pool


def call_pid(executor: TaskExecutor, collector: Collector, task_id: str, **fields) -> int:
    report = run_one(executor, collector, assignment(task_id, call="tests.test_executor:whoami", **fields))
    assert report.ok, report
    return report.result["pid"]


def dead(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_one_pool_process_serves_consecutive_calls_with_their_own_env_and_output():
    executor, collector = make_executor()
    try:
        first = run_one(executor, collector, assignment(
            "first", call="tests.test_executor:whoami", args=["one"], env={"EXTRA_SETTING": "x"}))
        second = run_one(executor, collector, assignment("second", call="tests.test_executor:whoami", args=["2"]))
        quiet = run_one(executor, collector, assignment("quiet", call="builtins:int"))
        assert first.ok and second.ok, (first, second)
        assert first.result["pid"] == second.result["pid"] != os.getpid()
        assert executor.pool.started == 1
        # Each task sees its own identity and env; nothing the first one set or changed remains.
        assert first.result["env"] == {"AGENTFLOW_TASK_ID": "first", "EXTRA_SETTING": "x",
                                       "LEAKED_BY_A_TASK": None, "CUDA_VISIBLE_DEVICES": None,
                                       "PYTHONPATH set": True}
        assert second.result["env"] == {"AGENTFLOW_TASK_ID": "second", "EXTRA_SETTING": None,
                                        "LEAKED_BY_A_TASK": None, "CUDA_VISIBLE_DEVICES": None,
                                        "PYTHONPATH set": True}
        # Each report carries only its own task's output (a shorter one, or none, included).
        assert (first.stdout_tail, first.stderr_tail) == ("one\n", "err-one\n")
        assert (second.stdout_tail, second.stderr_tail) == ("2\n", "err-2\n")
        assert quiet.ok and (quiet.stdout_tail, quiet.stderr_tail) == ("", "")
    finally:
        executor.stop()


def test_a_timed_out_call_kills_its_pool_process_and_a_new_one_takes_over():
    executor, collector = make_executor(kill_grace_s=0.5)
    try:
        pid = call_pid(executor, collector, "before")
        report = run_one(executor, collector, assignment("slow", call="tests.test_executor:sleep_forever", timeout_s=0.3))
        assert (report.ok, report.error, report.exit_code) == (False, "timed out after 0.3 s", -15)
        wait_for(lambda: dead(pid), 5.0, what="the timed-out pool process to die")
        assert executor.running() == []
        new_pid = call_pid(executor, collector, "after")
        assert new_pid != pid and executor.pool.pids() == [new_pid]
    finally:
        executor.stop()


def test_a_cancelled_call_is_reported_and_its_process_replaced():
    executor, collector = make_executor()
    try:
        task = assignment("long", call="tests.test_executor:sleep_forever")
        assert executor.run(task) is None
        wait_for(lambda: executor.pool.pids(), 5.0, what="a pool process")
        [pid] = executor.pool.pids()
        assert executor.cancel(task.key)
        report = collector.next()
        assert (report.ok, report.error, report.exit_code) == (False, "cancelled", -15)
        assert dead(pid)
        assert call_pid(executor, collector, "next") != pid
    finally:
        executor.stop()


def test_a_call_that_kills_its_process_is_reported_and_the_pool_recovers():
    executor, collector = make_executor()
    try:
        pid = call_pid(executor, collector, "before")
        report = run_one(executor, collector, assignment("crash", call="tests.test_executor:exit_abruptly", args=[3]))
        assert (report.ok, report.exit_code) == (False, 3)
        assert report.error == "the task process died during the call (exit code 3)"
        assert dead(pid)
        assert call_pid(executor, collector, "after") != pid
        # A pool process killed from outside while idle is replaced on the next call.
        idle_pid = executor.pool.pids()[0]
        os.kill(idle_pid, 9)
        wait_for(lambda: dead(idle_pid), 5.0, what="the idle pool process to die")
        assert call_pid(executor, collector, "after-kill") != idle_pid
    finally:
        executor.stop()


def test_a_call_that_leaves_a_process_behind_gets_it_killed_and_a_new_pool_process():
    executor, collector = make_executor()
    try:
        pid = call_pid(executor, collector, "before")
        report = run_one(executor, collector, assignment("bg", call="tests.test_executor:leave_a_process_behind"))
        assert report.ok, report
        background_pid = report.result
        wait_for(lambda: dead(background_pid), 5.0, what="the background sleep to die")
        assert dead(pid) and call_pid(executor, collector, "after") != pid
    finally:
        executor.stop()


def test_a_gpu_call_runs_in_a_process_of_its_own():
    executor, collector = make_executor()
    try:
        pid = call_pid(executor, collector, "cpu")
        report = run_one(executor, collector, assignment(
            "gpu", call="tests.test_executor:whoami", env={"CUDA_VISIBLE_DEVICES": "1"}))
        assert report.ok and report.result["env"]["CUDA_VISIBLE_DEVICES"] == "1"
        gpu_pid = report.result["pid"]
        assert gpu_pid != pid
        wait_for(lambda: dead(gpu_pid), 5.0, what="the GPU task's process to be retired")
        assert call_pid(executor, collector, "cpu-again") == pid
    finally:
        executor.stop()


def test_calls_in_parallel_use_several_pool_processes_and_stop_ends_them_all():
    executor, collector = make_executor()
    try:
        tasks = [assignment(f"p{i}", call="tests.test_executor:sleep_forever") for i in range(3)]
        for task in tasks:
            assert executor.run(task) is None
        pids = wait_for(lambda: len(executor.pool.pids()) == 3 and executor.pool.pids(), 5.0,
                        what="three pool processes")
    finally:
        executor.stop()
    assert all(dead(pid) for pid in pids)
    assert collector.reports.empty()
