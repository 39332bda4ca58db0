"""The `agentflow` command line (typer): start nodes and drive the cluster.

One module per group of commands; each registers its commands on the shared ``app``
(``agentflow.cli.common``). A process entry point is ``main``; ``agentflow-master`` and
``agentflow-worker`` are ``master_main`` and ``worker_main``.
"""

from __future__ import annotations

import sys

# Each module registers its commands on import; the order here is the order of `agentflow --help`.
from agentflow.cli import nodes, workflows, cluster, top, agents, locks, keys  # noqa: F401, I001
from agentflow.cli.common import app, hoist_security_options

__all__ = ["app", "main", "master_main", "worker_main"]


def main() -> None:
    sys.argv = [sys.argv[0], *hoist_security_options(sys.argv[1:])]
    app()


def _run_subcommand(name: str) -> None:
    sys.argv = [sys.argv[0], *hoist_security_options([name, *sys.argv[1:]])]
    app()


def master_main() -> None:
    """`agentflow-master`: the same options as `agentflow master`."""
    _run_subcommand("master")


def worker_main() -> None:
    """`agentflow-worker`: the same options as `agentflow worker`."""
    _run_subcommand("worker")
