"""Workflows as data: what a user declares, before anything runs.

This module holds the seed's names ``Workflow``, ``TaskNode`` and ``TaskPriority``, plus
``TaskResources``, the priorities' names, task keys (``"wf-1/build"``) and the structural
checks every workflow passes before it is stored (``check_structure``: duplicate ids, unknown
dependencies, cycles). The file format that produces these records is ``protocols/workflow.py``;
the run state of a stored workflow is ``protocols/workflow_run.py``.

Rules of this module:

* It is pure and deterministic: plain records and functions of them, no clocks, no I/O.
* ``Workflow``, ``TaskNode`` and ``TaskResources`` are wire records (``wf.workflow``,
  ``wf.task``, ``wf.resources``): they travel inside ``wf.submit`` and snapshots, so their
  fields only ever grow, with defaults.
* A workflow that cannot run as written raises ``WorkflowError`` naming the task (and file).
"""

from __future__ import annotations

from dataclasses import field
from enum import IntEnum

from protocols.registry import TaskRequirements
from protocols.wire import record


class TaskPriority(IntEnum):
    """Named priorities; any integer is a priority too (higher runs first)."""

    URGENT = 1000
    HIGH = 750
    MEDIUM = 500
    LOW = 250


def priority_value(priority: str | int) -> int:
    """``"high"`` (any case), ``TaskPriority.HIGH`` or ``750`` -> 750; ValueError otherwise."""
    if isinstance(priority, bool):
        raise ValueError(f"bad priority {priority!r}")
    if isinstance(priority, int):
        return int(priority)
    if isinstance(priority, str):
        try:
            return int(TaskPriority[priority.strip().upper()])
        except KeyError:
            pass
    raise ValueError(f"bad priority {priority!r} (use urgent, high, medium, low or an integer)")


def priority_name(priority: int) -> str:
    """750 -> ``"high"``; an integer that is not a named priority -> its decimal string."""
    try:
        return TaskPriority(priority).name.lower()
    except ValueError:
        return str(priority)


class WorkflowError(ValueError):
    """A workflow that cannot run as written; names the task (and file) when there is one."""

    def __init__(self, problem: str, task_id: str | None = None, filename: str = "") -> None:
        self.problem = problem
        self.task_id = task_id
        self.filename = filename
        where = f"task {task_id!r}: " if task_id is not None else ""
        prefix = f"{filename}: " if filename else ""
        super().__init__(f"{prefix}{where}{problem}")


@record("wf.resources")
class TaskResources:
    """What one run of a task reserves on its worker."""

    cpu: float = 1.0
    memory_mb: int = 0
    gpu: int = 0


def task_kind(command: str | None, call: str | None, agent: str | None) -> str:
    """What a task runs: ``"command"``, ``"call"``, ``"agent"``, or ``"noop"`` for none of them."""
    if command is not None:
        return "command"
    if call is not None:
        return "call"
    if agent is not None:
        return "agent"
    return "noop"


@record("wf.task")
class TaskNode:
    """One task as declared. At most one of ``command``, ``call``, ``agent`` and
    ``agent_group`` is set; a task with none is a no-op marker (it completes as soon as it is
    ready, without a worker). An agent task is a TaskRequest to that agent (or to one live
    member of that agent group); the reply's content is the task's result."""

    task_id: str
    command: str | None = None
    call: str | None = None  # "package.module:function"
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    agent: str | None = None  # the name of the agent that receives the task
    priority: int = int(TaskPriority.MEDIUM)
    dependencies: list[str] = field(default_factory=list)
    resources: TaskResources = field(default_factory=TaskResources)
    retries: int = 0
    timeout_s: float | None = None
    capabilities: list[str] = field(default_factory=list)
    group: str | None = None
    agent_group: str | None = None  # the agent group one of whose live members gets the task
    # Where it prefers to run: None, where its dependencies ran (their results are there);
    # a list of some of its dependencies, where those ran; [], anywhere (the least loaded).
    locality: list | None = None

    @property
    def kind(self) -> str:
        """``"command"``, ``"call"``, ``"agent"`` or ``"noop"``."""
        return task_kind(self.command, self.call, self.agent or self.agent_group)

    @property
    def is_noop(self) -> bool:
        return self.kind == "noop"

    @property
    def requirements(self) -> TaskRequirements:
        """What a worker must offer to run this task (for ``WorkerRegistry.select``)."""
        return TaskRequirements(
            cpu=float(self.resources.cpu),
            memory_mb=self.resources.memory_mb,
            gpu=self.resources.gpu,
            capabilities=list(self.capabilities),
            group=self.group,
        )

    def to_dict(self) -> dict:
        # By hand: dataclasses.asdict deep-copies field by field and is ~10x slower, which
        # shows in snapshots of large workflows.
        return {
            "task_id": self.task_id,
            "command": self.command,
            "call": self.call,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "agent": self.agent,
            "priority": self.priority,
            "dependencies": list(self.dependencies),
            "resources": {"cpu": self.resources.cpu, "memory_mb": self.resources.memory_mb, "gpu": self.resources.gpu},
            "retries": self.retries,
            "timeout_s": self.timeout_s,
            "capabilities": list(self.capabilities),
            "group": self.group,
            "agent_group": self.agent_group,
            "locality": None if self.locality is None else list(self.locality),
        }

    @classmethod
    def from_dict(cls, data: dict) -> TaskNode:
        """The inverse of ``to_dict`` (trusted input: snapshots, not user files)."""
        values = dict(data)
        values["resources"] = TaskResources(**values.get("resources", {}))
        return cls(**values)


