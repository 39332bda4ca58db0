"""`agentflow top`: the live view of the cluster."""

from __future__ import annotations

from typing import Optional

from agentflow.cli.common import MasterUrl, app, not_built


@app.command()
def top(master_url: Optional[str] = MasterUrl) -> None:
    """A live view of the cluster."""
    not_built("the live view")
