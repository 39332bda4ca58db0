"""The CLI's contract: subcommands present, unbuilt ones exit 2, bad AGENTFLOW_LOG is refused."""

from __future__ import annotations

from typer.testing import CliRunner

from agentflow.cli import app

runner = CliRunner()


def test_every_design_subcommand_is_present():
    for command in ["master", "worker", "up", "demo", "submit", "status", "cancel", "workers", "cluster",
                    "queue", "reprioritize", "top", "send", "request", "broadcast", "history"]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
    for command in ["acquire", "release", "renew", "show", "run"]:
        assert runner.invoke(app, ["lock", command, "--help"]).exit_code == 0


def test_a_bad_priority_is_refused_before_anything_is_sent():
    result = runner.invoke(app, ["reprioritize", "wf", "t", "soon", "--master-url", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "bad priority 'soon'" in result.output


def test_bad_log_level_is_refused_with_a_clear_message():
    result = runner.invoke(app, ["demo"], env={"AGENTFLOW_LOG": "loud"})
    assert result.exit_code == 2
    assert "AGENTFLOW_LOG" in result.output


def test_demo_runs_the_examples_on_a_local_cluster():
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "wf-diamond" in result.output and "completed" in result.output
    assert "skipped" in result.output  # the failing branch's dependent
    assert "total 36" in result.output  # the agents example


def test_master_timing_is_configurable_and_checked():
    from agentflow.master import raft_timing

    config, tick_s = raft_timing(1000, (5000, 10000))  # the seed's 1 s heartbeat, 5-10 s election
    assert tick_s == 1.0 and (config.election_ticks_min, config.election_ticks_max) == (5, 10)
    config, tick_s = raft_timing(100, (1000, 2000))  # the default
    assert tick_s == 0.1 and (config.election_ticks_min, config.election_ticks_max) == (10, 20)
    for bad in (["--election-timeout-ms", "soon"], ["--heartbeat-ms", "500", "--election-timeout-ms", "400-800"]):
        result = runner.invoke(app, ["master", "--port", "7999", *bad])
        assert result.exit_code == 2 and "election timeout" in result.output.replace("-", " ")


def test_a_bad_workflow_file_is_refused_before_anything_is_sent(tmp_path):
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("workflow:\n  id: bad\n  tasks:\n    - {task_id: a, dependencies: [b]}\n"
                      "    - {task_id: b, dependencies: [a]}\n")
    # The master URL names nothing that listens: the file must be refused before any connection.
    result = runner.invoke(app, ["submit", str(cyclic), "--master-url", "127.0.0.1:1"])
    assert result.exit_code == 2 and "cycle: a -> b -> a" in result.output
    result = runner.invoke(app, ["submit", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "cannot read" in result.output
    result = runner.invoke(app, ["status", "--master-url", "nonsense"])
    assert result.exit_code == 2 and "bad master URL" in result.output
