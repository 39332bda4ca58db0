"""Workflow files: every validation rule, both formats, the examples, and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.workflow_spec import TaskResources, Workflow, WorkflowError
from protocols.workflow import dump_workflow, parse_workflow, workflow_to_document

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SEED = """
workflow:
  id: wf1
  tasks:
    - {task_id: build, dependencies: []}
    - {task_id: test, dependencies: [build]}
    - {task_id: deploy, dependencies: [test]}
"""


def tasks_yaml(*tasks: str) -> str:
    return "workflow:\n  id: w\n  tasks:\n" + "".join(f"    - {task}\n" for task in tasks)


def error_of(text: str, filename: str = "") -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, filename)
    return caught.value


def test_seed_example_parses_as_noop_tasks():
    workflow = parse_workflow(SEED)
    assert workflow.workflow_id == "wf1"
    assert workflow.name == "wf1"
    assert [task.task_id for task in workflow.tasks] == ["build", "test", "deploy"]
    assert [task.kind for task in workflow.tasks] == ["noop"] * 3
    assert workflow.tasks[2].dependencies == ["test"]


def test_full_task_fields():
    workflow = parse_workflow(
        """
workflow:
  id: wf-deploy
  name: Deploy app
  tasks:
    - task_id: build
      command: "make build"
      priority: high
      dependencies: []
      resources: {cpu: 1, memory_mb: 256, gpu: 1}
      retries: 2
      timeout_s: 600
      capabilities: [bash]
      group: builders
    - task_id: score
      call: "pkg.mod:score"
      args: [1, 2]
      kwargs: {k: v}
      priority: 600
      dependencies: [build]
    - task_id: review
      agent: reviewer
      priority: URGENT
      dependencies: [score]
