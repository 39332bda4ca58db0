"""Run an `agentflow` command line through the real CLI (typer app, options, environment
variables, the command's own checks) up to the point where it would start a node, and return
what it would start it with. For tests of flags, environment variables and deployment manifests."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from agentflow.cli import app


def parse_node_command(argv: list[str], env: dict[str, str] | None = None, monkeypatch=None) -> tuple[int, dict, str]:
    """``(exit code, the options run_master/run_worker/run_agent was called with, output)``;
    ``{}`` when the command stopped before starting anything (bad input)."""
    import zmq

    import agentflow.agent_host
    from runtime.security import CurveKeys
    import agentflow.cli.nodes
    import agentflow.master
    import agentflow.worker

    seen: dict = {}

    def fake_master(**options):
        seen.update(options, process="master")
        return 0

    def fake_worker(master_urls, **options):
        seen.update(options, master_urls=master_urls, process="worker")
        return 0

    def fake_agent_host(spec, agent_id, master_urls, **options):
        seen.update(options, spec=spec, agent_id=agent_id, master_urls=master_urls, process="agent host")
        return 0

    def fake_keys(secret_key_file, server_key_file=None, authorized_keys_dir=None):
        # The manifests name files inside their containers: check the names, make keys of our own.
        seen["curve_files"] = (str(secret_key_file), server_key_file and str(server_key_file), authorized_keys_dir)
        public, secret = zmq.curve_keypair()
        return CurveKeys(public, secret, public, authorized_keys_dir, frozenset())

    monkeypatch.setattr(CurveKeys, "load", staticmethod(fake_keys))
    monkeypatch.setattr(agentflow.agent_host, "run_agent", fake_agent_host)
    monkeypatch.setattr(agentflow.master, "run_master", fake_master)
    monkeypatch.setattr(agentflow.worker, "run_worker", fake_worker)
    monkeypatch.setattr(agentflow.cli.nodes, "tune_gc_for_serving", lambda: None)
    # Only the variables given count: the ones of the shell running the tests are unset.
    environment: dict = {key: None for key in os.environ if key.startswith(("AGENTFLOW_", "WORKER_"))}
    result = CliRunner().invoke(app, argv, env={**environment, **(env or {})})
    return result.exit_code, seen, result.output
