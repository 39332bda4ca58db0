"""One task's side of dispatch: its candidate for placement, its assignment, its completion.

Role: how the dispatch state (protocols/dispatch.py) shapes a single task: the requirements a
worker must meet (shared between tasks of the same shape), the workers it prefers (data
locality), the assignment a worker runs (inputs, GPU environment), and the FinishTask a report
becomes (with the result size limit). Pure.

Rules:

* Locality: a task prefers the workers where its dependencies ran (their results are there),
  or those its ``locality:`` hint names, the worker that ran most of them first, then
  dependency order (``locality: none``: no preference); the registry takes the first preferred
  worker with room, else one in its group, else the least loaded.
* Inputs: a dependency's result goes in the assignment, unless the task runs where that
  dependency ran and the result is at least ``LOCAL_INPUT_MIN_BYTES``: then it is named in
  ``local_inputs`` and the worker takes it from its ``ResultCache`` (bounded by bytes, oldest
  out first). A task whose worker no longer had one is sent again with every input
  (``ship_all``).
* A result larger than ``max_result_bytes`` (as encoded for the log) is not logged: the task
  fails with an error that says so and what to do instead (retries apply as for any failure).
"""

from __future__ import annotations

from typing import Any

from protocols.workflow_spec import TaskNode, task_key
from protocols.workflow_table import FinishTask
from protocols.registry import TaskRequirements
from protocols.rounds import Candidate
from protocols.tasks import TaskAssignment, TaskFinished
from protocols.wire import encode

DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
DEFAULT_RESULT_CACHE_BYTES = 256 * 1024 * 1024
LOCAL_INPUT_MIN_BYTES = 16 * 1024
MAX_SHAPES = 1024

Finishing = dict  # task id -> (result, worker id): completions of one workflow not yet applied


def task_shape(task: TaskNode) -> tuple:
    """What ``task.requirements`` is made of: tasks of the same shape need the same worker."""
    resources = task.resources
    return resources.cpu, resources.memory_mb, resources.gpu, tuple(task.capabilities), task.group


class TaskShapes:
    """``task.requirements``, made once per shape of task rather than once per task."""

    def __init__(self) -> None:
        self._shapes: dict[tuple, TaskRequirements] = {}

    def of(self, task: TaskNode) -> TaskRequirements:
        shape = task_shape(task)
        requirements = self._shapes.get(shape)
        if requirements is None:
            if len(self._shapes) >= MAX_SHAPES:
                self._shapes.clear()
            requirements = self._shapes[shape] = task.requirements
        return requirements


def candidate(graph, task_id: str, shapes: TaskShapes, finishing: Finishing | None = None) -> Candidate:
    task = graph.tasks[task_id]
    return Candidate(task_key(graph.workflow_id, task_id), shapes.of(task),
                     preferred_workers(graph, task, finishing))


def preferred_workers(graph, task: TaskNode, finishing: Finishing | None) -> tuple:
    counts: dict[str, int] = {}
    for dependency in task.dependencies if task.locality is None else task.locality:
        if finishing is not None and dependency in finishing:
            worker_id = finishing[dependency][1]
        else:
            worker_id = graph.runs[dependency].worker_id
        if worker_id:
            counts[worker_id] = counts.get(worker_id, 0) + 1
    if len(counts) < 2:
        return tuple(counts)
    return tuple(sorted(counts, key=lambda worker_id: -counts[worker_id]))  # stable: dependency order on ties


def assignment(graph, task_id: str, attempt: int, term: int, worker_id: str, gpus: list,
               finishing: Finishing | None, ship_all: bool = False) -> TaskAssignment:
    task = graph.tasks[task_id]
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpus)} if gpus else {}
    results, runs = graph.results, graph.runs
    inputs: dict = {}
    local_inputs: list[str] = []
    for dependency in task.dependencies:
        if finishing and dependency in finishing:
            result, ran_on = finishing[dependency]
        else:
            result, ran_on = results.get(dependency), runs[dependency].worker_id
        if ran_on == worker_id and not ship_all and result is not None and result_size(result) >= LOCAL_INPUT_MIN_BYTES:
            local_inputs.append(dependency)
        else:
            inputs[dependency] = result
    return TaskAssignment(graph.workflow_id, task_id, attempt, task.command, task.call, list(task.args),
                          dict(task.kwargs), task.agent, task.timeout_s, env, inputs, task.agent_group, local_inputs,
                          term)


class ResultCache:
    """The results of the tasks a worker ran, by (workflow id, task id), for its later tasks'
    ``local_inputs``: at most ``max_bytes`` of them (as ``result_size`` counts), oldest out first."""

    def __init__(self, max_bytes: int = DEFAULT_RESULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._results: dict[tuple[str, str], tuple[Any, int]] = {}

    def __len__(self) -> int:
        return len(self._results)

    def put(self, workflow_id: str, task_id: str, result: Any) -> None:
        size = result_size(result)
        if size < LOCAL_INPUT_MIN_BYTES or size > self.max_bytes:
            return  # small results travel in assignments; a huge one would evict everything
        key = (workflow_id, task_id)
        if key in self._results:
            self.bytes -= self._results.pop(key)[1]
        self._results[key] = (result, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._results))
            self.bytes -= self._results.pop(oldest)[1]

    def get(self, workflow_id: str, task_id: str, default: Any = None) -> Any:
        entry = self._results.get((workflow_id, task_id))
        return default if entry is None else entry[0]

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._results


def finish_command(report: TaskFinished, now_ms: int, max_result_bytes: int) -> FinishTask:
    ok, result, error = report.ok, report.result, report.error
    if ok and result is not None:
        size = result_size(result)
        if size > max_result_bytes:
            ok, result = False, None
            error = (f"result too large: {size} bytes, above the limit of {max_result_bytes} "
                     "(--max-result-bytes on the masters); return a path or a key instead")
    return FinishTask(report.workflow_id, report.task_id, report.attempt, ok, now_ms, report.exit_code,
                      result, error, report.stdout_tail, report.stderr_tail, report.term)


def result_size(value: Any) -> int:
    """About how many bytes ``value`` takes in the log (exact for anything but scalars)."""
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float:
        return 9
    if kind is bytes:
        return len(value)
    if kind is str and value.isascii():
        return len(value)
    try:
        return len(encode(value))
    except Exception:
        return 0  # not encodable: the log refuses it on its own
