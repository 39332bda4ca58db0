"""Runs task attempts, each in its own OS process and process group, and reports how they ended.

    executor = TaskExecutor("worker1", on_finished=handle_reports).start()
    report = executor.run(assignment)   # a TaskFinished now (no-op, could not start) or None
    ...                                 # None: on_finished([TaskFinished, ...]) gets it later
    executor.stop()

Rules of this module:

* A shell ``command`` runs as ``/bin/sh -c COMMAND`` in a new session, so its process group
  holds everything it starts. A ``call`` runs in one of the pool's long-lived Python
  processes (runtime/taskpool.py, ``python -m runtime.taskrunner --serve``), one task at a time
  per process, each process in its own session; modules stay imported between tasks. The spec
  and the outcome travel as frames on pipes, never through the task's stdout.
* A task's environment is the worker's plus the assignment's ``env`` (e.g.
  ``CUDA_VISIBLE_DEVICES``) plus ``AGENTFLOW_WORKFLOW_ID``, ``AGENTFLOW_TASK_ID``,
  ``AGENTFLOW_ATTEMPT``, ``AGENTFLOW_DISPATCH_TERM`` (with the attempt, which dispatch this run
  is) and ``AGENTFLOW_INPUTS`` (the dependencies' results as JSON); a pool
  process gives each task its own start-up environment with them on top. A shell task also gets
  ``AGENTFLOW_RESULT_FILE``: if it writes JSON there, that value is its result (text that is
  not JSON is taken as a string); otherwise its result is None. A call's result is what the
  function returned.
* stdout and stderr go to files, not pipes, so a chatty task or a grandchild that keeps them
  open can never block anything; a report carries the last ``tail_bytes`` of each.
* One reaper thread watches every running attempt with one selector (a pidfd per process
  where Linux has them, else a short poll, plus each busy pool process's answer pipe),
  enforces ``timeout_s`` and cancellations by SIGTERM to the whole process group then SIGKILL
  after ``kill_grace_s``, and hands every report that is ready to ``on_finished`` in one batch
  per wake-up. ``on_finished`` runs on the reaper thread: it must only hand the batch on.
* An agent task goes to ``agent_runner`` (runtime/agent_tasks.py) when the worker set one; its
  report comes through ``on_finished`` like a process's.
* A task never outlives its report: when a shell task's main process has ended, whatever it
  left in its group is killed; a pool process that was killed (timeout, cancel), died
  mid-task (its task is reported failed), left processes or threads behind, or ran a task
  with ``CUDA_VISIBLE_DEVICES`` set is retired (its group killed) before the report goes, and
  the next call task starts a replacement. ``stop()`` kills every group, pool processes
  included, and reports nothing more.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from protocols.tasks import (
    ERROR_AGENT_UNSUPPORTED,
    ERROR_CANCELLED,
    TAIL_BYTES,
    AttemptKey,
    TaskAssignment,
    TaskFinished,
)
from protocols.wire import DecodeError, EncodeError, decode
from runtime.log import get_logger
from runtime.wakeup import WakePipe
from runtime.taskpool import CallPool, CallProcess, open_pidfd, signal_group

log = get_logger("worker")

DEFAULT_KILL_GRACE_S = 2.0
DEFAULT_CALL_SLOTS = 4  # idle pool processes kept; a worker passes its max_concurrent_tasks
POLL_INTERVAL_S = 0.02  # only where pidfds are missing
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # so a child finds runtime.taskrunner


def finished_now(worker_id: str, assignment: TaskAssignment, ok: bool, error: str = "", *,
                 exit_code: int | None = None, result: Any = None, duration_ms: int = 0,
                 stdout_tail: str = "", stderr_tail: str = "") -> TaskFinished:
    """A report about ``assignment``; used for attempts that end without running a process."""
    return TaskFinished(
        worker_id=worker_id, workflow_id=assignment.workflow_id, task_id=assignment.task_id,
        attempt=assignment.attempt, ok=ok, exit_code=exit_code, result=result, error=error,
        stdout_tail=stdout_tail, stderr_tail=stderr_tail, duration_ms=duration_ms, term=assignment.term,
    )


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def read_tail(path: Path, tail_bytes: int) -> str:
    """The last ``tail_bytes`` of a file as text ("" if it is missing or empty). Plain fd calls:
    a buffered ``open`` costs more than the read itself, twice per task."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, tail_bytes), max(0, size - tail_bytes)) if size else b""
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


