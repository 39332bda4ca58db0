"""Workflow files with every kind of mistake, and of adversarial sizes.

A bad file gets one clear line and exit 2 from `agentflow submit`, never a traceback: the parser
raises only WorkflowError (a one-line message) for any document, any mutation of a good file,
any encoding; aliases ("billion laughs"), deep nesting and non-UTF-8 bytes included. Files that
are merely big (many tasks, a deep chain, very long ids, a large file) are taken or refused
with a reason, and the cluster that takes them keeps serving. `make test` runs bounded sizes,
`make fuzz` the full ones (100,000 tasks, a 10,000-deep chain, 1 MB ids, a 50 MB file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.workflow_spec import WorkflowError
from protocols.workflow_table import SubmitWorkflow, WorkflowTable
from protocols.workflow import RESOURCE_KEYS, TASK_KEYS, parse_workflow, workflow_from_document
from tests.procs import REPO, running_cluster

QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXAMPLES = [path.read_text() for path in sorted((REPO / "examples").glob("*.yaml"))]
SIZES_PORT = 13850

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                      max_leaves=12)
task_ids = st.sampled_from(["a", "b", "c", "", "a/b", "x" * 300]) | st.text(max_size=10) | values
tasks = st.fixed_dictionaries({"task_id": task_ids}, optional={
    key: (st.lists(task_ids, max_size=4) if key == "dependencies" else
          st.dictionaries(st.sampled_from(RESOURCE_KEYS + ("disk",)), values, max_size=4) if key == "resources" else
          st.sampled_from(["urgent", "high", "medium", "low", "HIGH", "p1", 0, -5, 10**30, 1.5, True]) if key == "priority"
          else values)
    for key in TASK_KEYS + ("bogus", "comand") if key != "task_id"})
documents = st.fixed_dictionaries({}, optional={
    "id": task_ids, "name": values, "description": values, "tasks": st.lists(tasks | values, max_size=6),
    "bogus": values}) | values


def parses_or_refuses(text: str, filename: str = "wf.yaml"):
    """parse_workflow's only failure is a one-line WorkflowError; what it accepts encodes and
    applies (as the masters would) without raising."""
    try:
        workflow = parse_workflow(text, filename)
    except WorkflowError as exc:
        assert "\n" not in str(exc), str(exc)
        return None
    try:
        data = wire.encode(SubmitWorkflow(workflow, 0))
    except wire.EncodeError:
        return workflow  # the client refuses to send it; nothing reaches a master
    WorkflowTable().apply(wire.decode(data))
    return workflow


@QUICK
@given(documents)
def test_any_document_is_parsed_or_refused_in_one_line(document):
    for text, name in ((json.dumps({"workflow": document}, default=str), "wf.json"),
                       (yaml.safe_dump({"workflow": document}), "wf.yaml")):
        parses_or_refuses(text, name)
    try:
        workflow_from_document(document if isinstance(document, dict) else {"tasks": document})
    except WorkflowError:
        pass


@QUICK
@given(st.sampled_from(EXAMPLES), st.lists(st.tuples(st.integers(0, 5000), st.text(max_size=3)), min_size=1,
                                           max_size=6))
def test_mutated_example_files_are_parsed_or_refused_in_one_line(text, edits):
    for position, insert in edits:
        position %= max(1, len(text))
        text = text[:position] + insert + text[position + 1:]
    parses_or_refuses(text)


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
@settings(LONG, max_examples=3_000)  # each one dumps and parses YAML and JSON: ~0.3 s on a loaded machine
@given(documents)
def test_long_documents(document):
    parses_or_refuses(json.dumps({"workflow": document}, default=str), "wf.json")


def test_hostile_yaml_gets_one_line():
    laughs = ["workflow:", "  tasks:", '    - {task_id: t0, call: "m:f", args: &a [lol, lol, lol, lol, lol, lol, lol]}']
    for level in range(1, 9):
        laughs.append(f'    - {{task_id: t{level}, call: "m:f", args: &{chr(97 + level)} '
                      f'[{", ".join(["*" + chr(96 + level)] * 7)}]}}')
    cases = {
        "aliases": "\n".join(laughs),
        "deep yaml": "workflow:\n  tasks:\n    - task_id: a\n      call: 'm:f'\n      args: " + "[" * 20_000 + "]" * 20_000,
        "deep json": '{"workflow": {"tasks": [{"task_id": "a", "call": "m:f", "args": ' + "[" * 20_000 + "]" * 20_000
                     + "}]}}",
        "tabs": "workflow:\n\ttasks: []",
        "not a mapping": "- 1\n- 2",
        "empty": "",
        "python tag": "workflow: !!python/object/apply:os.system ['true']",
    }
    for name, text in cases.items():
        started = time.monotonic()
        with pytest.raises(WorkflowError) as refused:
            parse_workflow(text, "bad.yaml")
        assert "\n" not in str(refused.value), (name, str(refused.value))
        assert time.monotonic() - started < 10, name


def submit(path, master_url: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, AGENTFLOW_MASTER_URL=master_url, AGENTFLOW_LOG="warn")
    return subprocess.run([sys.executable, "-m", "agentflow.cli", "submit", str(path), "--wait", "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout_s)


def test_a_bad_file_is_one_line_and_exit_2(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00workflow")
    result = submit(binary, "127.0.0.1:1", timeout_s=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "not UTF-8" in result.stderr


def big_files(tmp_path, tasks: int, chain: int, id_chars: int, file_mb: int) -> dict:
    """The adversarial files, as JSON (PyYAML reads 1 MB/s; the limits tested here are ours)."""
    files = {}
    noop = [{"task_id": f"t{i}"} for i in range(tasks)]
    files["many tasks"] = {"workflow": {"id": "wf-many", "tasks": noop}}
    files["deep chain"] = {"workflow": {"id": "wf-chain", "tasks": [{"task_id": f"c{i}", "dependencies": [f"c{i - 1}"]}
                                                                     if i else {"task_id": "c0"} for i in range(chain)]}}
    files["long ids"] = {"workflow": {"id": "wf-" + "i" * id_chars,
                                      "tasks": [{"task_id": "t" * id_chars}, {"task_id": "u", "dependencies": ["t" * id_chars]}]}}
    files["big file"] = {"workflow": {"id": "wf-big", "tasks": [{"task_id": "big", "command": "true #" + "x" * (file_mb << 20)}]}}
    paths = {}
    for name, document in files.items():
        path = tmp_path / (name.replace(" ", "-") + ".json")
        path.write_text(json.dumps(document))
        paths[name] = path
    return paths


def check_big_files(tmp_path, tasks: int, chain: int, id_chars: int, file_mb: int) -> None:
    """Each file is taken or refused in at most one line while the cluster serves; the many
    tasks and the deep chain complete."""
    report = {}
    with running_cluster(tmp_path / "cluster", masters=3, workers=1, first_port=SIZES_PORT) as (local, client):
        for name, path in big_files(tmp_path, tasks, chain, id_chars, file_mb).items():
            started = time.monotonic()
            result = submit(path, local.master_url)
            seconds = time.monotonic() - started
            lines = result.stderr.strip().splitlines()
            assert result.returncode in (0, 1, 2) and len(lines) <= 1, (name, result.stderr[-2000:])
            state = json.loads(result.stdout)["state"] if result.stdout else None
            report[name] = {"bytes": path.stat().st_size, "exit": result.returncode, "state": state,
                            "seconds": round(seconds, 1), "error": lines[0][:160] if lines else ""}
            assert local.alive(), local.logs()[-3000:]
            assert client.cluster_status(timeout_s=10)["leader"]
        report["cluster"] = "alive and serving"
    print(json.dumps(report, indent=1))
    assert report["many tasks"]["state"] == "completed" and report["deep chain"]["state"] == "completed"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_big_files_are_taken_or_refused_and_the_cluster_keeps_serving(tmp_path):
    check_big_files(tmp_path, tasks=5_000, chain=500, id_chars=50_000, file_mb=2)


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
def test_full_size_files(tmp_path):
    check_big_files(tmp_path, tasks=100_000, chain=10_000, id_chars=1_000_000, file_mb=50)
