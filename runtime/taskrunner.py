"""The long-lived child process that runs ``call`` tasks:
``python -m runtime.taskrunner --serve R W OUT ERR``.

The executor's pool (runtime/taskpool.py) starts one per slot, each in its own session, and
talks to it over two pipes (fd ``R`` carries requests to the child, fd ``W`` its answers;
never the task's stdout); ``OUT`` and ``ERR`` are the files every task's stdout and stderr go
to. Every message is a frame: a 4-byte big-endian length, then one msgpack map encoded with
the wire codec (so records may be arguments and results).

Request: ``{"call": "package.module:function", "args": [...], "kwargs": {...},
"inputs": {...}, "env": {NAME: VALUE}}``.
Answer: ``{"ok": true, "payload": BYTES, "exit_code": 0, "leftovers": "", "output_bytes": [OUT, ERR]}``
(``output_bytes``: what the task left in its stdout and stderr files; ``payload`` is
the returned value, encoded on its own so that an unsendable value is caught here as the
task's error) or ``{"ok": false, "error": "ValueError: boom", "exit_code": 1, "leftovers": ""}``,
where ``exit_code`` is what a one-shot process would have exited with (0 returned, 1 raised
or result not sendable, 2 bad request) and ``leftovers`` is "" or why this child must not be
reused (the task left child processes or extra threads running; a library that starts a
thread at import therefore costs a new process per task, as before the pool).

Rules:

* One task at a time. For its duration fds 1 and 2 are the task's stdout and stderr files
  (``os.dup2``, so subprocesses inherit them too; the files stay open between tasks and are
  emptied before a task only when the previous one wrote to them) and ``os.environ`` is this
  process's environment at start-up with the request's ``env`` on top; afterwards fds,
  ``sys.stdout``/``sys.stderr`` and the working directory are put back, and the environment is
  put right at the start of the next task (only what differs is changed: consecutive tasks set
  the same variables, mostly to the same values), so consecutive tasks do not see each other's
  settings. A failing call's traceback goes to the task's stderr.
* Modules stay imported and resolved callables are cached: that is the point of the pool.
* The child is a child subreaper where Linux allows it, so whatever a task starts stays its
  descendant; after each task it reaps finished children, and reports live ones (and live
  extra threads) as ``leftovers`` so that the executor kills the whole group: a task never
  outlives its report.
* The function gets the dependencies' results as the keyword ``inputs`` only when it has a
  parameter named ``inputs`` (and the task's kwargs do not already set it). A coroutine
  function is run to completion with ``asyncio.run``.
* End of the request pipe (the executor closed it or died) ends the process with exit 0.
"""

from __future__ import annotations

import importlib
import inspect
import os
import struct
import sys
import threading
import traceback
from typing import Any, Callable

from protocols.wire import EncodeError, decode, encode

