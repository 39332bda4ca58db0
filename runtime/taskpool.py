"""The pool of long-lived Python processes that run ``call`` tasks for one TaskExecutor.

    pool = CallPool(directory, python_executable, cwd, env, size=4)
    child = pool.acquire(fresh=False)   # an idle child, or a new one (``python -m runtime.taskrunner --serve``)
    child.send(spec)                    # one request frame; the answer is read by the executor's reaper
    ...                                 # child.read_available() until child.answer is set, or the child died
    pool.release(child)                 # back to the idle list (or retired when the pool is over size)
    pool.stop()                         # kills every child it started

Rules of this module:

* Each child runs in its own session, so its process group holds everything its tasks
  start; the executor kills that group on timeouts and cancels, and the pool retires (kills)
  a child that died, was killed, left processes or threads behind, or ran a task that had
  ``CUDA_VISIBLE_DEVICES`` set (CUDA libraries read it once per process, so such a child is
  never reused).
* Requests and answers are frames (4-byte big-endian length, then a wire-codec msgpack map)
  on two pipes, never the task's stdout. The executor's side of the answer pipe is
  non-blocking: the reaper thread reads whatever has arrived and never waits on a child.
* Each child owns a stdout and a stderr file in ``directory``, named on its command line; it
  keeps them open and empties one at the start of a task only if the previous task wrote to it,
  and the executor reads their tails after the answer (none from a file the answer says is
  empty). So no file or directory is created per task.
* ``acquire``/``release``/``retire`` may be called from any thread; a child is used by one
  task at a time. At most ``size`` idle children are kept; more are started when more call
  tasks than that run at once, and the extra ones are retired when they become idle.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from protocols.wire import DEFAULT_MAX_FRAME_BYTES, DecodeError, decode, encode
from runtime.log import get_logger
from runtime.taskrunner import FRAME_HEADER, write_frame

log = get_logger("worker")

RETIRE_WAIT_S = 5.0  # how long retiring waits for a SIGKILLed child to be reaped
READ_CHUNK_BYTES = 256 * 1024


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (readable once it has exited), or None where Linux has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


class CallProcess:
    """One pool child: its process, pipes, output files, and the answer being read."""

    def __init__(self, process: subprocess.Popen, request_fd: int, answer_fd: int,
                 stdout_path: Path, stderr_path: Path) -> None:
        self.process = process
        self.pid = process.pid  # also its process group id (it leads its own session)
        self.request_fd = request_fd
        self.answer_fd = answer_fd
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.buffer = bytearray()
        self.answer: dict | None = None  # the decoded answer to the current request, once complete
        self.broken: str = ""  # why the answer stream cannot be trusted any more ("" if it can)
        self.pidfd = open_pidfd(process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, spec: dict[str, Any]) -> None:
        """Write one request (the child is idle, so it is reading). Raises OSError if the child is gone."""
        payload = encode(spec)
        self.answer, self.broken = None, ""
        self.buffer.clear()
        write_frame(self.request_fd, payload)

    def read_available(self) -> None:
        """Read what the child has written so far (never blocks); sets ``answer`` once a whole
        frame is in, or ``broken`` when the stream is unusable."""
        while self.answer is None and not self.broken:
            try:
                chunk = os.read(self.answer_fd, READ_CHUNK_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                self.broken = f"the answer pipe failed: {exc}"
                return
            if not chunk:
                return  # end of file: the child has died; its exit tells the rest
            self.buffer += chunk
            self._take_frame()

    def _take_frame(self) -> None:
        if len(self.buffer) < FRAME_HEADER.size:
            return
        (length,) = FRAME_HEADER.unpack_from(self.buffer)
        if length > DEFAULT_MAX_FRAME_BYTES:
            self.broken = f"the answer is too large ({length} bytes)"
            return
        end = FRAME_HEADER.size + length
        if len(self.buffer) < end:
            return
        frame = bytes(self.buffer[FRAME_HEADER.size:end])
        del self.buffer[:end]
        try:
            answer = decode(frame)
        except DecodeError as exc:
            self.broken = f"the answer cannot be decoded: {exc}"
            return
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            self.broken = "the answer is malformed"
            return
        self.answer = answer

    def kill(self, signum: int) -> None:
        signal_group(self.pid, signum)

    def close(self) -> None:
        """Kill the group, reap the child, close its fds and remove its files."""
        self.kill(signal.SIGKILL)
        try:
            self.process.wait(RETIRE_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("task process %d did not die after SIGKILL", self.pid)
        for fd in (self.request_fd, self.answer_fd, self.pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pidfd = None
        for path in (self.stdout_path, self.stderr_path):
            try:
                path.unlink()
            except OSError:
                pass


class CallPool:
    """Idle children ready for the next ``call`` task; see the module docstring for the rules."""

    def __init__(self, directory: Path, python_executable: str, cwd: str | None, env: dict[str, str],
                 size: int) -> None:
        self.directory = directory
        self.python_executable = python_executable
        self.cwd = cwd
        self.env = env
        self.size = max(1, size)
        self._lock = threading.Lock()
        self._idle: list[CallProcess] = []
        self._busy: dict[int, CallProcess] = {}  # pid -> child running a task
        self._dead: list[CallProcess] = []  # found dead while idle; closed outside the lock
        self._numbers = itertools.count(1)
        self._stopped = False
        self._recycling = False  # under memory pressure: keep no child after its task
        self.started = 0  # children started over the pool's life (a test and a benchmark read it)

    def acquire(self, fresh: bool = False) -> CallProcess:
        """A child to run one task: an idle live one unless ``fresh``, else a new one.
        Raises OSError (or SubprocessError) if a new one cannot be started."""
        with self._lock:
            if self._stopped:
                raise OSError("the call pool is stopped")
            while self._idle and not fresh:
                child = self._idle.pop()
                if child.alive():
                    self._busy[child.pid] = child
                    return child
                self._dead.append(child)
        self._reap_dead()
        child = self._start()
        with self._lock:
            if self._stopped:
                stopped = True
            else:
                stopped = False
                self._busy[child.pid] = child
        if stopped:
            child.close()
            raise OSError("the call pool is stopped")
        return child

    def release(self, child: CallProcess) -> None:
        """The child answered its task and may run another."""
        with self._lock:
            self._busy.pop(child.pid, None)
            keep = not self._stopped and not self._recycling and len(self._idle) < self.size
            if keep:
                self._idle.append(child)
        if not keep:
            child.close()

    def retire(self, child: CallProcess) -> None:
        """The child must not run another task: kill its group and forget it."""
        with self._lock:
            self._busy.pop(child.pid, None)
        child.close()

    def recycle(self, on: bool) -> int:
        """While ``on`` (memory pressure), no child is kept after its task and the idle ones are
        retired at once, giving their memory back; returns how many were retired."""
        with self._lock:
            self._recycling = on
            idle, self._idle = (self._idle, []) if on else ([], self._idle)
        for child in idle:
            child.close()
        return len(idle)

    def pids(self) -> list[int]:
        with self._lock:
            return sorted([child.pid for child in self._idle] + list(self._busy))

    def stop(self) -> None:
        """Kill every child, idle or busy (the executor has stopped using them)."""
        with self._lock:
            self._stopped = True
            children = self._idle + list(self._busy.values()) + self._dead
            self._idle, self._busy, self._dead = [], {}, []
        for child in children:
            child.kill(signal.SIGKILL)
        for child in children:
            child.close()

    # ------------------------------------------------------------------ internals

    def _reap_dead(self) -> None:
        with self._lock:
            dead, self._dead = self._dead, []
        for child in dead:
            child.close()

    def _start(self) -> CallProcess:
        number = next(self._numbers)
        stdout_path, stderr_path = self.directory / f"call-{number}.stdout", self.directory / f"call-{number}.stderr"
        request_read, request_write = os.pipe()
        answer_read, answer_write = os.pipe()
        try:
            process = subprocess.Popen(
                [self.python_executable, "-m", "runtime.taskrunner", "--serve", str(request_read), str(answer_write),
                 str(stdout_path), str(stderr_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None, env=self.env, cwd=self.cwd,
                start_new_session=True, close_fds=True, pass_fds=(request_read, answer_write),
            )
        except BaseException:
            for fd in (request_read, request_write, answer_read, answer_write):
                os.close(fd)
            raise
        os.close(request_read)
        os.close(answer_write)
        os.set_blocking(answer_read, False)
        with self._lock:
            self.started += 1
        return CallProcess(process, request_write, answer_read, stdout_path, stderr_path)
