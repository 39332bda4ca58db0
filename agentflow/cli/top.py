"""`agentflow top`: the live view of the cluster (agentflow/tui.py)."""

from __future__ import annotations

import shutil
from typing import Optional

import typer

from agentflow.cli.common import UNREACHABLE_FIX, MasterUrl, app, curve_keys, fail


@app.command()
def top(
    master_url: Optional[str] = MasterUrl,
    once: bool = typer.Option(False, "--once", help="Print one frame and exit (for scripts): exit 1 if no master answers."),
    interval: float = typer.Option(0.5, "--interval", help="Seconds between refreshes."),
) -> None:
    """A live view of the cluster: masters, workers, queue, workflows, agents, events.
    Keys: q quit, ? help, w/m/a focus a panel, / filter workflows, p pause."""
    from agentflow.tui import ClusterPoller, frame_text, run_live

    if interval <= 0:
        fail("--interval must be positive (seconds between refreshes)")
    try:
        poller = ClusterPoller(master_url or "127.0.0.1:6767", timeout_s=min(0.4, interval),
                               curve=curve_keys("client"))
    except ValueError as exc:
        fail(str(exc))
    with poller:
        if once:
            frame = poller.poll()
            typer.echo(frame_text(frame, width=shutil.get_terminal_size((120, 40)).columns), nl=False)
            if not any(frame.masters.values()):
                fail(f"no master answered at {', '.join(poller.seeds)}: {UNREACHABLE_FIX}", code=1)
            return
        try:
            run_live(poller, interval)
        except KeyboardInterrupt:
            pass
