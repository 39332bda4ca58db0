"""Workflow files: parse and validate YAML or JSON into a ``Workflow``.

The format (docs/ARCHITECTURE.md §4)::

    workflow:
      id: wf-deploy                 # optional
      name: Deploy app              # optional, defaults to the id
      tasks:
        - task_id: build
          command: "make build"     # or  call: "pkg.module:function" (+ args, kwargs),
                                    # or  agent: AGENT_ID  or  agent_group: GROUP (+ args, kwargs)
          priority: high            # urgent|high|medium|low or an integer (default medium)
          dependencies: []
          resources: {cpu: 1, memory_mb: 256, gpu: 0}
          retries: 2
          timeout_s: 600
          capabilities: [bash]
          group: default
          locality: [extract]       # prefer where these dependencies ran (default: all of them; none: anywhere)

A task with none of ``command``, ``call``, ``agent``, ``agent_group`` is a no-op marker (like Airflow's
EmptyOperator), so the seed's three-task example runs as written.

Rules of this module:

* Parsing is pure: it takes the file's text. Reading the file is the caller's job.
* Anything wrong raises ``WorkflowError`` that names the problem and the task (and the file,
  when given): unknown keys (with a suggestion), wrong types, a missing ``task_id``, duplicate
  ids, unknown dependencies, cycles (the tasks on it, in order), bad priorities, negative
  resources, more than one of command/call/agent/agent_group.
* No randomness: a workflow without an id gets ``default_id`` from the caller, or else an id
  derived from the file's content (``wf-`` + 12 hex digits of its SHA-256).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

import yaml

from protocols.workflow_spec import (
    TaskNode,
    TaskPriority,
    TaskResources,
    Workflow,
    WorkflowError,
    check_structure,
    priority_name,
    priority_value,
)

__all__ = ["WorkflowError", "parse_workflow", "workflow_to_document", "dump_workflow"]

WORKFLOW_KEYS = ("id", "name", "description", "tasks")
TASK_KEYS = (
    "task_id",
    "name",
    "description",
    "command",
    "call",
    "args",
    "kwargs",
    "agent",
    "agent_group",
    "priority",
    "dependencies",
    "resources",
    "retries",
    "timeout_s",
    "capabilities",
    "group",
    "locality",
)
RESOURCE_KEYS = ("cpu", "memory_mb", "gpu")


def parse_workflow(text: str, filename: str = "", default_id: str | None = None) -> Workflow:
    """Parse and validate a workflow document (YAML, or JSON: a ``.json`` file name or a
    document starting with ``{`` is read as JSON). Raises WorkflowError."""
    document = _load(text, filename)
    if isinstance(document, dict) and "workflow" in document:
        extra = [key for key in document if key != "workflow"]
        if extra:
            raise WorkflowError(f"unknown top-level key {extra[0]!r} (only 'workflow')", None, filename)
        document = document["workflow"]
    if not isinstance(document, dict):
        raise WorkflowError("expected a mapping with a 'workflow' key", None, filename)
    if default_id is None:
        default_id = "wf-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return workflow_from_document(document, filename, default_id)


def workflow_from_document(document: dict, filename: str = "", default_id: str = "") -> Workflow:
    """Validate the mapping under ``workflow:`` and build the Workflow. Raises WorkflowError."""
    _check_keys(document, WORKFLOW_KEYS, "workflow", None, filename)
    workflow_id = document.get("id")
    if workflow_id is None:
        workflow_id = default_id
    if not isinstance(workflow_id, str) or not workflow_id or "/" in workflow_id:
        raise WorkflowError(f"workflow id must be a non-empty string without '/', not {workflow_id!r}", None, filename)
    name = document.get("name", workflow_id)
    if not isinstance(name, str):
        raise WorkflowError(f"workflow name must be a string, not {_type_name(name)}", None, filename)
    tasks_value = document.get("tasks")
    if not isinstance(tasks_value, list) or not tasks_value:
        raise WorkflowError("workflow needs a non-empty list of tasks", None, filename)
    tasks = [_parse_task(value, index, filename) for index, value in enumerate(tasks_value)]
    workflow = Workflow(workflow_id=workflow_id, name=name, tasks=tasks)
    check_structure(workflow, filename)
    return workflow


def workflow_to_document(workflow: Workflow) -> dict:
    """The inverse of parsing: a ``{"workflow": {...}}`` mapping that parses back to an equal
    Workflow. Defaults are left out so the document reads like a hand-written one."""
    tasks = []
    for task in workflow.tasks:
        entry: dict[str, Any] = {"task_id": task.task_id}
        for key in ("command", "call", "agent", "agent_group", "group", "timeout_s"):
            if getattr(task, key) is not None:
                entry[key] = getattr(task, key)
        if task.args:
            entry["args"] = list(task.args)
        if task.kwargs:
            entry["kwargs"] = dict(task.kwargs)
        if task.priority != TaskPriority.MEDIUM:
            entry["priority"] = priority_name(task.priority)
            if entry["priority"].lstrip("-").isdigit():
                entry["priority"] = task.priority
        entry["dependencies"] = list(task.dependencies)
        if task.resources != TaskResources():
            entry["resources"] = {key: getattr(task.resources, key) for key in RESOURCE_KEYS}
        if task.retries:
            entry["retries"] = task.retries
        if task.capabilities:
            entry["capabilities"] = list(task.capabilities)
        if task.locality is not None:
            entry["locality"] = list(task.locality) if task.locality else "none"
        tasks.append(entry)
    return {"workflow": {"id": workflow.workflow_id, "name": workflow.name, "tasks": tasks}}


def dump_workflow(workflow: Workflow, as_json: bool = False) -> str:
    document = workflow_to_document(workflow)
    if as_json:
        return json.dumps(document, indent=2)
    return yaml.safe_dump(document, sort_keys=False)


# --------------------------------------------------------------------------- internals


def _parse_locality(value: Any, fail) -> list | None:
    """``locality:`` absent -> None (where the dependencies ran), ``none`` -> [] (anywhere), a
    task id or a list of them -> those (they must be dependencies: check_structure says so)."""
    if value is None:
        return None
    if value == "none":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise fail("locality must be none, a dependency's task id, or a list of them")


class _Loader(yaml.SafeLoader):
    """YAML without aliases: ``*name`` shares a node, so nine lines of aliases nesting nine deep
    stand for 9**9 strings, which validating and encoding expand (a "billion laughs" file kept
    `agentflow submit` busy for minutes). No workflow needs one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in workflow files",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _load(text: str, filename: str) -> Any:
    try:
        if filename.endswith(".json") or text.lstrip().startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as error:
                raise WorkflowError(f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", None,
                                    filename) from None
        try:
            return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = " ".join((getattr(error, "problem", None) or str(error)).split())  # one line (a ReaderError has 2)
            raise WorkflowError(f"not valid YAML: {problem}{where}", None, filename) from None
    except RecursionError:  # both parsers recurse per level of nesting
        raise WorkflowError("nested too deeply", None, filename) from None


def _parse_task(value: Any, index: int, filename: str) -> TaskNode:
    if not isinstance(value, dict):
        raise WorkflowError(f"task #{index + 1} must be a mapping, not {_type_name(value)}", None, filename)
    task_id = value.get("task_id")
    if task_id is None:
        raise WorkflowError(f"task #{index + 1} has no task_id", None, filename)
    if not isinstance(task_id, str) or not task_id:
        raise WorkflowError(f"task #{index + 1}: task_id must be a non-empty string, not {task_id!r}", None, filename)

    def fail(problem: str) -> WorkflowError:
        return WorkflowError(problem, task_id, filename)

    _check_keys(value, TASK_KEYS, "task", task_id, filename)

    runs = [key for key in ("command", "call", "agent", "agent_group") if value.get(key) is not None]
    if len(runs) > 1:
        raise fail(f"has both {runs[0]!r} and {runs[1]!r}; a task runs one of command, call, agent or agent_group")
    command = _optional_str(value, "command", fail)
    call = _optional_str(value, "call", fail)
    agent = _optional_str(value, "agent", fail)
    agent_group = _optional_str(value, "agent_group", fail)
    if call is not None and (":" not in call or call.startswith(":") or call.endswith(":")):
        raise fail(f"call must look like 'package.module:function', not {call!r}")

    args = value.get("args", []) or []
    kwargs = value.get("kwargs", {}) or {}
    if not isinstance(args, list):
        raise fail(f"args must be a list, not {_type_name(args)}")
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise fail("kwargs must be a mapping with string keys")
    if (args or kwargs) and call is None and agent is None and agent_group is None:
        raise fail("args and kwargs go with call, agent or agent_group")

    try:
        priority = priority_value(value.get("priority", "medium"))
    except ValueError:
        raise fail(
            f"bad priority {value.get('priority')!r} (use urgent, high, medium, low or an integer)"
        ) from None

    dependencies = value.get("dependencies", []) or []
    if not isinstance(dependencies, list) or not all(isinstance(dep, str) for dep in dependencies):
        raise fail("dependencies must be a list of task ids")
    seen: set[str] = set()
    for dependency in dependencies:
        if dependency in seen:
            raise fail(f"lists dependency {dependency!r} twice")
        seen.add(dependency)

    resources = _parse_resources(value.get("resources"), fail)

    retries = value.get("retries", 0)
    if not _is_int(retries) or retries < 0:
        raise fail(f"retries must be a non-negative integer, not {retries!r}")
    timeout_s = value.get("timeout_s")
    if timeout_s is not None and (not _is_number(timeout_s) or timeout_s <= 0):
        raise fail(f"timeout_s must be a positive number, not {timeout_s!r}")

    capabilities = value.get("capabilities", []) or []
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise fail("capabilities must be a list of strings")
    group = _optional_str(value, "group", fail)
    locality = _parse_locality(value.get("locality"), fail)

    return TaskNode(
        task_id=task_id,
        command=command,
        call=call,
        args=list(args),
        kwargs=dict(kwargs),
        agent=agent,
        priority=priority,
        dependencies=list(dependencies),
        resources=resources,
        retries=retries,
        timeout_s=float(timeout_s) if timeout_s is not None else None,
        capabilities=list(capabilities),
        group=group,
        agent_group=agent_group,
        locality=locality,
    )


def _parse_resources(value: Any, fail) -> TaskResources:
    if value is None:
        return TaskResources()
    if not isinstance(value, dict):
        raise fail(f"resources must be a mapping of {', '.join(RESOURCE_KEYS)}")
    for key in value:
        if key not in RESOURCE_KEYS:
            raise fail(f"unknown resource {key!r}{_suggestion(key, RESOURCE_KEYS)}")
    default = TaskResources()
    cpu = value.get("cpu", default.cpu)
    memory_mb = value.get("memory_mb", default.memory_mb)
    gpu = value.get("gpu", default.gpu)
    if not _is_number(cpu):
        raise fail(f"resources.cpu must be a number, not {cpu!r}")
    if not _is_int(memory_mb):
        raise fail(f"resources.memory_mb must be an integer, not {memory_mb!r}")
    if not _is_int(gpu):
        raise fail(f"resources.gpu must be an integer, not {gpu!r}")
    for key, amount in (("cpu", cpu), ("memory_mb", memory_mb), ("gpu", gpu)):
        if amount < 0:
            raise fail(f"negative resources.{key}: {amount}")
    return TaskResources(cpu=float(cpu), memory_mb=memory_mb, gpu=gpu)


def _check_keys(mapping: dict, allowed: tuple[str, ...], what: str, task_id: str | None, filename: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise WorkflowError(f"unknown {what} key {key!r}{_suggestion(str(key), allowed)}", task_id, filename)


def _suggestion(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _optional_str(mapping: dict, key: str, fail) -> str | None:
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(f"{key} must be a non-empty string, not {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "empty"}.get(type(value), type(value).__name__)