class _CommandFiles:
    """A shell task's stdout, stderr and result files: ``task-N.stdout`` and so on, flat in the
    executor's directory. Files rather than a directory per task: creating and removing a
    directory tree cost more than starting the shell (2.5 ms against 1.7 ms, measured here)."""

    __slots__ = ("stdout", "stderr", "result")

    def __init__(self, directory: Path, number: int) -> None:
        self.stdout = directory / f"task-{number}.stdout"
        self.stderr = directory / f"task-{number}.stderr"
        self.result = directory / f"task-{number}.result"

    def remove(self) -> None:
        # Unlinked, never reused: a process that escaped the group and still writes to its
        # file cannot show up in another task's tail.
        for path in (self.stdout, self.stderr, self.result):
            try:
                os.unlink(path)
            except OSError:
                pass


class _Execution:
    """One running attempt (reaper thread only, once started): a shell task's own process and
    files, or the pool process running a call; plus its kill state."""

    __slots__ = ("assignment", "process", "child", "pidfd", "files", "started_s", "deadline_s",
                 "kill_reason", "kill_at_s", "fresh")

    def __init__(self, assignment: TaskAssignment, started_s: float, *, process: subprocess.Popen | None = None,
                 files: _CommandFiles | None = None, child: CallProcess | None = None, fresh: bool = False) -> None:
        self.assignment = assignment
        self.process = process
        self.files = files
        self.child = child
        self.fresh = fresh  # the pool process must not run another task after this one
        self.started_s = started_s
        timeout_s = assignment.timeout_s
        self.deadline_s = started_s + timeout_s if timeout_s is not None and timeout_s > 0 else None
        self.kill_reason: str | None = None  # set when we decided to end it (timeout, cancel)
        self.kill_at_s: float | None = None  # when SIGTERM's grace ends and SIGKILL is due
        # A pool process owns and closes its own pidfd.
        self.pidfd = child.pidfd if child is not None else open_pidfd(process.pid)

    @property
    def group_id(self) -> int:
        return self.child.pid if self.child is not None else self.process.pid

    def ended(self) -> bool:
        """Whether a report can be made: the shell process exited, or the pool process answered
        (or died, or its answers became unreadable)."""
        child = self.child
        if child is None:
            return self.process.poll() is not None
        child.read_available()
        if child.answer is not None or child.broken:
            return True
        if child.process.poll() is not None:
            child.read_available()  # an answer written just before it died is still in the pipe
            return True
        return False


