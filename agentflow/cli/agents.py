"""`agentflow send|request|broadcast|history`: agent messaging."""

from __future__ import annotations

from typing import Optional

import typer

from agentflow.cli.common import MasterUrl, app, not_built

@app.command()
def send(agent: str, message: str, master_url: Optional[str] = MasterUrl) -> None:
    """Send a message to an agent."""
    not_built("agent messaging")


@app.command()
def request(agent: str, message: str, timeout_s: float = typer.Option(5.0, "--timeout"),
            master_url: Optional[str] = MasterUrl) -> None:
    """Send a request to an agent and print its answer."""
    not_built("agent messaging")


@app.command()
def broadcast(message: str, master_url: Optional[str] = MasterUrl) -> None:
    """Send a message to every agent."""
    not_built("agent messaging")


@app.command()
def history(limit: int = typer.Option(50, "--limit"), master_url: Optional[str] = MasterUrl) -> None:
    """Show the latest agent messages."""
    not_built("agent message history")