"""
    )
    build, score, review = workflow.tasks
    assert workflow.name == "Deploy app"
    assert build.command == "make build" and build.kind == "command"
    assert build.priority == 750
    assert build.resources == TaskResources(cpu=1.0, memory_mb=256, gpu=1)
    assert (build.retries, build.timeout_s, build.capabilities, build.group) == (2, 600.0, ["bash"], "builders")
    assert build.requirements.gpu == 1 and build.requirements.group == "builders"
    assert (score.call, score.args, score.kwargs, score.priority) == ("pkg.mod:score", [1, 2], {"k": "v"}, 600)
    assert (review.agent, review.kind, review.priority) == ("reviewer", "agent", 1000)


def test_json_is_accepted():
    document = {"workflow": {"id": "j", "tasks": [{"task_id": "a"}, {"task_id": "b", "dependencies": ["a"]}]}}
    workflow = parse_workflow(json.dumps(document), "wf.json")
    assert [task.task_id for task in workflow.tasks] == ["a", "b"]


def test_missing_id_uses_default_or_content_hash():
    text = tasks_yaml("{task_id: a}").replace("  id: w\n", "")
    assert parse_workflow(text, default_id="given").workflow_id == "given"
    derived = parse_workflow(text).workflow_id
    assert derived.startswith("wf-") and derived == parse_workflow(text).workflow_id


@pytest.mark.parametrize(
    "tasks, task_id, words",
    [
        (["{task_id: a, dependencies: [nope]}"], "a", "unknown dependency 'nope'"),
        (["{task_id: a}", "{task_id: a}"], "a", "duplicate task id"),
        (["{task_id: a, priority: hgih}"], "a", "bad priority 'hgih'"),
        (["{task_id: a, priority: true}"], "a", "bad priority"),
        (["{task_id: a, resources: {cpu: -1}}"], "a", "negative resources.cpu"),
        (["{task_id: a, resources: {memory_mb: -5}}"], "a", "negative resources.memory_mb"),
        (["{task_id: a, resources: {gpu: -1}}"], "a", "negative resources.gpu"),
        (["{task_id: a, resources: {gpus: 1}}"], "a", "did you mean 'gpu'"),
        (["{task_id: a, command: x, call: 'm:f'}"], "a", "both 'command' and 'call'"),
        (["{task_id: a, call: 'm:f', agent: z}"], "a", "both 'call' and 'agent'"),
        (["{task_id: a, call: no_colon}"], "a", "package.module:function"),
        (["{task_id: a, command: [ls]}"], "a", "command must be a non-empty string"),
        (["{task_id: a, retries: -1}"], "a", "retries"),
        (["{task_id: a, retries: two}"], "a", "retries"),
        (["{task_id: a, timeout_s: 0}"], "a", "timeout_s"),
        (["{task_id: a, dependencies: b}"], "a", "dependencies must be a list"),
        (["{task_id: a}", "{task_id: b, dependencies: [a, a]}"], "b", "twice"),
        (["{task_id: a, capabilities: bash}"], "a", "capabilities must be a list"),
        (["{task_id: a, dependecies: []}"], "a", "did you mean 'dependencies'"),
        (["{task_id: a, command: ls, args: [1]}"], "a", "args and kwargs go with call, agent or agent_group"),
        (["{task_id: a, call: 'm:f', kwargs: [1]}"], "a", "kwargs must be a mapping"),
        (["{task_id: a, resources: {memory_mb: 1.5}}"], "a", "memory_mb must be an integer"),
    ],
)
def test_task_errors_name_problem_and_task(tasks, task_id, words):
    error = error_of(tasks_yaml(*tasks), "my.yaml")
    assert error.task_id == task_id
    assert words in str(error)
    assert str(error).startswith(f"my.yaml: task {task_id!r}: ")


def test_cycle_names_tasks_in_order():
    error = error_of(
        tasks_yaml(
            "{task_id: start}",
            "{task_id: a, dependencies: [start, c]}",
            "{task_id: b, dependencies: [a]}",
            "{task_id: c, dependencies: [b]}",
        )
    )
    assert "cycle" in str(error)
    # Each task on the cycle runs after the one before it: a -> b -> c -> a.
    cycle = str(error).split("cycle: ")[1].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert len(cycle) == 4
    assert set(cycle) == {"a", "b", "c"}
    rotations = [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert cycle[:3] in rotations
    assert error.task_id == cycle[0]


def test_self_dependency_is_a_cycle():
    error = error_of(tasks_yaml("{task_id: a, dependencies: [a]}"))
    assert "cycle: a -> a" in str(error)


@pytest.mark.parametrize(
    "text, words",
    [
        ("workflow:\n  id: w\n  tasks:\n    - {dependencies: []}\n", "task #1 has no task_id"),
        ("workflow:\n  id: w\n  tasks:\n    - {task_id: 5}\n", "task_id must be a non-empty string"),
        ("workflow:\n  id: w\n  tasks:\n    - just-a-string\n", "task #1 must be a mapping"),
        ("workflow:\n  id: w\n  tasks: []\n", "non-empty list of tasks"),
        ("workflow:\n  id: w\n", "non-empty list of tasks"),
        ("workflow:\n  id: a/b\n  tasks: [{task_id: x}]\n", "without '/'"),
        ("workflow:\n  id: 7\n  tasks: [{task_id: x}]\n", "workflow id"),
        ("workflow:\n  id: w\n  taks: []\n", "did you mean 'tasks'"),
        ("- just\n- a list\n", "expected a mapping"),
        ("workflow: {id: w, tasks: [{task_id: a}]}\nextra: 1\n", "unknown top-level key"),
        ("workflow:\n  id: w\n tasks: [\n", "not valid YAML"),
        ('{"workflow": ', "not valid JSON"),
    ],
)
def test_document_errors(text, words):
    assert words in str(error_of(text))


def test_examples_parse():
    names = sorted(path.name for path in EXAMPLES.glob("*.yaml"))
    assert {"seed.yaml", "diamond.yaml", "failing_branch.yaml"} <= set(names)
    for name in names:
        path = EXAMPLES / name
        text = path.read_text()
        if not text.lstrip().startswith("workflow") and "\nworkflow:" not in text:
            continue  # not every example file need be a workflow
        workflow = parse_workflow(text, str(path))
        assert workflow.tasks


def test_failing_branch_example_shape():
    workflow = parse_workflow((EXAMPLES / "failing_branch.yaml").read_text())
    flaky = next(task for task in workflow.tasks if task.task_id == "flaky")
    assert "exit 3" in flaky.command and flaky.retries == 1


def test_workflow_is_a_wire_record():
    workflow = parse_workflow((EXAMPLES / "diamond.yaml").read_text())
    assert wire.decode(wire.encode(workflow)) == workflow
    assert Workflow.from_dict(workflow.to_dict()) == workflow


def test_round_trip_examples_through_yaml_and_json():
    for name in ("seed.yaml", "diamond.yaml", "failing_branch.yaml"):
        workflow = parse_workflow((EXAMPLES / name).read_text())
        assert parse_workflow(dump_workflow(workflow)) == workflow
        assert parse_workflow(dump_workflow(workflow, as_json=True)) == workflow


_ids = st.text(alphabet="abcdefghij_-0123456789", min_size=1, max_size=8)


@st.composite
def workflow_documents(draw):
    ids = draw(st.lists(_ids, min_size=1, max_size=12, unique=True))
    tasks = []
    for index, task_id in enumerate(ids):
        dependencies = draw(st.lists(st.sampled_from(ids[:index]), unique=True)) if index else []
        task = {"task_id": task_id, "dependencies": dependencies}
        kind = draw(st.sampled_from(["noop", "command", "call", "agent"]))
        if kind == "command":
            task["command"] = "echo " + task_id
        elif kind == "call":
            task["call"] = "pkg.mod:fn"
            task["args"] = draw(st.lists(st.integers(), max_size=3))
        elif kind == "agent":
            task["agent"] = "agent-" + task_id
        task["priority"] = draw(st.one_of(st.sampled_from(["urgent", "high", "medium", "low"]), st.integers(-5, 2000)))
        task["resources"] = {
            "cpu": draw(st.sampled_from([0, 0.5, 1, 2])),
            "memory_mb": draw(st.integers(0, 4096)),
            "gpu": draw(st.integers(0, 2)),
        }
        task["retries"] = draw(st.integers(0, 3))
        tasks.append(task)
    return {"workflow": {"id": "w", "name": "random", "tasks": tasks}}


@settings(max_examples=60, deadline=None)
@given(workflow_documents())
def test_any_valid_document_round_trips(document):
    workflow = parse_workflow(json.dumps(document))
    assert parse_workflow(json.dumps(workflow_to_document(workflow))) == workflow
    assert parse_workflow(dump_workflow(workflow)) == workflow


def test_a_locality_hint_names_dependencies_or_none_and_survives_a_round_trip():
    text = json.dumps({"workflow": {"id": "wf", "tasks": [
        {"task_id": "a", "command": "x"}, {"task_id": "b", "command": "x"},
        {"task_id": "near-a", "command": "x", "dependencies": ["a", "b"], "locality": "a"},
        {"task_id": "anywhere", "command": "x", "dependencies": ["a"], "locality": "none"},
        {"task_id": "default", "command": "x", "dependencies": ["a"]}]}})
    tasks = {task.task_id: task for task in parse_workflow(text).tasks}
    assert tasks["near-a"].locality == ["a"] and tasks["anywhere"].locality == [] and tasks["default"].locality is None
    again = parse_workflow(dump_workflow(parse_workflow(text)))
    assert [task.locality for task in again.tasks] == [None, None, ["a"], [], None]
    with pytest.raises(WorkflowError, match="task 'c': locality names 'b', which is not one of its dependencies"):
        parse_workflow(json.dumps({"workflow": {"id": "wf", "tasks": [
            {"task_id": "a"}, {"task_id": "b"}, {"task_id": "c", "dependencies": ["a"], "locality": ["b"]}]}}))