class TaskExecutor:
    """Runs attempts in child processes; see the module docstring for the rules."""

    def __init__(
        self,
        worker_id: str,
        on_finished: Callable[[list[TaskFinished]], None],
        *,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
        tail_bytes: int = TAIL_BYTES,
        python_executable: str = sys.executable,
        cwd: str | None = None,
        call_slots: int = DEFAULT_CALL_SLOTS,
    ) -> None:
        self.worker_id = worker_id
        self.on_finished = on_finished
        self.kill_grace_s = kill_grace_s
        self.tail_bytes = tail_bytes
        self.python_executable = python_executable
        self.cwd = cwd
        self.call_slots = call_slots
        self.pool: CallPool | None = None
        self.agent_runner: Any = None  # runs agent tasks (runtime/agent_tasks.py) when set
        self._lock = threading.Lock()
        self._new: list[_Execution] = []  # started, not yet seen by the reaper
        self._cancels: list[tuple[AttemptKey, str]] = []
        self._keys: set[AttemptKey] = set()  # every attempt with a live process
        self._stopping = False
        self._wake_pipe = WakePipe()
        self._file_numbers = itertools.count(1)
        self._base_directory: Path | None = None
        self._worker_env: dict[str, str] = {}
        self._thread = threading.Thread(target=self._reap, name=f"agentflow-reaper-{worker_id}", daemon=True)

    # ------------------------------------------------------------------ any thread

    def start(self) -> TaskExecutor:
        self._base_directory = Path(tempfile.mkdtemp(prefix="agentflow-tasks-"))
        # The worker's environment as of start: copying os.environ per task costs more than
        # the rest of building a task's environment.
        self._worker_env = dict(os.environ)
        pool_env = dict(self._worker_env)
        existing = pool_env.get("PYTHONPATH")
        pool_env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + existing if existing else "")
        self.pool = CallPool(self._base_directory, self.python_executable, self.cwd, pool_env, self.call_slots)
        self._thread.start()
        return self

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def running(self) -> list[AttemptKey]:
        with self._lock:
            return sorted(self._keys)

    def run(self, assignment: TaskAssignment) -> TaskFinished | None:
        """Start an attempt. Returns its report when it ends at once (a no-op, a process that
        cannot start, an agent task with no ``agent_runner``); else None, and ``on_finished``
        gets the report later."""
        kind = assignment.kind
        if kind == "noop":
            return finished_now(self.worker_id, assignment, True)
        if kind == "agent":
            if self.agent_runner is None:
                return finished_now(self.worker_id, assignment, False, ERROR_AGENT_UNSUPPORTED)
            self.agent_runner.run(assignment)  # reports through on_finished, like a process
            return None
        with self._lock:
            if self._stopping or self._base_directory is None:
                return finished_now(self.worker_id, assignment, False, "worker stopping")
            if assignment.key in self._keys:
                return None  # already running: the report of the running process will come
        started_s = time.monotonic()
        if kind == "call":
            execution, error = self._start_call(assignment, started_s)
        else:
            execution, error = self._start_command(assignment, started_s)
        if execution is None:
            return finished_now(self.worker_id, assignment, False, f"could not start the task: {error}")
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._keys.add(assignment.key)
                self._new.append(execution)
        if stopping:  # stop() ran meanwhile: the reaper will never see this one
            signal_group(execution.group_id, signal.SIGKILL)
            return finished_now(self.worker_id, assignment, False, "worker stopping")
        self._wake()
        return None

    def cancel(self, key: AttemptKey, reason: str = ERROR_CANCELLED) -> bool:
        """Kill an attempt's process group; its report (with ``error=reason``) still comes."""
        if self.agent_runner is not None and self.agent_runner.cancel(key, reason):
            return True
        with self._lock:
            if key not in self._keys:
                return False
            self._cancels.append((key, reason))
        self._wake()
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Kill every task and pool process, wait for the reaper, remove the task files."""
        with self._lock:
            self._stopping = True
        if self.agent_runner is not None:
            self.agent_runner.stop()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._wake_pipe.close()
        if self.pool is not None:
            self.pool.stop()
        if self._base_directory is not None:
            shutil.rmtree(self._base_directory, ignore_errors=True)

    def recycle_processes(self, on: bool) -> int:
        """Memory pressure: retire the idle task processes and keep none after its task while
        ``on`` (CallPool.recycle); returns how many were retired."""
        return self.pool.recycle(on) if self.pool is not None else 0

    # ------------------------------------------------------------------ starting

    def _task_env(self, assignment: TaskAssignment) -> dict[str, str]:
        """What a task adds to the worker's environment."""
        env = {str(name): str(value) for name, value in assignment.env.items()}
        env["AGENTFLOW_WORKFLOW_ID"] = assignment.workflow_id
        env["AGENTFLOW_TASK_ID"] = assignment.task_id
        env["AGENTFLOW_ATTEMPT"] = str(assignment.attempt)
        env["AGENTFLOW_DISPATCH_TERM"] = str(assignment.term)
        env["AGENTFLOW_INPUTS"] = json.dumps(assignment.inputs, default=_json_default)
        return env

    def _start_call(self, assignment: TaskAssignment, started_s: float) -> tuple[_Execution | None, str]:
        assert self.pool is not None
        env = self._task_env(assignment)
        spec = {"call": assignment.call, "args": list(assignment.args), "kwargs": dict(assignment.kwargs),
                "inputs": dict(assignment.inputs), "env": env}
        # CUDA libraries read CUDA_VISIBLE_DEVICES once per process: a GPU task gets a new
        # pool process, which is retired after it.
        gpu = "CUDA_VISIBLE_DEVICES" in env
        # An idle process killed from outside fails the send: a new one gets one more try.
        for fresh in (gpu, True):
            try:
                child = self.pool.acquire(fresh=fresh)
            except (OSError, subprocess.SubprocessError) as exc:
                return None, str(exc)
            try:
                child.send(spec)
            except EncodeError as exc:
                self.pool.release(child)  # nothing was written: it is still idle and sound
                return None, str(exc)
            except OSError as exc:
                self.pool.retire(child)
                died = exc
                continue
            return _Execution(assignment, started_s, child=child, fresh=gpu), ""
        return None, f"the pool process died: {died}"

    def _start_command(self, assignment: TaskAssignment, started_s: float) -> tuple[_Execution | None, str]:
        assert self._base_directory is not None
        files = _CommandFiles(self._base_directory, next(self._file_numbers))
        try:
            env = dict(self._worker_env)
            env.update(self._task_env(assignment))
            env["AGENTFLOW_RESULT_FILE"] = str(files.result)
            with open(files.stdout, "wb") as stdout, open(files.stderr, "wb") as stderr:
                process = subprocess.Popen(
                    ["/bin/sh", "-c", assignment.command], stdin=subprocess.DEVNULL, stdout=stdout,
                    stderr=stderr, env=env, cwd=self.cwd, start_new_session=True, close_fds=True,
                )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            files.remove()
            return None, str(exc)
        return _Execution(assignment, started_s, process=process, files=files), ""

    # ------------------------------------------------------------------ the reaper thread

    def _wake(self) -> None:
        self._wake_pipe.wake()

    def _reap(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_pipe.fileno, selectors.EVENT_READ, None)
        executions: dict[AttemptKey, _Execution] = {}
        fired: list[_Execution] = []  # attempts whose pidfd or answer pipe was readable
        try:
            while True:
                with self._lock:
                    new, self._new = self._new, []
                    cancels, self._cancels = self._cancels, []
                    stopping = self._stopping
                for execution in new:
                    executions[execution.assignment.key] = execution
                    if execution.pidfd is not None:
                        selector.register(execution.pidfd, selectors.EVENT_READ, execution)
                    if execution.child is not None:
                        selector.register(execution.child.answer_fd, selectors.EVENT_READ, execution)
                if stopping:
                    break
                now_s = time.monotonic()
                for key, reason in cancels:
                    execution = executions.get(key)
                    if execution is not None and execution.kill_reason is None:
                        self._begin_kill(execution, reason, now_s)
                for execution in executions.values():
                    self._enforce_deadlines(execution, now_s)
                reports = []
                # Only an attempt whose fd fired (or one without a pidfd, polled) can have ended:
                # checking every running one on each wake-up costs a read and a waitpid apiece.
                polled = [execution for execution in executions.values() if execution.pidfd is None]
                for execution in dict.fromkeys(fired + polled):
                    key = execution.assignment.key
                    if executions.get(key) is execution and execution.ended():
                        del executions[key]
                        if execution.pidfd is not None:
                            selector.unregister(execution.pidfd)
                        if execution.child is not None:
                            selector.unregister(execution.child.answer_fd)
                        reports.append(self._finish(execution))
                if reports:
                    with self._lock:
                        self._keys.difference_update(report.key for report in reports)
                    self.on_finished(reports)
                fired = []
                for selector_key, _ in selector.select(self._wait_s(executions, time.monotonic())):
                    if selector_key.data is None:
                        self._wake_pipe.drain()
                    else:
                        fired.append(selector_key.data)
        except Exception:
            log.exception("the task reaper failed; killing every running task")
        finally:
            for execution in executions.values():
                signal_group(execution.group_id, signal.SIGKILL)
            for execution in executions.values():
                if execution.child is not None:
                    continue  # the pool's stop() reaps its processes
                try:
                    execution.process.wait(5.0)
                except subprocess.TimeoutExpired:
                    log.warning("task process %d did not die after SIGKILL", execution.process.pid)
                self._close(execution)
            with self._lock:
                self._keys.clear()
            selector.close()

    def _wait_s(self, executions: dict[AttemptKey, _Execution], now_s: float) -> float | None:
        due = [execution.kill_at_s if execution.kill_at_s is not None else execution.deadline_s
               for execution in executions.values()]
        due = [due_s for due_s in due if due_s is not None]
        wait_s = max(0.0, min(due) - now_s) if due else None
        if any(execution.pidfd is None for execution in executions.values()):
            wait_s = POLL_INTERVAL_S if wait_s is None else min(wait_s, POLL_INTERVAL_S)
        return wait_s

    def _begin_kill(self, execution: _Execution, reason: str, now_s: float) -> None:
        execution.kill_reason = reason
        execution.kill_at_s = now_s + self.kill_grace_s
        signal_group(execution.group_id, signal.SIGTERM)

    def _enforce_deadlines(self, execution: _Execution, now_s: float) -> None:
        if execution.kill_reason is None:
            if execution.deadline_s is not None and now_s >= execution.deadline_s:
                timeout_s = execution.assignment.timeout_s
                self._begin_kill(execution, f"timed out after {timeout_s:g} s", now_s)
        elif execution.kill_at_s is not None and now_s >= execution.kill_at_s:
            execution.kill_at_s = None
            signal_group(execution.group_id, signal.SIGKILL)

    def _finish(self, execution: _Execution) -> TaskFinished:
        if execution.child is not None:
            return self._finish_call(execution)
        # Whatever the task left behind in its group dies with it (the group id outlives the
        # leader's pid while any member lives, so this cannot hit an unrelated process group).
        signal_group(execution.process.pid, signal.SIGKILL)
        assignment = execution.assignment
        returncode = execution.process.returncode
        duration_ms = int((time.monotonic() - execution.started_s) * 1000)
        files = execution.files
        ok, error = returncode == 0, ""
        result = self._command_result(files.result)
        if execution.kill_reason is not None:
            ok, error = False, execution.kill_reason
        elif not ok:
            error = describe_exit(returncode)
        report = finished_now(
            self.worker_id, assignment, ok, error, exit_code=returncode, result=result if ok else None,
            duration_ms=duration_ms, stdout_tail=read_tail(files.stdout, self.tail_bytes),
            stderr_tail=read_tail(files.stderr, self.tail_bytes),
        )
        self._close(execution)
        log.debug("Task %s/%s attempt %d finished: %s", assignment.workflow_id, assignment.task_id,
                  assignment.attempt, "ok" if ok else error)
        return report

    def _finish_call(self, execution: _Execution) -> TaskFinished:
        assert self.pool is not None and execution.child is not None
        child = execution.child
        assignment = execution.assignment
        duration_ms = int((time.monotonic() - execution.started_s) * 1000)
        answer = child.answer
        returncode = child.process.poll()
        retire_reason = ""
        result = None
        if answer is not None:
            ok, error, exit_code = answer["ok"], str(answer.get("error") or ""), answer.get("exit_code")
            if ok:
                try:
                    result = decode(answer.get("payload") or b"\xc0")
                except DecodeError as exc:
                    ok, error = False, f"the call's result cannot be read: {exc}"
            elif not error:
                error = "the call failed"
            retire_reason = str(answer.get("leftovers") or "")
        elif child.broken:
            ok, error, exit_code = False, child.broken, returncode
            retire_reason = child.broken
        else:
            # os._exit, a crash, the OOM killer, or our own kill: the process is gone.
            ok, exit_code = False, returncode
            error = f"the task process died during the call ({describe_exit(returncode)})"
            retire_reason = "it died"
        if execution.kill_reason is not None:
            ok, error, result = False, execution.kill_reason, None
            exit_code = returncode if returncode is not None else exit_code
            retire_reason = execution.kill_reason
        if execution.fresh and not retire_reason:
            retire_reason = "it ran a task with CUDA_VISIBLE_DEVICES set"
        # The child says what the task wrote; a file it reports empty is not read.
        sizes = answer.get("output_bytes") if answer is not None else None
        if not (isinstance(sizes, list) and len(sizes) == 2):
            sizes = [None, None]  # unknown (it died or was killed): look at both files
        stdout_tail, stderr_tail = (read_tail(path, self.tail_bytes) if size != 0 else ""
                                    for path, size in zip((child.stdout_path, child.stderr_path), sizes))
        report = finished_now(
            self.worker_id, assignment, ok, error, exit_code=exit_code, result=result if ok else None,
            duration_ms=duration_ms, stdout_tail=stdout_tail, stderr_tail=stderr_tail,
        )
        if retire_reason or returncode is not None:
            log.debug("Retiring pool process %d after %s/%s: %s", child.pid, assignment.workflow_id,
                      assignment.task_id, retire_reason or "it exited")
            self.pool.retire(child)  # kills its group before the report goes: nothing outlives it
        else:
            self.pool.release(child)
        log.debug("Task %s/%s attempt %d finished: %s", assignment.workflow_id, assignment.task_id,
                  assignment.attempt, "ok" if ok else error)
        return report

    @staticmethod
    def _command_result(result_path: Path) -> Any:
        try:
            text = result_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text.rstrip("\n")

    @staticmethod
    def _close(execution: _Execution) -> None:
        if execution.pidfd is not None:
            try:
                os.close(execution.pidfd)
            except OSError:
                pass
            execution.pidfd = None
        if execution.files is not None:
            execution.files.remove()
