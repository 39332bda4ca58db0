"""The `agentflow` command line (typer): start nodes and drive the cluster.

One module per group of commands; each registers its commands on the shared ``app``
(``agentflow.cli.common``). A process entry point is ``main``; ``agentflow-master`` and
``agentflow-worker`` are ``master_main`` and ``worker_main``.
"""

from __future__ import annotations

import os
import sys

# Each module registers its commands on import; the order here is the order of `agentflow --help`.
from agentflow.cli import nodes, workflows, queue, cluster, top, agents, locks, keys  # noqa: F401, I001
from agentflow.cli.common import app, hoist_security_options

__all__ = ["app", "main", "master_main", "worker_main"]


def main() -> None:
    """Every error a person can hit is one line and a non-zero exit; an unexpected one too,
    with its traceback only under AGENTFLOW_LOG=debug (or trace)."""
    _run(hoist_security_options(sys.argv[1:]))


def _run(args: list[str]) -> None:
    sys.argv = [sys.argv[0], *args]
    try:
        app()
    except Exception as exc:
        if os.environ.get("AGENTFLOW_LOG", "").strip().lower() in ("debug", "trace"):
            raise
        print(f"agentflow: unexpected {type(exc).__name__}: {exc} (AGENTFLOW_LOG=debug shows where)",
              file=sys.stderr)
        sys.exit(1)


def _run_subcommand(name: str) -> None:
    _run(hoist_security_options([name, *sys.argv[1:]]))


def master_main() -> None:
    """`agentflow-master`: the same options as `agentflow master`."""
    _run_subcommand("master")


def worker_main() -> None:
    """`agentflow-worker`: the same options as `agentflow worker`."""
    _run_subcommand("worker")