EXIT_OK = 0
EXIT_RAISED = 1
EXIT_BAD_SPEC = 2
FRAME_HEADER = struct.Struct(">I")
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def resolve(call: str) -> Callable[..., Any]:
    """The callable named ``package.module:attribute[.attribute...]``."""
    module_name, sep, attribute_path = call.partition(":")
    if not sep or not module_name or not attribute_path:
        raise ValueError(f"bad call {call!r}: expected 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for attribute in attribute_path.split("."):
        target = getattr(target, attribute)
    if not callable(target):
        raise TypeError(f"{call} is not callable")
    return target


def accepts_inputs(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get("inputs")
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


# call string -> (function, whether it takes ``inputs``); a failed resolve is not cached, so a
# module that appears later (or whose import failed transiently) is tried again.
_resolved: dict[str, tuple[Callable[..., Any], bool]] = {}


def run_call(spec: dict) -> tuple[int, dict]:
    """Call what ``spec`` names; returns (exit code, outcome map)."""
    try:
        call = spec["call"]
        entry = _resolved.get(call)
        if entry is None:
            function = resolve(call)
            entry = _resolved[call] = (function, accepts_inputs(function))
        function, takes_inputs = entry
        args = list(spec.get("args") or [])
        kwargs = dict(spec.get("kwargs") or {})
        if takes_inputs and "inputs" not in kwargs:
            kwargs["inputs"] = dict(spec.get("inputs") or {})
        result = function(*args, **kwargs)
        if inspect.iscoroutine(result):
            import asyncio  # only call tasks that are coroutines pay for importing asyncio

            result = asyncio.run(result)
    except BaseException as exc:  # the task's failure, whatever it is, is the report's error
        return EXIT_RAISED, {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    return EXIT_OK, {"ok": True, "result": result}


# --------------------------------------------------------------------------- frames


def read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None at end of file."""
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes | None:
    header = read_exactly(fd, FRAME_HEADER.size)
    if header is None:
        return None
    (length,) = FRAME_HEADER.unpack(header)
    return read_exactly(fd, length) if length else b""


def write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(FRAME_HEADER.pack(len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


# --------------------------------------------------------------------------- serving


def become_subreaper() -> None:
    """Orphans of a task's processes are re-parented to this process (Linux), so the check for
    leftovers sees them; elsewhere only direct children are seen."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def leftovers(baseline_threads: int) -> str:
    """Why this process must not run another task ("" if it may): live child processes or
    threads the task left behind. Reaps children that have already ended."""
    reasons = []
    try:
        while True:
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                reasons.append("child processes still running")
                break
    except ChildProcessError:
        pass  # no children at all
    extra_threads = threading.active_count() - baseline_threads
    if extra_threads > 0:
        reasons.append(f"{extra_threads} threads still running")
    return "; ".join(reasons)


class TaskEnvironment:
    """``os.environ`` for each task: this process's environment at start-up plus the request's
    ``env``, whatever the previous task left. It compares os.environ's own store (bytes to
    bytes, in C; CPython's os._Environ) and changes only the variables that differ: going
    through os.environ's mapping API for every variable cost 168 of a no-op call's 170 us, and
    removing and setting again the AGENTFLOW_* variables of every task about 20 of its ~50."""

    def __init__(self) -> None:
        self.baseline: dict[bytes, bytes] = os.environ._data.copy()  # type: ignore[attr-defined]

    def enter(self, env: dict) -> None:
        wanted = self.baseline.copy()
        for name, value in env.items():
            wanted[os.fsencode(str(name))] = os.fsencode(str(value))
        current = os.environ._data  # type: ignore[attr-defined]
        if current == wanted:
            return
        for key in [key for key in current if key not in wanted]:
            os.environ.pop(os.fsdecode(key), None)
        for key, value in wanted.items():
            if current.get(key) != value:
                os.environ[os.fsdecode(key)] = os.fsdecode(value)


class OutputFiles:
    """The tasks' stdout and stderr files, opened once and kept open from one task to the next:
    a file is emptied before a task only if the previous task wrote to it, so a quiet task costs
    no open, truncate or close."""

    def __init__(self, stdout_path: str, stderr_path: str) -> None:
        self.paths = (stdout_path, stderr_path)
        self.fds: list[int] = []
        self.sizes = [0, 0]  # what the last task left in each file

    def prepare(self) -> tuple[int, int]:
        """The two fds, opened (or emptied) for a new task. Raises OSError."""
        if not self.fds:
            for path in self.paths:
                self.fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
        else:
            for fd, size in zip(self.fds, self.sizes):
                if size:
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)  # fd 1/2 share this offset: they start at 0 too
        self.sizes = [0, 0]
        return self.fds[0], self.fds[1]

    def measure(self) -> list[int]:
        """What the task wrote (bytes in each file); the answer carries it, so the executor reads
        a tail only from a file that has one."""
        try:
            self.sizes = [os.fstat(fd).st_size for fd in self.fds]
        except OSError:
            self.sizes = [1, 1]  # unknown: empty them next time, and let the executor look
        return list(self.sizes)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def run_request(spec: Any, outputs: OutputFiles, environment: TaskEnvironment, quiet_out_fd: int, own_err_fd: int,
                baseline_threads: int) -> dict:
    """Run one request with fds 1 and 2 and the environment set for it; then put the fds back."""
    if not isinstance(spec, dict) or not isinstance(spec.get("call"), str):
        return {"ok": False, "error": "bad request: expected a map with a 'call' string",
                "exit_code": EXIT_BAD_SPEC, "leftovers": ""}
    saved_cwd = os.getcwd()
    try:
        out_fd, err_fd = outputs.prepare()
    except OSError as exc:
        outputs.close()
        return {"ok": False, "error": f"cannot open the task's output files: {exc}",
                "exit_code": EXIT_BAD_SPEC, "leftovers": ""}
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    try:
        environment.enter(spec.get("env") or {})
        exit_code, outcome = run_call(spec)
        try:
            outcome["payload"] = encode(outcome.pop("result", None))
        except EncodeError as exc:
            exit_code = EXIT_RAISED
            outcome = {"ok": False, "error": f"the result of {spec['call']} cannot be sent: {exc}", "traceback": ""}
        if not outcome["ok"] and outcome.get("traceback"):
            sys.stderr.write(outcome["traceback"])
    finally:
        # The task may have replaced or closed the streams; what it printed belongs in its files.
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        os.dup2(quiet_out_fd, 1)
        os.dup2(own_err_fd, 2)
        try:
            if os.getcwd() != saved_cwd:
                os.chdir(saved_cwd)
        except OSError:
            os.chdir(saved_cwd)
    outcome.pop("traceback", None)
    outcome["exit_code"] = exit_code
    outcome["leftovers"] = leftovers(baseline_threads)
    outcome["output_bytes"] = outputs.measure()
    return outcome


def serve(request_fd: int, answer_fd: int, outputs: OutputFiles) -> int:
    """Answer requests until the request pipe ends."""
    become_subreaper()
    quiet_out_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    own_err_fd = os.dup(2)  # this process's own diagnostics, while fd 2 belongs to a task
    os.set_inheritable(own_err_fd, False)
    os.dup2(quiet_out_fd, 1)
    baseline_threads = threading.active_count()
    environment = TaskEnvironment()
    while True:
        frame = read_frame(request_fd)
        if frame is None:
            return EXIT_OK
        try:
            spec = decode(frame)
        except Exception as exc:  # noqa: BLE001 - a bad request is answered, not fatal
            outcome = {"ok": False, "error": f"bad request: {exc}", "exit_code": EXIT_BAD_SPEC, "leftovers": ""}
        else:
            outcome = run_request(spec, outputs, environment, quiet_out_fd, own_err_fd, baseline_threads)
        write_frame(answer_fd, encode(outcome))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 5 or argv[0] != "--serve" or not argv[1].isdigit() or not argv[2].isdigit():
        print("usage: python -m runtime.taskrunner --serve REQUEST_FD ANSWER_FD STDOUT_FILE STDERR_FILE", file=sys.stderr)
        return EXIT_BAD_SPEC
    return serve(int(argv[1]), int(argv[2]), OutputFiles(argv[3], argv[4]))


if __name__ == "__main__":
    sys.exit(main())
