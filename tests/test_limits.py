"""The masters' submission limits through real processes and the CLI: a refusal is one line naming
the limit and the option that sets it, exit 1, and nothing already stored is lost."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.procs import running_cluster


def write_workflow(path, workflow_id: str, task_ids: list[str]):
    tasks = [{"task_id": task_id, "command": "true"} for task_id in task_ids]
    path.write_text(yaml.safe_dump({"workflow": {"id": workflow_id, "name": workflow_id, "tasks": tasks}}))
    return path


def submit(path, master_url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentflow.cli", "submit", str(path), "--master-url", master_url],
                          capture_output=True, text=True, timeout=60)


def test_a_master_refuses_workflows_over_its_limits_with_one_line_naming_the_option(tmp_path):
    options = ["--max-tasks-per-workflow", "3", "--max-pending-workflows", "1"]
    with running_cluster(tmp_path / "cluster", masters=1, workers=0, first_port=18950,
                         master_options=options) as (cluster, client):
        big = write_workflow(tmp_path / "big.yaml", "big", [f"t{i}" for i in range(4)])
        refused = submit(big, cluster.master_url)
        assert refused.returncode == 1, refused
        [line] = refused.stderr.strip().splitlines()
        assert "4 tasks" in line and "--max-tasks-per-workflow" in line, line
        first = write_workflow(tmp_path / "first.yaml", "first", ["a"])
        assert submit(first, cluster.master_url).returncode == 0
        second = write_workflow(tmp_path / "second.yaml", "second", ["a"])
        refused = submit(second, cluster.master_url)  # no worker: "first" is still pending
        assert refused.returncode == 1 and "--max-pending-workflows" in refused.stderr, refused
        assert client.workflow_status("first")["state"] in ("pending", "running")
        assert client.cancel_workflow("first")
        assert submit(second, cluster.master_url).returncode == 0
