"""The CLI's contract: subcommands present, unbuilt ones exit 2, bad AGENTFLOW_LOG is refused."""

from __future__ import annotations

from typer.testing import CliRunner

from runtime.cli import app

runner = CliRunner()


def test_every_design_subcommand_is_present():
    for command in ["master", "worker", "up", "demo", "submit", "status", "cancel", "workers", "cluster",
                    "top", "send", "request", "broadcast", "history"]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
    for command in ["acquire", "release", "renew", "show", "run"]:
        assert runner.invoke(app, ["lock", command, "--help"]).exit_code == 0


def test_bad_log_level_is_refused_with_a_clear_message():
    result = runner.invoke(app, ["demo"], env={"AGENTFLOW_LOG": "loud"})
    assert result.exit_code == 2
    assert "AGENTFLOW_LOG" in result.output


def test_demo_runs_the_examples_on_a_local_cluster():
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "wf-diamond" in result.output and "completed" in result.output
    assert "skipped" in result.output  # the failing branch's dependent