@record("wf.workflow")
class Workflow:
    """A workflow as declared: an id, a display name, and its tasks in declaration order."""

    workflow_id: str
    name: str = ""
    tasks: list[TaskNode] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"workflow_id": self.workflow_id, "name": self.name, "tasks": [task.to_dict() for task in self.tasks]}

    @classmethod
    def from_dict(cls, data: dict) -> Workflow:
        return cls(
            workflow_id=data["workflow_id"],
            name=data.get("name", ""),
            tasks=[TaskNode.from_dict(task) for task in data.get("tasks", [])],
        )


def task_key(workflow_id: str, task_id: str) -> str:
    """The cluster-wide name of a task: ``"wf-1/build"`` (workflow ids hold no ``/``)."""
    return f"{workflow_id}/{task_id}"


def split_task_key(key: str) -> tuple[str, str]:
    workflow_id, _, task_id = key.partition("/")
    return workflow_id, task_id


def check_structure(workflow: Workflow, filename: str = "") -> None:
    """Raise WorkflowError for a duplicate task id, an unknown dependency, a locality hint that
    names no dependency of its task, or a cycle."""
    if "/" in workflow.workflow_id or not workflow.workflow_id:
        raise WorkflowError(f"bad workflow id {workflow.workflow_id!r} (non-empty, no '/')", None, filename)
    declared: dict[str, TaskNode] = {}
    for task in workflow.tasks:
        if task.task_id in declared:
            raise WorkflowError("duplicate task id", task.task_id, filename)
        declared[task.task_id] = task
    for task in workflow.tasks:
        for dependency in task.dependencies:
            if dependency not in declared:
                raise WorkflowError(f"unknown dependency {dependency!r}", task.task_id, filename)
        for near in task.locality or ():
            if near not in task.dependencies:
                raise WorkflowError(f"locality names {near!r}, which is not one of its dependencies",
                                    task.task_id, filename)
    cycle = find_cycle(workflow.tasks)
    if cycle:
        raise WorkflowError("dependency cycle: " + " -> ".join(cycle), cycle[0], filename)


def find_cycle(tasks: list[TaskNode]) -> list[str]:
    """The first cycle found (depth first, in declaration order) as ``[a, b, ..., a]``, or []."""
    by_id = {task.task_id: task for task in tasks}
    # 0 = unvisited, 1 = on the current path, 2 = done.
    mark = {task.task_id: 0 for task in tasks}
    for root in tasks:
        if mark[root.task_id]:
            continue
        # An explicit stack of (task id, index of the next dependency to look at): workflows
        # can be thousands of tasks deep, deeper than Python's recursion limit.
        path: list[str] = [root.task_id]
        next_index: list[int] = [0]
        mark[root.task_id] = 1
        while path:
            current = path[-1]
            dependencies = by_id[current].dependencies
            if next_index[-1] == len(dependencies):
                mark[current] = 2
                path.pop()
                next_index.pop()
                continue
            dependency = dependencies[next_index[-1]]
            next_index[-1] += 1
            if dependency not in mark:
                continue  # unknown dependencies are check_structure's business
            if mark[dependency] == 1:
                # We walked dependency edges (task -> what it needs); report the cycle in
                # execution order (what runs first, first).
                cycle = path[path.index(dependency) :]
                cycle.reverse()
                return [cycle[-1], *cycle]
            if mark[dependency] == 0:
                mark[dependency] = 1
                path.append(dependency)
                next_index.append(0)
    return []
