"""Errors a person can hit: one line on stderr naming the problem and the fix, a non-zero exit,
and no traceback (AGENTFLOW_LOG=debug aside)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.procs import REPO, running_cluster


def agentflow(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_LOG="info")
    return subprocess.run([sys.executable, "-m", "agentflow.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env, cwd=REPO)


def last_line(result: subprocess.CompletedProcess) -> str:
    """The error line (a master logs a few info lines before it)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("agentflow: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_nothing_answering_at_the_master_url_says_how_to_start_a_cluster():
    commands = (["status"], ["workers"], ["lock", "show", "k"], ["agents"])
    with ThreadPoolExecutor(len(commands)) as pool:  # each waits out the client's deadline: side by side
        results = list(pool.map(lambda command: agentflow(*command, "--master-url", "127.0.0.1:1"), commands))
    for result in results:
        assert result.returncode == 1
        assert "no leader answered" in last_line(result) and "agentflow up" in last_line(result)
        # Every connection refused: said so when the client's deadline passes.
        assert "nothing listens at tcp://127.0.0.1:1" in last_line(result), last_line(result)


@pytest.mark.integration
def test_an_agent_that_does_not_exist_says_how_to_list_them(tmp_path):
    with running_cluster(tmp_path, masters=1, first_port=11840) as (cluster, _):
        result = agentflow("send", "nobody", "--type", "notification", "--content", '"hi"',
                           "--master-url", cluster.master_url)
        assert result.returncode == 1
        assert "no agent 'nobody'" in last_line(result) and "agentflow agents" in last_line(result)


def test_a_port_in_use_names_the_port_and_the_option(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 11850))
        taken.listen()
        result = agentflow("master", "--port", "11850", "--data-dir", str(tmp_path))
        assert result.returncode == 1 and "11850" in last_line(result) and "--port" in last_line(result)
        result = agentflow("master", "--port", "11851", "--http-port", "11850", "--data-dir", str(tmp_path))
        assert result.returncode == 1 and "--http-port" in last_line(result)


def test_a_workflow_file_with_a_mistake_names_the_file_and_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workflow:\n  tasks:\n    - {task_id: a, command: [}\n")
    result = agentflow("submit", str(bad), "--master-url", "127.0.0.1:1")
    assert result.returncode == 2 and "bad.yaml" in last_line(result) and "line 3" in last_line(result)


def test_a_data_file_that_is_not_agentflows_is_refused(tmp_path):
    (tmp_path / "m9.sqlite").write_text("not a database")
    result = agentflow("master", "--port", "11860", "--node-id", "m9", "--data-dir", str(tmp_path))
    assert result.returncode == 1 and "m9.sqlite" in last_line(result) and "--data-dir" in last_line(result)


@pytest.mark.integration
def test_the_data_dir_of_another_cluster_is_refused(tmp_path):
    with running_cluster(tmp_path / "one", masters=2, first_port=11870) as (first, _):
        first.stop()  # its master-2 file now belongs to a cluster that is gone
        with running_cluster(tmp_path / "two", masters=1, first_port=11880) as (second, _):
            shutil.copy(tmp_path / "one" / "master-2.sqlite", tmp_path / "two" / "master-2.sqlite")
            result = agentflow("master", "--mode", "master", "--leader-url", second.master_url, "--port", "11896",
                               "--node-id", "master-2", "--data-dir", str(tmp_path / "two"))
            assert result.returncode == 2, result.stderr
            assert "another cluster" in last_line(result) and "--data-dir" in last_line(result)
