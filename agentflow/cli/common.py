"""What every `agentflow` command shares: the typer apps, the common options, output and errors.

Rules: the commands and options are the contract of docs/ARCHITECTURE.md, which other tools
drive; `--json` on a read command prints one JSON document and nothing else. Bad input gets one
line naming the problem and a non-zero exit. Logging follows AGENTFLOW_LOG (runtime/log.py).
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from runtime.client import ClusterUnavailable
from runtime.future import RemoteError
from runtime.log import configure_logging

app = typer.Typer(help="AgentFlow: distributed parallel execution of agents and tasks.",
                  no_args_is_help=True, add_completion=False)
lock_app = typer.Typer(help="Distributed locks with fencing tokens.", no_args_is_help=True)
app.add_typer(lock_app, name="lock")

MasterUrl = typer.Option(None, "--master-url", envvar="AGENTFLOW_MASTER_URL",
                         help="Masters to talk to: a comma-separated list; any member will do.")
JsonFlag = typer.Option(False, "--json", help="Print one JSON document and nothing else.")
# Every node (master, worker, agent host) binds and advertises the same way (agentflow/addresses.py).
BindHost = typer.Option("127.0.0.1", "--host", envvar="AGENTFLOW_HOST",
                        help="The address to bind (0.0.0.0: every interface).")
Advertise = typer.Option(None, "--advertise", envvar="AGENTFLOW_ADVERTISE",
                         help="HOST[:PORT] the other nodes should use to reach this one (a DNS name, a NAT's "
                              "address). Default: the bound address; for 0.0.0.0, this host name's address.")
NodeId = typer.Option(None, "--node-id", envvar="AGENTFLOW_NODE_ID", help="This node's id in the cluster.")


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"agentflow: {message}", err=True)
    raise typer.Exit(code)


def print_table(title: str, columns: tuple[str, ...], rows) -> None:
    """A rich table on the terminal (the human form of a read command)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console().print(table)


def print_json(document) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=False, default=str))


def connect(master_url: Optional[str]):
    """A Client for the masters named by --master-url / AGENTFLOW_MASTER_URL (bad input: exit 2)."""
    from runtime.client import Client

    try:
        return Client(master_url or "127.0.0.1:6767")
    except ValueError as exc:
        fail(str(exc))


def ask_cluster(master_url: Optional[str], request, also: tuple[type[Exception], ...] = ()):
    """``request(client)`` against the cluster; an unreachable cluster, a refusal or one of the
    errors in ``also`` is one line on stderr and exit 1."""
    with connect(master_url) as client:
        try:
            return request(client)
        except RemoteError as exc:
            fail(exc.message, code=1)
        except (ClusterUnavailable, *also) as exc:
            fail(str(exc), code=1)


def not_built(capability: str) -> None:
    typer.echo(f"agentflow: {capability} is not built yet (see the open issues).", err=True)
    raise typer.Exit(2)


@app.callback()
def main_callback() -> None:
    try:
        configure_logging()
    except ValueError as exc:
        typer.echo(f"agentflow: {exc}", err=True)
        raise typer.Exit(2)
